"""Finite preference settings: prompts, responses, reference policy, gold reward, offline data.

Everything the theory of arXiv 2406.01462 talks about is a finite table here, so every expectation
is an exact sum:

* ``X`` prompts with distribution ``rho`` (shape ``(X,)``), ``Y`` responses per prompt;
* a reference policy ``pi_ref`` given by its log-probs ``ref_logp`` (shape ``(X, Y)``);
* a gold reward ``reward`` (shape ``(X, Y)``) with Bradley–Terry preferences
  ``P(a ≻ b | x) = σ(r(x, a) − r(x, b))`` (paper §2);
* offline data ``PairData``: a distribution over triples ``(x, a, b)`` plus, for each triple, the
  probability that ``a`` is the preferred response. Its support sets the *coverage*.

The KL-regularised optimum (paper eq. (1)/(2)) is ``π*(y|x) ∝ π_ref(y|x)·exp(r(x, y)/β)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax over the last axis (responses)."""
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def sigmoid(h: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * h))  # stable for large |h|


@dataclass(frozen=True)
class Bandit:
    """A contextual bandit with a reference policy and a gold reward.

    Shapes: ``ref_logp`` and ``reward`` are ``(X, Y)``; ``rho`` is ``(X,)`` and sums to 1.
    ``beta`` is the KL coefficient of the regularised objective (and DPO's β).
    """

    ref_logp: np.ndarray
    reward: np.ndarray
    rho: np.ndarray
    beta: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.ref_logp.shape  # type: ignore[return-value]

    @property
    def pi_ref(self) -> np.ndarray:
        return np.exp(self.ref_logp)

    def pi_star_logp(self) -> np.ndarray:
        """log π*(y|x) = log π_ref + r/β − log Z(x): the maximiser of E[r] − β·KL (paper eq. (2))."""
        return log_softmax(self.ref_logp + self.reward / self.beta)

    def kl_bound(self) -> float:
        """Largest possible reverse KL, max_x max_y log(1/π_ref(y|x)), reached by a point mass."""
        return float((-self.ref_logp).max())


@dataclass(frozen=True)
class PairData:
    """Offline preference data as a distribution over unordered triples ``(x, a, b)``.

    Arrays of length ``P`` (one entry per supported triple): ``x``, ``a``, ``b`` (ints), ``weight``
    (probability of the triple, sums to 1) and ``pref`` (probability, or empirical frequency, that
    ``a`` is preferred to ``b``).
    """

    x: np.ndarray
    a: np.ndarray
    b: np.ndarray
    weight: np.ndarray
    pref: np.ndarray

    def covered(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(X, Y)`` mask of responses that appear in at least one pair with weight > 0."""
        m = np.zeros(shape, dtype=bool)
        keep = self.weight > 0
        m[self.x[keep], self.a[keep]] = True
        m[self.x[keep], self.b[keep]] = True
        return m

    def response_marginal(self, shape: tuple[int, int]) -> np.ndarray:
        """μ(y|x): how often y appears in a pair for prompt x (each pair counts both ends, /2)."""
        m = np.zeros(shape)
        np.add.at(m, (self.x, self.a), self.weight / 2)
        np.add.at(m, (self.x, self.b), self.weight / 2)
        return m / np.maximum(m.sum(axis=1, keepdims=True), 1e-300)


def all_pairs(responses: list[int] | np.ndarray) -> list[tuple[int, int]]:
    """Every unordered pair of the given responses."""
    return list(combinations([int(r) for r in responses], 2))


def bt_population(bandit: Bandit, pairs_per_prompt: list[list[tuple[int, int]]],
                  weights: list[np.ndarray] | None = None) -> PairData:
    """Population data: the given pairs (uniform within a prompt unless ``weights``), prompts by ρ,
    labels with the exact Bradley–Terry probability σ(r_a − r_b)."""
    xs, as_, bs, ws = [], [], [], []
    for x, pairs in enumerate(pairs_per_prompt):
        if not pairs:
            continue
        w = np.full(len(pairs), 1.0 / len(pairs)) if weights is None else np.asarray(weights[x], float)
        for (a, b), wi in zip(pairs, w / w.sum()):
            xs.append(x), as_.append(a), bs.append(b), ws.append(bandit.rho[x] * wi)
    x, a, b = (np.array(v, dtype=int) for v in (xs, as_, bs))
    weight = np.array(ws) / np.sum(ws)
    pref = sigmoid(bandit.reward[x, a] - bandit.reward[x, b])
    return PairData(x, a, b, weight, pref)


def sample_data(bandit: Bandit, population: PairData, n: int, rng: np.random.Generator) -> PairData:
    """Finite sample: n triples drawn from ``population.weight``, each labelled once by BT.

    Returned as the empirical distribution (weights = counts/n, pref = empirical win frequency), so
    the population formulas give the exact empirical loss.
    """
    idx = rng.choice(len(population.weight), size=n, p=population.weight)
    wins = rng.random(n) < population.pref[idx]
    counts = np.bincount(idx, minlength=len(population.weight)).astype(float)
    won = np.bincount(idx, weights=wins.astype(float), minlength=len(population.weight))
    keep = counts > 0
    return PairData(population.x[keep], population.a[keep], population.b[keep],
                    counts[keep] / n, won[keep] / counts[keep])


# ---- divergences and scores (exact sums) --------------------------------------------------------

def reverse_kl(logp: np.ndarray, ref_logp: np.ndarray, rho: np.ndarray) -> float:
    """E_{x~ρ} KL(π(·|x) ‖ π_ref(·|x)) — the reverse KL the paper's Assumption/Prop. 4.x concern."""
    p = np.exp(logp)
    return float(rho @ (p * (logp - ref_logp)).sum(axis=1))


def total_variation(logp: np.ndarray, logq: np.ndarray, rho: np.ndarray) -> float:
    """E_{x~ρ} ½‖π(·|x) − q(·|x)‖₁."""
    return float(rho @ (0.5 * np.abs(np.exp(logp) - np.exp(logq)).sum(axis=1)))


def expected_reward(logp: np.ndarray, reward: np.ndarray, rho: np.ndarray) -> float:
    return float(rho @ (np.exp(logp) * reward).sum(axis=1))


def regularised_value(logp: np.ndarray, bandit: Bandit) -> float:
    """Gold KL-regularised objective J(π) = E[r] − β·KL(π‖π_ref) (paper eq. (1))."""
    return expected_reward(logp, bandit.reward, bandit.rho) - bandit.beta * reverse_kl(
        logp, bandit.ref_logp, bandit.rho)


def mass(logp: np.ndarray, mask: np.ndarray, rho: np.ndarray) -> float:
    """E_{x~ρ} π(mask | x): probability of the responses selected by a boolean (X, Y) mask."""
    return float(rho @ (np.exp(logp) * mask).sum(axis=1))


def kl_ball_max_mass(eps: float, delta: float) -> float:
    """Largest π(y) any π with KL(π‖π_ref) ≤ eps can put on a response with π_ref(y) = delta.

    By data processing, KL(π‖π_ref) ≥ kl(π(y) ‖ delta) (binary KL), and the bound is attained, so
    the answer solves kl(p‖delta) = eps for p ≥ delta (bisection). This is the sense in which a KL
    ball around π_ref is "partially covered" when the data misses y (paper Assumption 4.2).
    """
    def kl_bin(p: float) -> float:
        out = 0.0
        if p > 0:
            out += p * np.log(p / delta)
        if p < 1:
            out += (1 - p) * np.log((1 - p) / (1 - delta))
        return out

    if kl_bin(1.0) <= eps:
        return 1.0
    lo, hi = delta, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kl_bin(mid) <= eps else (lo, mid)
    return lo
