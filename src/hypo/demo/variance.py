"""Gradient variance and step cost of the KL estimators at a fixed checkpoint of the demo model.

    python -m hypo.demo.variance --out hypo-variance --draws 200

Builds the demo's π_ref (cached), trains DPO from it for ``--steps`` steps on the partial-coverage
pairs (so π ≠ π_ref and the KL gradient is not 0), then, at those fixed weights, runs the HyPO
training micro-step (same pairs and online prompts every time, k = 2) ``--draws`` times per
estimator, estimators interleaved. The offline part of the gradient is the same on every draw, so
the spread of the gradient is that of λ·∇L_kl (λ = 1 here). Reported per estimator:

- trace of the covariance of the flattened gradient (unbiased, over draws), and its ratio to seq;
- the micro-step's wall time (sampling, reference and policy forwards, backward), and its ratio;
- variance × time relative to seq (the cost of a given gradient precision: lower is better);
- a bias check: ‖mean − mean_seq‖² over its expected value under unbiasedness (≈ 1 ± noise).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..losses import KL_ESTIMATORS


def dpo_checkpoint(out: Path, steps: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """(π_ref folder, DPO checkpoint folder, partial-coverage pairs file), built once."""
    from ..config import TrainConfig
    from ..tiny import write_jsonl
    from ..trainer import Trainer
    from .build import reference_model
    from .task import COVERAGE_REGIMES, Task

    task = Task(seed=0)
    ref_dir = reference_model(out / "cache", task, disable_progress_bar=True)
    data = out / "data" / "partial.jsonl"
    if not data.exists():
        write_jsonl(task.preference_pairs(1024, COVERAGE_REGIMES["partial"], seed=1), data)
    policy_dir = out / f"dpo-{steps}steps"
    if not (policy_dir / "config.json").exists():
        Trainer(TrainConfig(
            model_name_or_path=str(ref_dir), dataset_name=str(data), output_dir=str(policy_dir),
            ref_cache_dir=str(out / "cache"), algo="dpo", beta=0.1, learning_rate=3e-4,
            lr_scheduler_type="constant", per_device_train_batch_size=16, max_steps=steps,
            max_length=32, max_prompt_length=16, eval_strategy="no", save_steps=0, report_to="none",
            seed=seed, disable_progress_bar=True, overwrite_output_dir=True)).train()
    return ref_dir, policy_dir, data


def measure(out: Path, draws: int, steps: int, prompts: int, k: int,
            estimators: tuple[str, ...] = KL_ESTIMATORS) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ..config import TrainConfig
    from ..trainer import Trainer

    torch.set_num_threads(1)  # the timings compare estimators, not thread scheduling
    ref_dir, policy_dir, data = dpo_checkpoint(out, steps)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    reference = AutoModelForCausalLM.from_pretrained(ref_dir)
    cfg = TrainConfig(model_name_or_path=str(policy_dir), dataset_name=str(data),
                      output_dir=str(out / "measure"), ref_cache_dir=str(out / "cache"), kl_coef=1.0,
                      beta=0.1, per_device_train_batch_size=prompts, num_online_samples=k,
                      max_new_tokens=8, max_length=32, max_prompt_length=16, save_steps=0,
                      report_to="none", seed=0, disable_progress_bar=True, eval_online_prompts=0)
    trainer = Trainer(cfg, model=policy, ref_model=reference, check_output=False)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    indices = list(range(prompts))
    online = [trainer.data.train[i].prompt_ids for i in indices]

    def backward(part, last):
        part.backward()

    stats = {e: {"sum": 0.0, "sumsq": 0.0, "time": 0.0, "length": 0.0} for e in estimators}
    for draw in range(draws):
        order = estimators[draw % len(estimators):] + estimators[: draw % len(estimators)]
        for name in order:  # interleaved and rotated: load drifts hit every estimator alike
            trainer.cfg.kl_estimator = name
            started = time.perf_counter()
            _, step = trainer._micro_step(indices, online, trainer.ref_train, trainer.data.train, backward)
            stats[name]["time"] += time.perf_counter() - started
            stats[name]["length"] += step["online/length"]
            grad = torch.cat([p.grad.flatten() for p in params]).double()
            stats[name]["sum"] = stats[name]["sum"] + grad
            stats[name]["sumsq"] += float(grad.pow(2).sum())
            trainer.optimizer.zero_grad(set_to_none=True)
    rows = {}
    for name in estimators:
        s = stats[name]
        mean = s["sum"] / draws
        trace = (s["sumsq"] - draws * float(mean.pow(2).sum())) / (draws - 1)
        rows[name] = {"grad_variance": trace, "step_seconds": s["time"] / draws,
                      "online_length": s["length"] / draws, "mean": mean}
    base = rows.get("seq") or next(iter(rows.values()))
    for row in rows.values():
        row["variance_ratio"] = row["grad_variance"] / base["grad_variance"]
        row["time_ratio"] = row["step_seconds"] / base["step_seconds"]
        row["variance_x_time"] = row["variance_ratio"] * row["time_ratio"]
        noise = (row["grad_variance"] + base["grad_variance"]) / draws
        row["bias_check"] = (float((row["mean"] - base["mean"]).pow(2).sum()) / noise
                             if row is not base else 1.0)
    for row in rows.values():
        del row["mean"]
    return {"settings": {"draws": draws, "dpo_steps": steps, "prompts": prompts, "k": k,
                         "parameters": sum(p.numel() for p in params), "threads": 1},
            "estimators": rows}


def table(result: dict) -> str:
    s = result["settings"]
    lines = [f"{s['draws']} draws per estimator, {s['prompts']} prompts × k = {s['k']}, DPO checkpoint "
             f"after {s['dpo_steps']} steps, {s['parameters']} parameters, 1 CPU thread",
             "",
             "| estimator | tr Cov(∇) | variance vs seq | step time (ms) | time vs seq | variance × time vs seq | bias check |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["estimators"].items():
        lines.append(f"| `{name}` | {r['grad_variance']:.4g} | {r['variance_ratio']:.3f} | "
                     f"{1000 * r['step_seconds']:.1f} | {r['time_ratio']:.2f} | "
                     f"{r['variance_x_time']:.3f} | {r['bias_check']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hypo.demo.variance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="hypo-variance", help="output folder (default: hypo-variance)")
    parser.add_argument("--draws", type=int, default=200, help="independent draws per estimator")
    parser.add_argument("--steps", type=int, default=150, help="DPO steps of the fixed checkpoint")
    parser.add_argument("--prompts", type=int, default=16, help="online prompts per micro-step")
    parser.add_argument("--k", type=int, default=2, help="samples per prompt")
    args = parser.parse_args(argv)
    if args.draws < 2:
        parser.error("--draws must be ≥ 2 (a variance needs two draws).")
    out = Path(args.out)
    result = measure(out, args.draws, args.steps, args.prompts, args.k)
    (out / "variance.json").write_text(json.dumps(result, indent=1) + "\n")
    text = table(result)
    (out / "variance.md").write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
