"""Separation: global coverage suffices for DPO, partial coverage does not (paper §4–§6).

Three parts, all exact (population data, exact expectations and gradients):

1. ``global``: with every pair covered, DPO, RLHF and HyPO trained from π_ref (tabular softmax,
   plain GD) reach π* (HyPO reaches its own optimum, which tends to π* as λ → 0: the λ sweep).
2. ``counterexample``: with response u uncovered, the family π_c ∝ π*·exp(−c·1[y covered]) has
   DPO loss equal to π*'s for every c, while KL(π_c‖π_ref) → log(1/π_ref(u)) and the gold reward
   falls to r(u) (paper Prop. 4.1's construction, with π_ref(u) = delta instead of 0). The RLHF
   and HyPO objectives are evaluated on the same family, and their optima are located.
3. ``trajectories``: log-linear policies with a feature shared between the covered responses and u,
   trained from π_ref with GD and Adam: DPO drifts to u; HyPO's KL term pulls it back; RLHF with a
   bounded reward class (r̂ clipped to the data's range) stays near π*; and the same with u's
   feature inside the data's range (no extrapolation, only the flat direction).
4. ``offpolicy``: tabular, π_ref's mass on the rejected response: DPO with plain GD drifts to u.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hypo.lab import coverage
from hypo.lab import objectives as obj
from hypo.lab.algorithms import Spec, fit_reward_model, train
from hypo.lab.experiments.common import jsonable, policy_metrics
from hypo.lab.optim import Optimizer
from hypo.lab.policies import LogLinear, Tabular
from hypo.lab.setting import (kl_ball_max_mass, log_softmax, regularised_value, reverse_kl,
                              total_variation)
from hypo.lab.experiments.ood_mass import gd_dpo_limit
from hypo.lab.settings_lib import (U, clip_to_data_range, offpolicy_setting, separation_bandit,
                                   separation_data, separation_features)


@dataclass
class SeparationConfig:
    delta: float = 1e-6          # π_ref(u|x): sets the KL bound log(1/delta)
    beta: float = 0.5            # KL coefficient / DPO β
    lam: float = 0.01            # HyPO λ (one value for every part of this experiment)
    k: int = 4                   # samples per prompt for the sampled (RLOO) HyPO run
    steps: int = 3000            # optimiser steps per run
    gd_lr: float = 2.0           # plain GD step size (same for every method)
    adam_lr: float = 0.02        # Adam step size (same for every method)
    style_u: float = 8.0         # u's value of the shared feature in the log-linear class
    seed: int = 0                # RNG of the sampled KL estimator
    lambda_sweep: list[float] = field(default_factory=lambda: [0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4])
    c_grid: list[float] = field(default_factory=lambda: [float(c) for c in np.linspace(0, 30, 61)])
    ball_margin: float = 1.0     # KL-ball radius = KL(π*‖π_ref) + ball_margin (nats)
    lam_decay_steps: float = 10.0  # HyPO with λ_t = λ/(1 + t/lam_decay_steps) ("hypo-decay")
    style_u_inside: float = 0.25   # u's style inside the data's range [−0.5, 1] (no extrapolation)


def _methods(cfg: SeparationConfig, reward_hat: np.ndarray) -> dict[str, Spec]:
    return {
        "dpo": Spec("dpo"),
        "rlhf": Spec("rlhf", reward_hat=reward_hat),
        "hypo": Spec("hypo", lam=cfg.lam),
        "hypo-sampled": Spec("hypo-sampled", lam=cfg.lam, k=cfg.k, seed=cfg.seed),
        "hypo-decay": Spec("hypo", lam=cfg.lam, lam_decay_steps=cfg.lam_decay_steps),
    }


def counterexample_family(star_logp: np.ndarray, covered: np.ndarray, c: float) -> np.ndarray:
    """log π_c with π_c(y|x) ∝ π*(y|x)·exp(−c·1[y covered]): covered log-ratio differences unchanged."""
    return log_softmax(star_logp - c * covered)


def part_global(cfg: SeparationConfig) -> dict:
    bandit = separation_bandit(cfg.delta, cfg.beta)
    data = separation_data(bandit, "global")
    star = bandit.pi_star_logp()
    policy = Tabular(bandit.ref_logp)
    r_hat = fit_reward_model(data, obj.tabular_design(bandit.shape))
    metrics = policy_metrics(bandit, data, star)
    opt = Optimizer("gd", cfg.gd_lr)
    runs = {}
    for name, spec in _methods(cfg, r_hat).items():
        _, hist = train(spec, policy, bandit, data, opt, cfg.steps, metrics, record_every=25)
        runs[name] = hist.to_json()
    sweep = []
    for lam in cfg.lambda_sweep:
        th, _ = train(Spec("hypo", lam=lam), policy, bandit, data, opt, cfg.steps)
        lp = policy.logp(th)
        sweep.append({"lam": lam, "tv_to_star": total_variation(lp, star, bandit.rho),
                      "j_gap": regularised_value(star, bandit) - regularised_value(lp, bandit)})
    return {"optimizer": opt.label(), "policy_class": "tabular", "runs": runs, "hypo_lambda_sweep": sweep,
            "star": metrics(star), "coverage": coverage.coefficients(bandit, data, _eps(bandit, cfg))}


def _eps(bandit, cfg: SeparationConfig) -> float:
    return reverse_kl(bandit.pi_star_logp(), bandit.ref_logp, bandit.rho) + cfg.ball_margin


def part_counterexample(cfg: SeparationConfig) -> dict:
    bandit = separation_bandit(cfg.delta, cfg.beta)
    data = separation_data(bandit, "partial")
    covered = data.covered(bandit.shape)
    star = bandit.pi_star_logp()
    r_hat = fit_reward_model(data, obj.tabular_design(bandit.shape))
    dpo_star = obj.dpo(star, bandit.ref_logp, data, cfg.beta)[0]
    rlhf_obj = lambda lp: -obj.rlhf_policy_loss(lp, bandit.ref_logp, r_hat, cfg.beta, bandit.rho)[0]
    hypo_obj = lambda lp: obj.hypo(lp, bandit.ref_logp, data, cfg.beta, cfg.lam, bandit.rho)[0]
    fam = []
    for c in cfg.c_grid:
        lp = counterexample_family(star, covered, c)
        fam.append({
            "c": c,
            "dpo_loss_minus_star": obj.dpo(lp, bandit.ref_logp, data, cfg.beta)[0] - dpo_star,
            "kl": reverse_kl(lp, bandit.ref_logp, bandit.rho),
            "u_mass": float(bandit.rho @ np.exp(lp[:, U])),
            "gold_value": regularised_value(lp, bandit),            # E[r] − β·KL with the gold r
            "gold_reward": float(bandit.rho @ (np.exp(lp) * bandit.reward).sum(1)),
            "rlhf_objective": rlhf_obj(lp),                        # E[r̂] − β·KL (higher is better)
            "hypo_loss": hypo_obj(lp),                             # L_dpo + λ·KL (lower is better)
        })
    # Optima of the objectives under partial coverage, from π_ref with the same GD.
    policy = Tabular(bandit.ref_logp)
    opt = Optimizer("gd", cfg.gd_lr)
    metrics = policy_metrics(bandit, data, star)
    optima = {}
    for name, spec in _methods(cfg, r_hat).items():
        th, _ = train(spec, policy, bandit, data, opt, cfg.steps)
        optima[name] = metrics(policy.logp(th))
    optima["rlhf_closed_form"] = metrics(log_softmax(bandit.ref_logp + r_hat / cfg.beta))
    kl_star = reverse_kl(star, bandit.ref_logp, bandit.rho)
    eps = kl_star + cfg.ball_margin
    return {
        "policy_class": "tabular", "optimizer_for_optima": opt.label(),
        "kl_bound": bandit.kl_bound(), "kl_star": kl_star, "dpo_loss_star": dpo_star,
        "gold_value_star": regularised_value(star, bandit), "reward_hat": r_hat,
        "ball": {"radius": eps, "max_u_mass_in_ball": kl_ball_max_mass(eps, cfg.delta)},
        "family": fam, "optima": optima, "coverage": coverage.coefficients(bandit, data, eps),
        "rlhf_star_objective": rlhf_obj(star), "hypo_star_loss": hypo_obj(star),
    }


def _trajectory_runs(cfg: SeparationConfig, style_u: float) -> dict:
    bandit = separation_bandit(cfg.delta, cfg.beta)
    data = separation_data(bandit, "partial")
    phi = separation_features(bandit, style_u)
    policy = LogLinear(bandit.ref_logp, phi)
    r_hat = fit_reward_model(data, phi)  # linear reward model on the same features
    methods = {**_methods(cfg, r_hat),
               # bounded reward class: r̂ clipped to its range on the responses the data show
               "rlhf-bounded": Spec("rlhf", reward_hat=clip_to_data_range(r_hat, data))}
    metrics = policy_metrics(bandit, data, bandit.pi_star_logp())
    out = {"style_u": style_u, "reward_hat_u": r_hat[:, U],
           "reward_hat_range_in_data": [float(r_hat[data.covered(bandit.shape)].min()),
                                        float(r_hat[data.covered(bandit.shape)].max())], "runs": {}}
    for opt in (Optimizer("gd", cfg.gd_lr / 10), Optimizer("adam", cfg.adam_lr)):
        for name, spec in methods.items():
            th, hist = train(spec, policy, bandit, data, opt, cfg.steps, metrics, record_every=25)
            out["runs"][f"{name}/{opt.kind}"] = {"optimizer": opt.label(), "theta": th, **hist.to_json()}
    return out


def part_trajectories(cfg: SeparationConfig) -> dict:
    """Log-linear class [style, is_u] under partial data: u's style outside the data's range
    (``style_u``, extrapolation) and inside it (``style_u_inside``: only non-identifiability left)."""
    out = _trajectory_runs(cfg, cfg.style_u)
    out["policy_class"] = "log-linear [style, is_u]"
    out["inside"] = _trajectory_runs(cfg, cfg.style_u_inside)
    return out


def part_offpolicy(cfg: SeparationConfig) -> dict:
    """Tabular, π_ref on the rejected response (verdict 3 of the issue): DPO+GD drifts to u."""
    bandit, data = offpolicy_setting()
    policy = Tabular(bandit.ref_logp)
    star = bandit.pi_star_logp()
    metrics = policy_metrics(bandit, data, star)
    opt = Optimizer("gd", cfg.gd_lr)
    runs = {}
    for name, spec in (("dpo", Spec("dpo")), ("hypo", Spec("hypo", lam=cfg.lam)),
                       ("hypo-decay", Spec("hypo", lam=cfg.lam, lam_decay_steps=cfg.lam_decay_steps))):
        _, hist = train(spec, policy, bandit, data, opt, cfg.steps, metrics, record_every=25)
        runs[name] = hist.to_json()
    eps = reverse_kl(star, bandit.ref_logp, bandit.rho) + cfg.ball_margin
    return {"policy_class": "tabular", "optimizer": opt.label(), "pi_ref": bandit.pi_ref[0],
            "reward": bandit.reward[0], "beta": bandit.beta, "star": metrics(star),
            "gd_dpo_limit_u": float(np.exp(gd_dpo_limit(bandit, data))[0, 2]),
            "coverage": coverage.coefficients(bandit, data, eps), "runs": runs}


def run(cfg: SeparationConfig | None = None) -> dict:
    cfg = cfg or SeparationConfig()
    return jsonable({"config": asdict(cfg), "global": part_global(cfg),
                     "counterexample": part_counterexample(cfg), "trajectories": part_trajectories(cfg),
                     "offpolicy": part_offpolicy(cfg)})
