"""Loss math of DPO and HyPO as pure tensor functions (arXiv 2406.01462).

Every function takes per-sequence log-probabilities ``logp(y|x)`` (sums over response tokens only)
and returns tensors; nothing here knows about models, configs or devices. Shapes: ``(B,)`` for B
preference pairs, ``(P, k)`` for P online prompts with k samples each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceOutput:
    """Per-pair outputs of an offline contrastive loss, all of shape (B,)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor  # β·(logp_π(y+|x) − logp_ref(y+|x)), detached
    rejected_rewards: torch.Tensor  # β·(logp_π(y−|x) − logp_ref(y−|x)), detached


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceOutput:
    """Offline contrastive loss per pair (DPO family).

    With the log-ratio margin u = (logp_π(y+) − logp_ref(y+)) − (logp_π(y−) − logp_ref(y−)):

    - ``sigmoid`` (DPO, Rafailov et al. 2023; the ℓ_dpo term of HyPO, 2406.01462 §5):
      −(1−ε)·log σ(β·u) − ε·log σ(−β·u); ε = ``label_smoothing`` gives conservative DPO (cDPO).
      With ε = 0 this is TRL 1.16's ``sigmoid``; TRL ignores ε there.
    - ``ipo`` (Azar et al. 2023, Eq. 17 with τ = β): (ū − 1/(2β))², where ū is the margin of
      per-token MEAN log-ratios, (logp_π(y+) − logp_ref(y+))/|y+| − (logp_π(y−) − logp_ref(y−))/|y−|
      (as TRL 1.16 and the IPO authors' results; needs the response lengths).
    - ``hinge`` (SLiC, Zhao et al. 2023): max(0, 1 − β·u), as TRL 1.16.

    Args: four log-prob tensors of shape (B,); for ``ipo`` also the response token counts
    ``chosen_lengths`` / ``rejected_lengths`` (B,). Returns a PreferenceOutput of (B,) tensors;
    the rewards are β·(summed log-ratio) for every loss type.
    """
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type 'ipo' needs chosen_lengths and rejected_lengths (response "
                             "token counts) for its per-token mean log-ratios.")
        margin = ((policy_chosen_logps - ref_chosen_logps) / chosen_lengths.clamp(min=1)
                  - (policy_rejected_logps - ref_rejected_logps) / rejected_lengths.clamp(min=1))
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * margin)
    elif loss_type == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * margin)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use sigmoid, ipo or hinge.")
    return PreferenceOutput(
        losses=losses,
        chosen_rewards=beta * (policy_chosen_logps - ref_chosen_logps).detach(),
        rejected_rewards=beta * (policy_rejected_logps - ref_rejected_logps).detach(),
    )


def leave_one_out_advantages(log_ratios: torch.Tensor) -> torch.Tensor:
    """RLOO advantages A_i = r_i − mean_{j≠i} r_j within each prompt's group.

    Args: log_ratios (P, k), k ≥ 2. Returns (P, k), detached.
    """
    r = log_ratios.detach()
    k = r.shape[-1]
    if k < 2:
        raise ValueError(f"the leave-one-out baseline needs k ≥ 2 samples per prompt, got {k}.")
    baseline = (r.sum(dim=-1, keepdim=True) - r) / (k - 1)
    return r - baseline


def reverse_kl_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """HyPO's KL term: a surrogate whose gradient is an unbiased estimate of ∇KL(π‖π_ref).

    For y_1..y_k ~ π(·|x) (temperature 1, untruncated), with r_i = logp_π(y_i) − logp_ref(y_i)
    held constant and the RLOO advantage A_i = r_i − mean_{j≠i} r_j:

        L_kl = mean_{prompts, i}(A_i · logp_π(y_i|x))

    Since ∇KL = E_π[r·∇logp_π] (the score term E_π[∇logp_π] is 0) and the baseline is independent
    of y_i, E[∇L_kl] = mean over prompts of ∇KL(π(·|x)‖π_ref(·|x)). HyPO (2406.01462, Alg. 1)
    minimises L_dpo + λ·L_kl. The value of L_kl itself is not the KL; see ``reverse_kl_estimate``.

    Args: policy_logps (P, k) with grad; ref_logps (P, k). Returns a scalar.
    """
    advantages = leave_one_out_advantages(policy_logps - ref_logps)
    return (advantages * policy_logps).mean()


def reinforce_kl_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """The KL term without a baseline (plain REINFORCE): L = mean(r_i·logp_π(y_i|x)), r_i held
    constant. Unbiased for ∇KL like ``reverse_kl_loss``; kept to measure what the leave-one-out
    baseline buys (``python -m hypo.demo.variance``), not used in training. Args/returns as
    ``reverse_kl_loss``."""
    return ((policy_logps - ref_logps).detach() * policy_logps).mean()


def reverse_kl_estimate(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> tuple[float, float]:
    """Monte-Carlo estimate of KL(π‖π_ref) per prompt and its standard error.

    Uses the unbiased estimator mean(r_i), r_i = logp_π(y_i) − logp_ref(y_i), y_i ~ π.
    Args: tensors of any matching shape (flattened). Returns (mean, standard error) as floats.
    """
    r = (policy_logps - ref_logps).detach().double().flatten()
    n = r.numel()
    if n == 0:
        return float("nan"), float("nan")
    stderr = float(r.std(unbiased=True) / n ** 0.5) if n > 1 else float("nan")
    return float(r.mean()), stderr


def hypo_loss(dpo_losses: torch.Tensor, kl_loss: torch.Tensor | None, kl_coef: float) -> torch.Tensor:
    """L_hypo = mean(L_dpo) + λ·L_kl (2406.01462, Alg. 1). With λ = 0 or no KL term, exactly DPO."""
    loss = dpo_losses.mean()
    if kl_loss is not None and kl_coef != 0:
        loss = loss + kl_coef * kl_loss
    return loss


# ---- other unbiased estimators of ∇KL(π‖π_ref) (beyond the paper; docs/losses.md) --------------
# Per-token inputs have shape (P, k, T): P prompts, k samples each, T response positions (right-
# padded; ``mask`` (P, k, T) is True at real response tokens). With ρ_t = log π(y_t|s_t) −
# log π_ref(y_t|s_t) at state s_t = (x, y_<t), KL(π‖π_ref) = E_π[Σ_t ρ_t] = E_π[Σ_t KL_t(s_t)], where
# KL_t(s) = Σ_v π(v|s)·(log π(v|s) − log π_ref(v|s)) is the full-vocabulary KL at a visited state.


def suffix_sums(values: torch.Tensor, inclusive: bool = True) -> torch.Tensor:
    """Σ_{t' ≥ t} values[..., t'] (inclusive) or Σ_{t' > t} (exclusive) along the last axis."""
    total = values.flip(-1).cumsum(-1).flip(-1)
    return total if inclusive else total - values


def leave_one_out_baseline(values: torch.Tensor) -> torch.Tensor:
    """b_i = mean_{j≠i} values_j over the sample axis (dim 1) of (P, k, ...). Detached.

    It is built from the other samples only, which are independent of sample i, so subtracting it
    from sample i's score-function weights leaves the expected gradient unchanged."""
    v = values.detach()
    k = v.shape[1]
    if k < 2:
        raise ValueError(f"the leave-one-out baseline needs k ≥ 2 samples per prompt, got {k}.")
    return (v.sum(dim=1, keepdim=True) - v) / (k - 1)


def token_kl_loss(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """KL term with per-token reward-to-go (``kl_estimator='token'``); unbiased for ∇KL.

    With ρ_t held constant, the reward-to-go G_t = Σ_{t'≥t} ρ_t' and its leave-one-out baseline
    b_{i,t} = mean_{j≠i} G_{j,t} (G is 0 past a sample's end):

        L_kl = mean_{prompts, i} Σ_t (G_{i,t} − b_{i,t}) · log π(y_{i,t}|s_{i,t})

    Causality drops ρ_t' for t' < t from token t's weight: E[∇log π(y_t|s_t) | s_t] = 0, and
    b_{i,t} depends on the other samples only. Args: (P, k, T) per-token log-probs (policy with
    grad) and mask. Returns a scalar.
    """
    m = mask.to(policy_token_logps.dtype)
    go = suffix_sums((policy_token_logps - ref_token_logps).detach() * m)
    weights = (go - leave_one_out_baseline(go)) * m
    return (weights * policy_token_logps * m).sum(-1).mean()


def analytic_kl_loss(policy_token_logps: torch.Tensor, position_kls: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Rao–Blackwellised KL term (``kl_estimator='analytic'``); unbiased for ∇KL.

    ``position_kls`` (P, k, T) is KL_t(s_t) at every visited state, differentiable through π's
    probabilities at that state. The later states depend on the sampled tokens, which adds a
    score-function term weighted by the FUTURE per-position KLs F_t = Σ_{t'>t} KL_t' (held
    constant), with the leave-one-out baseline b_{i,t} = mean_{j≠i} F_{j,t}:

        L_kl = mean_{prompts, i} Σ_t [KL_t(s_{i,t}) + (F_{i,t} − b_{i,t}) · log π(y_{i,t}|s_{i,t})]

    ∇E[Σ_t KL_t(s_t)] = E[Σ_t ∇KL_t(s_t)] + E[Σ_t ∇log π(y_t|s_t) · Σ_{t'>t} KL_t'(s_t')]
    (a token's score is uncorrelated with the KL of states that precede it). Args: (P, k, T)
    tensors and mask. Returns a scalar.
    """
    m = mask.to(policy_token_logps.dtype)
    future = suffix_sums(position_kls.detach() * m, inclusive=False)
    weights = (future - leave_one_out_baseline(future)) * m
    return ((position_kls * m).sum(-1) + (weights * policy_token_logps * m).sum(-1)).mean()


KL_ESTIMATORS = ("seq", "token", "analytic")


def kl_coef_at(kl_coef: float, schedule: str, progress: float, final: float = 0.0) -> float:
    """λ at training progress p = step/total ∈ [0, 1] under a schedule from kl_coef to ``final``:
    constant λ; linear λ + (final − λ)·p; cosine final + (λ − final)·(1 + cos πp)/2."""
    if schedule == "constant":
        return kl_coef
    p = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return kl_coef + (final - kl_coef) * p
    if schedule == "cosine":
        return final + (kl_coef - final) * 0.5 * (1 + math.cos(math.pi * p))
    raise ValueError(f"unknown kl_coef schedule {schedule!r}; use constant, linear or cosine.")


def dual_ascent_kl_coef(kl_coef: float, kl: float, target: float, rate: float) -> float:
    """One dual-ascent step of HyPO's constrained form (arXiv 2406.01462): maximise the DPO
    objective subject to KL(π‖π_ref) ≤ κ. Its Lagrangian L_dpo + λ·(KL − κ) gives

        λ ← max(0, λ + η·(KL̂ − κ))

    with KL̂ the step's MEAN online estimate mean_i r_i (unbiased for the mean KL) and η = ``rate``
    (λ per nat). The update is linear in KL̂, so λ stops drifting only where E[KL̂] = κ: the MEAN
    KL settles at κ whatever the noise's shape. (A clipped proportional law, TRL's
    AdaptiveKLController, moves λ by nearly the same amount for any error beyond its clip, so with
    noisy estimates it follows the error's sign and settles where the MEDIAN of KL̂ is κ; the
    log-ratio r is right-skewed (E_π[e^−r] = 1), so its mean KL then sits above κ: 15–19% in
    tests/test_kl_estimators.py's closed loop, 0.76–0.94 for κ = 0.7 in the demo's.) A step whose
    KL̂ is not finite leaves λ unchanged."""
    if not math.isfinite(kl):
        return kl_coef
    return max(0.0, kl_coef + rate * (kl - target))
