"""The concrete finite settings used by the experiments (each a small function, all knobs explicit)."""

from __future__ import annotations

import numpy as np

from hypo.lab.setting import Bandit, PairData, all_pairs, bt_population

# Separation setting (docs/lab/separation.md): 2 prompts, responses 0..3 are "ordinary" and
# covered by the partial data; response 4 ("u") is rare under π_ref (mass delta) and bad.
SEP_REF_COVERED = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
SEP_REWARD = np.array([[1.0, 0.5, 0.0, -0.5, -3.0], [-0.5, 0.0, 0.5, 1.0, -3.0]])
U = 4  # index of the uncovered response in the separation setting


def separation_bandit(delta: float = 1e-6, beta: float = 0.5) -> Bandit:
    """π_ref(u|x) = delta, the covered responses share 1 − delta; gold rewards SEP_REWARD."""
    ref = np.concatenate([SEP_REF_COVERED * (1 - delta), np.full((2, 1), delta)], axis=1)
    return Bandit(np.log(ref), SEP_REWARD.copy(), np.array([0.5, 0.5]), beta)


def separation_data(bandit: Bandit, coverage: str) -> PairData:
    """``"global"``: every pair of all 5 responses; ``"partial"``: every pair of responses 0..3."""
    n = {"global": 5, "partial": 4}[coverage]
    return bt_population(bandit, [all_pairs(range(n))] * bandit.shape[0])


def separation_features(bandit: Bandit, style_u: float = 8.0) -> np.ndarray:
    """Log-linear features (X, Y, 2): [style, is_u].

    style = gold reward on the covered responses (so the data teaches "more style is better") and
    ``style_u`` on u, whose gold reward is bad: u looks best on the shared feature. The second
    feature lets the class represent π* exactly (θ = [1/β, (r_u − style_u)/β]) and is a direction
    the DPO loss is flat along, like the tabular counterexample's shift c.
    """
    style = bandit.reward.copy()
    style[:, U] = style_u
    is_u = np.zeros_like(style)
    is_u[:, U] = 1.0
    return np.stack([style, is_u], axis=-1)


# Extrapolation setting (docs/lab/extrapolation.md): one prompt, Y responses with random features
# in R^d, a gold reward linear in them (realisable), uniform π_ref, and data over the lower part of
# the reward ranking only, so the best response (and the top quarter) is absent from the data.

def extrapolation_setting(seed: int = 0, n_responses: int = 20, dim: int = 3, beta: float = 0.1,
                          data_fraction: float = 0.75) -> tuple[Bandit, PairData, np.ndarray, int]:
    """Returns (bandit, data, features (1, Y, d), index of the best response)."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(1, n_responses, dim))
    theta = rng.normal(size=dim)
    reward = phi @ (theta / np.linalg.norm(theta))
    order = np.argsort(-reward[0])
    in_data = np.sort(order[n_responses - int(round(data_fraction * n_responses)):])
    bandit = Bandit(np.full((1, n_responses), -np.log(n_responses)), reward, np.array([1.0]), beta)
    return bandit, bt_population(bandit, [all_pairs(in_data)]), phi, int(order[0])


# Out-of-data mass setting (docs/lab/ood-mass.md): one prompt, 4 covered responses with rewards
# ``gaps`` and 4 uncovered ones holding ``ood_ref_mass`` of π_ref; the covered π_ref shape and the
# pair pattern are the conditions varied.

OOD_PATTERNS = {
    "all-pairs": [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)],
    "best-vs-rest": [(0, 1), (0, 2), (0, 3)],   # one winner, three losers
    "worst-vs-rest": [(0, 3), (1, 3), (2, 3)],  # three winners, one loser
    "chain": [(0, 1), (1, 2), (2, 3)],
}
OOD_REFS = {
    "uniform": [1.0, 1.0, 1.0, 1.0],
    "favours-chosen": [8.0, 4.0, 2.0, 1.0],    # π_ref puts more mass on higher-reward responses
    "favours-rejected": [1.0, 2.0, 4.0, 8.0],  # ... on lower-reward responses
}


def ood_setting(ref: str, pattern: str, reward_spread: float = 3.0, beta: float = 0.5,
                ood_ref_mass: float = 0.3) -> tuple[Bandit, PairData]:
    """Covered rewards evenly spaced over ``reward_spread`` (response 0 best); uncovered reward 0."""
    covered = np.array(OOD_REFS[ref]) / sum(OOD_REFS[ref]) * (1 - ood_ref_mass)
    pi_ref = np.concatenate([covered, np.full(4, ood_ref_mass / 4)])[None]
    r_cov = np.linspace(reward_spread / 2, -reward_spread / 2, 4)
    reward = np.concatenate([r_cov, np.zeros(4)])[None]
    bandit = Bandit(np.log(pi_ref), reward, np.array([1.0]), beta)
    return bandit, bt_population(bandit, [OOD_PATTERNS[pattern]])


# ---- coverage strength (docs/lab/sweep.md) and behaviour policies (docs/lab/finite-samples.md) -------

def separation_mixed_data(bandit: Bandit, w_u: float) -> PairData:
    """Mixture of the partial data (weight 1 − w_u, every pair of 0..3) and pairs involving u
    (weight w_u, u against each of 0..3): w_u = 0 is partial, 0.4 is the global data's share."""
    X = bandit.shape[0]
    partial = all_pairs(range(U))
    with_u = [(y, U) for y in range(U)]
    pairs = partial + (with_u if w_u > 0 else [])
    w = np.array([(1 - w_u) / len(partial)] * len(partial) + ([w_u / len(with_u)] * len(with_u) if w_u > 0 else []))
    return bt_population(bandit, [pairs] * X, [w] * X)


def clip_to_data_range(reward_hat: np.ndarray, data: PairData) -> np.ndarray:
    """A bounded reward class: r̂ clipped to [min, max] of r̂ on the responses the data show."""
    cov = data.covered(reward_hat.shape)
    return np.clip(reward_hat, reward_hat[cov].min(), reward_hat[cov].max())


def behaviour_pairs(bandit: Bandit, mu: np.ndarray, n: int, rng: np.random.Generator) -> PairData:
    """n triples: x ~ ρ, then two distinct responses drawn from the behaviour policy μ(·|x)
    (``(X, Y)``; μ = π_ref is the paper's setting), one Bradley–Terry label each. Returned as the
    empirical distribution (weights 1/n per draw, pref ∈ {0, 1}); repeated triples are kept apart."""
    X, Y = bandit.shape
    xs = rng.choice(X, size=n, p=bandit.rho)
    a = np.empty(n, dtype=int)
    b = np.empty(n, dtype=int)
    for i, x in enumerate(xs):
        a[i], b[i] = rng.choice(Y, size=2, replace=False, p=mu[x])
    p = 1.0 / (1.0 + np.exp(-(bandit.reward[xs, a] - bandit.reward[xs, b])))
    won = (rng.random(n) < p).astype(float)
    return PairData(xs.astype(int), a, b, np.full(n, 1.0 / n), won)


# Off-policy tabular case (docs/lab/separation.md part 4): π_ref puts its mass on the rejected
# response, the chosen one is rare under π_ref, and the uncovered bad response u holds the rest.

def offpolicy_setting(chosen_ref: float = 1e-6, u_ref: float = 0.01, beta: float = 0.15,
                      rewards: tuple[float, float, float] = (1.0, -1.0, -3.0)) -> tuple[Bandit, PairData]:
    """One prompt, responses (chosen, rejected, u); data: the one pair (chosen, rejected)."""
    ref = np.array([[chosen_ref, 1 - chosen_ref - u_ref, u_ref]])
    bandit = Bandit(np.log(ref), np.array([rewards]), np.array([1.0]), beta)
    return bandit, bt_population(bandit, [[(0, 1)]])


# Out-of-data grid (docs/lab/ood-mass.md): one prompt, Y responses with N(0, 1) gold rewards,
# π_ref ∝ exp(skew·r) (skew < 0: π_ref favours worse responses, as for off-policy chosen data),
# pairs drawn from π_ref; responses in no pair are "out of data".

def ood_random_setting(seed: int, skew: float, beta: float, n_responses: int = 30,
                       n_pairs: int = 40, labels: str = "bt") -> tuple[Bandit, PairData]:
    """``labels``: ``"bt"`` one Bradley–Terry label per pair, ``"population"`` the exact σ(r_a − r_b)."""
    rng = np.random.default_rng(seed)
    reward = rng.normal(size=(1, n_responses))
    ref_logp = skew * reward
    ref_logp = ref_logp - np.log(np.exp(ref_logp).sum())
    bandit = Bandit(ref_logp, reward, np.array([1.0]), beta)
    data = behaviour_pairs(bandit, bandit.pi_ref, n_pairs, rng)
    if labels == "population":
        data = PairData(data.x, data.a, data.b, data.weight,
                        1.0 / (1.0 + np.exp(-(reward[0, data.a] - reward[0, data.b]))))
    return bandit, data
