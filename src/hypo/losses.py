"""Loss math of DPO and HyPO as pure tensor functions (arXiv 2406.01462).

Every function takes per-sequence log-probabilities ``logp(y|x)`` (sums over response tokens only)
and returns tensors; nothing here knows about models, configs or devices. Shapes: ``(B,)`` for B
preference pairs, ``(P, k)`` for P online prompts with k samples each.
"""

from __future__ import annotations

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
