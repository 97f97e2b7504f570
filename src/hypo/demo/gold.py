"""Gold evaluation of many runs at once (`hypo demo --frontier`): the batched counterpart of
``evaluate.GoldEvaluator``.

On the held-out prompts, m samples per prompt from each run's policy, drawn with the SAME
uniforms for every run and at every evaluation (common random numbers: differences between runs
and between evaluations are not sampling noise of the evaluation), and m from π_ref once:

- gold reward: mean r* of the samples; win rate: against π_ref's sample of the same prompt and
  slot, by r*, ties ½;
- out-of-grammar share: samples the grammar cannot produce (cut at the length limit included);
- out-of-data share: samples whose class (a kind, or "out of the grammar") has no pair in the
  run's data (under truly global coverage every class has pairs, so it is 0 by this measure);
- reverse KL(π‖π_ref): mean over samples of Σ_t KL(π(·|s_t)‖π_ref(·|s_t)) over the visited
  states s_t (the full-vocabulary KL at each position: unbiased, with less variance than the
  mean log-ratio), with its standard error.
"""

from __future__ import annotations

import torch

from .pairs import encode_prompts
from .stack import Samples, Stack, sample
from .task import KIND_NAMES, OOD_REWARD, OUT, Task

OUT_CLASS = len(KIND_NAMES)  # class index of responses outside the grammar


class GoldJudge:
    def __init__(self, task: Task, tokenizer, reference: Stack, prompts: list[str], samples_per_prompt: int,
                 max_new_tokens: int, seed: int = 1234):
        self.task, self.tokenizer, self.reference = task, tokenizer, reference
        self.prompts = encode_prompts(tokenizer, prompts)  # (E, P)
        self.m, self.max_new = samples_per_prompt, max_new_tokens
        E = len(prompts)
        gen = torch.Generator().manual_seed(seed)
        self.uniforms = torch.rand(E * self.m, max_new_tokens, generator=gen, dtype=torch.float64)
        ref_uniforms = torch.rand(E * self.m, max_new_tokens, generator=gen, dtype=torch.float64)
        # gold reward of each class per prompt: (E, kinds + 1)
        self.quality = torch.tensor([task.quality[task.topic(p)] + [OOD_REWARD] for p in prompts])
        self._kinds: dict[tuple, int] = {}
        ref_samples = self._sample(reference, ref_uniforms)
        self.ref_classes = self.classes(ref_samples)[0]  # (E, m)
        self.ref_rewards = self.quality.gather(1, self.ref_classes)

    def _sample(self, policy: Stack, uniforms: torch.Tensor) -> Samples:
        prompts = self.prompts[None].expand(policy.runs, -1, -1)
        return sample(policy, prompts, self.m, self.max_new, self.tokenizer.eos_token_id,
                      self.tokenizer.pad_token_id, uniforms=uniforms)

    def classes(self, samples: Samples) -> torch.Tensor:
        """(R, E, m) class of each sample: its kind, or OUT_CLASS outside the grammar."""
        out = []
        for ids, n, cut in zip(samples.ids.flatten(0, 2).tolist(), samples.lengths.flatten().tolist(),
                               samples.clipped.flatten().tolist()):
            key = tuple(ids[:n]) if not cut else None
            if key not in self._kinds:
                kind = None if cut else self.task.kind_of(self.tokenizer.convert_ids_to_tokens(list(key[:-1])))
                self._kinds[key] = OUT_CLASS if kind is OUT else kind
            out.append(self._kinds[key])
        return torch.tensor(out).view(samples.lengths.shape)

    def coverage(self, covered: tuple) -> float:
        """Share of π_ref's samples whose class has pairs in data covering `covered` kinds."""
        return float(covered_mask(covered)[self.ref_classes].float().mean())

    @torch.no_grad()
    def __call__(self, policy: Stack, covered: list[tuple]) -> dict[str, torch.Tensor]:
        """Metrics of each run (tensors of shape (R,)); covered[r] = the kinds run r's data covers."""
        samples = self._sample(policy, self.uniforms)
        classes = self.classes(samples)
        rewards = self.quality[None].expand(policy.runs, -1, -1).gather(2, classes)
        wins = (rewards > self.ref_rewards).float() + 0.5 * (rewards == self.ref_rewards).float()
        in_data = torch.stack([covered_mask(c) for c in covered])  # (R, classes)
        kl = sample_kls(policy, self.reference, self.prompts, samples)  # (R, E, m)
        n = kl[0].numel()
        return {"gold_reward": rewards.mean((1, 2)), "win_rate": wins.mean((1, 2)),
                "ood_share": (classes == OUT_CLASS).float().mean((1, 2)),
                "out_of_data_share": 1 - in_data.gather(1, classes.flatten(1)).float().mean(1),
                "kl": kl.mean((1, 2)), "kl_stderr": kl.flatten(1).std(1) / n ** 0.5}


def covered_mask(covered: tuple) -> torch.Tensor:
    """(classes,) bool: which classes have pairs when the data covers `covered` kinds."""
    mask = torch.zeros(OUT_CLASS + 1, dtype=torch.bool)
    for k in covered:
        mask[OUT_CLASS if k is OUT else k] = True
    return mask


def sample_kls(policy: Stack, reference: Stack, prompts: torch.Tensor, samples: Samples) -> torch.Tensor:
    """(R, E, m): Σ over each sample's visited states of KL(π(·|s_t)‖π_ref(·|s_t)); prompts (E, P)."""
    R, E, m, T = samples.ids.shape
    logp = policy.grouped_logits(prompts[None].expand(R, -1, -1), samples.ids).log_softmax(-1)
    ref = reference.grouped_logits(prompts.repeat(R, 1)[None], samples.ids.view(1, R * E, m, T))
    logq = ref.log_softmax(-1).view_as(logp)
    return ((logp.exp() * (logp - logq)).sum(-1) * samples.mask).sum(-1)
