"""`hypo realexp --frontier`: gold reward against reverse KL on SmolLM2-135M-Instruct under partial
coverage, DPO over β and HyPO over KL budgets κ, paired seeds (the real-model part of
`hypo demo --frontier`; docs/real-model.md).

Every point is one LoRA run of `hypo realexp` with its shared settings; only the knob differs.
HyPO's constrained form (arXiv 2406.01462: max the DPO objective s.t. KL(π‖π_ref) ≤ κ) runs with
λ₀ = β and λ ← max(0, λ + η·(KL̂ − κ)) after every step, η = 0.1·β/κ: the rule of
`hypo demo --frontier` with its reward unit u = β. Runs are written to ``frontier-runs.json`` as they
finish (atomically), and a rerun into the same folder skips the runs already there; seeds, β and κ
may change between calls, the shared settings may not (``load_finished``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from ..config import ConfigError
from ..demo.frontier_report import envelope, frontier_at
from ..demo.run import summarize
from ..progress import console
from ..runfolder import _atomic_write
from .run import METRICS, Experiment, RealExpSettings, eval_rows, print_last, train_one

REGIME = "partial"
KNOB = {"dpo": "β", "hypo": "κ"}
KL_RATE = 0.1  # η = KL_RATE·β/κ: the demo frontier's dual step with its reward unit u = β


def points(s: RealExpSettings) -> list[tuple[str, float, dict]]:
    """(method, knob value, TrainConfig overrides) for every frontier point."""
    dpo = [("dpo", b, {"beta": b}) for b in s.dpo_betas]
    hypo = [("hypo", k, {"kl_target": k, "kl_target_rate": KL_RATE * s.beta / k, "kl_coef": s.beta})
            for k in s.kl_budgets]
    return dpo + hypo


def _key(method: str, value: float, seed: int) -> str:
    return f"{method} {KNOB[method]}={value:g} seed {seed}"


GRID = ("seeds", "dpo_betas", "kl_budgets")  # a run's key names these: they may change between calls


def load_finished(runs_path: Path, settings: dict) -> dict:
    """The runs already in ``runs_path`` (none if it does not exist). Refuses a file written with
    other shared settings: its runs are not comparable, and overwriting it would lose them."""
    if not runs_path.exists():
        return {}
    try:
        saved = json.loads(runs_path.read_text())
        old, runs = saved["settings"], saved["runs"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{runs_path} is not a frontier-runs file of `hypo realexp --frontier` ({err}); "
                          "move it away or pick another --out.") from err
    differ = sorted(k for k in set(old) | set(settings) if k not in GRID and old.get(k) != settings.get(k))
    if differ:
        diffs = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in differ)
        raise ConfigError(f"{runs_path} holds {len(runs)} runs made with other settings ({diffs}); "
                          "rerun with those settings to resume, or pick another --out.")
    console.print(f"resuming: {len(runs)} runs already in {runs_path}")
    return runs


def run_frontier(out_dir: str | Path, s: RealExpSettings) -> dict:
    """Train every (point, seed) on the partial-coverage pairs; returns and writes frontier.json."""
    exp = Experiment(out_dir, s)
    out = exp.out
    data, eval_data, evaluator, header, start_row = exp.regime(REGIME)
    runs_path = out / "frontier-runs.json"
    settings = json.loads(json.dumps(asdict(s)))  # as saved: tuples become lists
    done = load_finished(runs_path, settings)
    todo = [(m, v, o, seed) for seed in s.seeds for m, v, o in points(s)]
    for i, (method, value, overrides, seed) in enumerate(todo, 1):
        key = _key(method, value, seed)
        if key in done:
            continue
        console.print(f"[bold]run {i}/{len(todo)}[/]: {key}")
        started = time.perf_counter()
        name = f"{method}-{KNOB[method]}{value:g}-seed{seed}".replace("β", "beta").replace("κ", "kappa")
        rows = train_one(s, data, eval_data, method, seed, out / "runs" / name, evaluator, **overrides)
        done[key] = {"method": method, "value": value, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
                     "evals": [start_row] + eval_rows(rows),
                     "lambda": [r["kl/coef"] for r in rows if "kl/coef" in r],  # HyPO's training rows
                     "kl_online": [r["kl/online"] for r in rows if "kl/coef" in r]}
        print_last(done[key]["evals"][-1])
        _atomic_write(runs_path, (json.dumps({"settings": settings, "runs": done}, indent=1) + "\n").encode())
    results = summarize_frontier(s, header, start_row, done)
    results["settings"]["wall_seconds"] = exp.elapsed()  # this invocation (a resumed one skips runs)
    results["settings"]["runs_seconds"] = round(sum(r["seconds"] for r in done.values()), 1)
    (out / "frontier.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def summarize_frontier(s: RealExpSettings, header: dict, start_row: dict, runs: dict) -> dict:
    """Per method and knob value: median, min, max and per-seed values (seed order of s.seeds) of the
    final evaluation, its change over the last evaluation interval (is it still moving?), the run's
    seconds; HyPO also its final λ and mean online KL over its last 5 steps. Plus the verdict."""
    points_out: dict = {}
    for method, value, _ in points(s):
        rs = [runs[_key(method, value, seed)] for seed in s.seeds]
        last = [r["evals"][-1] for r in rs]
        before = [r["evals"][-2] for r in rs]
        p = {name: summarize([row[f"eval_{key}"] for row in last]) for name, key in METRICS.items()}
        for name in ("kl", "gold_reward"):
            key = f"eval_{METRICS[name]}"
            p[f"{name}_last_change"] = summarize([a[key] - b[key] for a, b in zip(last, before)])
        p["seconds"] = summarize([r["seconds"] for r in rs])
        if method == "hypo":
            p["final_lambda"] = summarize([r["lambda"][-1] for r in rs])
            p["kl_online_last5"] = summarize([statistics.fmean(r["kl_online"][-5:]) for r in rs])
        points_out.setdefault(method, {})[f"{value:g}"] = p
    return {"settings": asdict(s), "regime": REGIME, **header,
            "reference": {"gold_reward": start_row["eval_gold/reward"], "win_rate": 0.5, "kl": 0.0,
                          "ood_rate": start_row["eval_gold/ood_rate"]},
            "points": points_out, "verdict": verdict(s, start_row, runs)}


def verdict(s: RealExpSettings, start_row: dict, runs: dict) -> dict:
    """Fixed before the first run (docs/real-model.md): at every β and every seed, HyPO's frontier
    at that seed (upper concave envelope of its κ points and π_ref's (0, gold)) is above DPO's gold
    reward at the KL DPO reached: D(β, seed) > 0 for all."""
    gaps: dict = {}
    trivial = []  # seeds where no HyPO point beats π_ref: the frontier is π_ref's gold, flat
    for seed in s.seeds:
        ref = (0.0, start_row["eval_gold/reward"])
        hypo = [ref] + [(r["evals"][-1]["eval_gold/kl"], r["evals"][-1]["eval_gold/reward"])
                        for r in (runs[_key("hypo", k, seed)] for k in s.kl_budgets)]
        hull = envelope(hypo)
        if hull == [ref]:
            trivial.append(seed)
        for b in s.dpo_betas:
            d = runs[_key("dpo", b, seed)]["evals"][-1]
            gaps.setdefault(f"β={b:g}", {})[str(seed)] = {
                "kl_dpo": d["eval_gold/kl"],
                "gap": frontier_at(hull, d["eval_gold/kl"]) - d["eval_gold/reward"]}
    holds = all(g["gap"] > 0 for per_seed in gaps.values() for g in per_seed.values())
    return {"claim": "partial coverage: HyPO's frontier is above DPO's at every KL DPO reaches",
            "rule": "for every β and every seed, HyPO's frontier at DPO's KL − DPO's gold reward > 0",
            "holds": holds, "per_setting": gaps, "pi_ref_is_the_frontier_at_seeds": trivial}
