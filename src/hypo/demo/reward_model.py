"""Bradley–Terry reward models for the frontier's online RLHF arm (`hypo demo --frontier`).

One reward model per data set, fitted on the same pairs DPO and HyPO see: π_ref's network with a
scalar head on the last response token's hidden state (initialised at 0), trained by maximum
likelihood of the labels, P(y+ ≻ y−) = σ(r(y+) − r(y−)). Nothing tells it what to say about the
responses its data never shows; the online arm uses it as is ("unbounded") or squashed into the
range it takes on its own training responses ("bounded", r ↦ c + h·tanh((r − c)/h) with c and h
the midpoint and half-width of that range, fixed right after the fit, before any RL step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..batching import IndexStream
from .pairs import PairSets
from .stack import Stack, Trainable


@dataclass
class RewardModels:
    stack: Stack  # (D, ...) one network per data set
    head: torch.Tensor  # (D, H)
    squash: torch.Tensor  # (D, 2): midpoint c and half-width h of r on the set's training responses
    accuracy: list[float]  # held-out label accuracy per data set

    def for_runs(self, sets: torch.Tensor) -> "RewardModels":
        return RewardModels(self.stack.select(sets), self.head[sets], self.squash[sets],
                            [self.accuracy[i] for i in sets.tolist()])

    @torch.no_grad()
    def __call__(self, prompts: torch.Tensor, responses: torch.Tensor, lengths: torch.Tensor,
                 bounded: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards (R, G, c) of responses (R, G, c, T) with `lengths` (R, G, c); squashed where
        bounded (R,) is True."""
        r = score(self.stack, self.head, prompts, responses, lengths)
        if bounded is not None:
            c, h = self.squash[:, 0].view(-1, 1, 1), self.squash[:, 1].view(-1, 1, 1)
            r = torch.where(bounded.view(-1, 1, 1), c + h * torch.tanh((r - c) / h), r)
        return r


def score(stack: Stack, head: torch.Tensor, prompts: torch.Tensor, responses: torch.Tensor,
          lengths: torch.Tensor) -> torch.Tensor:
    _, hidden = stack.grouped(prompts, responses)  # (R, G, c, T, H)
    last = (lengths - 1).clamp(min=0)[..., None, None].expand(*lengths.shape, 1, hidden.shape[-1])
    return (hidden.gather(3, last).squeeze(3) * head[:, None, None]).sum(-1)


def fit_reward_models(reference_folder, train: PairSets, held_out: PairSets, steps: int, batch_size: int,
                      learning_rate: float, seed: int, max_grad_norm: float = 1.0) -> RewardModels:
    D = train.prompts.shape[0]
    stack = Stack.from_pretrained(reference_folder, D)
    hidden = stack.params["embed"].shape[-1]
    model = Trainable(stack, learning_rate, {"head": torch.zeros(D, hidden, requires_grad=True)})
    streams = [IndexStream(train.prompts.shape[1], seed * 1000 + d) for d in range(D)]
    sets = torch.arange(D)
    for step in range(steps):
        idx = torch.tensor([s.take(step * batch_size, batch_size) for s in streams])
        prompts, pairs, _, _ = train.batch(sets, idx)
        lengths = train.lengths[sets[:, None], idx]
        r = score(model.stack, model.extra["head"], prompts, pairs, lengths)
        model.step(-F.logsigmoid(r[..., 0] - r[..., 1]).mean(1).sum(), max_grad_norm)
    head = model.extra["head"].detach()
    with torch.no_grad():
        on_train = torch.cat([score(model.stack, head, train.prompts[:, i:i + 256], train.pairs[:, i:i + 256],
                                    train.lengths[:, i:i + 256]).flatten(1)
                              for i in range(0, train.prompts.shape[1], 256)], 1)
        lo, hi = on_train.min(1).values, on_train.max(1).values
        r = score(model.stack, head, held_out.prompts, held_out.pairs, held_out.lengths)
        accuracy = (r[..., 0] > r[..., 1]).float().mean(1).tolist()
    frozen = Stack({k: v.detach() for k, v in model.stack.params.items()}, model.stack.shape)
    return RewardModels(frozen, head, torch.stack([(lo + hi) / 2, (hi - lo) / 2], 1), accuracy)
