"""Extrapolation with linear function approximation (paper's appendix experiment, arXiv 2406.01462).

One prompt, Y responses with random features φ ∈ R^d, a gold reward linear in φ, uniform π_ref, and
population Bradley–Terry data over every pair of the lower ``data_fraction`` of responses by reward:
the best response is absent. Trained from π_ref with a log-linear policy:

* DPO on the offline pairs;
* online RLHF: linear reward model (BT MLE on the same features), then exact KL-regularised
  policy optimisation;
* control: DPO with a tabular policy, which has no way to generalise to an unseen response.

Tracked: π(best), and the pair-weighted average probability of the in-data preferred (higher-gold-
reward) and dispreferred responses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hypo.lab.algorithms import Spec, fit_reward_model, train
from hypo.lab.experiments.common import jsonable
from hypo.lab.optim import Optimizer
from hypo.lab.policies import LogLinear, Tabular
from hypo.lab.setting import expected_reward, reverse_kl
from hypo.lab.settings_lib import extrapolation_setting


@dataclass
class ExtrapolationConfig:
    seed: int = 0
    n_responses: int = 20
    dim: int = 3
    beta: float = 0.1
    data_fraction: float = 0.75
    steps: int = 2000
    gd_lr: float = 1.0
    adam_lr: float = 0.01


def run(cfg: ExtrapolationConfig | None = None) -> dict:
    cfg = cfg or ExtrapolationConfig()
    bandit, data, phi, best = extrapolation_setting(cfg.seed, cfg.n_responses, cfg.dim, cfg.beta,
                                                    cfg.data_fraction)
    ra, rb = bandit.reward[0, data.a], bandit.reward[0, data.b]
    chosen, rejected = np.where(ra > rb, data.a, data.b), np.where(ra > rb, data.b, data.a)

    def metrics(lp: np.ndarray) -> dict[str, float]:
        p = np.exp(lp[0])
        return {"p_best": p[best], "p_chosen": float(data.weight @ p[chosen]),
                "p_rejected": float(data.weight @ p[rejected]),
                "gold_reward": expected_reward(lp, bandit.reward, bandit.rho),
                "kl": reverse_kl(lp, bandit.ref_logp, bandit.rho)}

    loglin = LogLinear(bandit.ref_logp, phi)
    r_hat = fit_reward_model(data, phi)
    runs = {}
    for opt in (Optimizer("gd", cfg.gd_lr), Optimizer("adam", cfg.adam_lr)):
        for name, spec, policy in (("dpo", Spec("dpo"), loglin),
                                   ("rlhf", Spec("rlhf", reward_hat=r_hat), loglin),
                                   ("dpo-tabular", Spec("dpo"), Tabular(bandit.ref_logp))):
            _, hist = train(spec, policy, bandit, data, opt, cfg.steps, metrics, record_every=10)
            runs[f"{name}/{opt.kind}"] = {"optimizer": opt.label(), "policy_class": policy.name,
                                          **hist.to_json()}
    return jsonable({
        "config": asdict(cfg), "best": best, "best_reward": bandit.reward[0, best],
        "max_reward_in_data": float(bandit.reward[0, data.covered(bandit.shape)[0]].max()),
        "reward_hat_best": r_hat[0, best], "runs": runs,
    })
