"""Helpers shared by the experiments: metric bundles and rounding for JSON."""

from __future__ import annotations

import numpy as np

from hypo.lab import objectives as obj
from hypo.lab.setting import (Bandit, PairData, expected_reward, mass, regularised_value, reverse_kl,
                              total_variation)


def policy_metrics(bandit: Bandit, data: PairData, target_logp: np.ndarray | None = None):
    """A ``log π -> dict`` closure: reverse KL, gold reward, out-of-data mass, DPO loss, the gap in the
    gold objective J = E[r] − β·KL to π* (``j_gap`` = J(π*) − J(π) ≥ 0), and TV to target."""
    uncovered = ~data.covered(bandit.shape)
    j_star = regularised_value(bandit.pi_star_logp(), bandit)

    def f(logp: np.ndarray) -> dict[str, float]:
        out = {
            "kl": reverse_kl(logp, bandit.ref_logp, bandit.rho),
            "gold_reward": expected_reward(logp, bandit.reward, bandit.rho),
            "ood_mass": mass(logp, uncovered, bandit.rho),
            "dpo_loss": obj.dpo(logp, bandit.ref_logp, data, bandit.beta)[0],
            "j_gap": j_star - regularised_value(logp, bandit),
        }
        if target_logp is not None:
            out["tv_to_star"] = total_variation(logp, target_logp, bandit.rho)
        return out
    return f


def jsonable(x):
    """Convert numpy scalars/arrays inside nested containers to plain Python for json.dump."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else str(float(x))  # "inf": strict JSON has no Infinity
    if isinstance(x, (np.integer,)):
        return int(x)
    return x
