"""`hypo eval` end to end on the tiny model: LoRA adapter and full model, a reward model with its
own (different) tokenizer, win rate, reverse KL with standard error, report and plots."""

import json

import pytest
import torch

from hypo.cli import main
from hypo.evaluate import EvalSettings, RewardScorer, run_eval, win_rate


def make_adapter(tiny, folder):
    """A LoRA adapter on the tiny model with non-zero weights (so π ≠ π_ref), saved with its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny["model"])
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            init_lora_weights=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny["model"]).save_pretrained(folder)
    return folder


def make_reward_model(folder):
    """A tiny LlamaForSequenceClassification (num_labels=1) with its OWN, different tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from hypo.tiny import build_tokenizer

    tok = build_tokenizer(["the quick brown fox jumps over the lazy dog"] * 4 +
                          ["a reward model reads text: red blue green say"] * 4, vocab_size=300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, num_labels=1,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    LlamaForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-models")
    return {"adapter": make_adapter(tiny, root / "adapter"),
            "rm": make_reward_model(root / "rm")}


def test_eval_adapter_with_reward_model_end_to_end(tiny, models, tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["eval", "--model", str(models["adapter"]), "--prompts", str(tiny["data"]),
                 "--reward_model", str(models["rm"]), "--num_prompts", "6", "--max_new_tokens", "6",
                 "--out", str(out), "--disable_progress_bar", "--table_rows", "3"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "eval.json").read_text())
    assert r["ref_model"] == str(tiny["model"]) and r["base_model"] == str(tiny["model"])
    assert r["num_prompts"] == 6 and r["samples_per_prompt"] == 2
    assert r["kl"]["estimate"] is not None and r["kl"]["stderr"] > 0
    # An untrained model rarely stops within 6 tokens: cut samples are not draws from π.
    assert r["clipped"]["policy"] > 0 and r["kl"]["clipped_share"] == r["clipped"]["policy"]
    assert r["kl"]["unbiased"] is False
    assert r["kl"]["log_ratio"]["n"] == 12
    assert 0 <= r["reward"]["win_rate"] <= 1 and r["reward"]["policy"]["n"] == 12
    assert r["reward"]["win_rate_stderr"] is not None
    for side in ("policy", "reference"):
        assert 1 <= r["lengths"][side]["mean"] <= 6
        assert 0 <= r["clipped"][side] <= 1
    assert len(r["samples"]) == 3 and {"prompt", "policy", "reference", "policy_reward"} <= set(r["samples"][0])
    report = (out / "report.md").read_text()
    assert "win rate" in report and "reverse KL" in report and "## Samples" in report
    for png in ("lengths.png", "log_ratio.png", "rewards.png"):
        assert (out / png).stat().st_size > 1000, png


def test_default_reference_of_an_adapter_is_its_base(tiny, models, tmp_path):
    """Adapter disabled (no second copy) and an explicitly loaded base give the same KL."""
    common = dict(model=str(models["adapter"]), prompts=str(tiny["data"]), num_prompts=4,
                  max_new_tokens=5, disable_progress_bar=True, table_rows=0)
    a = run_eval(EvalSettings(out=str(tmp_path / "a"), **common))
    b = run_eval(EvalSettings(out=str(tmp_path / "b"), ref_model=str(tiny["model"]), **common))
    assert a["kl"]["estimate"] == pytest.approx(b["kl"]["estimate"], abs=1e-5)
    assert a["kl"]["estimate"] != 0.0  # the adapter changed the policy
    assert a["reward"] is None and "no --reward_model" in (tmp_path / "a" / "report.md").read_text()


def test_full_model_against_itself_has_zero_kl(tiny, tmp_path):
    r = run_eval(EvalSettings(model=str(tiny["model"]), ref_model=str(tiny["model"]),
                              prompts=str(tiny["data"]), num_prompts=3, max_new_tokens=4,
                              out=str(tmp_path / "e"), disable_progress_bar=True))
    assert r["kl"]["estimate"] == 0.0 and r["kl"]["log_ratio"]["max"] == 0.0


def test_full_model_needs_a_reference(tiny, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny["model"]), "--prompts", str(tiny["data"]),
                 "--out", str(tmp_path / "x")])
    assert code == 2
    assert "--ref_model" in capsys.readouterr().err


def test_reward_model_reads_decoded_text_with_its_own_tokenizer(tiny, models):
    from transformers import AutoTokenizer

    scorer = RewardScorer(str(models["rm"]))
    policy_tok = AutoTokenizer.from_pretrained(tiny["model"])
    assert len(scorer.tokenizer) != len(policy_tok)
    prompts, responses = ["Say red blue:", "Say cat dog:"], [" red blue", " a much longer answer here"]
    batch = scorer.score(prompts, responses)
    alone = [scorer.score([p], [r])[0] for p, r in zip(prompts, responses)]
    assert batch == pytest.approx(alone, abs=1e-5)  # padding does not change a score
    enc = scorer.tokenizer(prompts[0] + responses[0], return_tensors="pt")
    direct = scorer.model(**enc).logits[0, 0].item()
    assert batch[0] == pytest.approx(direct, abs=1e-5)
    conv = scorer.text([{"role": "user", "content": "hi"}], "yo")
    assert conv[1] and "<|assistant|>yo" in conv[0]  # the reward model's own chat template


def test_win_rate_counts_ties_half():
    rate, se, ties = win_rate([1.0, 2.0, 0.0, 3.0], [0.0, 2.0, 1.0, 1.0])
    assert rate == pytest.approx((1 + 0.5 + 0 + 1) / 4) and ties == 0.25 and se > 0


@pytest.mark.parametrize("command", ["eval", "coverage"])
def test_every_option_has_help(command, capsys):
    from hypo.cli import make_parser

    parser = make_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        assert action.help, (command, action.dest)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--out" in capsys.readouterr().out


def fake_run(tiny, root):
    """A hypo output folder of a full fine-tune (here: the tiny model itself) and its merged copy."""
    import shutil

    run = root / "run"
    shutil.copytree(tiny["model"], run)
    shutil.copytree(tiny["model"], run / "merged")
    (run / "hypo_config.json").write_text(json.dumps({"model_name_or_path": str(tiny["model"])}))
    return run


def test_reference_of_a_hypo_run_comes_from_its_config(tiny, tmp_path, capsys):
    run = fake_run(tiny, tmp_path)
    for model in (run, run / "merged"):
        out = tmp_path / f"ev-{model.name}"
        code = main(["eval", "--model", str(model), "--prompts", str(tiny["data"]), "--num_prompts", "2",
                     "--max_new_tokens", "3", "--out", str(out), "--disable_progress_bar"])
        assert code == 0, capsys.readouterr().err
        r = json.loads((out / "eval.json").read_text())
        assert r["ref_model"] == str(tiny["model"]) and r["kl"]["estimate"] == 0.0


def test_loading_an_adapter_raises_no_deprecation_warnings(models):
    import warnings

    from hypo.evaluate import load_pair

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pair(str(models["adapter"]), None)
    assert [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))] == []


def test_reference_of_a_run_trained_from_a_gguf_file(tmp_path, tiny, monkeypatch):
    """A full fine-tune of `hypo train --gguf_file NAME` records model_name_or_path None: its
    reference is the converted GGUF folder, not None (then 'not a hypo output folder')."""
    import json

    import hypo.gguf
    from hypo.evaluate import run_reference

    monkeypatch.setattr(hypo.gguf, "model_folder",
                        lambda model, gguf: str(tiny["model"]) if gguf == "m.gguf" else model)
    run = tmp_path / "run"
    run.mkdir()
    (run / "hypo_config.json").write_text(json.dumps({"model_name_or_path": None, "gguf_file": "m.gguf"}))
    assert run_reference(str(run)) == str(tiny["model"])


def test_prompt_limit_of_zero_is_refused(tiny, tmp_path, capsys):
    """--max_prompt_length 0 kept every prompt whole (ids[-0:] is the whole list); now refused."""
    code = main(["eval", "--model", str(tiny["model"]), "--ref_model", str(tiny["model"]),
                 "--prompts", str(tiny["data"]), "--max_prompt_length", "0", "--out", str(tmp_path / "x")])
    assert code == 2 and "--max_prompt_length 0" in capsys.readouterr().err
