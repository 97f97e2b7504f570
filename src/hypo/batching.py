"""Deterministic data order and the packing of one micro-batch into a single forward.

The order is a pure function of (seed, position in the stream): epoch e visits a permutation drawn
from seed + e, so a resumed run knows exactly which records come next from the step alone.
"""

from __future__ import annotations

import torch

from .data import TokenizedPair
from .logprobs import SequenceBatch, pack_sequences
from .sampling import OnlineSamples


class IndexStream:
    """An endless stream of record indices: epoch after epoch of seeded permutations of range(n)."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("no records to draw from")
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=gen).tolist(), epoch
        return self._perm

    def take(self, start: int, count: int) -> list[int]:
        """Indices at stream positions start .. start+count-1."""
        return [self._permutation(pos // self.n)[pos % self.n] for pos in range(start, start + count)]


def pack_step(pairs: list[TokenizedPair], samples: OnlineSamples | None, pad_token_id: int) -> SequenceBatch:
    """One right-padded batch: [chosen × B | rejected × B | online samples × P·k]."""
    prompts = [p.prompt_ids for p in pairs] * 2
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    if samples is not None:
        prompts += samples.prompt_ids
        responses += samples.response_ids
    return pack_sequences(prompts, responses, pad_token_id)


def pack_samples(samples: OnlineSamples, pad_token_id: int) -> SequenceBatch:
    return pack_sequences(samples.prompt_ids, samples.response_ids, pad_token_id)
