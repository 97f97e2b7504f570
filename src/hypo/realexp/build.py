"""Samples from π_ref (the real instruct model) for the offline pairs and the evaluation baseline.

Drawn once per (model, prompts, sizes, seed) and cached as JSON under ``out/cache``: every run of
the experiment then trains and is judged against the same data and the same π_ref samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import fingerprint
from ..sampling import OnlineSampler
from .task import chat_prompt, kind_of, known_words


def prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt through the chat template, ending at the assistant header."""
    return [list(tokenizer.apply_chat_template(chat_prompt(p), add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]) for p in prompts]


@torch.no_grad()
def sample_texts(model, tokenizer, prompts: list[str], m: int, max_new_tokens: int, seed: int,
                 batch_prompts: int = 16, keep_ids: bool = False) -> list[dict]:
    """m samples per prompt at temperature 1: dicts prompt, text, clipped, kind (prompt-major),
    plus prompt_ids and response_ids with keep_ids. The draws depend only on (model, prompts, m,
    seed, batch_prompts): the evaluator redraws with π_ref's seed (common random numbers)."""
    known = known_words(tokenizer)
    out = []
    sampler = OnlineSampler(tokenizer, m, max_new_tokens, seed)
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        samples = sampler.sample(model, prompt_ids(tokenizer, chunk))
        for i, (resp, clipped) in enumerate(zip(samples.response_ids, samples.clipped)):
            text = tokenizer.decode(resp, skip_special_tokens=True)
            out.append({"prompt": chunk[i // m], "text": text, "clipped": clipped,
                        "kind": kind_of(text, clipped, known)})
            if keep_ids:
                out[-1].update(prompt_ids=samples.prompt_ids[i], response_ids=resp)
    return out


def reference_samples(model_dir: str, cache_dir: Path, name: str, prompts: list[str], m: int,
                      max_new_tokens: int, seed: int) -> list[dict]:
    """π_ref's samples for `prompts`, cached by (model folder, prompts, m, limit, seed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = fingerprint({"model": str(model_dir), "prompts": prompts, "m": m, "max_new_tokens": max_new_tokens,
                       "seed": seed, "shots": chat_prompt("")[:-1], "v": 3})  # v3: inverse-CDF draws
    path = Path(cache_dir) / f"{name}-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    samples = sample_texts(model, tokenizer, prompts, m, max_new_tokens, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(samples, indent=0) + "\n")
    tmp.rename(path)
    return samples
