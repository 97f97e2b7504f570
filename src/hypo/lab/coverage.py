"""Coverage coefficients in the paper's terms (arXiv 2406.01462, §4), computed exactly.

The paper measures coverage by density ratios of candidate policies to π_ref (its offline data are
drawn from π_ref). With the data drawn from another distribution we also report the ratio to the
data's response marginal μ(y|x) (``PairData.response_marginal``). For a finite response set and the
class of *all* policies (the tabular class):

* global coefficient  C_glo = sup_π max_{x,y} π(y|x)/q(y|x) = max_{x,y} 1/q(y|x)  (a point mass);
* local coefficient   C_ε   = sup_{π: E_ρ KL(π‖π_ref) ≤ ε} max_{x,y} π(y|x)/q(y|x).
  For one (x, y) the best use of the budget is to spend all of it on prompt x (KL_x ≤ ε/ρ(x)); the
  largest π(y|x) is then :func:`~hypo.lab.setting.kl_ball_max_mass` (data processing, attained).

``q`` is π_ref or μ. A zero of μ (a response the data never show) makes the data coefficients
infinite: that is "partial coverage" for data. The lab keeps π_ref(u) = δ > 0 (the paper's
construction uses π_ref(u) = 0), so its π_ref coefficients are finite but C_glo = 1/δ → ∞ as δ → 0,
while the KL ball's largest mass on u, ≈ ε/log(1/δ), → 0: that is the sense in which the ball is
covered by data that miss u. ``local_ref_covered`` is C_ε over the responses the data show only
(its δ → 0 limit is the paper's C_ε with π_ref(u) = 0).
"""

from __future__ import annotations

import numpy as np

from hypo.lab.setting import Bandit, PairData, kl_ball_max_mass


def ball_max_mass_table(bandit: Bandit, eps: float) -> np.ndarray:
    """``(X, Y)``: the largest π(y|x) over policies with E_ρ KL(π‖π_ref) ≤ eps."""
    X, Y = bandit.shape
    ref = bandit.pi_ref
    return np.array([[kl_ball_max_mass(eps / bandit.rho[x], ref[x, y]) if bandit.rho[x] > 0 else 0.0
                      for y in range(Y)] for x in range(X)])


def _max_ratio(num: np.ndarray, den: np.ndarray, keep: np.ndarray) -> float:
    """max over ``keep`` of num/den, with num > 0 = den giving inf."""
    num, den = num[keep], den[keep]
    if np.any((den <= 0) & (num > 0)):
        return float("inf")
    pos = den > 0
    return float((num[pos] / den[pos]).max()) if pos.any() else 0.0


def coefficients(bandit: Bandit, data: PairData, eps: float) -> dict:
    """The paper's coefficients (vs π_ref and vs the data marginal μ) beside the lab's mass figures."""
    ref = bandit.pi_ref
    mu = data.response_marginal(bandit.shape)
    covered = data.covered(bandit.shape)
    live = np.broadcast_to((bandit.rho > 0)[:, None], bandit.shape)
    pmax = ball_max_mass_table(bandit, eps)
    ones = np.ones(bandit.shape)
    unc = live & ~covered
    return {
        "eps": eps,
        "global_ref": _max_ratio(ones, ref, live),
        "local_ref": _max_ratio(pmax, ref, live),
        "local_ref_covered": _max_ratio(pmax, ref, live & covered),
        "global_data": _max_ratio(ones, mu, live),
        "local_data": _max_ratio(pmax, mu, live),
        # the lab's mass-based figures
        "ref_uncovered_mass": float(bandit.rho @ (ref * unc).sum(1)),
        "ball_max_uncovered_mass": float(pmax[unc].max()) if unc.any() else 0.0,
        "data_covers_all": bool(covered[live].all()),
    }


def verdict(c: dict) -> str:
    """``"global"`` when the data's own coefficients are finite (every response with mass shown),
    else ``"partial"``: the data miss responses that some policy (any, for C_glo) can reach."""
    return "global" if np.isfinite(c["global_data"]) else "partial"
