"""Write failures, signals and non-finite losses never cost what was already written."""

import errno
import signal
import time
from pathlib import Path

import pytest
import torch

from hypo import checkpoint as ckpt
from hypo.trainer import NonFiniteError, Trainer

from .runner import start, train_args


def test_write_failure_at_every_file_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    params = {"w": torch.arange(6.0).reshape(2, 3)}
    state = {"step": 1, "data_cursor": {}, "optimizer": {}, "scheduler": {}, "rng": ckpt.rng_state(),
             "sampler": {}}
    first = ckpt.save_checkpoint(tmp_path, 1, params, state, {"data": "x"})
    real_write = ckpt._write
    n_files = len(ckpt.FILES) + 1  # the manifest is written last
    for k in range(n_files):
        calls = {"n": 0}

        def failing(path, writer, k=k, calls=calls):
            if calls["n"] == k:
                with open(path, "wb") as fh:  # a partial file, then the disk is full
                    fh.write(b"\0" * 7)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            calls["n"] += 1
            return real_write(path, writer)

        monkeypatch.setattr(ckpt, "_write", failing)
        with pytest.raises(OSError, match="No space"):
            ckpt.save_checkpoint(tmp_path, 2, {"w": params["w"] + 1}, {**state, "step": 2}, {"data": "x"})
        assert not (tmp_path / "checkpoint-2").exists()
        assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [1]
        _, tensors, loaded = ckpt.load_checkpoint(first)
        assert torch.equal(tensors["w"], params["w"]) and loaded["step"] == 1
        assert ckpt.resolve_checkpoint("auto", tmp_path) == first
    monkeypatch.setattr(ckpt, "_write", real_write)
    ckpt.save_checkpoint(tmp_path, 2, params, {**state, "step": 2}, {"data": "x"})
    assert not list(tmp_path.glob(".checkpoint-*.staging*"))  # the abandoned staging was cleared


def test_a_kill_while_replacing_a_step_keeps_its_set_aside_copy(tmp_path, monkeypatch):
    """Saving a step that already has a checkpoint sets the old copy aside, then renames the new
    one in; a kill between the two renames leaves the set-aside folder as the step's only copy.
    Resuming puts it back, and the next save does not prune it as an abandoned staging folder."""
    state = {"step": 2, "data_cursor": {}, "optimizer": {}, "scheduler": {}, "rng": ckpt.rng_state(),
             "sampler": {}}
    ckpt.save_checkpoint(tmp_path, 2, {"w": torch.ones(3)}, state, {})
    real_replace = ckpt.os.replace

    def killed_before_the_new_copy(src, dst):
        if Path(src).name.startswith(".checkpoint-2.staging"):
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", killed_before_the_new_copy)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, state, {})
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert not (tmp_path / "checkpoint-2").exists() and list(tmp_path.glob(".checkpoint-2.old-*"))
    folder = ckpt.resolve_checkpoint("auto", tmp_path)
    assert folder == tmp_path / "checkpoint-2" and not list(tmp_path.glob(".checkpoint-2.old-*"))
    _, tensors, _ = ckpt.load_checkpoint(folder)
    assert torch.equal(tensors["w"], torch.ones(3))
    ckpt.save_checkpoint(tmp_path, 3, {"w": torch.ones(3)}, {**state, "step": 3}, {}, limit=2)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [2, 3]


def test_damaged_checkpoint_is_never_loaded(tmp_path):
    state = {"step": 1, "data_cursor": {}, "optimizer": {}, "scheduler": {}, "rng": ckpt.rng_state(),
             "sampler": {}}
    folder = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, state, {})
    with open(folder / "trainable.safetensors", "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\1")
    assert ckpt.read_manifest(folder) is None
    # the only checkpoint is damaged: 'auto' refuses, naming it and why (never starts over)
    with pytest.raises(ckpt.CheckpointError, match=r"none is intact.*checkpoint-1: .*trainable.safetensors "
                                                   r"does not match the SHA-256"):
        ckpt.resolve_checkpoint("auto", tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_checkpoint(str(folder), tmp_path)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_checkpoints_and_exits(sig, code, tiny, tmp_path):
    out = tmp_path / "run"
    # save_steps 0: the only checkpoint is the one the signal asks for; writes slowed so that the
    # second signal lands while it is being written.
    proc = start(train_args(tiny, out, tmp_path / "cache", "hypo", 500, save_steps=0),
                 {"HYPO_TEST_CHECKPOINT_DELAY": "0.3"})
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    sent = time.time()
    proc.send_signal(sig)
    time.sleep(0.4)
    if proc.poll() is None:
        proc.send_signal(sig)  # a second signal during the save changes nothing
    proc.wait(timeout=60)
    assert proc.returncode == code, proc.stderr.read()[-2000:]
    assert time.time() - sent < 10
    found = ckpt.complete_checkpoints(out)
    assert len(found) == 1
    step = found[0][0]
    logged = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert f'"step": {step},' in logged[-1]  # the checkpoint holds the last finished step
    assert not list(out.glob(".checkpoint-*.staging*"))


def _nan_at(trainer, bad_step):
    """Make the loss of training step `bad_step` NaN, and with it every gradient of that step."""
    real = trainer._micro_step

    def micro_step(*args, backward=None, **kwargs):
        if backward is None or trainer.step != bad_step - 1:
            return real(*args, backward=backward, **kwargs)
        nan_backward = lambda loss, last: backward(loss * float("nan"), last)  # noqa: E731
        loss, stats = real(*args, backward=nan_backward, **kwargs)
        return loss * float("nan"), stats

    trainer._micro_step = micro_step


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_nan_at_step_5_never_reaches_the_weights(base_config):
    # A constant schedule, so that the 4-, 5- and 8-step runs take identical first steps.
    four = Trainer(base_config(algo="hypo", max_steps=4, lr_scheduler_type="constant"))
    four.train()
    after4 = _params(four)

    stop = Trainer(base_config(algo="hypo", max_steps=8, lr_scheduler_type="constant", output_dir=four.cfg.output_dir + "-error"))
    _nan_at(stop, 5)
    with pytest.raises(NonFiniteError, match=r"(?i)step 5.*records"):
        stop.train()
    for name, p in _params(stop).items():
        assert torch.equal(p, after4[name]), name

    skip = Trainer(base_config(algo="hypo", max_steps=5, nonfinite_policy="skip", lr_scheduler_type="constant",
                               output_dir=four.cfg.output_dir + "-skip"))
    _nan_at(skip, 5)
    skip.train()
    for name, p in _params(skip).items():
        assert torch.equal(p, after4[name]), name
    from hypo.tracking import read_metrics

    assert read_metrics(skip.cfg.output_dir)[-1]["train/skipped_nonfinite"] == 1


def test_consecutive_nonfinite_steps_stop_the_run(base_config):
    trainer = Trainer(base_config(algo="dpo", max_steps=10, nonfinite_policy="skip",
                                  max_consecutive_nonfinite=3))
    real = trainer._micro_step
    trainer._micro_step = lambda *a, **k: (lambda out: (out[0] * float("inf"), out[1]))(real(*a, **k))
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        trainer.train()


def test_prune_keeps_the_new_checkpoint_and_drops_an_abandoned_future(tmp_path):
    state = {"step": 0, "data_cursor": {}, "optimizer": {}, "scheduler": {}, "rng": ckpt.rng_state(),
             "sampler": {}}
    for step in (3, 5, 9):  # a run that reached step 9
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.ones(2) * step}, state, {}, limit=5)
    # Resumed from step 5 and saved step 6: step 9 belongs to the abandoned run.
    ckpt.save_checkpoint(tmp_path, 6, {"w": torch.ones(2) * 6}, state, {}, limit=1)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [6]
    assert ckpt.resolve_checkpoint("auto", tmp_path).name == "checkpoint-6"
    # Re-saving an existing step replaces it without a window with no complete copy.
    ckpt.save_checkpoint(tmp_path, 6, {"w": torch.zeros(2)}, state, {}, limit=1)
    _, tensors, _ = ckpt.load_checkpoint(tmp_path / "checkpoint-6")
    assert torch.equal(tensors["w"], torch.zeros(2))
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_unwritable_reference_cache_warns_and_keeps_the_values(tmp_path):
    from hypo.refcache import load_or_compute

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write"):
        logps, cached = load_or_compute("k", blocker / "cache", lambda: torch.ones(3, 2))
    assert torch.equal(logps, torch.ones(3, 2)) and not cached
