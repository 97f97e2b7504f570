"""Gold-reward evaluation of a policy on held-out prompts (the experiment's eval hook).

The same figures as ``hypo demo`` (``hypo.demo.evaluate``): mean gold reward of the policy's
samples, win rate against π_ref's samples (same prompt and slot, by r*, ties ½), the share of
samples whose kind the data never shows, and the reverse KL(π‖π_ref) on the policy's samples with
its standard error. π_ref's samples are drawn once (``build.reference_samples``).
"""

from __future__ import annotations

import torch

from ..logprobs import pack_sequences, sequence_logps
from ..losses import reverse_kl_estimate
from ..sampling import OnlineSampler
from .build import prompt_ids
from .task import KIND_NAMES, gold_reward, kind_of, known_words


def coverage(ref_samples: list[dict], covered: tuple[str, ...]) -> float:
    """Share of π_ref's mass on eval prompts that falls on responses whose kind has data (the
    ``hypo demo`` figure), estimated from π_ref's samples."""
    return sum(s["kind"] in covered for s in ref_samples) / len(ref_samples)


def win_rate(rewards: list[float], ref_rewards: list[float]) -> float:
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, ref_rewards)]
    return sum(wins) / len(wins)


class RealGoldEvaluator:
    def __init__(self, tokenizer, prompts: list[str], ref_samples: list[dict], covered: tuple[str, ...],
                 samples_per_prompt: int, max_new_tokens: int, seed: int = 1234, keep_texts: int = 8):
        self.tokenizer, self.prompts, self.covered = tokenizer, prompts, covered
        self.prompt_ids = prompt_ids(tokenizer, prompts)
        self.m, self.max_new_tokens, self.seed = samples_per_prompt, max_new_tokens, seed
        self.known = known_words(tokenizer)
        self.ref_rewards = [gold_reward(s["kind"]) for s in ref_samples]
        assert len(self.ref_rewards) == len(prompts) * samples_per_prompt, "π_ref samples do not match"
        self.keep_texts = keep_texts
        self.last_texts: list[dict] = []

    @torch.no_grad()
    def __call__(self, trainer) -> dict:
        model = trainer.acc.unwrap_model(trainer.model)
        sampler = OnlineSampler(self.tokenizer, self.m, self.max_new_tokens, self.seed)  # same draws each time
        samples = sampler.sample(model, self.prompt_ids)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in samples.response_ids]
        kinds = [kind_of(t, c, self.known) for t, c in zip(texts, samples.clipped)]
        rewards = [gold_reward(k) for k in kinds]
        batch = pack_sequences(samples.prompt_ids, samples.response_ids, self.tokenizer.pad_token_id)
        batch = batch.to(trainer.acc.device)
        kl, kl_se = reverse_kl_estimate(sequence_logps(model, batch), trainer.pair.reference_logps(batch, model))
        self.last_texts = [{"prompt": self.prompts[i // self.m], "text": t, "kind": k}
                           for i, (t, k) in enumerate(zip(texts, kinds)) if i % self.m == 0][: self.keep_texts]
        n = len(rewards)
        out = {"gold/reward": sum(rewards) / n, "gold/win_rate": win_rate(rewards, self.ref_rewards),
               "gold/ood_rate": sum(k not in self.covered for k in kinds) / n, "gold/kl": kl,
               "gold/kl_stderr": kl_se, "gold/clipped_rate": samples.clipped_ratio}
        out.update({f"gold/kind_{name}": kinds.count(name) / n for name in KIND_NAMES})
        return out
