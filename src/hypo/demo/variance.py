"""Gradient variance and step cost of the KL estimators at a fixed checkpoint of the demo model.

    python -m hypo.demo.variance --out hypo-variance --draws 200 --k 2 4 8

Builds the demo's π_ref (cached), trains DPO from it for ``--steps`` steps on the partial-coverage
pairs (so π ≠ π_ref and the KL gradient is not 0), then, at those fixed weights, runs the HyPO
training micro-step (same pairs and online prompts every time) ``--draws`` times per estimator and
k (``--k``, default 2 4 8), estimators interleaved. Arms: the trainer's estimators (seq, token,
analytic) and ``reinforce``, the seq surrogate without its leave-one-out baseline. The offline
part of the gradient is the same on every draw, so the spread of the gradient is that of
λ·∇L_kl (λ = 1 here). Reported per (k, estimator):

- trace of the covariance of the flattened gradient (unbiased, over draws), and its ratio to seq
  at the same k;
- the micro-step's wall time (sampling, reference and policy forwards, backward), and its ratio;
- variance × time relative to seq at the same k, and relative to the default (seq, k = 2): the
  cost of a given gradient precision, lower is better;
- a bias check: ‖mean − mean_seq‖² over its expected value under unbiasedness (≈ 1 ± noise);
- the same variance ratio within each of ``--groups`` consecutive groups of draws (median and
  range): the log-ratios are heavy-tailed away from π_ref (a rare sample far outside π_ref's
  support dominates a variance), so one pooled figure can rest on a few draws; the groups show
  whether an ordering is stable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path



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


def covariance_traces(sums, sumsq, sizes):
    """Unbiased trace of the covariance within each group, from its running sums: sums (G, P)
    of the vectors, sumsq (G,) of their squared norms, sizes (G,) draws per group."""
    return (sumsq - (sums ** 2).sum(1) / sizes) / (sizes - 1)


ARMS = ("seq", "reinforce", "token", "analytic")  # the trainer's estimators, and seq without its baseline


def measure(out: Path, draws: int, steps: int, prompts: int, ks: tuple[int, ...],
            estimators: tuple[str, ...] = ARMS, groups: int = 10) -> dict:
    """Gradient variance and step time of every (k, estimator) at one DPO checkpoint."""
    import contextlib
    from unittest import mock

    import torch
    from transformers import AutoModelForCausalLM

    from .. import trainer as trainer_module
    from ..config import TrainConfig
    from ..losses import reinforce_kl_loss
    from ..trainer import Trainer

    torch.set_num_threads(1)  # the timings compare estimators, not thread scheduling
    ref_dir, policy_dir, data = dpo_checkpoint(out, steps)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    reference = AutoModelForCausalLM.from_pretrained(ref_dir)
    rows = {}
    for k in ks:
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

        n_params = sum(p.numel() for p in params)
        stats = {e: {"sum": torch.zeros(groups, n_params, dtype=torch.float64), "sumsq": torch.zeros(groups, dtype=torch.float64),
                     "time": 0.0, "length": 0.0, "kl": 0.0} for e in estimators}
        group = [d * groups // draws for d in range(draws)]  # consecutive groups of draws
        for draw in range(draws):
            order = estimators[draw % len(estimators):] + estimators[: draw % len(estimators)]
            for name in order:  # interleaved and rotated: load drifts hit every estimator alike
                trainer.cfg.kl_estimator = "seq" if name == "reinforce" else name
                # the no-baseline arm: the trainer's own micro-step with the seq surrogate swapped
                swap = (mock.patch.object(trainer_module, "reverse_kl_loss", reinforce_kl_loss)
                        if name == "reinforce" else contextlib.nullcontext())
                started = time.perf_counter()
                with swap:
                    _, step = trainer._micro_step(indices, online, trainer.ref_train, trainer.data.train, backward)
                stats[name]["time"] += time.perf_counter() - started
                stats[name]["length"] += step["online/length"]
                stats[name]["kl"] += step["kl/online"]
                grad = torch.cat([p.grad.flatten() for p in params]).double()
                stats[name]["sum"][group[draw]] += grad
                stats[name]["sumsq"][group[draw]] += grad.pow(2).sum()
                trainer.optimizer.zero_grad(set_to_none=True)
        sizes = torch.bincount(torch.tensor(group), minlength=groups).double()
        for name in estimators:
            s = stats[name]
            mean = s["sum"].sum(0) / draws
            trace = (float(s["sumsq"].sum()) - draws * float(mean.pow(2).sum())) / (draws - 1)
            per_group = covariance_traces(s["sum"], s["sumsq"], sizes)
            rows[(k, name)] = {"k": k, "estimator": name, "grad_variance": trace, "step_seconds": s["time"] / draws,
                               "online_length": s["length"] / draws, "online_kl": s["kl"] / draws, "mean": mean,
                               "group_variances": per_group.tolist()}
    default = rows.get((2, "seq")) or next(iter(rows.values()))
    for (k, name), row in rows.items():
        base = rows.get((k, "seq")) or row
        row["variance_ratio"] = row["grad_variance"] / base["grad_variance"]
        row["time_ratio"] = row["step_seconds"] / base["step_seconds"]
        row["variance_x_time"] = row["variance_ratio"] * row["time_ratio"]
        # against the default (seq, k = 2): the cost of a given gradient precision, lower is better
        row["variance_x_time_vs_default"] = (row["grad_variance"] * row["step_seconds"]
                                             / (default["grad_variance"] * default["step_seconds"]))
        noise = (row["grad_variance"] + base["grad_variance"]) / draws
        row["bias_check"] = (float((row["mean"] - base["mean"]).pow(2).sum()) / noise if row is not base else 1.0)
        # paired within each group (the arms of one k share every draw's prompts and timing)
        ratios = sorted(a / b for a, b in zip(row["group_variances"], base["group_variances"]))
        row["variance_ratio_groups"] = {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}
    for row in rows.values():
        del row["mean"]
    return {"settings": {"draws": draws, "groups": groups, "dpo_steps": steps, "prompts": prompts, "k": list(ks),
                         "parameters": sum(p.numel() for p in params), "threads": 1},
            "estimators": [rows[key] for key in sorted(rows)]}


def table(result: dict) -> str:
    s = result["settings"]
    kl = sum(r["online_kl"] for r in result["estimators"]) / len(result["estimators"])
    lines = [f"{s['draws']} draws per row, {s['prompts']} prompts × k samples, DPO checkpoint after "
             f"{s['dpo_steps']} steps (online KL ≈ {kl:.2f} nats), {s['parameters']} parameters, 1 CPU thread",
             "",
             f"| k | estimator | tr Cov(∇) | variance vs seq (same k) | the same, per group of {s['draws'] // s['groups']} draws: median [min, max] | step time (ms) | variance × time vs seq (same k) | variance × time vs seq, k = 2 | bias check |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["estimators"]:
        g = r["variance_ratio_groups"]
        lines.append(f"| {r['k']} | `{r['estimator']}` | {r['grad_variance']:.4g} | {r['variance_ratio']:.3f} | "
                     f"{g['median']:.3f} [{g['min']:.3f}, {g['max']:.3f}] | {1000 * r['step_seconds']:.1f} | {r['variance_x_time']:.3f} | "
                     f"{r['variance_x_time_vs_default']:.3f} | {r['bias_check']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hypo.demo.variance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="hypo-variance", help="output folder (default: hypo-variance)")
    parser.add_argument("--draws", type=int, default=200, help="independent draws per row")
    parser.add_argument("--steps", type=int, default=150, help="DPO steps of the fixed checkpoint")
    parser.add_argument("--prompts", type=int, default=16, help="online prompts per micro-step")
    parser.add_argument("--groups", type=int, default=10, help="groups of consecutive draws for the "
                        "per-group variance ratios (default: 10)")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 8], help="samples per prompt (default: 2 4 8)")
    parser.add_argument("--estimators", nargs="+", default=list(ARMS), choices=ARMS,
                        help="arms (default: all; 'reinforce' is seq without its leave-one-out baseline)")
    args = parser.parse_args(argv)
    if args.draws < 2:
        parser.error("--draws must be ≥ 2 (a variance needs two draws).")
    if not 1 <= args.groups <= args.draws // 2:
        parser.error("--groups must be between 1 and --draws / 2 (each group needs two draws).")
    if min(args.k) < 2:
        parser.error("--k values must be ≥ 2 (the leave-one-out baseline needs two samples).")
    out = Path(args.out)
    result = measure(out, args.draws, args.steps, args.prompts, tuple(args.k), tuple(args.estimators), args.groups)
    (out / "variance.json").write_text(json.dumps(result, indent=1) + "\n")
    text = table(result)
    (out / "variance.md").write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
