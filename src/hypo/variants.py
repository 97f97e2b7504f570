"""Model-level parts of TRL's DPO variants, beside the pure loss math in ``losses``.

- TR-DPO (``sync_ref_model``): ``mix_into_reference`` moves the frozen reference towards the policy.
- LD-DPO (``ld_alpha``): ``shared_prefix_pairs`` cuts each pair's longer response to the shorter
  one's length; by causality the log-prob of that prefix is the sum of the first s token log-probs,
  so ``losses.ld_logps`` needs only sequence log-probs.
- WPO (``use_weighting``): ``aligned_mean_logps`` (no gradient) for ``losses.wpo_weights``.
"""

from __future__ import annotations

import torch

from .data import TokenizedPair
from .logprobs import pack_sequences


@torch.no_grad()
def mix_into_reference(policy: torch.nn.Module, reference: torch.nn.Module, alpha: float) -> None:
    """π_ref ← α·π + (1 − α)·π_ref, parameter by parameter, in place (TR-DPO, arXiv 2404.09656)."""
    for ref_param, param in zip(reference.parameters(), policy.parameters(), strict=True):
        ref_param.data.mul_(1.0 - alpha).add_(param.data, alpha=alpha)


def shared_prefix_pairs(pairs: list[TokenizedPair]) -> list[TokenizedPair]:
    """Each pair with both responses cut to s = min(|y+|, |y−|) tokens (LD-DPO's shared part)."""
    out = []
    for p in pairs:
        s = min(len(p.chosen_ids), len(p.rejected_ids))
        out.append(TokenizedPair(p.prompt_ids, p.chosen_ids[:s], p.rejected_ids[:s], p.index))
    return out


@torch.no_grad()
def aligned_mean_logps(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]],
                       pad: int, device, chunk: int = 4) -> torch.Tensor:
    """(N,) mean over each response's tokens of log π(y_t|·) − log Σ_v π(v|·)² (WPO's aligned
    log-probability), from full logits, ``chunk`` sequences at a time to bound memory."""
    out = []
    for start in range(0, len(prompts), chunk):
        batch = pack_sequences(prompts[start:start + chunk], responses[start:start + chunk], pad)
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = batch.input_ids[:, 1:]
        token = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        log_sum_sq = torch.logsumexp(2 * logp, dim=-1)
        mask = batch.response_mask[:, 1:].to(logp.dtype)
        out.append(((token - log_sum_sq) * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(out)
