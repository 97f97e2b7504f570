"""On-policy sampling for HyPO's KL term: k responses per prompt from the current weights.

Uses transformers ``generate`` with its KV cache. Randomness comes from an explicit, seeded
``torch.Generator`` owned by the sampler (its state is saved in checkpoints), through an inverse-CDF
logits processor: sampling neither consumes nor depends on anyone else's randomness.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch


@dataclass
class OnlineSamples:
    """P prompts × k samples, flattened prompt-major (row p*k + i is sample i of prompt p)."""

    prompt_ids: list[list[int]]  # length P*k (each prompt repeated k times)
    response_ids: list[list[int]]  # length P*k; ends with a stop token unless clipped
    clipped: list[bool]  # hit max_new_tokens without a stop token
    k: int

    @property
    def mean_length(self) -> float:
        return sum(map(len, self.response_ids)) / max(len(self.response_ids), 1)

    @property
    def clipped_ratio(self) -> float:
        return sum(self.clipped) / max(len(self.clipped), 1)

    def split(self, prompt_counts: list[int]) -> list["OnlineSamples"]:
        """Consecutive groups of prompts (with their k samples each): one per micro-batch."""
        parts, start = [], 0
        for n in prompt_counts:
            rows = slice(start * self.k, (start + n) * self.k)
            parts.append(OnlineSamples(self.prompt_ids[rows], self.response_ids[rows], self.clipped[rows], self.k))
            start += n
        return parts


def sample_groups(samples: OnlineSamples) -> list[tuple[list[int], list[list[int]]]]:
    """The samples as prompt groups ``(prompt ids, [its k responses])``, prompt-major."""
    k = samples.k
    return [(samples.prompt_ids[i], samples.response_ids[i: i + k])
            for i in range(0, len(samples.response_ids), k)]


def samples_unbiased(settings_unbiased: bool, clipped_ratio: float) -> bool:
    """Whether samples were exact draws from π: unbiased sampler settings (temperature 1, no
    top-k/top-p) AND no sample cut at max_new_tokens (a cut response is not a draw from π)."""
    return bool(settings_unbiased) and clipped_ratio == 0


class OnlineSampler:
    """Draws k samples per prompt at the configured temperature / truncation.

    Temperature ≠ 1, top_k > 0, top_p < 1 and clipping at max_new_tokens all make the KL estimate
    biased (the samples no longer come from π); they are allowed but flagged where they are set.
    """

    def __init__(self, tokenizer, k: int, max_new_tokens: int, seed: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, stop_token_ids: list[int] | None = None,
                 packed: bool = True, share_prefill: bool = True):
        self.tokenizer = tokenizer
        self.k, self.max_new_tokens = k, max_new_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        stops = list(stop_token_ids or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
            stops.append(tokenizer.eos_token_id)
        if not stops:
            raise ValueError("online sampling needs a stop token: the tokenizer has no eos_token.")
        self.stop_token_ids = stops
        self.generator = torch.Generator().manual_seed(seed)
        self.packed = packed  # linear layers on prepacked oneDNN weights where possible (packed_linear)
        self.share_prefill = share_prefill  # each prompt prefilled once for its k rows
        self.last_timing: dict | None = None  # of the last `sample` call: see `_timing`

    @property
    def unbiased(self) -> bool:
        """Whether the SETTINGS sample from π (clipping is per draw: see ``samples_unbiased``)."""
        return self.temperature == 1.0 and self.top_k == 0 and self.top_p == 1.0

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: list[list[int]]) -> OnlineSamples:
        """Generate k responses for each prompt (token-id lists). model: the current policy."""
        from transformers import GenerationConfig, LogitsProcessorList

        from .modeling import eval_mode
        from .packed_linear import packed_linears

        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        rows = [p for p in prompts for _ in range(self.k)]  # prompt-major: row p*k + i
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(rows):  # left padding: generation continues at the right edge
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        # Sampling is done by our own logits processor (inverse CDF with our generator), so
        # `generate` runs in its greedy mode and never touches the global RNG. The generation config
        # is hypo's own and inherits nothing: see `bare_generation_config`.
        gen_config = GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens, num_beams=1,
            pad_token_id=pad, eos_token_id=self.stop_token_ids, use_cache=True)
        processor = InverseCdfSampling(self._generator_on(device), self.temperature, self.top_k, self.top_p)
        started = time.perf_counter()
        with bare_generation_config(model), eval_mode(model), \
                packed_linears(model, rows=len(rows), enabled=self.packed) as packed_layers:
            cache = self._shared_prefill(model, input_ids[:: self.k], attention[:: self.k], device)
            # synced_gpus=False: the trainer samples from weights gathered whole for the round
            # (``gathered_for_generation``), so no process has to keep stepping until all are done
            # (transformers' default under ZeRO-3: a collective and a forward per token for nothing).
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 generation_config=gen_config, synced_gpus=False,
                                 logits_processor=LogitsProcessorList([processor]), **cache)
        self.last_timing = {**_timing(started, processor.call_times, [len(r) for r in rows]),
                            "packed_layers": packed_layers, "shared_prefill": bool(cache)}
        new_tokens = out[:, width:].tolist()
        responses, clipped = [], []
        for tokens in new_tokens:
            cut = next((i for i, t in enumerate(tokens) if t in self.stop_token_ids), None)
            responses.append(tokens if cut is None else tokens[: cut + 1])
            clipped.append(cut is None)
        return OnlineSamples(rows, responses, clipped, self.k)

    def _shared_prefill(self, model, input_ids: torch.Tensor, attention: torch.Tensor, device) -> dict:
        """Prefill each prompt ONCE and expand its KV cache to its k rows (``generate``'s kwargs).

        input_ids / attention: (P, W) left-padded, one row per prompt. The forward covers all but
        the last prompt position, with the position ids ``generate`` itself uses (from the
        attention mask); ``generate`` then starts at the last prompt token of each of the P·k rows,
        so every row continues exactly its own prompt: the draws are still from π (its logits
        equal the unshared prefill's up to float32 rounding). {} (unshared prefill) where there is
        nothing to share (k = 1, one-token prompts, share_prefill off) or the model keeps no
        standard cache."""
        import inspect

        width = input_ids.shape[1]
        if not self.share_prefill or self.k < 2 or width < 2:
            return {}
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the transformers model
        name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        ids, mask = input_ids[:, :-1].to(device), attention[:, :-1].to(device)
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = getattr(out, name, None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return {}
        cache.batch_repeat_interleave(self.k)
        return {name: cache}

    def _generator_on(self, device: torch.device) -> torch.Generator:
        """Our generator on CPU; on an accelerator, one seeded from it (deterministic per round)."""
        if device.type == "cpu":
            return self.generator
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        return torch.Generator(device=device).manual_seed(seed)


def _timing(started: float, call_times: list[float], prompt_lens: list[int]) -> dict:
    """Prefill and decode wall time of one ``generate`` call, from the times at which the logits
    processor ran (once per new token, right after the forward that produced its logits).

    prefill_s: start → first processor call (the prompt forward); decode_s: first → last call,
    which spans ``decode_steps`` = calls − 1 single-token forwards (with their per-token overhead).
    On an accelerator the processor's clock follows the host, which waits for each token's logits.
    """
    first = call_times[0] if call_times else started
    return {"rows": len(prompt_lens), "prompt_lens": prompt_lens, "prefill_s": first - started,
            "decode_s": (call_times[-1] - first) if call_times else 0.0,
            "decode_steps": max(len(call_times) - 1, 0)}


@contextlib.contextmanager
def bare_generation_config(model: torch.nn.Module):
    """Make ``generate`` inherit nothing from the model's shipped ``generation_config``.

    ``generate`` fills every option left unset (None) in the passed config from
    ``model.generation_config`` (a shipped bad_words_ids, sequence_bias, num_beams,
    forced_eos_token_id, repetition_penalty, ...), and passing None cannot neutralise that. So for
    the call every module holding its own ``generation_config`` (the transformers model, and the
    PEFT wrapper when it keeps one) gets a fresh ``GenerationConfig()``; the originals come back after.
    """
    from transformers import GenerationConfig

    holders = [m for m in model.modules() if "generation_config" in vars(m)]
    saved = [m.generation_config for m in holders]
    try:
        for m in holders:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in zip(holders, saved):
            m.generation_config = config


class InverseCdfSampling:
    """A logits processor that turns greedy decoding into exact sampling from softmax(z / T).

    Per row, one U ~ Uniform(0, 1) picks the first token v whose cumulative probability
    Σ_{w ≤ v} softmax(z / T)_w exceeds U · (the total): an exact draw (inverse-CDF sampling, the CDF
    summed in float64 so that rounding stays far below any probability float32 logits can express).
    The chosen token's score is 0 and every other's −inf, so greedy decoding takes it. One uniform
    per row instead of one per vocabulary entry: the 49k-token draw of Gumbel-max noise cost more
    (benchmarks/LOG.md). Top-k / top-p truncation, when asked for, masks logits first (and biases
    the KL estimate, as flagged in the config). Scores: (rows, V).
    """

    def __init__(self, generator: torch.Generator, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0):
        from transformers import TopKLogitsWarper, TopPLogitsWarper

        self.generator, self.temperature = generator, temperature
        self.call_times: list[float] = []  # perf_counter at every call (timing only)
        self.warpers = ([TopKLogitsWarper(top_k)] if top_k > 0 else []) + (
            [TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.call_times.append(time.perf_counter())
        scores = scores.float()
        if self.temperature != 1.0:
            scores = scores / self.temperature
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        cdf = scores.softmax(-1).cumsum(-1, dtype=torch.float64)  # (rows, V)
        u = torch.rand((scores.shape[0], 1), generator=self.generator, dtype=torch.float64,
                       device=scores.device) * cdf[:, -1:]
        # right=True: the first v with cdf_v > u, so a zero-probability token is never chosen
        choice = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, choice, 0.0)
