"""What runs inside one bench worker process: one mode, timed step by step, then its peak RSS.

Each mode drives the real code: ``hypo.trainer.Trainer.train`` (step times from the
``step_time`` it logs to metrics.jsonl: sampling, packing, forward, backward, clipping and the
optimizer step) or TRL's ``DPOTrainer`` / ``RLOOTrainer.train`` (step time = time between
consecutive ``on_step_end`` callbacks, i.e. data loading, generation, forward, backward and the
optimizer step; TRL logging is pushed out of the measured steps). The first ``warmup`` steps
of every worker are dropped by the parent.

A worker is started as ``python -m hypo.bench --worker MODE --spec SPEC.json --result OUT.json``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

HYPO_MODES = ("hypo-dpo", "hypo-hypo", "hypo-dpo-unshared", "hypo-hypo-unshared")  # unshared: --prefix_sharing false
TRL_MODES = ("trl-dpo", "trl-dpo-precompute", "trl-dpo-defaults", "trl-dpo-padfree", "trl-rloo")
MODES = HYPO_MODES + TRL_MODES + ("matmul",)


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class StepMarks:
    """Wall-clock and process-CPU time at the end of every optimizer step; a step's time is the
    interval since the previous mark. CPU time (all threads of the process) is less disturbed by
    other processes on a shared machine than wall time, so it is reported beside it."""

    def __init__(self, spec: dict | None = None):
        self.cuda = bool(spec and spec.get("cuda"))
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def mark(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def result(self) -> dict:
        return {"step_times": [b - a for a, b in zip(self.wall, self.wall[1:])],
                "cpu_times": [b - a for a, b in zip(self.cpu, self.cpu[1:])]}


def _threads(spec: dict) -> None:
    import torch

    torch.set_num_threads(int(spec["threads"]))


# ---- hypo -------------------------------------------------------------------------------------

def run_hypo(spec: dict, algo: str, shared: bool = True) -> dict:
    import torch  # noqa: F401

    from ..config import TrainConfig
    from ..tracking import read_metrics
    from ..trainer import Trainer

    _threads(spec)
    baseline = current_rss_mb()
    wl, out = spec["workload"], Path(spec["tmp"])
    b, k, steps = spec["batch_size"], spec["num_online_samples"], spec["warmup"] + spec["steps"]
    cfg = TrainConfig(
        model_name_or_path=wl["model_dir"], dataset_name=wl["data"], algo=algo, beta=0.1,
        kl_coef=0.1, num_online_samples=k, max_new_tokens=spec["max_new_tokens"],
        per_device_train_batch_size=b, max_length=wl["max_length"],
        max_prompt_length=wl["max_length"] - 1, learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant", max_steps=steps, output_dir=str(out / "run"),
        overwrite_output_dir=True,  # the benchmark owns its folders
        ref_cache_dir=str(out / "ref-cache"), dtype=spec.get("dtype", "float32"), save_steps=0,
        report_to="none", disable_progress_bar=True, eval_online_prompts=0, seed=spec["seed"],
        prefix_sharing=shared, **_hypo_lora(wl))
    trainer = Trainer(cfg)
    if shared and not trainer.shared:
        raise RuntimeError(f"prefix sharing is off for this model ({trainer.data.report['prefix_sharing']})")
    stats = trainer.data.report.get("train_tokenize", {})
    if stats.get("truncated_prompts") or stats.get("truncated_responses"):
        raise RuntimeError(f"bench data was truncated by hypo ({stats}); the comparison needs "
                           "identical sequences")
    marks = StepMarks()
    finish = trainer._finish_step

    def timed_finish(*args, **kwargs):  # marks the end of every optimizer step
        out = finish(*args, **kwargs)
        marks.mark()
        return out

    trainer._finish_step = timed_finish
    sampling: list[dict] = []  # the sampler's prefill / decode timing of every call (roofline)
    sample = trainer.sampler.sample

    def timed_sample(*args, **kwargs):
        out = sample(*args, **kwargs)
        if getattr(trainer.sampler, "last_timing", None):
            sampling.append({**trainer.sampler.last_timing, "step": len(marks.wall)})
        return out

    trainer.sampler.sample = timed_sample
    marks.mark()
    trainer.train()
    logged = sorted((m for m in read_metrics(cfg.output_dir) if "step_time" in m), key=lambda m: m["step"])
    result = {**marks.result(), "logged_step_times": [m["step_time"] for m in logged], "tokens": [],
              "seq_lens": [], "prompt_lens": [], "samples": [], "new_tokens": []}
    for m in logged:  # the pairs of each step, from the trainer's own deterministic data stream
        idx = trainer.pairs_stream.take((m["step"] - 1) * b, b)
        pairs = [trainer.data.train[i] for i in idx]
        lens = ([len(p.prompt_ids) + len(p.chosen_ids) for p in pairs]
                + [len(p.prompt_ids) + len(p.rejected_ids) for p in pairs])
        result["seq_lens"].append(lens)
        result["tokens"].append(sum(lens))
        result["prompt_lens"].append([len(p.prompt_ids) for p in pairs])
        if algo == "hypo":
            result["samples"].append(b * k)
            result["new_tokens"].append(m["online/length"])
    result["baseline_rss_mb"] = baseline
    result["sampling"] = sampling
    return result


LORA = dict(r=16, alpha=32, dropout=0.0, target_modules="all-linear")  # the same for hypo and TRL


def _hypo_lora(wl: dict) -> dict:
    if not wl.get("lora"):
        return {}
    return dict(use_peft=True, lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                lora_target_modules=LORA["target_modules"])


def _trl_peft(wl: dict):
    if not wl.get("lora"):
        return None
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")


# ---- TRL --------------------------------------------------------------------------------------

def _trl_common(spec: dict, steps: int) -> dict:
    return dict(output_dir=str(Path(spec["tmp"]) / "trl"), use_cpu=not spec.get("cuda", False),
                report_to="none", logging_steps=10**6, save_strategy="no", disable_tqdm=True,
                dataloader_num_workers=0, seed=spec["seed"], max_steps=steps,
                learning_rate=spec["learning_rate"], lr_scheduler_type="constant",
                optim="adamw_torch", max_grad_norm=1.0)


def _precision(spec: dict, defaults: bool) -> dict:
    if defaults:  # TRL's own defaults: bf16 autocast and gradient checkpointing on
        return {}
    bf16 = spec.get("dtype") == "bfloat16"
    return dict(bf16=bf16, fp16=False, activation_checkpointing=False, gradient_checkpointing=None)


def _step_timer(spec: dict):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks = StepMarks(spec)

        def on_step_begin(self, args, state, control, **kw):
            if not self.marks.wall:
                self.marks.mark()

        def on_step_end(self, args, state, control, **kw):
            self.marks.mark()

    return StepTimer()


def _sync(spec: dict) -> None:
    if spec.get("cuda"):
        import torch

        torch.cuda.synchronize()


def run_trl_dpo(spec: dict, precompute: bool = False, defaults: bool = False,
                padding_free: bool = False) -> dict:
    import datasets
    import torch  # noqa: F401
    from trl import DPOConfig, DPOTrainer

    from ..modeling import load_tokenizer

    _threads(spec)
    datasets.disable_progress_bars()
    baseline = current_rss_mb()
    wl = spec["workload"]
    steps = spec["warmup"] + spec["steps"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(**_trl_common(spec, steps), **_precision(spec, defaults),
                         per_device_train_batch_size=spec["batch_size"], max_length=wl["max_length"],
                         truncation_mode="keep_start", beta=0.1, loss_type="sigmoid",
                         precompute_ref_log_probs=precompute, padding_free=padding_free,
                         model_init_kwargs={"dtype": spec.get("dtype", "float32")})
    tokens: list[int] = []

    class CountingDPOTrainer(DPOTrainer):
        def training_step(self, model, inputs, *rest, **kw):
            mask = inputs.get("attention_mask")  # none with padding_free: every slot is a token
            tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *rest, **kw)

    records = [json.loads(line) for line in Path(wl["data"]).read_text().splitlines() if line.strip()]
    timer = _step_timer(spec)
    trainer = CountingDPOTrainer(model=wl["model_dir"], ref_model=None, args=args,
                                 processing_class=load_tokenizer(wl["model_dir"]),
                                 train_dataset=datasets.Dataset.from_list(records), callbacks=[timer],
                                 peft_config=_trl_peft(wl))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return {**timer.marks.result(), "tokens": tokens, "baseline_rss_mb": baseline,
            "bf16": bool(args.bf16), "gradient_checkpointing": bool(
                getattr(args, "activation_checkpointing", False) or args.gradient_checkpointing)}


def length_reward(completions, **kwargs):
    """A trivial reward for RLOO timing runs: the completion's length in characters."""
    return [float(len(c)) for c in completions]


def run_trl_rloo(spec: dict) -> dict:
    import datasets
    import torch  # noqa: F401
    from trl import RLOOConfig, RLOOTrainer

    from ..modeling import load_tokenizer

    _threads(spec)
    datasets.disable_progress_bars()
    baseline = current_rss_mb()
    wl = spec["workload"]
    k, b = spec["num_online_samples"], spec["batch_size"]
    steps = spec["warmup"] + spec["steps"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = RLOOConfig(**_trl_common(spec, steps), **_precision(spec, False),
                          per_device_train_batch_size=b * k, num_generations=k,
                          max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0,
                          top_k=0, beta=0.05, disable_dropout=True, log_completions=False,
                          model_init_kwargs={"dtype": spec.get("dtype", "float32")})
    records = [{"prompt": json.loads(line)["prompt"]}
               for line in Path(wl["data"]).read_text().splitlines() if line.strip()]
    timer = _step_timer(spec)
    trainer = RLOOTrainer(model=wl["model_dir"], reward_funcs=length_reward, args=args,
                          processing_class=load_tokenizer(wl["model_dir"]),
                          train_dataset=datasets.Dataset.from_list(records), callbacks=[timer],
                          peft_config=_trl_peft(wl))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    times = timer.marks.result()
    return {**times, "samples": [b * k] * len(times["step_times"]), "baseline_rss_mb": baseline}


# ---- machine peak -----------------------------------------------------------------------------

def run_matmul(spec: dict) -> dict:
    """Dense matmul peak on the bench's threads: the best median over square sizes."""
    import torch

    _threads(spec)
    cuda = bool(spec.get("cuda"))
    dtype = torch.bfloat16 if spec.get("dtype") == "bfloat16" else torch.float32
    device = "cuda" if cuda else "cpu"
    sizes = (1024, 2048, 4096, 8192) if cuda else (256, 512, 1024, 2048)
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        c = torch.randn(n, n, dtype=dtype, device=device)
        times = []
        for rep in range(7):
            _sync(spec)
            t0 = time.perf_counter()
            torch.mm(a, c)
            _sync(spec)
            if rep >= 2:
                times.append(time.perf_counter() - t0)
        times.sort()
        by_size[str(n)] = 2 * n ** 3 / times[len(times) // 2]
    return {"flops_per_s_by_size": by_size, "peak_flops_per_s": max(by_size.values()),
            "bandwidth_bytes_per_s": copy_bandwidth(spec, device),
            "dtype": str(dtype).replace("torch.", ""), "baseline_rss_mb": current_rss_mb()}


def copy_bandwidth(spec: dict, device: str, mbytes: int = 256) -> float:
    """Memory bandwidth: bytes read + written per second by a large tensor copy (median of 5),
    far larger than any cache: the rate at which a decode step can stream its weights."""
    import torch

    src = torch.ones(mbytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for rep in range(7):
        _sync(spec)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(spec)
        if rep >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / sorted(times)[len(times) // 2]


def run(mode: str, spec: dict) -> dict:
    if mode.startswith("hypo-"):
        result = run_hypo(spec, mode.split("-")[1], shared=not mode.endswith("-unshared"))
    elif mode == "trl-dpo":
        result = run_trl_dpo(spec)
    elif mode == "trl-dpo-precompute":
        result = run_trl_dpo(spec, precompute=True)
    elif mode == "trl-dpo-defaults":
        result = run_trl_dpo(spec, defaults=True)
    elif mode == "trl-dpo-padfree":
        result = run_trl_dpo(spec, padding_free=True)
    elif mode == "trl-rloo":
        result = run_trl_rloo(spec)
    elif mode == "matmul":
        result = run_matmul(spec)
    else:
        raise ValueError(f"unknown bench mode {mode!r}; choose from {', '.join(MODES)}")
    result["peak_rss_mb"] = peak_rss_mb()
    import torch

    result["torch_threads_at_end"] = torch.get_num_threads()
    if spec.get("cuda"):
        import torch

        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["mode"] = mode
    return result


def worker_main(mode: str, spec_path: str, result_path: str) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    spec = json.loads(Path(spec_path).read_text())
    result = run(mode, spec)
    Path(result_path).write_text(json.dumps(result))
    return 0
