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
