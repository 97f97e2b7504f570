"""The demo's preference pairs as padded tensors, one data set per (coverage level, seed).

All prompts of the task have the same length (P tokens with <s>), so a pair is (prompt ids (P,),
chosen ids (T,), rejected ids (T,)) with responses right-padded to a common T and ending in
</s>. Several data sets are stacked on a leading axis so a ``Stack`` run can gather its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .stack import Stack, response_logps
from .task import Task


def encode_prompts(tokenizer, prompts: list[str]) -> torch.Tensor:
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    if len({len(x) for x in ids}) != 1:
        raise ValueError("the demo's prompts must all have the same token length")
    return torch.tensor(ids)


def encode_responses(tokenizer, texts: list[str], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (n, T) right-padded, lengths (n,)), each response followed by </s>."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = width or max(len(x) for x in ids)
    out = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, :len(x)] = torch.tensor(x)
    return out, torch.tensor([len(x) for x in ids])


@dataclass
class PairSets:
    """D data sets of n pairs: prompts (D, n, P); pairs (D, n, 2, T) [chosen, rejected];
    lengths (D, n, 2); ref (D, n, 2) = log π_ref of chosen and rejected; records (D lists of dicts)."""

    prompts: torch.Tensor
    pairs: torch.Tensor
    lengths: torch.Tensor
    ref: torch.Tensor
    records: list[list[dict]]

    @property
    def mask(self) -> torch.Tensor:
        return torch.arange(self.pairs.shape[-1]) < self.lengths[..., None]

    def batch(self, sets: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run r's batch from data set sets[r] at indices[r]: (prompts (R, B, P), pairs
        (R, B, 2, T), mask (R, B, 2, T), ref (R, B, 2))."""
        d = sets[:, None]
        return self.prompts[d, indices], self.pairs[d, indices], self.mask[d, indices], self.ref[d, indices]


def build_pair_sets(task: Task, tokenizer, reference: Stack, covered: list[tuple], n: int, seeds: list[int],
                    prompts: list[str] | None = None, chunk: int = 1024) -> PairSets:
    """One data set per (covered kinds, data seed) — pairs drawn and labelled as ``Task.preference_pairs``
    — with π_ref's log-probs of every response (computed once: they never change)."""
    records = [task.preference_pairs(n, kinds, seed=s, prompts=prompts) for kinds, s in zip(covered, seeds)]
    flat = [r for rs in records for r in rs]
    width = max(len(tokenizer(r[key], add_special_tokens=False)["input_ids"]) + 1
                for r in flat for key in ("chosen", "rejected"))
    p = encode_prompts(tokenizer, [r["prompt"] for r in flat])
    chosen, lc = encode_responses(tokenizer, [r["chosen"] for r in flat], width)
    rejected, lr = encode_responses(tokenizer, [r["rejected"] for r in flat], width)
    pairs, lengths = torch.stack([chosen, rejected], 1), torch.stack([lc, lr], 1)
    mask = torch.arange(width) < lengths[..., None]
    ref = torch.cat([reference_logps(reference, p[i:i + chunk], pairs[i:i + chunk], mask[i:i + chunk])
                     for i in range(0, len(flat), chunk)])
    D = len(records)
    return PairSets(p.view(D, n, -1), pairs.view(D, n, 2, -1), lengths.view(D, n, 2), ref.view(D, n, 2), records)


@torch.no_grad()
def reference_logps(reference: Stack, prompts: torch.Tensor, responses: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """log π_ref(response | prompt) of a one-run Stack: prompts (G, P), responses and mask
    (G, c, T) → (G, c)."""
    logits = reference.grouped_logits(prompts[None], responses[None])
    return response_logps(logits, responses[None], mask[None])[0]
