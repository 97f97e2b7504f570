"""Locally built tiny models, tokenizers and preference data (no downloads).

Tests, examples and built-in defaults use these; real users pass hub ids through the same code.
The tokenizer is a byte-level BPE trained with the ``tokenizers`` library (any text encodes), with
``<s>``/``</s>``/``<pad>`` specials and a minimal chat template whose assistant turns end in ``</s>``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]

WORDS = ("red blue green gold pink gray cat dog fox owl bee cow sun moon star rain snow wind "
         "one two six ten up down left right big small fast slow hot cold").split()


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE on ``texts``; returns a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                intermediate_size: int | None = None, max_positions: int = 512, seed: int = 0):
    """A randomly initialised Llama-style causal LM sized for ``tokenizer`` (float32, CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Sample from the model's own distribution unless the caller asks otherwise.
    model.generation_config.do_sample = True
    model.generation_config.top_k = 0
    model.generation_config.top_p = 1.0
    model.generation_config.temperature = 1.0
    return model


def synthetic_preferences(n: int, seed: int = 0, conversational: bool = False) -> list[dict]:
    """A learnable preference set: the chosen response repeats the prompt's words, the rejected
    one says other words. Standard format (strings) or conversational (message lists)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        said = rng.sample(WORDS, 2)
        other = rng.sample([w for w in WORDS if w not in said], 2)
        prompt, chosen, rejected = f"Say {said[0]} {said[1]}:", " ".join(said), " ".join(other)
        # Standard format: the separating space starts the response (as in TL;DR data), so the
        # prompt ends on a token boundary and separate / joint tokenization agree.
        if conversational:
            records.append({"prompt": [{"role": "user", "content": prompt}],
                            "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            records.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    return path


def make_tiny_setup(out_dir: str | Path, n_train: int = 256, seed: int = 0, hidden_size: int = 64,
                    num_layers: int = 2) -> dict[str, Path]:
    """Write a tiny model folder (with tokenizer) and a synthetic preference JSONL under out_dir.

    Returns {"model": folder, "data": jsonl path}. Deterministic given the arguments.
    """
    out = Path(out_dir)
    records = synthetic_preferences(n_train, seed=seed)
    corpus = [r["prompt"] + r["chosen"] for r in records] + [r["rejected"] for r in records]
    corpus += [" ".join(WORDS)] * 4
    tokenizer = build_tokenizer(corpus)
    model = build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    model_dir = out / "tiny-model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = write_jsonl(records, out / "prefs.jsonl")
    return {"model": model_dir, "data": data}
