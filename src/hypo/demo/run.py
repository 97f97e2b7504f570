"""`hypo demo`: DPO vs HyPO under partial, global and truly global coverage on a task with a
gold reward (``--sweep``: five coverage levels, five seeds, HyPO with two KL estimators).

Every run goes through hypo's own Trainer from the same π_ref with the same β, learning rate,
batch and steps; HyPO adds only its own knobs (kl_coef λ, k samples per prompt, KL estimator).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import TrainConfig
from ..progress import console
from ..tiny import write_jsonl
from ..tracking import read_metrics
from .build import MODEL_SHAPE, SFT, build_tokenizer, reference_model
from .evaluate import GoldEvaluator
from .optimum import optimal_budget
from .task import COVERAGE_REGIMES, KIND_NAMES, OUT, SWEEP_REGIMES, Task

METRICS = {"gold_reward": "gold/reward", "win_rate": "gold/win_rate", "kl": "gold/kl",
           "ood_rate": "gold/ood_rate"}
# Each method is a set of TrainConfig fields on top of the shared ones (nothing else differs).
METHODS = {"dpo": {"algo": "dpo"}, "hypo": {"algo": "hypo", "kl_estimator": "seq"},
           "hypo_analytic": {"algo": "hypo", "kl_estimator": "analytic"}}
REGIMES = {**SWEEP_REGIMES, **COVERAGE_REGIMES}


def kind_names(kinds: tuple) -> list[str]:
    return [KIND_NAMES[k] if k is not OUT else "out-of-grammar" for k in kinds]


@dataclass
class DemoSettings:
    seeds: tuple[int, ...] = (0, 1, 2)
    task_seed: int = 0
    regimes: tuple[str, ...] = ("partial", "global", "truly_global")
    methods: tuple[str, ...] = ("dpo", "hypo")
    n_pairs: int = 1024
    n_eval_pairs: int = 256  # held-out pairs (their log-probs are logged at every evaluation)
    steps: int = 150
    batch_size: int = 16
    beta: float = 0.1
    learning_rate: float = 3e-4
    kl_coef: float = 0.1  # HyPO's λ (its start under a KL budget), β: the units of DPO's implicit reward
    # HyPO's KL budget κ (`kl_target`): "optimum" = KL(π*‖π_ref) of the KL-regularised optimum
    # π* ∝ π_ref·exp(r/β) that DPO aims at (computed exactly, optimum.py); a number; or None for
    # a fixed λ = kl_coef (how `--sweep` was run)
    kl_target: float | str | None = "optimum"
    num_online_samples: int = 2
    max_new_tokens: int = 8
    eval_every: int = 15
    eval_samples_per_prompt: int = 24
    extra: dict = field(default_factory=dict)


def train_one(settings: DemoSettings, task: Task, ref_dir: Path, data: Path, eval_data: Path,
              method: str, seed: int, out: Path, evaluator: GoldEvaluator, kl_target: float = 0.0) -> list[dict]:
    """One training run; returns the eval rows (step 0 included)."""
    from ..trainer import Trainer

    budget = {"kl_target": kl_target} if METHODS[method]["algo"] == "hypo" and kl_target else {}
    cfg = TrainConfig(**budget,
        model_name_or_path=str(ref_dir), dataset_name=str(data), eval_dataset_name=str(eval_data),
        overwrite_output_dir=True,  # the demo owns its folders
        output_dir=str(out), ref_cache_dir=str(out.parent.parent / "cache"), **METHODS[method],
        beta=settings.beta, learning_rate=settings.learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=settings.batch_size, max_steps=settings.steps,
        kl_coef=settings.kl_coef, num_online_samples=settings.num_online_samples,
        max_new_tokens=settings.max_new_tokens, max_length=32, max_prompt_length=16,
        eval_steps=settings.eval_every,
        eval_online_prompts=0, save_steps=0, report_to="none", seed=seed,
        disable_progress_bar=True, per_device_eval_batch_size=64)
    trainer = Trainer(cfg, eval_hook=evaluator)
    start = trainer.evaluate()
    trainer.train()
    return [{"step": 0, **start}] + [r for r in read_metrics(out) if any(k.startswith("eval_") for k in r)]


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "per_seed": values}


def run_demo(out_dir: str | Path, settings: DemoSettings, disable_progress_bar: bool = False) -> dict:
    """Build the task, train every (regime, method, seed), evaluate, write results.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    task = Task(seed=settings.task_seed)
    ref_dir = reference_model(out / "cache", task, disable_progress_bar)
    tokenizer = build_tokenizer()
    star = optimal_budget(ref_dir, task, tokenizer, settings.beta) if settings.kl_target == "optimum" else None
    kl_target = star["kl"] if star else float(settings.kl_target or 0.0)
    results = {"settings": {**asdict(settings), "model_shape": MODEL_SHAPE, "reference_sft": SFT,
                            "kl_budget": kl_target, "optimum": star,
                            "kind_names": KIND_NAMES,
                            "coverage_kinds": {r: kind_names(REGIMES[r]) for r in settings.regimes},
                            "methods": {m: METHODS[m] for m in settings.methods}},
               "regimes": {}, "curves": {}}
    total = len(settings.regimes) * len(settings.methods) * len(settings.seeds)
    done = 0
    for regime in settings.regimes:
        kinds = REGIMES[regime]
        data = write_jsonl(task.preference_pairs(settings.n_pairs, kinds, seed=1), out / "data" / f"{regime}.jsonl")
        eval_data = write_jsonl(task.preference_pairs(settings.n_eval_pairs, kinds, seed=2, prompts=task.eval_prompts),
                                out / "data" / f"{regime}-eval.jsonl")
        regime_result = {"covered_kinds": kind_names(kinds)}
        for method in settings.methods:
            finals = {name: [] for name in METRICS}
            for seed in settings.seeds:
                done += 1
                console.print(f"[bold]run {done}/{total}[/]: {regime} coverage, {method}, seed {seed}")
                evaluator = GoldEvaluator(task, tokenizer, task.eval_prompts,
                                          settings.eval_samples_per_prompt, settings.max_new_tokens)
                rows = train_one(settings, task, ref_dir, data, eval_data, method, seed,
                                 out / "runs" / f"{regime}-{method}-seed{seed}", evaluator, kl_target)
                regime_result.setdefault("coverage", evaluator.coverage(kinds))
                results["curves"].setdefault(regime, {}).setdefault(method, []).append(rows)
                for name, key in METRICS.items():
                    finals[name].append(rows[-1][f"eval_{key}"])
                last = rows[-1]
                console.print(f"    gold reward {last['eval_gold/reward']:+.3f}  win rate "
                              f"{last['eval_gold/win_rate']:.3f}  KL {last['eval_gold/kl']:.3f}  "
                              f"out-of-support {last['eval_gold/ood_rate']:.3f}")
            regime_result[method] = {name: summarize(v) for name, v in finals.items()}
        results["regimes"][regime] = regime_result
    results["settings"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "summary.json").write_text(json.dumps(summary(results), indent=1) + "\n")
    return results


def summary(results: dict) -> dict:
    """results without the training curves: small enough to keep next to the docs."""
    return {k: v for k, v in results.items() if k != "curves"}
