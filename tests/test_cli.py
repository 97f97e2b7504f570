"""The `hypo` command line: help, YAML + flags, errors, an end-to-end `hypo train`."""

import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from hypo.cli import main, make_parser
from hypo.config import ConfigError, TrainConfig


def help_text(capsys, *argv):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_train_help_documents_every_option(capsys):
    text = help_text(capsys, "train")
    for f in fields(TrainConfig):
        assert f"--{f.name}" in text, f.name
    assert "--config" in text and "HyPO" in text


def test_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model_name_or_path: m\ndataset_name: d.jsonl\nbeta: 0.3\nuse_peft: true\n"
                        "report_to: [tensorboard]\n")
    args = make_parser().parse_args(["train", "--config", str(cfg_file), "--beta", "0.2",
                                     "--max_steps", "7"])
    from hypo.cli import build_config

    cfg = build_config(args)
    assert (cfg.beta, cfg.max_steps, cfg.use_peft, cfg.model_name_or_path) == (0.2, 7, True, "m")
    assert cfg.trackers() == ["tensorboard"]


def test_config_errors_name_the_setting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("betta: 0.1\n")
    with pytest.raises(ConfigError, match="betta"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="num_online_samples"):
        TrainConfig(model_name_or_path="m", dataset_name="d", num_online_samples=1).validate()
    with pytest.raises(ConfigError, match="beta"):
        TrainConfig.from_dict({"beta": "high"})


def test_bad_data_fails_before_anything_is_written(tiny, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n" +
                    json.dumps({"prompt": "hi", "chosen": "", "rejected": "b"}) + "\n")
    out = tmp_path / "out"
    code = main(["train", "--model_name_or_path", str(tiny["model"]), "--dataset_name", str(data),
                 "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl" in err and "record 1" in err and "chosen" in err
    assert not out.exists()


def test_hypo_train_end_to_end(tiny, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--model_name_or_path", str(tiny["model"]), "--dataset_name",
                 str(tiny["data"]), "--output_dir", str(out), "--max_steps", "3",
                 "--learning_rate", "1e-3", "--max_new_tokens", "6", "--report_to", "tensorboard",
                 "--ref_cache_dir", str(tmp_path / "cache"), "--disable_progress_bar",
                 "--eval_split_size", "0.1", "--eval_online_prompts", "4"])
    assert code == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    names = set().union(*rows)
    for name in ("loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected",
                 "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
                 "loss/dpo", "loss/kl", "kl/online", "online/length", "online/clipped_ratio",
                 "eval_rewards/margins", "eval_kl/online"):
        assert name in names, name
    # TensorBoard: read the event file back and find the metrics.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run_dir] = (out / "runs").iterdir()  # this run's own folder, output_dir/runs/<run_name>
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "rewards/margins", "kl/online"} <= tags
    assert len(events.Scalars("loss")) == 3


def test_null_and_negative_settings_are_config_errors(tmp_path):
    bad = tmp_path / "null.yaml"
    bad.write_text("beta: null\n")
    with pytest.raises(ConfigError, match="beta cannot be empty"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="online_prompts_per_step"):
        TrainConfig(model_name_or_path="m", dataset_name="d", online_prompts_per_step=-1).validate()
    with pytest.raises(ConfigError, match="save_steps"):
        TrainConfig(model_name_or_path="m", dataset_name="d", save_steps=-5).validate()
    assert TrainConfig.from_dict({"ref_cache_dir": None}).ref_cache_dir is None  # optional: fine


@pytest.mark.parametrize("argv", [
    ["train", "--learning_rat", "1e-3"],  # was taken as --learning_rate
    ["train", "--lr", "1e-3"],  # was taken as --lr_scheduler_type
    ["eval", "--model", "m", "--prompts", "p.jsonl", "--ref", "r"],  # was --ref_model
])
def test_abbreviated_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def option_help(text: str) -> dict[str, str]:
    """--name -> its help text, from argparse's help output."""
    import re

    blocks = re.split(r"\n  (?=--)", text)
    return {b.split()[0]: " ".join(b.split()) for b in blocks[1:]}


def test_help_prints_each_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    text = help_text(capsys, "train")
    assert "(default: None)" not in text
    blocks = option_help(text)
    for f in fields(TrainConfig):
        block = blocks[f"--{f.name}"]
        default = f.default if f.default_factory is MISSING else f.default_factory()
        assert block.count("(default:") == (0 if default is None else 1), block
        if default is not None:
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            assert f"(default: {shown})" in block, block
    assert "(default: 16)" in blocks["--lora_r"]


@pytest.mark.parametrize("command", ["eval", "coverage", "bench", "gguf"])
def test_other_commands_print_each_default_once(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "400")
    text = help_text(capsys, command)
    assert "(default: None)" not in text
    for flag, block in option_help(text).items():
        assert block.count("(default") <= 1, block


def test_help_describes_the_new_behaviour(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    blocks = option_help(help_text(capsys, "train"))
    assert "max_length // 2" in blocks["--max_prompt_length"]
    assert "--dataset_split" in blocks["--dataset_train_split"]  # the older name, same option
    assert "TRL 1.16's sigmoid loss ignores label_smoothing" in blocks["--label_smoothing"]
    assert "per-token" in blocks["--loss_type"]
    assert "Unlike transformers" in blocks["--eval_strategy"]
    assert "disable_dropout" in blocks["--lora_dropout"]
    assert "Abbreviated flags are refused" in help_text(capsys, "train")
