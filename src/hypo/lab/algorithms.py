"""DPO, online RLHF and HyPO at population level (and HyPO with the sampled RLOO KL), on a policy class.

``train`` runs one method with a stated optimiser from π_ref (θ = 0) and records metrics along the
way. Methods (arXiv 2406.01462):

* ``"dpo"``   — minimise L_dpo (paper eq. (3));
* ``"rlhf"``  — fit r̂ by Bradley–Terry MLE on the offline pairs (:func:`fit_reward_model`), then
  minimise −(E_π[r̂] − β·KL(π‖π_ref)) with exact expectations and gradients (paper eq. (1));
* ``"hypo"``  — minimise L_dpo + λ·KL(π‖π_ref) with the KL computed exactly (paper Algorithm 1);
  With ``lam_decay_steps`` set, λ decays as λ_t = λ/(1 + t/lam_decay_steps), so the fixed-λ
  offset from π* (O(λ) in TV, O(λ²) in J) vanishes as t → ∞;
* ``"hypo-sampled"`` — same, but the KL gradient is the leave-one-out estimator on k fresh samples
  of the current policy per prompt and step (DESIGN.md), i.e. what the LM trainer does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hypo.lab import objectives as obj
from hypo.lab.optim import Optimizer, run
from hypo.lab.setting import Bandit, PairData

METHODS = ("dpo", "rlhf", "hypo", "hypo-sampled")


@dataclass
class Spec:
    """What to run: the method, its λ (HyPO), k and seed (sampled KL), and the learned reward (RLHF)."""

    method: str
    lam: float = 0.0
    k: int = 2
    seed: int = 0
    reward_hat: np.ndarray | None = None
    lam_decay_steps: float | None = None

    def lam_at(self, t: int) -> float:
        """λ at step t (1-based): constant, or λ/(1 + t/lam_decay_steps)."""
        return self.lam if self.lam_decay_steps is None else self.lam / (1.0 + t / self.lam_decay_steps)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.method == "rlhf" and self.reward_hat is None:
            raise ValueError("method 'rlhf' needs reward_hat (see fit_reward_model)")


def fit_reward_model(data: PairData, design: np.ndarray) -> np.ndarray:
    """RLHF step 1: r̂ = design @ ŵ with ŵ the (minimum-norm) Bradley–Terry MLE. Shape ``(X, Y)``."""
    return design @ obj.fit_reward(data, design)


def loss_fn(spec: Spec, bandit: Bandit, data: PairData) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """``logp ↦ (loss, ∂loss/∂log π)`` for the exact objective of ``spec`` (the sampled variant
    reports the exact HyPO loss; its gradient is built in :func:`grad_fn`)."""
    b, ref, rho = bandit.beta, bandit.ref_logp, bandit.rho
    if spec.method == "dpo":
        return lambda lp: obj.dpo(lp, ref, data, b)
    if spec.method in ("hypo", "hypo-sampled"):
        return lambda lp: obj.hypo(lp, ref, data, b, spec.lam, rho)
    return lambda lp: obj.rlhf_policy_loss(lp, ref, spec.reward_hat, b, rho)


def grad_fn(spec: Spec, policy, bandit: Bandit, data: PairData) -> Callable[[np.ndarray], np.ndarray]:
    """θ ↦ gradient of the method's objective in the policy's parameters."""
    if spec.lam_decay_steps is not None and spec.method in ("hypo", "hypo-sampled"):
        return _decaying(spec, policy, bandit, data)
    if spec.method != "hypo-sampled":
        f = loss_fn(spec, bandit, data)

        def g(theta: np.ndarray) -> np.ndarray:
            lp = policy.logp(theta)
            return policy.grad(theta, lp, f(lp)[1])
        return g

    rng = np.random.default_rng(spec.seed)

    def g_sampled(theta: np.ndarray) -> np.ndarray:
        lp = policy.logp(theta)
        _, g_dpo = obj.dpo(lp, bandit.ref_logp, data, bandit.beta)
        s = obj.sample_responses(lp, spec.k, rng)
        g_kl = obj.rloo_kl_grad_logp(lp, bandit.ref_logp, bandit.rho, s)
        return policy.grad(theta, lp, g_dpo + spec.lam * g_kl)
    return g_sampled


def _decaying(spec: Spec, policy, bandit: Bandit, data: PairData) -> Callable[[np.ndarray], np.ndarray]:
    """HyPO's gradient with λ_t (the optimiser calls it once per step, so a call counter is t)."""
    rng = np.random.default_rng(spec.seed)
    t = [0]

    def g(theta: np.ndarray) -> np.ndarray:
        t[0] += 1
        lp = policy.logp(theta)
        _, g_dpo = obj.dpo(lp, bandit.ref_logp, data, bandit.beta)
        if spec.method == "hypo":
            g_kl = obj.kl(lp, bandit.ref_logp, bandit.rho)[1]
        else:
            g_kl = obj.rloo_kl_grad_logp(lp, bandit.ref_logp, bandit.rho, obj.sample_responses(lp, spec.k, rng))
        return policy.grad(theta, lp, g_dpo + spec.lam_at(t[0]) * g_kl)
    return g


@dataclass
class History:
    """Metrics recorded along a run: ``steps`` and one list per metric name."""

    steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add(self, t: int, values: dict[str, float]) -> None:
        self.steps.append(t)
        for k, v in values.items():
            self.metrics.setdefault(k, []).append(float(v))

    def final(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.metrics.items()}

    def to_json(self) -> dict:
        return {"steps": self.steps, **self.metrics}


def train(spec: Spec, policy, bandit: Bandit, data: PairData, opt: Optimizer, steps: int,
          metrics: Callable[[np.ndarray], dict[str, float]] | None = None,
          record_every: int = 10) -> tuple[np.ndarray, History]:
    """Run ``spec`` from π_ref (θ = 0) with ``opt`` for ``steps`` steps.

    ``metrics(log π) -> dict`` is evaluated every ``record_every`` steps. Returns (final θ, history).
    """
    hist = History()
    rec = (lambda t, th: hist.add(t, metrics(policy.logp(th)))) if metrics else None
    theta = run(grad_fn(spec, policy, bandit, data), policy.init(), opt, steps, rec, record_every)
    return theta, hist
