"""Atomic checkpoints: write to a staging folder, fsync, rename; the manifest goes last.

A checkpoint folder ``output_dir/checkpoint-N`` holds everything that decides the rest of the run:
the trainable weights (``trainable.safetensors``), optimizer and scheduler state, the sampler's
generator, the global RNG states and the step (the data cursor is a function of the step). A folder
without a valid manifest is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREFIX = "checkpoint-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match this run."""


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write(path: Path, writer) -> None:
    """Every checkpoint file goes through here (tests inject failures and delays at this point)."""
    delay = float(os.environ.get("HYPO_TEST_CHECKPOINT_DELAY", "0") or 0)
    if delay:  # test hook: widen the window in which a kill lands mid-write
        time.sleep(delay)
    writer(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(output_dir: str | Path, step: int, trainable: dict[str, torch.Tensor],
                    state: dict, fingerprints: dict, limit: int = 2) -> Path:
    """Write checkpoint-<step> atomically and prune old ones; returns the final folder."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    staging = output_dir / f".{PREFIX}{step}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in trainable.items()}
    _write(staging / "trainable.safetensors", lambda path: save_file(tensors, path))
    _write(staging / "trainer_state.pt", lambda path: torch.save(state, path))
    files = sorted(p.name for p in staging.iterdir())
    manifest = {"format_version": FORMAT_VERSION, "step": step, "fingerprints": fingerprints,
                "files": {name: _sha256(staging / name) for name in files}}
    _write(staging / MANIFEST, lambda path: path.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
    for name in files + [MANIFEST]:
        _fsync(staging / name)
    old = None
    if final.exists():  # an older copy of the same step: set it aside until the new one is in place
        old = output_dir / f".{PREFIX}{step}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    _fsync(output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    prune(output_dir, limit, keep=final)
    return final


def read_manifest(folder: Path) -> dict | None:
    """The manifest if the folder is a complete, intact checkpoint; else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        for name, digest in manifest["files"].items():
            if _sha256(folder / name) != digest:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    found = []
    for folder in Path(output_dir).glob(f"{PREFIX}*"):
        match = re.fullmatch(rf"{PREFIX}(\d+)", folder.name)
        if match and folder.is_dir() and read_manifest(folder) is not None:
            found.append((int(match.group(1)), folder))
    return sorted(found)


def prune(output_dir: Path, limit: int, keep: Path | None = None) -> None:
    """Keep the `limit` newest complete checkpoints (at least 1) and always `keep` (the one just
    written, even if a later step from an abandoned run exists); clear abandoned staging folders."""
    for staging in output_dir.glob(f".{PREFIX}*.staging"):
        shutil.rmtree(staging, ignore_errors=True)
    found = []
    for step, folder in complete_checkpoints(output_dir):
        if keep is not None and folder != keep and step > int(keep.name[len(PREFIX):]):
            # written by an abandoned run that went further: resuming from `keep`'s past ended it
            shutil.rmtree(folder, ignore_errors=True)
        elif folder != keep:
            found.append(folder)
    budget = max(limit, 1) - (keep is not None)
    for folder in found[: max(len(found) - budget, 0)]:
        shutil.rmtree(folder, ignore_errors=True)


def resolve_checkpoint(spec: str, output_dir: str | Path) -> Path | None:
    """'auto' -> newest complete checkpoint in output_dir (None if there is none); else the path."""
    if spec == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1][1] if found else None
    folder = Path(spec)
    if not folder.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: {folder} is not a folder.")
    if read_manifest(folder) is None:
        raise CheckpointError(f"resume_from_checkpoint: {folder} is not a complete checkpoint "
                              "(missing or damaged manifest); use 'auto' to pick the newest good one.")
    return folder


def load_checkpoint(folder: Path) -> tuple[dict, dict, dict]:
    """Returns (manifest, trainable tensors, trainer state)."""
    from safetensors.torch import load_file

    manifest = read_manifest(folder)
    if manifest is None:
        raise CheckpointError(f"{folder} is not a complete checkpoint.")
    trainable = load_file(folder / "trainable.safetensors")
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    for key in ("optimizer", "scheduler", "rng", "sampler", "step", "data_cursor"):
        if key not in state:
            raise CheckpointError(f"{folder}: trainer state lacks '{key}'; it cannot resume exactly.")
    return manifest, trainable, state
