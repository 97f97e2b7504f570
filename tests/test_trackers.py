"""Trackers selected with report_to: JSONL always, TensorBoard (tests/test_cli.py reads its events
back), Weights & Biases as an optional extra in offline mode."""

import json
import sys
import types

import pytest

from hypo.tracking import MetricsLogger, read_metrics


def test_jsonl_is_always_written(tmp_path):
    logger = MetricsLogger(tmp_path, [], {"beta": 0.1})
    logger.log({"loss": 0.5, "kl/online": float("nan")}, 1)
    logger.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5, "kl/online": "nan"}]


def test_wandb_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'hypo\[wandb\]'"):
        MetricsLogger(tmp_path, ["wandb"], {})


def test_wandb_receives_config_and_metrics(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, metrics, step):
            calls.append(("log", dict(metrics), step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    logger = MetricsLogger(tmp_path, ["wandb"], {"beta": 0.1})
    logger.log({"loss": 0.25, "rewards/margins": 0.1}, 3)
    logger.close()
    assert calls[0][0] == "init" and calls[0][1]["config"] == {"beta": 0.1}
    assert calls[0][1]["dir"] == str(tmp_path)
    assert calls[1] == ("log", {"loss": 0.25, "rewards/margins": 0.1}, 3)
    assert calls[2] == ("finish",)


@pytest.mark.slow
def test_wandb_offline_run_for_real(base_config, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    from hypo.trainer import Trainer

    cfg = base_config(algo="dpo", max_steps=2, report_to="wandb")
    Trainer(cfg).train()
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert runs, list((tmp_path / "out").iterdir())
    assert list(runs[0].glob("*.wandb"))
    assert [r["step"] for r in read_metrics(cfg.output_dir)] == [1, 2]
