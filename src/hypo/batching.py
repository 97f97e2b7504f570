"""Deterministic data order, and packing of online samples.

The order is a pure function of (seed, position in the stream): epoch e visits a permutation drawn
from seed + e, so a resumed run knows exactly which records come next from the step alone.
"""

from __future__ import annotations

import torch

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


def pack_samples(samples: OnlineSamples, pad_token_id: int) -> SequenceBatch:
    return pack_sequences(samples.prompt_ids, samples.response_ids, pad_token_id)
