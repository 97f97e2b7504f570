"""No file hypo reads can run code: hostile and tampered checkpoints, state round trips, and a scan
of the sources for unpickling, eval/exec and remote code (docs/security.md)."""

import hashlib
import json
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import hypo
from hypo import checkpoint as ckpt
from hypo.trainer import Trainer

SRC = Path(hypo.__file__).resolve().parent  # the package under test


class Payload:
    """Unpickling this creates `marker`: the code a hostile pickle would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rehash(folder: Path, format_version: int | None = None) -> None:
    """Recompute the manifest's hashes, as anyone can (they are checksums, not a signature)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if format_version is not None:
        manifest["format_version"] = format_version
    manifest["files"] = {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): _sha(p) for p in sorted(out.rglob("checkpoint-*/*"))}


@pytest.fixture
def run_with_checkpoints(base_config):
    """A finished 2-step run that saved checkpoint-1 and checkpoint-2."""
    cfg = base_config(algo="hypo", max_steps=2, save_steps=1, save_total_limit=5)
    Trainer(cfg).train()
    return cfg


def _resume(base_config, cfg, spec, max_steps=4):
    return Trainer(base_config(**{**cfg.to_dict(), "max_steps": max_steps, "resume_from_checkpoint": spec}))


@pytest.mark.parametrize("spec", ["path", "auto"])
def test_old_format_checkpoint_with_pickle_payload_is_refused_unopened(spec, run_with_checkpoints,
                                                                       base_config, tmp_path):
    cfg = run_with_checkpoints
    out = Path(cfg.output_dir)
    marker = tmp_path / "PWNED"
    hostile = out / "checkpoint-3"  # looks like the newest checkpoint of a format-1 run
    hostile.mkdir()
    (hostile / "trainable.safetensors").write_bytes((out / "checkpoint-2" / "trainable.safetensors").read_bytes())
    torch.save({"step": 3, "rng": Payload(marker)}, hostile / "trainer_state.pt")  # runs on unpickling
    (hostile / "manifest.json").write_text(json.dumps({"step": 3, "fingerprints": {}}))
    _rehash(hostile, format_version=1)
    before = _snapshot(out)
    trainer = _resume(base_config, cfg, str(hostile) if spec == "path" else "auto")
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint-3 uses checkpoint format 1.*pickle"):
        trainer.train()
    assert not marker.exists()
    assert _snapshot(out) == before  # the run's checkpoints (and the hostile folder) untouched


@pytest.mark.parametrize("victim", ["trainer_state.json", "trainer_state.safetensors",
                                    "trainable.safetensors"])
def test_pickle_payload_in_a_current_checkpoint_file_is_refused(victim, run_with_checkpoints,
                                                                base_config, tmp_path):
    cfg = run_with_checkpoints
    out = Path(cfg.output_dir)
    marker = tmp_path / "PWNED"
    folder = out / "checkpoint-2"
    torch.save(Payload(marker), folder / victim)
    _rehash(folder)  # the manifest agrees with the hostile bytes
    before = _snapshot(out)
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint-2: unreadable checkpoint file"):
        _resume(base_config, cfg, str(folder)).train()
    assert not marker.exists()
    assert _snapshot(out) == before


def test_tampered_file_is_refused_by_path_and_skipped_by_auto(run_with_checkpoints, base_config, capsys):
    cfg = run_with_checkpoints
    out = Path(cfg.output_dir)
    folder = out / "checkpoint-2"
    tree = json.loads((folder / "trainer_state.json").read_text())
    tree["step"] = 1  # no longer matches the manifest's SHA-256
    (folder / "trainer_state.json").write_text(json.dumps(tree))
    before = _snapshot(out)
    with pytest.raises(ckpt.CheckpointError, match=r"trainer_state.json does not match the SHA-256"):
        _resume(base_config, cfg, str(folder)).train()
    assert _snapshot(out) == before
    assert ckpt.resolve_checkpoint("auto", out) == out / "checkpoint-1"
    with pytest.raises(ckpt.CheckpointError, match="trainable.safetensors.*missing"):
        (out / "checkpoint-1" / "trainable.safetensors").unlink()
        ckpt.load_checkpoint(out / "checkpoint-1")


@pytest.mark.parametrize("entry", ["rng", "optimizer", "sampler", "config"])
def test_rehashed_state_of_the_wrong_shape_is_a_checkpoint_error(entry, run_with_checkpoints,
                                                                 base_config):
    cfg = run_with_checkpoints
    folder = Path(cfg.output_dir) / "checkpoint-2"
    tree = json.loads((folder / "trainer_state.json").read_text())
    tree[entry] = {"rng": {"python": 1}, "optimizer": {"state": 1}, "sampler": [{"generator": 3}],
                   "config": 3}[entry]
    (folder / "trainer_state.json").write_text(json.dumps(tree))
    _rehash(folder)
    expected = r"optimizer: expected an optimizer state" if entry == "optimizer" else "its trainer state does not fit"
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint-2: {expected}"):
        _resume(base_config, cfg, "auto", max_steps=2).train()


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_trainer_state_round_trips_exactly_without_pickle(scheduler, base_config, monkeypatch):
    cfg = base_config(algo="hypo", max_steps=3, save_steps=3, lr_scheduler_type=scheduler,
                      warmup_steps=1)
    trainer = Trainer(cfg)
    trainer.train()
    folder = Path(cfg.output_dir) / "checkpoint-3"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ckpt.FILES + ("manifest.json",))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    for name in ("load", "loads", "Unpickler"):  # every pickle entry point, torch.load's included
        monkeypatch.setattr(pickle, name, no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    _, _, state = ckpt.load_checkpoint(folder)
    _assert_equal(state["optimizer"], trainer.optimizer.state_dict())
    _assert_equal(state["scheduler"], trainer.scheduler.state_dict())
    _assert_equal(state["sampler"], [trainer.sampler.state_dict()])
    assert state["config"] == cfg.to_dict() and state["step"] == 3
    # A resumed scheduler and optimizer continue exactly.
    resumed = _resume(base_config, cfg, str(folder), max_steps=3)
    resumed._resume(str(folder))
    _assert_equal(resumed.optimizer.state_dict(), trainer.optimizer.state_dict())
    for _ in range(2):
        trainer.scheduler.step(), resumed.scheduler.step()
        assert trainer.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()


def _assert_equal(a, b, where="state"):
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_rng_states_round_trip_through_json_exactly():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    tensors = {}
    tree = json.loads(json.dumps(ckpt.encode_state(ckpt.rng_state(), tensors)))
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(),
                np.random.random(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.decode_state(tree, tensors))
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(), np.random.random(),
           torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_state_codec_refuses_what_it_cannot_store_and_malformed_trees():
    with pytest.raises(ckpt.CheckpointError, match=r"state.x: cannot store a Payload"):
        ckpt.encode_state({"x": Payload(Path("unused"))}, {})
    for tree in ({"$tensor": "missing"}, {"$tuple": 3}, {"$items": [[1]]}, {"$other": 1}):
        with pytest.raises(ckpt.CheckpointError, match="malformed"):
            ckpt.decode_state(tree, {})
    value = {0: {"step": torch.tensor(2.0)}, "betas": (0.9, 0.999), "$key": [None, True, 1.5, "s"],
             "inf": float("inf")}
    tensors = {}
    _assert_equal(ckpt.decode_state(json.loads(json.dumps(ckpt.encode_state(value, tensors))), tensors),
                  value)


def test_yaml_config_cannot_construct_python_objects(tmp_path):
    from hypo.config import ConfigError, TrainConfig

    marker = tmp_path / "PWNED"
    config = tmp_path / "run.yaml"
    config.write_text(f"beta: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")  # unsafe_load runs it
    with pytest.raises(ConfigError, match="run.yaml"):
        TrainConfig.from_yaml(config)
    assert not marker.exists()


# Calls that would deserialise code or run text as code. (Model loading through transformers is
# covered by its own defaults: safetensors first, torch.load(weights_only=True) for .bin files.)
FORBIDDEN = {
    "torch.load": r"\btorch\.load\(",
    "pickle/dill/marshal/shelve": r"\b(import|from) (pickle|cPickle|dill|cloudpickle|marshal|shelve|joblib)\b",
    "weights_only=False": r"weights_only\s*=\s*False",
    "allow_pickle=True": r"allow_pickle\s*=\s*True",
    "eval/exec on data": r"(?<![\w.])(eval|exec)\(",
    "unsafe YAML": r"\byaml\.(unsafe_)?load(_all)?\(|yaml\.(Unsafe|Full)?Loader\b",
    "trust_remote_code=True": r"trust_remote_code\s*=\s*True",
}


def test_no_source_file_unpickles_or_evaluates_data():
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in FORBIDDEN.items():
                if re.search(pattern, code):
                    hits.append(f"{path.relative_to(SRC)}:{lineno}: {what}: {line.strip()}")
    assert not hits, "\n".join(hits)
