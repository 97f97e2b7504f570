"""Gold-reward evaluation of a policy on held-out prompts (the experiment's eval hook).

The same figures as ``hypo demo`` (``hypo.demo.evaluate``): mean gold reward of the policy's
samples, win rate against π_ref's samples (same prompt and slot, by r*, ties ½), the share of
samples whose kind the data never shows, and the reverse KL(π‖π_ref) on the policy's samples with
its standard error. π_ref's samples are drawn once (``build.reference_samples``); the policy's are
drawn with the same seed and batching (common random numbers), so at π = π_ref they are π_ref's
own samples and every difference from π_ref comes from the policy, not from sampling noise.
"""

from __future__ import annotations

import torch

from ..losses import reverse_kl_estimate
from .build import sample_texts
from .task import KIND_NAMES, gold_reward


def coverage(ref_samples: list[dict], covered: tuple[str, ...]) -> float:
    """Share of π_ref's mass on eval prompts that falls on responses whose kind has data (the
    ``hypo demo`` figure), estimated from π_ref's samples."""
    return sum(s["kind"] in covered for s in ref_samples) / len(ref_samples)


def win_rate(rewards: list[float], ref_rewards: list[float]) -> float:
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, ref_rewards)]
    return sum(wins) / len(wins)


class RealGoldEvaluator:
    def __init__(self, tokenizer, prompts: list[str], ref_samples: list[dict], covered: tuple[str, ...],
                 samples_per_prompt: int, max_new_tokens: int, seed: int, keep_texts: int = 8):
        """seed: the one π_ref's samples were drawn with (``build.reference_samples``)."""
        self.tokenizer, self.prompts, self.covered = tokenizer, prompts, covered
        self.m, self.max_new_tokens, self.seed = samples_per_prompt, max_new_tokens, seed
        self.batch_prompts = 16  # as build.reference_samples: the same batching, the same draws
        self.ref_rewards = [gold_reward(s["kind"]) for s in ref_samples]
        assert len(self.ref_rewards) == len(prompts) * samples_per_prompt, "π_ref samples do not match"
        self.keep_texts = keep_texts
        self.last_texts: list[dict] = []

    @torch.no_grad()
    def __call__(self, trainer) -> dict:
        model = trainer.acc.unwrap_model(trainer.model)
        drawn = sample_texts(model, self.tokenizer, self.prompts, self.m, self.max_new_tokens, self.seed,
                             self.batch_prompts, keep_ids=True)  # π_ref's seed: the same draws each time
        kinds = [x["kind"] for x in drawn]
        rewards = [gold_reward(k) for k in kinds]
        kl, kl_se = reverse_kl_estimate(*self._logps(trainer, model, drawn))
        self.last_texts = [{"prompt": x["prompt"], "text": x["text"], "kind": x["kind"]}
                           for x in drawn[:: self.m]][: self.keep_texts]
        n = len(rewards)
        out = {"gold/reward": sum(rewards) / n, "gold/win_rate": win_rate(rewards, self.ref_rewards),
               "gold/ood_rate": sum(k not in self.covered for k in kinds) / n, "gold/kl": kl,
               "gold/kl_stderr": kl_se, "gold/clipped_rate": sum(x["clipped"] for x in drawn) / n}
        out.update({f"gold/kind_{name}": kinds.count(name) / n for name in KIND_NAMES})
        return out

    def _logps(self, trainer, model, drawn: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) log π and log π_ref of the drawn responses (prompt-major, m per prompt), in chunks
        of about the eval batch size in rows, through the trainer's own forward: each prompt once for
        its m responses (prefix sharing) and the LM-head shortcut; the full (N, T, 49k) logits of 64
        rows would be ≈ 2 GB."""
        groups = [(drawn[i]["prompt_ids"], [x["response_ids"] for x in drawn[i: i + self.m]])
                  for i in range(0, len(drawn), self.m)]
        per_chunk = max(1, trainer.cfg.per_device_eval_batch_size // self.m)
        policy, ref = [], []
        for start in range(0, len(groups), per_chunk):
            chunk = groups[start:start + per_chunk]
            policy.append(trainer._response_logps(model, chunk))
            with trainer.pair.reference_view(model) as ref_model:
                ref.append(trainer._response_logps(ref_model, chunk))
        return torch.cat(policy), torch.cat(ref)
