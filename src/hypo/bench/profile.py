"""``hypo bench --profile``: where a hypo DPO / HyPO step spends its time.

Runs ``hypo.trainer.Trainer`` in this process on the bench workload and (1) times the phases of
each step by wrapping the functions the loop calls — generation (``sampler.sample``), packing
(``pack_step``/``pack_samples``), the policy forward incl. log-probs (``sequence_logps``), the
reference forward over samples, backward (``accelerator.backward``), clip + optimizer step
(``_finish_step``) — and (2) collects a ``torch.profiler`` operator table over the measured steps,
grouped into matmul / attention / log-softmax / embedding / optimizer / other. Nothing in the
trainer is changed; the wrappers only read the clock.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

GROUPS = (  # (group, substrings of aten op names), first match wins
    ("matmul (linear fwd/bwd)", ("addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (sdpa)", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "attention")),
    ("log-softmax / logsumexp", ("logsumexp", "log_softmax", "_softmax", "gather")),
    ("embedding", ("embedding",)),
    ("optimizer (AdamW, clip)", ("_foreach", "adam", "addcdiv", "lerp", "norm", "clamp")),
)


def _group(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other ops (elementwise, copies, indexing, RoPE, norms)"


def profile_hypo(workload: dict, algo: str, settings, out: Path, steps: int = 4, warmup: int = 2) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .. import trainer as trainer_mod
    from ..config import TrainConfig
    from ..trainer import Trainer

    torch.set_num_threads(settings.threads)
    cfg = TrainConfig(
        model_name_or_path=workload["model_dir"], dataset_name=workload["data"], algo=algo,
        num_online_samples=settings.num_online_samples, max_new_tokens=settings.max_new_tokens,
        per_device_train_batch_size=settings.batch_size, max_length=workload["max_length"],
        max_prompt_length=workload["max_length"] - 1, learning_rate=settings.learning_rate,
        lr_scheduler_type="constant", max_steps=warmup + steps, output_dir=str(out / f"profile-{algo}"),
        overwrite_output_dir=True,  # the benchmark owns its folders
        ref_cache_dir=str(out / "profile-ref-cache"), save_steps=0, report_to="none",
        disable_progress_bar=True, eval_online_prompts=0, seed=settings.seed)
    trainer = Trainer(cfg)
    phases: dict[str, float] = collections.defaultdict(float)
    state = {"step": 0, "measure": False, "t0": None, "prof": None}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            if not state["measure"]:
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - t
        return wrapper

    # Names the loop calls today; a name the trainer no longer uses is skipped (its time then
    # shows up under "rest"), so the profiler survives refactors of the core.
    labels = {"response_logps": "forwards + log-probs (policy, and reference over samples)",
              "response_positions_of": "forwards + per-position features (token/analytic KL)",
              "bucketed_logps": "forwards + log-probs (policy, and reference over samples)",
              "sequence_logps": "policy forward + log-probs", "pack_step": "packing",
              "pack_samples": "packing"}
    originals = {name: getattr(trainer_mod, name) for name in labels if hasattr(trainer_mod, name)}
    for name, fn in originals.items():
        setattr(trainer_mod, name, timed(labels[name], fn))
    for obj, attr, label in ((trainer.sampler, "sample", "generation"),
                             (trainer.pair, "reference_logps", "reference forward (samples)"),
                             (trainer.acc, "backward", "backward")):
        if hasattr(obj, attr):
            setattr(obj, attr, timed(label, getattr(obj, attr)))
    finish = timed("clip + optimizer step", trainer._finish_step)
    step_times = []

    def finish_and_mark(*args, **kwargs):
        out_ = finish(*args, **kwargs)
        now = time.perf_counter()
        if state["measure"]:
            step_times.append(now - state["t0"])
        state["step"] += 1
        if state["step"] == warmup:
            state["measure"] = True
            state["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
            state["prof"].__enter__()
        state["t0"] = time.perf_counter()
        return out_

    trainer._finish_step = finish_and_mark
    try:
        trainer.train()
    finally:
        for name, fn in originals.items():
            setattr(trainer_mod, name, fn)
        if state["prof"] is not None:
            state["prof"].__exit__(None, None, None)
    total = sum(step_times)
    # reference forward runs sequence_logps inside it: subtract that nested share from the policy
    phases = dict(phases)
    result = {"algo": algo, "steps": len(step_times), "step_time_mean": total / max(len(step_times), 1),
              "phases_s_per_step": {k: v / max(len(step_times), 1) for k, v in phases.items()}}
    accounted = sum(v for k, v in phases.items())
    result["phases_s_per_step"]["rest (Python loop, metrics, logging)"] = max(0.0, total - accounted) / max(len(step_times), 1)
    ops = collections.defaultdict(float)
    top = []
    if state["prof"] is not None:
        events = state["prof"].key_averages()
        for ev in events:
            ops[_group(ev.key)] += ev.self_cpu_time_total / 1e6
        top = sorted(((ev.key, ev.self_cpu_time_total / 1e6, ev.count) for ev in events),
                     key=lambda x: -x[1])[:15]
    n = max(len(step_times), 1)
    result["op_groups_s_per_step"] = {k: v / n for k, v in sorted(ops.items(), key=lambda x: -x[1])}
    result["top_ops_s_per_step"] = [(k, v / n, c // n) for k, v, c in top]
    return result


def print_profile(results: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for r in results:
        t = Table(title=f"hypo {r['algo']}: {r['step_time_mean']:.3f} s/step over {r['steps']} steps "
                        "(profiler on: ~5-15% overhead)", title_justify="left")
        t.add_column("phase")
        t.add_column("s/step", justify="right")
        t.add_column("share", justify="right")
        for k, v in sorted(r["phases_s_per_step"].items(), key=lambda x: -x[1]):
            t.add_row(k, f"{v:.4f}", f"{100 * v / r['step_time_mean']:.0f}%")
        console.print(t)
        t = Table(title="operator self-CPU time by group (forward + backward + optimizer + generation)",
                  title_justify="left")
        t.add_column("group")
        t.add_column("s/step", justify="right")
        for k, v in r["op_groups_s_per_step"].items():
            t.add_row(k, f"{v:.4f}")
        console.print(t)
        t = Table(title="top operators (self CPU)", title_justify="left")
        for col in ("op", "s/step", "calls/step"):
            t.add_column(col, justify="left" if col == "op" else "right")
        for k, v, c in r["top_ops_s_per_step"]:
            t.add_row(k, f"{v:.4f}", str(c))
        console.print(t)
