"""Interrupted runs end bitwise identical (CPU) to uninterrupted ones (issue: 12 straight vs 7 +
resume; here 30 steps so that the kill chain below has room)."""

import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from hypo.checkpoint import complete_checkpoints

from .runner import assert_bitwise_equal, final_state, run, start, train_args

STEPS = 30  # long enough that 11 kills land before a run can finish


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """12 uninterrupted steps per algorithm, checkpointing every step."""
    root = tmp_path_factory.mktemp("straight")
    outs = {}
    for algo in ("dpo", "hypo"):
        out = root / algo
        proc = run(train_args(tiny, out, root / "cache", algo, STEPS))
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[algo] = out
    return outs


@pytest.mark.parametrize("algo", ["dpo", "hypo"])
def test_resume_after_step_7_in_a_new_process_is_bitwise_identical(algo, straight, tiny, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    # The state of a run stopped after step 7: its checkpoint and its logs up to step 7.
    shutil.copytree(straight[algo] / "checkpoint-7", out / "checkpoint-7")
    for log in ("metrics.jsonl", "online_samples.jsonl"):
        lines = (straight[algo] / log).read_text().splitlines()
        (out / log).write_text("".join(x + "\n" for x in lines if '"step": 7,' in x or
                                       int(x.split('"step": ')[1].split(",")[0].rstrip("}")) <= 7))
    proc = run(train_args(tiny, out, tmp_path / "cache", algo, STEPS,
                          resume_from_checkpoint="auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "step 7" in proc.stderr
    assert_bitwise_equal(final_state(out, STEPS), final_state(straight[algo], STEPS))


def test_resume_refuses_changed_settings(straight, tiny, tmp_path):
    out = tmp_path / "changed"
    shutil.copytree(straight["hypo"] / "checkpoint-7", out / "checkpoint-7")
    proc = run(train_args(tiny, out, tmp_path / "cache", "hypo", STEPS, resume_from_checkpoint="auto",
                          beta=0.2, num_online_samples=3))
    assert proc.returncode == 2
    assert "beta" in proc.stderr and "num_online_samples" in proc.stderr
    # Harmless changes (logging) are allowed.
    proc = run(train_args(tiny, out, tmp_path / "cache", "hypo", STEPS, resume_from_checkpoint="auto",
                          logging_steps=3))
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bitwise_identical(straight, tiny, tmp_path):
    """SIGKILL at step 7, then 10 more times at random moments (checkpoint writes slowed so that
    some kills land mid-write); every resume continues from the newest complete checkpoint."""
    rng = random.Random(0)
    out = tmp_path / "killed"
    args = train_args(tiny, out, tmp_path / "cache", "hypo", STEPS, resume_from_checkpoint="auto")
    slow = {"HYPO_TEST_CHECKPOINT_DELAY": "0.04"}
    kills, finished = 0, False
    while kills < 11 and not finished:
        before = max([s for s, _ in complete_checkpoints(out)] or [0]) if out.exists() else 0
        proc = start(args, slow)
        deadline = time.time() + 120
        target = 7 if kills == 0 else None
        while proc.poll() is None and time.time() < deadline:
            done = max([s for s, _ in complete_checkpoints(out)] or [0]) if out.exists() else 0
            if target is not None and done >= target:
                break
            if target is None and done > before:  # training is under way: kill at a random moment
                time.sleep(rng.uniform(0, 0.15))
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            finished = proc.returncode == 0
            assert finished, proc.stderr.read()[-3000:]
    assert kills >= 8, kills  # most kills landed before the run could finish
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_bitwise_equal(final_state(out, STEPS), final_state(straight["hypo"], STEPS))
    assert not list(Path(out).glob(".checkpoint-*.staging"))  # abandoned staging folders cleared
