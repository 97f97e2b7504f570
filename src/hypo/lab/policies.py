"""Policy classes over a finite response set, anchored at the reference policy.

Both classes write ``logits = ref_logp + f_θ`` and ``log π_θ = log_softmax(logits)``, so θ = 0 is π_ref:

* :class:`Tabular` — ``f_θ = θ`` with θ of shape ``(X, Y)``: every response has its own logit
  (the paper's "no function approximation" case).
* :class:`LogLinear` — ``f_θ = φ θ`` with features φ of shape ``(X, Y, d)`` and θ of shape ``(d,)``:
  linear function approximation. Responses the data does not cover still move when they share
  features with responses it does (paper §4 discussion and the appendix extrapolation experiment).

Each class turns a gradient with respect to ``log π`` (shape ``(X, Y)``) into one with respect to θ.
"""

from __future__ import annotations

import numpy as np

from hypo.lab.setting import log_softmax


def logits_grad(logp: np.ndarray, g_logp: np.ndarray) -> np.ndarray:
    """Chain rule through log_softmax: ∂L/∂z = g − π·Σ_y g (per prompt). Shapes ``(X, Y)``."""
    return g_logp - np.exp(logp) * g_logp.sum(axis=1, keepdims=True)


class Tabular:
    """θ: ``(X, Y)`` logit offsets; π_θ(y|x) ∝ π_ref(y|x)·exp(θ[x, y])."""

    name = "tabular"

    def __init__(self, ref_logp: np.ndarray):
        self.ref_logp = ref_logp

    def init(self) -> np.ndarray:
        return np.zeros_like(self.ref_logp)

    def logp(self, theta: np.ndarray) -> np.ndarray:
        return log_softmax(self.ref_logp + theta)

    def grad(self, theta: np.ndarray, logp: np.ndarray, g_logp: np.ndarray) -> np.ndarray:
        return logits_grad(logp, g_logp)


class LogLinear:
    """θ: ``(d,)``; π_θ(y|x) ∝ π_ref(y|x)·exp(φ(x, y)·θ) with features φ: ``(X, Y, d)``."""

    name = "log-linear"

    def __init__(self, ref_logp: np.ndarray, features: np.ndarray):
        self.ref_logp = ref_logp
        self.features = features

    def init(self) -> np.ndarray:
        return np.zeros(self.features.shape[-1])

    def logp(self, theta: np.ndarray) -> np.ndarray:
        return log_softmax(self.ref_logp + self.features @ theta)

    def grad(self, theta: np.ndarray, logp: np.ndarray, g_logp: np.ndarray) -> np.ndarray:
        return np.einsum("xy,xyd->d", logits_grad(logp, g_logp), self.features)
