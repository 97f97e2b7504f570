"""Memory per process of 2-process training: DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 (CPU, gloo).

Each mode runs the same short training (full fine-tuning, DPO and HyPO) on a locally built
Llama-style model, launched as a user launches hypo (torchrun for DDP, ``accelerate launch
--config_file examples/accelerate/<mode>.yaml`` for the others). Per process it reports:

- ``params``: parameter elements the process holds (its shard, or all of them);
- ``state_mb``: the training state it holds after the last step (its weights, the frozen
  reference copy when HyPO needs one, AdamW's moments), counted tensor by tensor (DeepSpeed's own
  flat buffers, its fp32 partitions and gradient partitions, are not seen: compare peak RSS);
- ``peak_rss_mb``: the peak resident memory over the training steps (``VmHWM`` after resetting
  it with ``/proc/self/clear_refs`` before the first step), sampling rounds included;
  ``start_rss_mb``: the resident memory at that point (libraries, the model, the reference cache);
- ``import_rss_mb``: the resident memory before the Trainer is built, i.e. the libraries (the
  ratios printed last also leave it out);
- ``setup_peak_rss_mb``: the peak while the Trainer was built (every process loads the whole
  model, and the reference copy, before they are sharded);
- on GPUs (``benchmarks/gpu.sh``), ``cuda_peak_mb``: the CUDA allocator's peak over the steps.

Large allocations are kept out of glibc's heap (``HYPO_MMAP_THRESHOLD``), so resident memory
follows the live tensors instead of the allocator's history (``hypo.heap``).

Run it alone (the figures of processes competing for memory or cores mean little):

    flock /tmp/hypo-cpu.lock python benchmarks/sharded_memory.py --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def state_bytes(trainer) -> int:
    """Bytes of the weights (local shards), the reference copy and the optimizer state held here."""
    import torch
    from torch.distributed.tensor import DTensor

    def local(t):
        if hasattr(t, "ds_tensor"):
            t = t.ds_tensor
        return t.to_local() if isinstance(t, DTensor) else t

    tensors = list(trainer.model.parameters())
    if trainer.pair.reference is not None:
        tensors += list(trainer.pair.reference.parameters())
    optimizer = trainer.optimizer
    while hasattr(optimizer, "optimizer"):  # accelerate's and DeepSpeed's wrappers
        optimizer = optimizer.optimizer
    tensors += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return sum(local(t).numel() * local(t).element_size() for t in tensors)


def worker(values: dict) -> None:
    """One training run inside the launch; prints one JSON line per process."""
    import torch

    torch.set_num_threads(1)
    from hypo import sharding
    from hypo.config import TrainConfig
    from hypo.trainer import Trainer

    import peft  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        import deepspeed  # noqa: F401
    import_rss = rss_kb("VmRSS") / 1024  # the libraries, before any model exists
    trainer = Trainer(TrainConfig(**values))
    figures = {"rank": trainer.acc.process_index, "params": sharding.local_numel(trainer.model),
               "import_rss_mb": import_rss}
    figures["setup_peak_rss_mb"] = rss_kb("VmHWM") / 1024  # loading, reference cache, sharding
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    figures["start_rss_mb"] = rss_kb("VmRSS") / 1024

    from transformers import TrainerCallback

    class AtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            figures["peak_rss_mb"] = rss_kb("VmHWM") / 1024  # the last step's call holds the peak so far
            figures["state_mb"] = state_bytes(trainer) / 2**20
            if gpu:  # on GPUs the tensors live there: the CUDA allocator's peak
                figures["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20

    trainer.callback_handler.add_callback(AtStep())
    trainer.train()
    print("FIGURES " + json.dumps(figures), flush=True)


def build(root: Path, hidden: int, layers: int) -> dict:
    from hypo.tiny import build_model, build_tokenizer, synthetic_preferences, write_jsonl

    records = synthetic_preferences(64, seed=0)
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] for r in records] + [r["rejected"] for r in records])
    model = build_model(tokenizer, hidden_size=hidden, num_layers=layers, num_heads=hidden // 64)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return {"model": root / "model", "data": write_jsonl(records, root / "prefs.jsonl")}


def launch(mode: str, values: dict) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYPO_MMAP_THRESHOLD": "131072", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if mode == "ddp":  # on CPU: torchrun (ddp.yaml is the GPU launch config)
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "examples" / "accelerate" / f"{mode}.yaml"), "--num_processes", "2",
                "--main_process_port", "29733"]
    proc = subprocess.run(head + [__file__, "--worker", json.dumps(values)], env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}: {proc.stderr[-3000:]}")
    rows = [json.loads(x[len("FIGURES "):]) for x in proc.stdout.splitlines() if x.startswith("FIGURES ")]
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--algos", nargs="+", default=["dpo", "hypo"], choices=["dpo", "hypo"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    results = {"hidden": args.hidden, "layers": args.layers, "steps": args.steps, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build(Path(tmp), args.hidden, args.layers)
        for algo in args.algos:
            for mode in args.modes:
                values = dict(model_name_or_path=str(tiny["model"]), dataset_name=str(tiny["data"]),
                              output_dir=f"{tmp}/{algo}-{mode}", ref_cache_dir=f"{tmp}/cache",
                              algo=algo, kl_coef=0.1, max_steps=args.steps, save_steps=0,
                              per_device_train_batch_size=4, max_length=64, max_prompt_length=32,
                              max_new_tokens=16, report_to="none", disable_progress_bar=True,
                              eval_online_prompts=0)
                rows = launch(mode, values)
                results["runs"][f"{algo}/{mode}"] = rows
                print(f"{algo:5s} {mode:16s} " + "  ".join(
                    f"rank {r['rank']}: params {r['params'][0] / 1e6:.1f}M/{r['params'][1] / 1e6:.1f}M "
                    f"state {r['state_mb']:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"(start {r['start_rss_mb']:.0f}, libraries {r['import_rss_mb']:.0f}, "
                    f"set-up peak {r['setup_peak_rss_mb']:.0f})"
                    + (f", CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else "") for r in rows),
                    flush=True)
    for algo in args.algos:
        base = results["runs"].get(f"{algo}/ddp")
        for mode in args.modes:
            rows = results["runs"][f"{algo}/{mode}"]
            if base and mode != "ddp":
                def ratio(key, less=None):
                    value = lambda r: r[key] - (r[less] if less else 0)  # noqa: E731
                    return max(map(value, rows)) / max(map(value, base))
                print(f"{algo} {mode} / ddp: state {ratio('state_mb'):.2f}, peak RSS "
                      f"{ratio('peak_rss_mb'):.2f}, peak RSS above the libraries' "
                      f"{ratio('peak_rss_mb', 'import_rss_mb'):.2f}"
                      + (f", CUDA peak {ratio('cuda_peak_mb'):.2f}" if "cuda_peak_mb" in rows[0] else ""))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
