"""Finite samples: suboptimality J(π*) − J(π̂) against the number of labelled pairs N (paper §4–§5).

The separation bandit (δ = π_ref(u)) with the log-linear class [style, is_u] (u's style outside the
data's range, so the class extrapolates to u). Pairs: x ~ ρ, two distinct responses from a stated
behaviour policy μ, one Bradley–Terry label each. ``global``: μ uniform over all five responses;
``partial``: μ uniform over responses 0..3 (u never shown). Methods, each trained from π_ref with
Adam for a fixed number of steps on the empirical loss:

* DPO; HyPO (DPO + λ·KL, exact KL);
* RLHF: linear BT MLE (l2 = reward_l2/N, needed when labels separate), r̂ clipped to the data's range
  (bounded reward class), then E_π[r̂] − β·KL maximised in the same class.

The theory's bounds scale as C·√(1/N) (coverage coefficient C); for a smooth finite-dimensional
problem the J gap of a consistent estimator falls like 1/N. Both slopes are drawn beside the data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hypo.lab import coverage
from hypo.lab import objectives as obj
from hypo.lab.algorithms import Spec, train
from hypo.lab.experiments.common import jsonable, policy_metrics
from hypo.lab.optim import Optimizer
from hypo.lab.policies import LogLinear
from hypo.lab.setting import bt_population, all_pairs, reverse_kl
from hypo.lab.settings_lib import (U, behaviour_pairs, clip_to_data_range, separation_bandit,
                                   separation_features)


@dataclass
class FiniteConfig:
    delta: float = 1e-6
    beta: float = 0.5
    lam: float = 0.01
    style_u: float = 8.0
    ns: list[int] = field(default_factory=lambda: [10, 30, 100, 300, 1000, 3000])
    seeds: int = 12
    steps: int = 600
    adam_lr: float = 0.2
    reward_l2: float = 0.01       # total l2 strength; per-pair weight reward_l2 / N (vanishes with N)


def behaviour(kind: str, shape: tuple[int, int]) -> np.ndarray:
    mu = np.ones(shape)
    if kind == "partial":
        mu[:, U] = 0.0
    return mu / mu.sum(axis=1, keepdims=True)


def one(kind: str, n: int, seed: int, cfg: FiniteConfig) -> dict:
    bandit = separation_bandit(cfg.delta, cfg.beta)
    phi = separation_features(bandit, cfg.style_u)
    policy = LogLinear(bandit.ref_logp, phi)
    data = behaviour_pairs(bandit, behaviour(kind, bandit.shape), n, np.random.default_rng(seed))
    r_hat = clip_to_data_range(phi @ obj.fit_reward(data, phi, l2=cfg.reward_l2 / n), data)
    metrics = policy_metrics(bandit, data)
    opt = Optimizer("adam", cfg.adam_lr)
    out = {}
    for name, spec in (("dpo", Spec("dpo")), ("hypo", Spec("hypo", lam=cfg.lam)),
                       ("rlhf", Spec("rlhf", reward_hat=r_hat))):
        th, _ = train(spec, policy, bandit, data, opt, cfg.steps)
        lp = policy.logp(th)
        m = metrics(lp)
        out[name] = {"j_gap": m["j_gap"], "kl": m["kl"], "u_mass": float(bandit.rho @ np.exp(lp[:, U]))}
    return out


def run(cfg: FiniteConfig | None = None) -> dict:
    cfg = cfg or FiniteConfig()
    bandit = separation_bandit(cfg.delta, cfg.beta)
    eps = reverse_kl(bandit.pi_star_logp(), bandit.ref_logp, bandit.rho) + 1.0
    res = {"config": asdict(cfg), "policy_class": "log-linear [style, is_u]",
           "optimizer": Optimizer("adam", cfg.adam_lr).label(), "coverage": {}, "curves": {}}
    for kind in ("partial", "global"):
        # the behaviour policy's population pairs: the coverage coefficients of the data distribution
        pop = bt_population(bandit, [all_pairs([y for y in range(5) if kind == "global" or y != U])] * 2)
        res["coverage"][kind] = coverage.coefficients(bandit, pop, eps)
        curves = {}
        for n in cfg.ns:
            runs = [one(kind, n, s, cfg) for s in range(cfg.seeds)]
            for m in runs[0]:
                g = np.array([r[m]["j_gap"] for r in runs])
                u = np.array([r[m]["u_mass"] for r in runs])
                c = curves.setdefault(m, {"n": [], "j_gap_mean": [], "j_gap_se": [], "j_gap_median": [],
                                          "u_mass_mean": []})
                c["n"].append(n)
                c["j_gap_mean"].append(g.mean())
                c["j_gap_se"].append(g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else 0.0)
                c["j_gap_median"].append(np.median(g))
                c["u_mass_mean"].append(u.mean())
        res["curves"][kind] = curves
    return jsonable(res)
