"""`hypo coverage` end to end on the tiny model: reference-only and with a LoRA policy."""

import json

import pytest
import torch

from hypo.cli import main
from hypo.coverage import CoverageSettings, run_coverage


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A LoRA adapter with non-zero weights on the tiny model, saved with its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("cov") / "adapter"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["model"]),
                           LoraConfig(r=4, lora_alpha=16, target_modules="all-linear",
                                      init_lora_weights=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny["model"]).save_pretrained(folder)
    return folder


def test_coverage_with_policy_end_to_end(tiny, adapter, tmp_path, capsys):
    out = tmp_path / "cov"
    code = main(["coverage", "--dataset", str(tiny["data"]), "--model", str(adapter),
                 "--num_pairs", "6", "--samples_per_prompt", "3", "--max_new_tokens", "6",
                 "--kl_radius", "0", "--out", str(out), "--disable_progress_bar"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "coverage.json").read_text())
    assert r["ref_model"] == str(tiny["model"])  # the adapter's base, adapter disabled
    assert r["num_pairs"] == 6
    ll = r["ref_loglik"]
    assert ll["chosen"]["n"] == ll["rejected"]["n"] == 6
    assert ll["reference samples"]["n"] == ll["policy samples"]["n"] == 18
    assert all(ll[k]["max"] < 0 for k in ll)  # log-likelihoods of whole responses
    assert set(r["tail_share"]) == {"chosen", "rejected", "policy samples"}
    p = r["policy"]
    assert p["kl_radius"] == 0 and p["log_ratio"]["n"] == 18
    # Radius 0: the share beyond it is the share of samples with a positive log-ratio.
    assert 0 < p["share_samples_beyond_radius"] < 1
    assert p["share_samples_beyond_radius"] * 18 == pytest.approx(round(p["share_samples_beyond_radius"] * 18))
    assert p["kl"] == pytest.approx(p["log_ratio"]["mean"], abs=1e-5)
    assert {"chosen", "rejected"} == set(p["data_log_ratio"])
    report = (out / "report.md").read_text()
    assert "## What this means" in report and "KL ball" in report and "global" in report
    for png in ("ref_loglik.png", "ref_loglik_per_token.png", "log_ratio.png"):
        assert (out / png).stat().st_size > 1000, png


def test_coverage_reference_only(tiny, tmp_path):
    s = CoverageSettings(dataset=str(tiny["data"]), ref_model=str(tiny["model"]), num_pairs=4,
                         samples_per_prompt=2, max_new_tokens=5, out=str(tmp_path / "c"),
                         disable_progress_bar=True, kl_radius=100.0)
    r = run_coverage(s)
    assert r["policy"] is None and r["model"] is None
    assert "policy samples" not in r["ref_loglik"]
    assert 0 <= r["tail_share"]["chosen"] <= 1
    assert "No policy was given" in (tmp_path / "c" / "report.md").read_text()
    assert not (tmp_path / "c" / "log_ratio.png").exists()


def test_coverage_reference_loglik_matches_sequence_logps(tiny, tmp_path):
    """The chosen responses' π_ref log-likelihood equals a direct forward on the packed pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypo.data import load_preferences, tokenize_pairs
    from hypo.logprobs import pack_sequences, sequence_logps

    r = run_coverage(CoverageSettings(dataset=str(tiny["data"]), ref_model=str(tiny["model"]),
                                      num_pairs=3, samples_per_prompt=2, max_new_tokens=4,
                                      out=str(tmp_path / "c"), disable_progress_bar=True))
    tok = AutoTokenizer.from_pretrained(tiny["model"])
    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    pairs, _ = tokenize_pairs(load_preferences(str(tiny["data"]))[0][:3], tok, 1024, 512)
    with torch.no_grad():
        lp = sequence_logps(model, pack_sequences([p.prompt_ids for p in pairs],
                                                  [p.chosen_ids for p in pairs], tok.pad_token_id))
    assert r["ref_loglik"]["chosen"]["mean"] == pytest.approx(float(lp.mean()), abs=1e-4)


def test_coverage_needs_a_reference(tiny, tmp_path, capsys):
    code = main(["coverage", "--dataset", str(tiny["data"]), "--out", str(tmp_path / "x")])
    assert code == 2 and "--ref_model" in capsys.readouterr().err


def test_coverage_reference_of_a_hypo_run_comes_from_its_config(tiny, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny["model"], run)
    (run / "hypo_config.json").write_text(json.dumps({"model_name_or_path": str(tiny["model"])}))
    out = tmp_path / "cov"
    code = main(["coverage", "--dataset", str(tiny["data"]), "--model", str(run), "--num_pairs", "2",
                 "--samples_per_prompt", "2", "--max_new_tokens", "3", "--out", str(out),
                 "--disable_progress_bar"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "coverage.json").read_text())
    assert r["ref_model"] == str(tiny["model"]) and r["policy"]["kl"] == 0.0


def test_coverage_prompt_limit_must_leave_room_for_a_response(tiny, tmp_path, capsys):
    """--max_length at or below the default --max_prompt_length (512) is refused with the fix,
    before any model loads (it was a ValueError traceback from tokenization)."""
    code = main(["coverage", "--dataset", str(tiny["data"]), "--ref_model", str(tmp_path / "absent"),
                 "--max_length", "256", "--out", str(tmp_path / "cov")])
    err = capsys.readouterr().err
    assert code == 2 and "--max_prompt_length 512" in err and "--max_length 256" in err
