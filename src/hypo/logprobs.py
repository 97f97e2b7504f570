"""Per-sequence response log-probabilities from one forward over concatenated sequences.

Sequences are packed right-padded, ``[prompt tokens | response tokens | padding]``, so positions
and attention of real tokens do not depend on how much padding a batch carries. Only response
tokens count: ``logp(y|x) = Σ_t log π(y_t | x, y_<t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    """N sequences packed right-padded to length T.

    input_ids (N, T) long; attention_mask (N, T) long; response_mask (N, T) bool, True where the
    token at that position is a response token (its log-prob counts).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             self.response_mask.to(device))

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens (prompt + response)."""
        return int(self.attention_mask.sum())


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], pad_token_id: int,
                   pad_to: int | None = None) -> SequenceBatch:
    """Concatenate each prompt with its response and right-pad to the longest (or ``pad_to``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths + [pad_to or 0])
    n = len(prompts)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = list(p) + list(r)
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
        response_mask[i, len(p): len(seq)] = True
    return SequenceBatch(input_ids, attention_mask, response_mask)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] without materialising the full log-softmax.

    Args: logits (M, V), targets (M,). Returns (M,) float32.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(model: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """Sum of response-token log-probs per sequence: (N,) float32, differentiable w.r.t. the model.

    The logit at position t predicts token t+1, so the target mask is ``response_mask[:, 1:]``;
    log-softmax is only evaluated at those positions (prompt and padding logits are skipped).
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1]
    targets = batch.input_ids[:, 1:]
    mask = batch.response_mask[:, 1:]
    per_token = token_logps(logits[mask], targets[mask])
    row = torch.nonzero(mask, as_tuple=True)[0]
    result = torch.zeros(batch.input_ids.shape[0], dtype=per_token.dtype, device=per_token.device)
    return result.index_add(0, row, per_token)
