"""A run never destroys another run's outputs; TensorBoard runs get their own folders; a finished run
can be extended where the schedule allows; a signal prints the exact resume command; hypo's own
calls raise no deprecation warnings."""

import json
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from hypo.cli import main
from hypo.config import ConfigError
from hypo.trainer import Trainer

from .reliability.runner import start, train_args


def cli_args(tiny, out, cache, *extra):
    return ["train", "--model_name_or_path", str(tiny["model"]), "--dataset_name", str(tiny["data"]),
            "--output_dir", str(out), "--ref_cache_dir", str(cache), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--max_new_tokens", "4", "--max_length", "64",
            "--max_prompt_length", "32", "--report_to", "none", "--eval_online_prompts", "0",
            "--disable_progress_bar", "--algo", "dpo", *extra]


def no_model_load(monkeypatch):
    """Make any weight loading fail loudly: the checks under test must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the pre-flight check refused the run")

    monkeypatch.setattr("hypo.modeling.load_causal_lm", fail)


def test_fresh_run_into_a_finished_run_is_refused_before_loading(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(cli_args(tiny, out, tmp_path / "cache", "--save_steps", "1")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    capsys.readouterr()
    no_model_load(monkeypatch)
    code = main(cli_args(tiny, out, tmp_path / "cache", "--save_steps", "1"))
    err = capsys.readouterr().err
    assert code == 2
    assert "already holds a run" in err and "--resume_from_checkpoint auto" in err
    assert "--overwrite_output_dir" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints


def test_interrupted_run_without_a_saved_model_is_refused_too(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    no_model_load(monkeypatch)
    assert main(cli_args(tiny, out, tmp_path / "cache")) == 2
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.7}\n'


def test_overwrite_removes_only_the_previous_runs_files(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cli_args(tiny, out, tmp_path / "cache", "--save_steps", "1", "--max_steps", "3")) == 0
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("# my notes, citing arxiv:2406.01462")  # the user's, not hypo's
    (out / "runs").mkdir(exist_ok=True)
    (out / "runs" / "other-tool").mkdir()
    (out / "runs" / "other-tool" / "events.log").write_text("another tool's log")
    capsys.readouterr()
    code = main(cli_args(tiny, out, tmp_path / "cache", "--overwrite_output_dir", "--max_steps", "1",
                         "--save_steps", "0"))
    err = capsys.readouterr().err
    assert code == 0, err
    said = err.replace("\n", "")  # says what it removed and what it kept
    assert "removed the files the previous run" in said and "checkpoint-3" in said
    assert "kept what it did not write" in said and "notes.txt" in said and "README.md" in said
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "runs" / "other-tool" / "events.log").read_text() == "another tool's log"
    assert not list(out.glob("checkpoint-*"))  # the old run's checkpoints went explicitly
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]  # only the new run's log
    # the user's README.md is never overwritten: the model card goes beside it
    assert (out / "README.md").read_text() == "# my notes, citing arxiv:2406.01462"
    assert "2406.01462" in (out / "MODEL_CARD.md").read_text()


def test_resume_auto_cannot_restart_a_finished_run_without_checkpoints(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(cli_args(tiny, out, tmp_path / "cache", "--save_steps", "0")) == 0
    capsys.readouterr()
    model = (out / "model.safetensors").read_bytes()
    no_model_load(monkeypatch)
    code = main(cli_args(tiny, out, tmp_path / "cache", "--resume_from_checkpoint", "auto"))
    assert code == 2 and "no checkpoint to resume" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == model


def test_resume_auto_restarts_a_run_killed_before_its_first_checkpoint(tiny, tmp_path):
    from hypo.runfolder import RunFolder

    out = tmp_path / "run"
    run = RunFolder(out)  # what a run killed before its first checkpoint leaves
    run.write_text("hypo_config.json", "{}")
    run.write_text("metrics.jsonl", '{"step": 1, "loss": 0.7}\n')
    assert main(cli_args(tiny, out, tmp_path / "cache", "--resume_from_checkpoint", "auto")) == 0
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_tensorboard_events_of_each_run_in_their_own_folder(tiny, tmp_path):
    out = tmp_path / "run"
    tb = ["--report_to", "tensorboard", "--lr_scheduler_type", "constant", "--save_steps", "1"]
    assert main(cli_args(tiny, out, tmp_path / "cache", *tb)) == 0
    name = json.loads((out / "hypo_config.json").read_text())["run_name"]
    assert name and [p.name for p in (out / "runs").iterdir()] == [name]
    assert list((out / "runs" / name).glob("events.out.tfevents.*"))
    # A resumed (here: extended) run appends to the same run folder.
    assert main(cli_args(tiny, out, tmp_path / "cache", *tb, "--max_steps", "3",
                         "--resume_from_checkpoint", "auto")) == 0
    assert [p.name for p in (out / "runs").iterdir()] == [name]
    # A separate run with its own name, and an explicit logging_dir.
    other = tmp_path / "other"
    assert main(cli_args(tiny, other, tmp_path / "cache", *tb, "--run_name", "b",
                         "--logging_dir", str(tmp_path / "tb" / "b"))) == 0
    assert list((tmp_path / "tb" / "b").glob("events.out.tfevents.*"))
    assert not (other / "runs").exists()


def _weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_extending_a_finished_constant_schedule_run_equals_the_longer_run(base_config, tmp_path):
    common = dict(algo="hypo", lr_scheduler_type="constant", warmup_steps=1, save_steps=2)
    straight = Trainer(base_config(max_steps=5, output_dir=str(tmp_path / "straight"), **common))
    straight.train()
    short = base_config(max_steps=3, output_dir=str(tmp_path / "extended"), **common)
    Trainer(short).train()  # finished: checkpoint-2 and, at the end, checkpoint-3
    assert (tmp_path / "extended" / "checkpoint-3").is_dir()
    longer = Trainer(base_config(max_steps=5, output_dir=str(tmp_path / "extended"),
                                 resume_from_checkpoint="auto", **common))
    longer.train()
    assert longer.step == 5
    a, b = _weights(straight), _weights(longer)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_extending_a_decaying_schedule_is_refused_with_the_reason(base_config, tmp_path):
    Trainer(base_config(algo="dpo", max_steps=2, save_steps=1, lr_scheduler_type="linear")).train()
    with pytest.raises(ConfigError, match=r"max_steps 2 -> 4.*'linear' sets every step's learning rate"):
        Trainer(base_config(algo="dpo", max_steps=4, save_steps=1, lr_scheduler_type="linear",
                            resume_from_checkpoint="auto")).train()
    with pytest.raises(ConfigError, match="beyond the new total of 1 steps"):
        Trainer(base_config(algo="dpo", max_steps=1, save_steps=1, lr_scheduler_type="linear",
                            resume_from_checkpoint="auto")).train()


def test_resume_command_drops_overwrite_and_old_resume():
    from hypo.cli import resume_command

    argv = ["train", "--output_dir", "o x", "--overwrite_output_dir", "--beta", "0.2",
            "--resume_from_checkpoint", "o/checkpoint-4", "--overwrite_output_dir", "true", "--seed", "1"]
    assert resume_command(argv) == ("hypo train --output_dir 'o x' --beta 0.2 --seed 1 "
                                    "--resume_from_checkpoint auto")


def test_sigint_prints_the_checkpoint_and_the_exact_resume_command(tiny, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny, out, tmp_path / "cache", "dpo", 500, save_steps=0)
    proc = start(args)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 130, err[-2000:]
    [folder] = sorted(out.glob("checkpoint-*"))
    expected = "hypo " + shlex.join(args[3:] + ["--resume_from_checkpoint", "auto"])
    assert f"checkpoint written to {folder}; resume with: {expected}\n" in err  # one line


def test_training_raises_no_deprecation_warnings(base_config):
    cfg = base_config(algo="hypo", max_steps=1, use_peft=True, lora_r=4, gradient_checkpointing=True,
                      report_to="tensorboard")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(cfg).train()
    deprecations = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                    if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []
