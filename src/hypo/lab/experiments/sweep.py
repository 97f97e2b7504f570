"""Coverage-strength sweep: δ = π_ref(u) → 0 and the data's weight w_u on pairs with u (paper §4–§5).

The separation setting (2 prompts, responses 0..3 covered, u rare and bad), tabular class, exact
population data mixing the partial pairs (weight 1 − w_u) with pairs involving u (w_u): w_u = 0 is
partial coverage, any w_u > 0 global. Per (δ, w_u), final reverse KL, gold gap J(π*) − J(π) and π(u) of

* ``dpo_worst`` — the supremum over DPO minimisers (the paper's claim is about the DPO *loss*): with
  w_u = 0, π_c ∝ π*·exp(−c·1[covered]) as c → ∞ (KL → log 1/δ); with w_u > 0 the minimiser is π*;
* ``dpo_gd`` — where plain GD from π_ref actually ends;
* ``rlhf_bounded`` — RLHF's optimum π_ref·e^{r̂/β} with the *worst* reward of the bounded class that
  fits the data: tabular BT MLE, uncovered r̂(u) set to the top of the data's r̂ range;
* ``hypo`` (fixed λ) and ``hypo_decay`` (λ_t = λ/(1 + t/τ)), trained with the same GD.

Also the paper's coverage coefficients of each cell (:mod:`hypo.lab.coverage`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hypo.lab import coverage
from hypo.lab import objectives as obj
from hypo.lab.algorithms import Spec, train
from hypo.lab.experiments.common import jsonable, policy_metrics
from hypo.lab.optim import Optimizer
from hypo.lab.policies import Tabular
from hypo.lab.setting import log_softmax, reverse_kl
from hypo.lab.settings_lib import U, separation_bandit, separation_mixed_data


@dataclass
class SweepConfig:
    beta: float = 0.5
    lam: float = 0.01
    lam_decay_steps: float = 10.0
    steps: int = 3000
    gd_lr: float = 2.0
    deltas: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12])
    weights: list[float] = field(default_factory=lambda: [0.0, 1e-3, 1e-2, 0.4])
    ball_margin: float = 1.0     # KL-ball radius = KL(π*‖π_ref) + ball_margin


def worst_dpo_minimiser(bandit, data) -> np.ndarray:
    """log π of the DPO minimiser farthest from π_ref in reverse KL (its limit, when not attained)."""
    covered = data.covered(bandit.shape)
    star = bandit.pi_star_logp()
    if covered.all():
        return star  # every log-ratio difference is pinned: π* is the only minimiser (tabular)
    c = float(-bandit.ref_logp.min()) + 40.0   # far enough that π_c(covered) < e^-40·…
    return log_softmax(star - c * covered)


def rlhf_bounded_worst(bandit, data) -> np.ndarray:
    """r̂ = tabular BT MLE; unseen responses get the largest r̂ the data's range allows; π ∝ π_ref·e^{r̂/β}."""
    r_hat = obj.tabular_design(bandit.shape) @ obj.fit_reward(data, obj.tabular_design(bandit.shape))
    cov = data.covered(bandit.shape)
    r_hat = np.where(cov, r_hat, r_hat[cov].max())
    return log_softmax(bandit.ref_logp + r_hat / bandit.beta)


def cell(delta: float, w_u: float, cfg: SweepConfig) -> dict:
    bandit = separation_bandit(delta, cfg.beta)
    data = separation_mixed_data(bandit, w_u)
    metrics = policy_metrics(bandit, data, bandit.pi_star_logp())
    policy = Tabular(bandit.ref_logp)
    opt = Optimizer("gd", cfg.gd_lr)
    logps = {}
    for name, spec in (("dpo_gd", Spec("dpo")), ("hypo", Spec("hypo", lam=cfg.lam)),
                       ("hypo_decay", Spec("hypo", lam=cfg.lam, lam_decay_steps=cfg.lam_decay_steps))):
        th, _ = train(spec, policy, bandit, data, opt, cfg.steps)
        logps[name] = policy.logp(th)
    logps["dpo_worst"] = worst_dpo_minimiser(bandit, data)
    logps["rlhf_bounded"] = rlhf_bounded_worst(bandit, data)
    # π(u) is reported on its own: "ood_mass" is 0 once u appears in the data (w_u > 0).
    out = {name: {**metrics(lp), "u_mass": float(bandit.rho @ np.exp(lp[:, U]))} for name, lp in logps.items()}
    eps = reverse_kl(bandit.pi_star_logp(), bandit.ref_logp, bandit.rho) + cfg.ball_margin
    cov = coverage.coefficients(bandit, data, eps)
    return {"delta": delta, "w_u": w_u, "log_inv_delta": float(np.log(1 / delta)), "coverage": cov,
            "coverage_kind": coverage.verdict(cov), "runs": out}


def run(cfg: SweepConfig | None = None) -> dict:
    cfg = cfg or SweepConfig()
    cells = [cell(d, w, cfg) for w in cfg.weights for d in cfg.deltas]
    return jsonable({"config": asdict(cfg), "policy_class": "tabular", "optimizer": Optimizer("gd", cfg.gd_lr).label(),
                     "cells": cells})
