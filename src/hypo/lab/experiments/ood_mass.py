"""Out-of-data mass under DPO without function approximation (tabular softmax), and HyPO's effect.

Paper (arXiv 2406.01462, §4 discussion / appendix) reports that during DPO training the average
probability of responses absent from the data grows. With tabular logits the DPO gradient on a pair
is β·w·(σ(h) − p)·(e_a − e_b) in logit space: the uncovered logits never move, and the sum of the
covered logits (per connected component of the pair graph) is conserved by plain GD. So under GD
the out-of-data mass π(U) = π_ref(U)/(π_ref(U) + Σ_{y∈C} π_ref(y)·e^{θ_y}) grows exactly when
Σ_C π_ref(y)·e^{θ_y} falls below π_ref(C), and its limit is the minimum-norm DPO solution
θ_y = (r_y − r̄)/β (r̄ = unweighted mean over the component), computed in :func:`gd_dpo_limit`.
Adam's per-coordinate scaling breaks the conservation. HyPO's KL term moves the uncovered logits:
at its stationary point every uncovered y has log(π(y)/π_ref(y)) = KL(π‖π_ref).

The experiment runs a grid of conditions (π_ref shape × pair pattern × reward spread × optimiser)
and reports, for DPO and HyPO, the largest and final out-of-data mass relative to π_ref's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hypo.lab.algorithms import Spec, train
from hypo.lab.experiments.common import jsonable
from hypo.lab.optim import Optimizer
from hypo.lab.policies import Tabular
from hypo.lab.setting import Bandit, PairData, log_softmax, mass, reverse_kl
from hypo.lab.settings_lib import OOD_PATTERNS, OOD_REFS, ood_random_setting, ood_setting


@dataclass
class OodConfig:
    beta: float = 0.5
    lam: float = 0.1                  # HyPO λ
    steps: int = 1500
    gd_lr: float = 2.0
    adam_lr: float = 0.05
    ood_ref_mass: float = 0.3         # π_ref mass of the 4 uncovered responses
    spreads: list[float] = field(default_factory=lambda: [1.0, 3.0])   # covered reward range
    # the condition whose trajectories are plotted
    show: tuple[str, str, float] = ("favours-rejected", "best-vs-rest", 1.0)
    # the grid closer to the paper's setup: 30 responses, 40 pairs drawn from π_ref
    skews: list[float] = field(default_factory=lambda: [-3.0, 0.0, 3.0])  # π_ref ∝ e^{skew·r}
    betas: list[float] = field(default_factory=lambda: [0.1, 0.5, 2.0])
    seeds: int = 4
    random_steps: int = 1000


def gd_dpo_limit(bandit: Bandit, data: PairData) -> np.ndarray:
    """log π of the point tabular DPO with plain GD from π_ref converges to (population BT data).

    GD moves θ only within the span of the pairs' difference vectors e_a − e_b, so the limit is the
    minimum-norm θ with β(θ_a − θ_b) = r_a − r_b on every pair (least squares, minimum norm).
    """
    X, Y = bandit.shape
    D = np.zeros((len(data.x), X * Y))
    D[np.arange(len(data.x)), data.x * Y + data.a] = bandit.beta
    D[np.arange(len(data.x)), data.x * Y + data.b] = -bandit.beta
    target = bandit.reward[data.x, data.a] - bandit.reward[data.x, data.b]
    theta = np.linalg.lstsq(D, target, rcond=None)[0].reshape(X, Y)
    return log_softmax(bandit.ref_logp + theta)


def run_condition(ref: str, pattern: str, spread: float, cfg: OodConfig, record_every: int = 10) -> dict:
    bandit, data = ood_setting(ref, pattern, spread, cfg.beta, cfg.ood_ref_mass)
    unc = ~data.covered(bandit.shape)
    policy = Tabular(bandit.ref_logp)
    ref_mass = mass(bandit.ref_logp, unc, bandit.rho)
    metrics = lambda lp: {"ood_ratio": mass(lp, unc, bandit.rho) / ref_mass,
                          "kl": reverse_kl(lp, bandit.ref_logp, bandit.rho)}
    out = {"ref": ref, "pattern": pattern, "spread": spread, "ood_ref_mass": ref_mass, "runs": {}}
    for opt in (Optimizer("gd", cfg.gd_lr), Optimizer("adam", cfg.adam_lr)):
        for spec in (Spec("dpo"), Spec("hypo", lam=cfg.lam)):
            th, hist = train(spec, policy, bandit, data, opt, cfg.steps, metrics, record_every)
            lp = policy.logp(th)
            r = np.array(hist.metrics["ood_ratio"])
            out["runs"][f"{spec.method}/{opt.kind}"] = {
                "optimizer": opt.label(), "max_ratio": r.max(), "final_ratio": r[-1],
                # HyPO stationarity: uncovered log-ratio − KL (→ 0); reported for every run.
                "uncovered_logratio_minus_kl": float(((lp - bandit.ref_logp)[unc]).mean()
                                                     - reverse_kl(lp, bandit.ref_logp, bandit.rho)),
                "steps": hist.steps, "ood_ratio": hist.metrics["ood_ratio"], "kl": hist.metrics["kl"],
            }
    out["pi_star_ratio"] = mass(bandit.pi_star_logp(), unc, bandit.rho) / ref_mass
    out["gd_dpo_limit_ratio"] = mass(gd_dpo_limit(bandit, data), unc, bandit.rho) / ref_mass
    cov = ~unc[0]
    # The GD growth condition, evaluated at the limit: Σ_C π_ref·e^θ  vs  π_ref(C).
    out["gd_condition"] = {"sum_ref_exp_theta": float((np.exp(bandit.ref_logp[0][cov])
                                                        * np.exp((bandit.reward[0][cov] - bandit.reward[0][cov].mean())
                                                                 / bandit.beta)).sum()),
                           "ref_covered_mass": float(np.exp(bandit.ref_logp[0][cov]).sum())}
    return out


def random_cell(skew: float, beta: float, labels: str, seed: int, cfg: OodConfig) -> dict:
    """One draw of the random setting: out-of-data mass ratio after DPO (GD) and HyPO (GD), the
    GD-DPO limit where it exists (population labels), and the closed-form growth criterion."""
    bandit, data = ood_random_setting(seed, skew, beta, labels=labels)
    unc = ~data.covered(bandit.shape)
    policy = Tabular(bandit.ref_logp)
    ref_mass = mass(bandit.ref_logp, unc, bandit.rho)
    opt = Optimizer("gd", cfg.gd_lr)
    if not unc.any():  # every response drawn into some pair: nothing is out of data
        return {"skew": skew, "beta": beta, "labels": labels, "seed": seed, "n_uncovered": 0}
    out = {"skew": skew, "beta": beta, "labels": labels, "seed": seed, "n_uncovered": int(unc.sum()),
           "ood_ref_mass": ref_mass}
    for spec in (Spec("dpo"), Spec("hypo", lam=cfg.lam)):
        th, _ = train(spec, policy, bandit, data, opt, cfg.random_steps)
        out[f"{spec.method}_ratio"] = mass(policy.logp(th), unc, bandit.rho) / ref_mass
    if labels == "population":
        out["gd_limit_ratio"] = mass(gd_dpo_limit(bandit, data), unc, bandit.rho) / ref_mass
    return out


def run_random_grid(cfg: OodConfig) -> dict:
    """Skew × β × labels × seeds; counts how often DPO raised the out-of-data mass, per cell."""
    cells, rows = [], []
    for labels in ("bt", "population"):
        for skew in cfg.skews:
            for beta in cfg.betas:
                rs = [random_cell(skew, beta, labels, s, cfg) for s in range(cfg.seeds)]
                rows += rs
                rs = [r for r in rs if r["n_uncovered"] > 0]
                cells.append({"skew": skew, "beta": beta, "labels": labels, "n": len(rs),
                              "dpo_grew": sum(r["dpo_ratio"] > 1 + 1e-9 for r in rs),
                              "hypo_grew": sum(r["hypo_ratio"] > 1 + 1e-9 for r in rs),
                              "dpo_ratio_median": float(np.median([r["dpo_ratio"] for r in rs])) if rs else None,
                              "hypo_ratio_median": float(np.median([r["hypo_ratio"] for r in rs])) if rs else None})
    return {"n_responses": 30, "n_pairs": 40, "steps": cfg.random_steps, "cells": cells, "rows": rows}


def distinct_cells(grid: list[dict]) -> int:
    """How many grid conditions give different results (rounded to 6 digits): repeated cells
    (e.g. connected pair patterns with the same GD limit) count once."""
    return len({tuple(round(g["runs"][k]["final_ratio"], 6) for k in sorted(g["runs"])) for g in grid})


def run(cfg: OodConfig | None = None) -> dict:
    cfg = cfg or OodConfig()
    grid = []
    for spread in cfg.spreads:
        for ref in OOD_REFS:
            for pattern in OOD_PATTERNS:
                res = run_condition(ref, pattern, spread, cfg, record_every=cfg.steps)
                for run_ in res["runs"].values():  # keep the grid small in JSON
                    for key in ("steps", "ood_ratio", "kl"):
                        run_.pop(key)
                grid.append(res)
    shown = run_condition(*cfg.show, cfg)
    return jsonable({"config": asdict(cfg), "policy_class": "tabular", "grid": grid,
                     "distinct_cells": distinct_cells(grid),
                     "distinct_gd_limits": len({round(g["gd_dpo_limit_ratio"], 6) for g in grid}),
                     "shown": shown, "random": run_random_grid(cfg)})
