"""Pre-flight: what cannot work is refused before any weights load, in one paragraph, exit 2."""

import json

import pytest

from hypo.cli import main
from hypo.config import ConfigError


def train_argv(model, data, out, *extra):
    return ["train", "--model_name_or_path", str(model), "--dataset_name", str(data),
            "--output_dir", str(out), "--max_steps", "1", "--report_to", "none",
            "--disable_progress_bar", *extra]


@pytest.fixture
def no_weights(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("weights were loaded before the pre-flight check")

    monkeypatch.setattr("hypo.modeling.load_causal_lm", fail)


def refused(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_sequence_classification_checkpoint_is_refused(tiny, tmp_path, capsys, no_weights):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig.from_pretrained(tiny["model"])
    cfg.num_labels = 1
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    err = refused(capsys, train_argv(tmp_path / "rm", tiny["data"], tmp_path / "out"))
    assert "not a causal language model" in err and "LlamaForSequenceClassification" in err
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_or_under_a_file(tiny, tmp_path, capsys, no_weights):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = refused(capsys, train_argv(tiny["model"], tiny["data"], blocker))
    assert "is a file, not a folder" in err
    err = refused(capsys, train_argv(tiny["model"], tiny["data"], blocker / "out"))
    assert "cannot be created" in err and str(blocker) in err  # even root cannot create it
    assert blocker.read_text() == "x"


def test_unwritable_output_dir(tiny, tmp_path, capsys, no_weights, monkeypatch):
    # os.access stands in for the permission bits (root would bypass a chmod).
    monkeypatch.setattr("hypo.preflight.os.access", lambda path, mode: False)
    err = refused(capsys, train_argv(tiny["model"], tiny["data"], tmp_path / "locked" / "out"))
    assert "not writable" in err and str(tmp_path) in err


def test_output_dir_cannot_be_the_model_folder(tiny, tmp_path, capsys, no_weights):
    err = refused(capsys, train_argv(tiny["model"], tiny["data"], tiny["model"], "--overwrite_output_dir"))
    assert "is the model folder" in err


def test_missing_local_model_path_is_named(tiny, tmp_path, capsys, no_weights):
    missing = tmp_path / "no-such-model"
    err = refused(capsys, train_argv(missing, tiny["data"], tmp_path / "out"))
    assert "no such folder" in err and str(missing) in err
    err = refused(capsys, train_argv(tiny["model"], tiny["data"], tmp_path / "out",
                                     "--tokenizer_name_or_path", "./nowhere/tok"))
    assert "tokenizer_name_or_path" in err and "no such folder" in err


def test_lora_targets_matching_nothing_list_the_candidates(tiny, tmp_path, capsys, no_weights):
    err = refused(capsys, train_argv(tiny["model"], tiny["data"], tmp_path / "out", "--use_peft",
                                     "--lora_target_modules", "q_proj,qkv_proj"))
    assert "'qkv_proj'" in err and "'q_proj'" not in err.split("match")[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in err
    assert "lm_head" not in err


def test_build_policy_checks_lora_targets_on_the_loaded_model(tiny):
    from transformers import AutoModelForCausalLM

    from hypo.preflight import check_lora_targets

    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    check_lora_targets(model, "q_proj, v_proj")  # matches
    check_lora_targets(model, "all-linear")
    with pytest.raises(ConfigError, match="Its linear layers are: down_proj, gate_proj, k_proj"):
        check_lora_targets(model, "c_attn")


def test_hub_ids_and_local_paths():
    from hypo.preflight import looks_local

    for hub in ("gpt2", "EleutherAI/pythia-1.4b", "org/name-v1.5"):
        assert not looks_local(hub), hub
    for local in ("./m", "../m", "/abs/m", "~/m", "a/b/c", "m/"):
        assert looks_local(local), local


def test_eval_with_a_missing_model_exits_2(tiny, tmp_path, capsys, no_weights):
    err = refused(capsys, ["eval", "--model", str(tmp_path / "missing"), "--prompts", str(tiny["data"]),
                           "--out", str(tmp_path / "ev")])
    assert "--model" in err and "no such folder" in err
    err = refused(capsys, ["coverage", "--dataset", str(tiny["data"]), "--ref_model", "./gone",
                           "--out", str(tmp_path / "cov")])
    assert "--ref_model" in err and "no such folder" in err


def test_check_output_dir_is_a_plain_function(tmp_path):
    from hypo.config import TrainConfig
    from hypo.preflight import check_output_dir

    out = tmp_path / "out"
    cfg = TrainConfig(model_name_or_path="m", dataset_name="d", output_dir=str(out))
    check_output_dir(cfg)  # missing folder: fine
    out.mkdir()
    check_output_dir(cfg)  # empty folder: fine
    (out / "notes.txt").write_text("user file")
    with pytest.raises(ConfigError, match="not empty and holds no hypo run"):
        check_output_dir(cfg)  # somebody else's files: not without --overwrite_output_dir
    (out / "checkpoint-3").mkdir()
    with pytest.raises(ConfigError, match="already holds a run"):
        check_output_dir(cfg)
    cfg.resume_from_checkpoint = str(tmp_path / "elsewhere" / "checkpoint-9")
    with pytest.raises(ConfigError, match="mix the two runs"):
        check_output_dir(cfg)
    cfg.resume_from_checkpoint = str(out / "checkpoint-3")
    check_output_dir(cfg)
    (out / "hypo_config.json").write_text(json.dumps({}))
    cfg.resume_from_checkpoint, cfg.overwrite_output_dir = None, True
    # a run without hypo_files.json: nothing in it is provably hypo's, so nothing is overwritten
    with pytest.raises(ConfigError, match="checkpoint-3, hypo_config.json.*before hypo kept"):
        check_output_dir(cfg)
