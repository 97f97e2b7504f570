"""Launching the worker with a shipped launch config, and the checks the FSDP2 and DeepSpeed tests
share: equality with one process, and HyPO's samples and KL against the unsharded model."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
# The launches use the GPUs where there are (benchmarks/gpu.sh runs these tests there); the checks
# against the unsharded model then run on the first GPU, with the kernels the launch used.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def settings(tiny, out: Path, cache: Path, **overrides) -> dict:
    """A 3-step run on the tiny model, 4 pairs per process (8 per step with 2 processes); AdamW's
    ε 1e-6: see ``weights_tolerance``."""
    values = dict(model_name_or_path=str(tiny["model"]), dataset_name=str(tiny["data"]),
                  output_dir=str(out), ref_cache_dir=str(cache), learning_rate=1e-3, max_steps=3,
                  max_new_tokens=6, max_length=64, max_prompt_length=32, save_steps=0,
                  report_to="none", disable_progress_bar=True, eval_online_prompts=0, seed=0,
                  per_device_train_batch_size=4, adam_epsilon=1e-6)
    values.update(overrides)
    return values


def three_runs(tiny, root: Path) -> dict[str, dict]:
    """The runs every sharded launch makes: DPO (full fine-tuning), LoRA, and HyPO with a
    checkpoint at step 2."""
    cache = root / "cache"
    return {
        "dpo": settings(tiny, root / "dpo", cache, algo="dpo"),
        # HyPO with λ = 0 trains exactly as DPO (docs/losses.md) yet still samples from the gathered
        # policy and runs the adapter-disabled reference over it: one run checks LoRA both ways.
        "lora": settings(tiny, root / "lora", cache, algo="hypo", kl_coef=0.0, use_peft=True,
                         merge_adapter=True),
        "hypo": settings(tiny, root / "hypo", cache, algo="hypo", kl_coef=0.1, save_steps=2),
    }


def launched(config: str, values: dict[str, dict], resume: dict[str, str] | None = None,
             env: dict[str, dict[str, str]] | None = None) -> dict:
    """Launch the runs in one ``accelerate launch`` (``resume``: run name → the run whose
    checkpoint-2 it resumes; ``env``: run name → environment variables changed for that run, which
    the worker applies to a fresh accelerate state); returns {name: (output folder, settings)}."""
    specs = {name: {"config": v} for name, v in values.items()}
    for name, source in (resume or {}).items():
        specs[name]["resume"] = source
    for name, variables in (env or {}).items():
        specs[name]["env"] = variables
    stdout = launch(config, specs)
    # no DeepSpeed op was compiled (``sharding.skip_deepspeed_shm_build``: none is needed to train)
    assert "built successfully" not in stdout, stdout
    for name in specs:
        stage = specs[name].get("env", {}).get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        kind = "fsdp2" if config == "fsdp" else f"deepspeed-zero{stage}" if stage else config
        assert f"RUN {name} 2 {kind}" in stdout, stdout  # ran with 2 processes, sharded as asked
    return {name: (Path(v["output_dir"]), v) for name, v in values.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, runs: dict, timeout: float = 600) -> str:
    """``accelerate launch --config_file examples/accelerate/<config>.yaml --num_processes 2`` on
    the worker, as a user launches hypo; returns its stdout (fails with its stderr's tail)."""
    args = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "examples" / "accelerate" / f"{config}.yaml"), "--num_processes", "2",
            "--main_process_port", str(free_port()), str(WORKER), json.dumps(runs)]
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def one_process(values: dict) -> dict[str, torch.Tensor]:
    """Final weights of the same run in this process, with the whole global batch (2 × 4 = 8)."""
    from hypo.config import TrainConfig
    from hypo.trainer import Trainer

    values = {**values, "per_device_train_batch_size": 2 * values["per_device_train_batch_size"]}
    trainer = Trainer(TrainConfig(**values))
    trainer.train()
    return {k: v.detach().cpu().clone() for k, v in trainer.acc.unwrap_model(trainer.model).state_dict().items()}


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def assert_half_per_process(out: Path) -> None:
    """Each of the 2 processes holds about half of every parameter, all along: after every step the
    copies gathered for sampling are gone again; while sampling, every parameter was whole."""
    records = ranks(out)
    total = records[0]["shards"][1]
    # the shards cover the model once (ZeRO-3 pads each partition to a multiple of the processes)
    assert total <= sum(r["shards"][0] for r in records) <= 1.01 * total
    for r in records:
        assert abs(r["shards"][0] / total - 0.5) < 0.02, r["shards"]
        assert all(after == r["shards"][0] for after in r["after_step"]), r["after_step"]
        assert all(round_["whole"] == total for round_ in r["rounds"])


def assert_unequal_decoding_completed(out: Path) -> None:
    """After training, each process decoded another number of tokens from the gathered weights
    (2 and 8): decoding was no collective, so none waited for the other."""
    assert [r["decoded"] for r in ranks(out)] == [2, 8]


def assert_weights_close(one: dict, two: dict, tol: float) -> None:
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=tol, rtol=0), (name, (one[name] - two[name]).abs().max())


def assert_dpo_matches_one_process(run: tuple[Path, dict], tiny, f32) -> None:
    """A sharded DPO run's final weights equal one process's with the same global batch (and the
    training moved them: the comparison is not vacuous)."""
    from transformers import AutoConfig

    out, values = run
    one = one_process({**values, "output_dir": str(out.parent / f"{out.name}-one"), "algo": "dpo"})
    two = torch.load(out / "final_state.pt")
    assert_weights_close(one, two, weights_tolerance(f32, AutoConfig.from_pretrained(tiny["model"]), values))
    assert_moved(two, tiny)


def assert_moved(state: dict, tiny) -> None:
    """Training changed the weights (the comparisons above are not vacuous)."""
    from transformers import AutoModelForCausalLM

    lora = {k: v for k, v in state.items() if "lora_B" in k}  # zero before training
    if lora:
        assert max(float(v.abs().max()) for v in lora.values()) > 1e-4
        return
    initial = AutoModelForCausalLM.from_pretrained(tiny["model"]).state_dict()
    assert max(float((state[k] - initial[k]).abs().max()) for k in state) > 1e-4


def assert_merged_is_peft_merge(out, tiny) -> None:
    """merge_adapter with sharded weights builds the merged model from the gathered ones: equal to
    peft's own merge of the saved adapter into the base model (the same operations on the same
    tensors, hence bit for bit)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["model"]), out)
    expected = expected.merge_and_unload().state_dict()
    merged = load_file(out / "merged" / "model.safetensors")
    assert merged.keys() == expected.keys()
    for name in merged:
        assert torch.equal(merged[name], expected[name]), name


def weights_tolerance(f32, config, values: dict) -> float:
    """Why 1e-5 bounds the weight difference after AdamW steps whose gradients differ by rounding.

    One process sums a batch of 8; two processes sum 4 each and average across processes: the same
    terms in another order, so each gradient differs by float32 rounding, at most 2·γ_n of its
    scale (n: the forward and backward reductions of one token, ``f32.model_terms(backward=True)``).
    AdamW's step m̂/(√v̂ + ε) does not depend on the gradient's scale where |g| ≫ ε, so it changes
    by the same relative amount, and a step is at most about lr: the weights differ by at most
    Σ_t lr_t·2·γ_n (5.8e-7 for these runs). Where a gradient cancels to near 0 the step changes by
    up to |δg|/ε instead (δg: the rounding of its terms, which can be far larger than their sum);
    ``settings`` sets ε = 1e-6 rather than 1e-8 so that these stay within the same bound. 1e-5 is
    16× the bound (checked here). Measured on an AMD EPYC (2 × 4 vs 1 × 8 pairs, 3 steps): ≤ 7e-7
    natively, with ATEN_CPU_CAPABILITY=default and with avx2 + MKL_CBWR=COMPATIBLE; with ε = 1e-8
    up to 5e-6 (LoRA's A, whose gradients start at 0)."""
    steps = values["max_steps"]  # the linear schedule: lr·(1 − t/steps) at step t
    lrs = [values["learning_rate"] * (1 - t / steps) for t in range(steps)]
    bound = sum(lrs) * f32.reorder(f32.model_terms(config, values["max_length"], backward=True), 1.0)
    assert 16 * bound <= 1e-5, bound
    return 1e-5


def assert_hypo_matches_unsharded(out: Path, tiny, f32, values: dict, step: int = 3) -> None:
    """HyPO's sampling round of ``step`` (both processes) against the unsharded model: the policy
    with the gathered weights of checkpoint-(step − 1), each process's sampler restored from it.

    The samples are equal exactly: the gathered weights are the run's own (gathering copies, it does
    not compute), and the prompts, shapes and kernels are the same, so the logits are equal and the
    inverse-CDF draws too. The logged ``kl/online`` of the step is the mean of the two processes'
    estimates, computed here from the unsharded policy's and reference's log-probs of those samples
    (in their own rows, not the run's shared-prefix rows with the pairs: equal up to rounding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypo.checkpoint import load_checkpoint
    from hypo.config import TrainConfig
    from hypo.losses import reverse_kl_estimate
    from hypo.prefix import response_logps
    from hypo.sampling import sample_groups
    from hypo.vllm_backend import make_sampler

    _, trainable, state = load_checkpoint(out / f"checkpoint-{step - 1}")
    policy = AutoModelForCausalLM.from_pretrained(tiny["model"])
    policy.load_state_dict(trainable)  # full fine-tuning: every weight is trainable
    policy.to(DEVICE)
    reference = AutoModelForCausalLM.from_pretrained(tiny["model"]).to(DEVICE)
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    cfg = TrainConfig(**values)
    kls, width, scale = [], 0, 0.0
    for rank, record in enumerate(ranks(out)):
        (round_,) = [r for r in record["rounds"] if r["step"] == step]
        sampler = make_sampler(cfg, tokenizer, [tokenizer.eos_token_id])
        sampler.load_state_dict(state["sampler"][rank])
        samples = sampler.sample(policy, round_["prompts"])
        assert samples.response_ids == round_["responses"], rank
        groups = sample_groups(samples)
        with torch.no_grad():
            pol = response_logps(policy, groups, tokenizer.pad_token_id, DEVICE)
            ref = response_logps(reference, groups, tokenizer.pad_token_id, DEVICE)
        kls.append(reverse_kl_estimate(pol, ref)[0])
        width = max(width, max(len(p) + len(r) for p, r in zip(samples.prompt_ids, samples.response_ids)))
        scale = max(scale, float((pol.abs() + ref.abs()).max()))
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][step - 1]
    assert logged["step"] == step and abs(sum(kls) / 2) > 1e-3  # π ≠ π_ref by then: not vacuous
    # Each log-prob: a forward's reductions over its row, then a sum over ≤ max_new_tokens tokens,
    # computed here in another layout than the run's (rows of their own vs shared-prefix rows).
    tol = f32.reorder(f32.model_terms(policy.config, width) + values["max_new_tokens"], 2 * scale)
    assert abs(logged["kl/online"] - sum(kls) / 2) <= tol, (logged["kl/online"], kls, tol)
