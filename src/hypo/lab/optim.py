"""The two optimisers the lab states for every run: plain gradient descent and Adam.

Both are written out (no torch.optim) so the update rule is visible: Adam is per-coordinate
(``θ ← θ − lr·m̂/(√v̂ + eps)``, Kingma & Ba 2015), which is what lets it move along directions of the
parameter space that plain gradient descent never touches (see docs/lab/ood-mass.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Optimizer:
    """``kind`` is ``"gd"`` or ``"adam"``; ``lr`` the step size; Adam uses the usual betas/eps."""

    kind: str = "gd"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.kind not in ("gd", "adam"):
            raise ValueError(f"optimizer kind must be 'gd' or 'adam', got {self.kind!r}")

    def label(self) -> str:
        return f"{'GD' if self.kind == 'gd' else 'Adam'}(lr={self.lr:g})"


def run(grad: Callable[[np.ndarray], np.ndarray], theta0: np.ndarray, opt: Optimizer, steps: int,
        record: Callable[[int, np.ndarray], None] | None = None, record_every: int = 1) -> np.ndarray:
    """Minimise with ``opt`` for ``steps`` steps from ``theta0``; ``record(t, θ)`` every
    ``record_every`` steps (and at t = 0 and t = steps). Returns the final θ."""
    theta = np.array(theta0, dtype=float, copy=True)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    if record:
        record(0, theta)
    for t in range(1, steps + 1):
        g = grad(theta)
        if opt.kind == "gd":
            theta -= opt.lr * g
        else:
            m = opt.beta1 * m + (1 - opt.beta1) * g
            v = opt.beta2 * v + (1 - opt.beta2) * g * g
            mhat = m / (1 - opt.beta1 ** t)
            vhat = v / (1 - opt.beta2 ** t)
            theta -= opt.lr * mhat / (np.sqrt(vhat) + opt.eps)
        if record and (t % record_every == 0 or t == steps):
            record(t, theta)
    return theta
