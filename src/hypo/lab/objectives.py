"""Exact population objectives and their gradients with respect to log π (shape ``(X, Y)``).

Each function returns ``(value, g_logp)``; a policy class turns ``g_logp`` into a gradient in its
parameters (see :mod:`hypo.lab.policies`). Equations follow /work/shared/DESIGN.md and arXiv 2406.01462:

* DPO (paper eq. (3)): with ``h = β[(log π(a) − log π_ref(a)) − (log π(b) − log π_ref(b))]``,
  ``L_dpo = E_{(x,a,b)~μ}[ −p·log σ(h) − (1 − p)·log σ(−h) ]`` where ``p = P(a ≻ b | x)``.
* reverse KL: ``KL(π‖π_ref) = E_{x~ρ} Σ_y π(y|x) log(π(y|x)/π_ref(y|x))``.
* HyPO (paper Algorithm 1): ``L_dpo + λ·KL(π‖π_ref)``.
* RLHF policy step (paper eq. (1) with a learned reward r̂): minimise ``−(E_π[r̂] − β·KL)``.
* the leave-one-out (RLOO) sampled KL gradient of DESIGN.md, and its exact expectation.
"""

from __future__ import annotations

from itertools import product

import numpy as np

from hypo.lab.setting import PairData, sigmoid


def dpo(logp: np.ndarray, ref_logp: np.ndarray, data: PairData, beta: float) -> tuple[float, np.ndarray]:
    """Population DPO loss and ∂L/∂log π. Depends on π only through log-ratio differences on
    the data's pairs, which is why uncovered responses are invisible to it (paper §4)."""
    ratio = logp - ref_logp
    h = beta * (ratio[data.x, data.a] - ratio[data.x, data.b])
    # −log σ(h) = softplus(−h), computed stably with logaddexp.
    loss = data.weight * (data.pref * np.logaddexp(0.0, -h) + (1 - data.pref) * np.logaddexp(0.0, h))
    dh = data.weight * (sigmoid(h) - data.pref) * beta
    g = np.zeros_like(logp)
    np.add.at(g, (data.x, data.a), dh)
    np.add.at(g, (data.x, data.b), -dh)
    return float(loss.sum()), g


def kl(logp: np.ndarray, ref_logp: np.ndarray, rho: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact reverse KL(π‖π_ref) averaged over x~ρ, and ∂/∂log π (treating π = exp(log π)).

    After the log-softmax chain rule this is ρ(x)·π(y|x)·(log-ratio(y) − KL_x): responses whose
    log-ratio is above the policy's average are pushed down, covered by the data or not.
    """
    p = np.exp(logp)
    ratio = logp - ref_logp
    per_x = (p * ratio).sum(axis=1)
    return float(rho @ per_x), rho[:, None] * p * (ratio + 1.0)


def hypo(logp: np.ndarray, ref_logp: np.ndarray, data: PairData, beta: float, lam: float,
         rho: np.ndarray) -> tuple[float, np.ndarray]:
    """HyPO population objective L_dpo + λ·KL(π‖π_ref) with the exact KL. λ = 0 is DPO exactly."""
    v1, g1 = dpo(logp, ref_logp, data, beta)
    v2, g2 = kl(logp, ref_logp, rho)
    return v1 + lam * v2, g1 + lam * g2


def rlhf_policy_loss(logp: np.ndarray, ref_logp: np.ndarray, reward_hat: np.ndarray, beta: float,
                     rho: np.ndarray) -> tuple[float, np.ndarray]:
    """−(E_π[r̂] − β·KL(π‖π_ref)), the online RLHF policy objective with exact expectations."""
    p = np.exp(logp)
    v_kl, g_kl = kl(logp, ref_logp, rho)
    value = float(rho @ (p * reward_hat).sum(axis=1)) - beta * v_kl
    g = -rho[:, None] * p * reward_hat + beta * g_kl
    return -value, g


# ---- the sampled leave-one-out KL estimator (DESIGN.md "KL term") ---------------------------------

def rloo_kl_grad_logp(logp: np.ndarray, ref_logp: np.ndarray, rho: np.ndarray,
                      samples: np.ndarray) -> np.ndarray:
    """Gradient wrt log π (as independent variables) of the surrogate Σ_x ρ(x)·mean_i A_i·log π(y_i|x).

    ``samples``: ``(X, k)`` response indices drawn from π(·|x), k ≥ 2. With r_i the detached
    log-ratio and A_i = r_i − mean_{j≠i} r_j, the surrogate's gradient (after the log-softmax chain
    rule) is an unbiased estimate of ∇KL(π‖π_ref).
    """
    X, k = samples.shape
    if k < 2:
        raise ValueError(f"the leave-one-out estimator needs k >= 2 samples per prompt, got k={k}")
    r = (logp - ref_logp)[np.arange(X)[:, None], samples]          # (X, k), detached
    adv = r - (r.sum(axis=1, keepdims=True) - r) / (k - 1)         # A_i = r_i − mean_{j≠i} r_j
    g = np.zeros_like(logp)
    np.add.at(g, (np.repeat(np.arange(X), k), samples.ravel()), (rho[:, None] * adv / k).ravel())
    return g


def sample_responses(logp: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``(X, k)`` responses from π(·|x) at temperature 1 (inverse-CDF on exact probabilities)."""
    cdf = np.cumsum(np.exp(logp), axis=1)
    u = rng.random((logp.shape[0], k)) * cdf[:, -1:]
    return np.minimum((u[:, :, None] > cdf[:, None, :]).sum(axis=2), logp.shape[1] - 1)


def rloo_expected_grad_logp(logp: np.ndarray, ref_logp: np.ndarray, rho: np.ndarray, k: int) -> np.ndarray:
    """Exact expectation of :func:`rloo_kl_grad_logp` over all Y^k sample tuples (small Y, k only)."""
    X, Y = logp.shape
    p = np.exp(logp)
    out = np.zeros_like(logp)
    for tup in product(range(Y), repeat=k):
        s = np.tile(np.array(tup), (X, 1))
        prob = np.prod(p[:, list(tup)], axis=1)                    # (X,) probability of this tuple
        out += prob[:, None] * rloo_kl_grad_logp(logp, ref_logp, rho, s)
    return out


# ---- reward model (RLHF step 1) --------------------------------------------------------------------

def fit_reward(data: PairData, design: np.ndarray, l2: float = 0.0, iters: int = 100,
               tol: float = 1e-12) -> np.ndarray:
    """Bradley–Terry maximum likelihood r̂ = design @ w on the offline pairs, by Newton's method.

    ``design``: ``(X, Y, d)`` (identity-like one-hot rows for a tabular reward model, features for a
    linear one). Newton steps use the pseudo-inverse from w = 0, so w stays in the span of the data's
    difference vectors: responses no pair constrains keep r̂ = design·w with no data-driven part —
    for a tabular model, r̂ = 0 there (the reward model cannot know them). Returns w: ``(d,)``.
    With ``l2 > 0``, adds (l2/2)·‖w‖² (needed when the labels separate the pairs and no MLE exists).
    """
    D = design[data.x, data.a] - design[data.x, data.b]            # (P, d)
    w = np.zeros(design.shape[-1])
    for _ in range(iters):
        h = D @ w
        s = sigmoid(h)
        grad = D.T @ (data.weight * (s - data.pref)) + l2 * w
        H = (D * (data.weight * s * (1 - s))[:, None]).T @ D + l2 * np.eye(len(w))
        step = np.linalg.pinv(H, rcond=1e-12) @ grad
        w = w - step
        if np.abs(step).max() < tol:
            break
    return w


def tabular_design(shape: tuple[int, int]) -> np.ndarray:
    """One-hot design (X, Y, X·Y): a separate reward per (x, y)."""
    X, Y = shape
    return np.eye(X * Y).reshape(X, Y, X * Y)
