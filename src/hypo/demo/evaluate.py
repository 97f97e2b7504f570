"""Gold-reward evaluation of a policy on held-out prompts (the demo's eval hook).

For each eval prompt, m samples from the policy and m from π_ref (temperature 1, untruncated):
mean gold reward, win rate against π_ref by gold reward (ties count ½), share of samples out of
the grammar's support, and the reverse KL(π‖π_ref) estimated on the policy's samples with its
standard error.
"""

from __future__ import annotations

import torch

from ..logprobs import pack_sequences, sequence_logps
from ..losses import reverse_kl_estimate
from ..sampling import OnlineSampler, OnlineSamples
from .task import Task


class GoldEvaluator:
    def __init__(self, task: Task, tokenizer, prompts: list[str], samples_per_prompt: int = 16,
                 max_new_tokens: int = 8, seed: int = 1234):
        self.task, self.tokenizer, self.prompts = task, tokenizer, prompts
        self.prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        self.m, self.max_new_tokens, self.seed = samples_per_prompt, max_new_tokens, seed
        self.ref_kinds: list[int | None] | None = None
        self._ref_rewards: list[float] | None = None

    def _sample(self, model, seed: int) -> OnlineSamples:
        sampler = OnlineSampler(self.tokenizer, self.m, self.max_new_tokens, seed)
        return sampler.sample(model, self.prompt_ids)

    def kinds(self, samples: OnlineSamples) -> list[int | None]:
        """Kind of each sample, None when out of support (including cut at the length limit)."""
        out = []
        for resp, clipped in zip(samples.response_ids, samples.clipped):
            words = self.tokenizer.convert_ids_to_tokens(resp[:-1])
            out.append(None if clipped else self.task.kind_of(words))
        return out

    def rewards(self, kinds: list[int | None]) -> list[float]:
        prompts = [p for p in self.prompts for _ in range(self.m)]
        return [-1.0 if k is None else self.task.quality[self.task.topic(p)][k]
                for p, k in zip(prompts, kinds)]

    @torch.no_grad()
    def reference_samples(self, trainer) -> None:
        """Draw π_ref's samples once (fixed seed): the win-rate opponent and the coverage base."""
        model = trainer.acc.unwrap_model(trainer.model)
        with trainer.pair.reference_view(model) as ref:
            samples = self._sample(ref, self.seed + 1)
        self.ref_kinds = self.kinds(samples)
        self._ref_rewards = self.rewards(self.ref_kinds)

    def coverage(self, covered_kinds: tuple[int, ...]) -> float:
        """Share of π_ref's mass on eval prompts that falls on responses whose kind has data."""
        return sum(k in covered_kinds for k in self.ref_kinds) / len(self.ref_kinds)

    @torch.no_grad()
    def __call__(self, trainer) -> dict:
        if self.ref_kinds is None:
            self.reference_samples(trainer)
        model = trainer.acc.unwrap_model(trainer.model)
        samples = self._sample(model, self.seed)  # same seed at every evaluation: comparable
        kinds = self.kinds(samples)
        rewards = self.rewards(kinds)
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, self._ref_rewards)]
        batch = pack_sequences(samples.prompt_ids, samples.response_ids, self.tokenizer.pad_token_id)
        batch = batch.to(trainer.acc.device)
        kl, kl_se = reverse_kl_estimate(sequence_logps(model, batch),
                                        trainer.pair.reference_logps(batch, model))
        n = len(rewards)
        return {"gold/reward": sum(rewards) / n, "gold/win_rate": sum(wins) / n,
                "gold/ood_rate": sum(k is None for k in kinds) / n, "gold/kl": kl, "gold/kl_stderr": kl_se,
                "gold/best_kind_rate": sum(k == self.task.best_kind(p) for k, p in
                                           zip(kinds, (p for p in self.prompts for _ in range(self.m)))) / n}
