"""``hypo lab``: exact small-scale experiments of arXiv 2406.01462's coverage theory.

Run:  ``hypo lab --out hypo-lab``  (the pages in docs/lab/ come from ``hypo lab --out docs/lab``)
  no subcommand      run all five, write lab.json and every figure
  separation         global vs partial coverage: counterexample, optima, trajectories
  extrapolation      linear function approximation: the unseen best response gains mass
  ood-mass           tabular DPO: when out-of-data mass grows, and what HyPO's KL does
  sweep              coverage strength: δ = π_ref(u) → 0 and the data's weight on u
  finite             finite samples: J(π*) − J(π̂) against N, partial vs global coverage
  --quick            small grids and few steps (the test suite's setting, < 30 s)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hypo.lab import plots
from hypo.lab.experiments import extrapolation, finite, ood_mass, separation, sweep

NAMES = ("separation", "sweep", "finite", "extrapolation", "ood-mass")

# --quick: what each experiment shrinks to (config field -> value); --steps still overrides steps.
QUICK = {
    "separation": {"steps": 1500, "lambda_sweep": [0.1, 0.01, 1e-3], "c_grid": [0.0, 10.0, 20.0, 30.0]},
    "sweep": {"steps": 400, "deltas": [1e-2, 1e-6, 1e-12], "weights": [0.0, 0.4]},
    "finite": {"steps": 200, "ns": [30, 1000], "seeds": 3},
    "extrapolation": {"steps": 500},
    "ood-mass": {"steps": 400, "spreads": [1.0], "seeds": 2, "random_steps": 300, "betas": [0.5]},
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="hypo-lab", help="output directory for JSON and PNG files (default: hypo-lab)")
    common.add_argument("--seed", type=int, default=0,
                        help="seed of the sampled KL estimator and of the extrapolation features (default: 0)")
    common.add_argument("--steps", type=int, default=None,
                        help="optimiser steps per training run (default: per experiment, 1500-3000)")
    common.add_argument("--lam", type=float, default=None,
                        help="HyPO's λ (default: 0.01 in separation, 0.1 in ood-mass)")
    common.add_argument("--beta", type=float, default=None,
                        help="KL coefficient β / DPO β (default: 0.5; 0.1 in extrapolation)")
    common.add_argument("--delta", type=float, default=1e-6,
                        help="separation: π_ref mass of the uncovered bad response (KL bound = log 1/delta)")
    common.add_argument("--k", type=int, default=4, help="separation: samples per prompt of the RLOO KL estimator (>= 2)")
    common.add_argument("--n-responses", type=int, default=20, help="extrapolation: number of responses")
    common.add_argument("--dim", type=int, default=3, help="extrapolation: feature dimension")
    common.add_argument("--quick", action="store_true",
                        help="small grids, few steps: a smoke run (< 30 s), not the documented numbers")
    p = argparse.ArgumentParser(prog="hypo lab", parents=[common], description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("separation", parents=[common], help="global vs partial coverage (DPO, RLHF, HyPO)")
    sub.add_parser("extrapolation", parents=[common], help="linear features: unseen best response gains mass")
    sub.add_parser("ood-mass", parents=[common], help="tabular DPO out-of-data mass and HyPO's KL term")
    sub.add_parser("sweep", parents=[common], help="coverage strength sweep: δ → 0, data weight on u")
    sub.add_parser("finite", parents=[common], help="finite samples: suboptimality against N")
    return p


def _kw(args, **names) -> dict:
    """Keep only the CLI overrides that were given, renamed to config fields."""
    return {field: getattr(args, attr) for field, attr in names.items() if getattr(args, attr) is not None}


def run_one(name: str, args) -> dict:
    quick = dict(QUICK[name]) if args.quick else {}
    quick.update(_kw(args, steps="steps"))
    if name == "separation":
        cfg = separation.SeparationConfig(seed=args.seed, delta=args.delta, k=args.k,
                                          **{**quick, **_kw(args, lam="lam", beta="beta")})
        return separation.run(cfg)
    if name == "sweep":
        return sweep.run(sweep.SweepConfig(**{**quick, **_kw(args, lam="lam", beta="beta")}))
    if name == "finite":
        return finite.run(finite.FiniteConfig(delta=args.delta, **{**quick, **_kw(args, lam="lam", beta="beta")}))
    if name == "extrapolation":
        cfg = extrapolation.ExtrapolationConfig(seed=args.seed, n_responses=args.n_responses, dim=args.dim,
                                                **{**quick, **_kw(args, beta="beta")})
        return extrapolation.run(cfg)
    return ood_mass.run(ood_mass.OodConfig(**{**quick, **_kw(args, lam="lam", beta="beta")}))


def summary(name: str, res: dict) -> list[str]:
    """A few readable lines per experiment (the JSON holds everything)."""
    if name == "separation":
        g, c, t = res["global"], res["counterexample"], res["trajectories"]
        tv = {k: v["tv_to_star"][-1] for k, v in g["runs"].items()}
        far = c["family"][-1]
        lines = [f"global coverage ({g['optimizer']}, tabular): final TV to π* "
                 + ", ".join(f"{k} {v:.2e}" for k, v in tv.items()),
                 f"counterexample c={far['c']:g}: DPO loss − DPO(π*) = {far['dpo_loss_minus_star']:.1e}, "
                 f"KL {far['kl']:.2f} (bound {c['kl_bound']:.2f}, π* {c['kl_star']:.2f}), gold E[r] {far['gold_reward']:.2f}"]
        for key in ("dpo/gd", "hypo/gd", "hypo-decay/gd", "dpo/adam", "hypo/adam", "rlhf/gd", "rlhf-bounded/gd"):
            r = t["runs"][key]
            lines.append(f"trajectory {key:10s} ({r['optimizer']}): final KL {r['kl'][-1]:.2f}, "
                         f"π(u) {r['ood_mass'][-1]:.2g}, gold E[r] {r['gold_reward'][-1]:.2f}, J gap {r['j_gap'][-1]:.1e}")
        o = res["offpolicy"]
        lines.append("off-policy tabular (GD): " + ", ".join(
            f"{k} π(u) {v['ood_mass'][-1]:.3f} J gap {v['j_gap'][-1]:.2f}" for k, v in o["runs"].items()))
        return lines
    if name == "sweep":
        part = [c for c in res["cells"] if c["w_u"] == 0]
        lines = [f"w_u=0, δ={c['delta']:.0e}: KL worst DPO minimiser {c['runs']['dpo_worst']['kl']:.2f}, DPO-GD "
                 f"{c['runs']['dpo_gd']['kl']:.2f}, RLHF-bounded {c['runs']['rlhf_bounded']['kl']:.2f}, HyPO "
                 f"{c['runs']['hypo']['kl']:.2f} (C_glo {float(c['coverage']['global_ref']):.0e})" for c in part]
        return lines
    if name == "finite":
        lines = []
        for kind, curves in res["curves"].items():
            lines.append(f"{kind}: J gap at N={curves['dpo']['n'][0]}→{curves['dpo']['n'][-1]}: "
                         + ", ".join(f"{m} {c['j_gap_mean'][0]:.1e}→{c['j_gap_mean'][-1]:.1e}" for m, c in curves.items()))
        return lines
    if name == "extrapolation":
        lines = [f"best response (r={res['best_reward']:.2f}) absent; best reward in data {res['max_reward_in_data']:.2f}"]
        for key, r in res["runs"].items():
            lines.append(f"{key:17s}: π(best) {r['p_best'][0]:.3f} → {r['p_best'][-1]:.3f}, "
                         f"avg π(preferred in data) {r['p_chosen'][0]:.3f} → {r['p_chosen'][-1]:.4f}")
        return lines
    s = res["shown"]
    lines = [f"{s['ref']}/{s['pattern']}/spread {s['spread']:g}: out-of-data mass ÷ π_ref's, max/final: "
             + ", ".join(f"{k} {v['max_ratio']:.3f}/{v['final_ratio']:.3f}" for k, v in s["runs"].items())]
    grow = [g for g in res["grid"] if g["runs"]["dpo/gd"]["final_ratio"] > 1 + 1e-6]
    lines.append(f"tabular DPO+GD grows out-of-data mass in {len(grow)}/{len(res['grid'])} conditions "
                 f"({res['distinct_cells']} distinct, {res['distinct_gd_limits']} distinct GD limits); "
                 f"with Adam in {sum(g['runs']['dpo/adam']['max_ratio'] > 1 + 1e-6 for g in res['grid'])}")
    for c in res["random"]["cells"]:
        lines.append(f"random 30×40 skew {c['skew']:+g} β {c['beta']:g} {c['labels']:10s}: DPO grew {c['dpo_grew']}/{c['n']}, "
                     f"HyPO grew {c['hypo_grew']}/{c['n']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.k < 2:
        raise SystemExit("hypo lab: --k must be >= 2 (the leave-one-out KL estimator needs two samples)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = NAMES if args.command is None else (args.command,)
    results, figures = {}, []
    for name in names:
        t0 = time.perf_counter()
        res = run_one(name, args)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        results[name] = res
        figures += getattr(plots, name.replace("-", "_"))(res, out)
        print(f"[{name}] ({res['seconds']:.1f} s)")
        for line in summary(name, res):
            print("  " + line)
    target = out / ("lab.json" if args.command is None else f"{args.command}.json")
    target.write_text(json.dumps(results if args.command is None else results[args.command], indent=1))
    print(f"wrote {target} and " + ", ".join(str(f) for f in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
