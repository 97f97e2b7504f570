"""Atomic checkpoints: write to a staging folder, fsync, rename; the manifest goes last.

A checkpoint folder ``output_dir/checkpoint-N`` holds everything that decides the rest of the run:
the trainable weights (``trainable.safetensors``), optimizer and scheduler state, the sampler's
generator, the global RNG states and the step (the data cursor is a function of the step). A folder
without a valid manifest is never loaded.

Nothing in a checkpoint is a pickle (format 2): the trainer state is a JSON tree
(``trainer_state.json``) whose tensors live in ``trainer_state.safetensors``, so loading a
checkpoint someone else wrote can never run code. Format-1 checkpoints (``trainer_state.pt``, a
pickle) are refused without being opened. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 2  # 2: trainer state as JSON + safetensors (1: a pickled trainer_state.pt)
MANIFEST = "manifest.json"
PREFIX = "checkpoint-"
FILES = ("trainable.safetensors", "trainer_state.json", "trainer_state.safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match this run."""


def rng_state() -> dict:
    """Every global RNG state as ints, lists and uint8 tensors (storable without pickle)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "numpy": {"name": name, "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Inverse of rng_state(), exactly."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], np.array(nps["keys"], dtype=np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode_state(obj, tensors: dict[str, torch.Tensor], where: str = "state"):
    """A JSON-able tree for `obj`; its tensors go into `tensors` (saved as safetensors).

    Handles what optimizer, scheduler, RNG and sampler state dicts hold: None, bool, int, float,
    str, tensors, lists, tuples and dicts (non-string keys such as the optimizer's parameter
    indices included). Tuples and dicts with other keys are tagged so decode_state restores them
    exactly; anything else is refused rather than pickled.
    """
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().cpu().contiguous()
        return {"$tensor": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"$tuple": [encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode_state(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"$items": [[encode_state(k, tensors, where), encode_state(v, tensors, f"{where}.{k}")]
                           for k, v in obj.items()]}
    raise CheckpointError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint (only "
                          "tensors, numbers, strings, None, lists, tuples and dicts).")


def decode_state(tree, tensors: dict[str, torch.Tensor]):
    """Inverse of encode_state; a malformed tree raises CheckpointError (never runs code)."""
    if isinstance(tree, list):
        return [decode_state(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tags = [k for k in tree if k.startswith("$")]
    if not tags:
        return {k: decode_state(v, tensors) for k, v in tree.items()}
    if len(tree) == 1 and "$tensor" in tree and tree["$tensor"] in tensors:
        return tensors[tree["$tensor"]]
    if len(tree) == 1 and isinstance(tree.get("$tuple"), list):
        return tuple(decode_state(v, tensors) for v in tree["$tuple"])
    if len(tree) == 1 and isinstance(tree.get("$items"), list):
        items = tree["$items"]
        if all(isinstance(kv, list) and len(kv) == 2 for kv in items):
            return {decode_state(k, tensors): decode_state(v, tensors) for k, v in items}
    raise CheckpointError(f"malformed trainer state entry {str(tree)[:80]!r}.")


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
    """Write checkpoint-<step> atomically and prune old ones; returns the final folder.

    The files are written into a fresh staging folder (a unique name: nothing planted there can be
    in the way) and listed in the run's hypo_files.json before the folder is renamed into place.
    """
    from safetensors.torch import save_file

    from .runfolder import RunFolder

    output_dir = Path(output_dir)
    run = RunFolder(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    with run.staging(f"{PREFIX}{step}") as staging:
        tensors = {k: v.detach().contiguous().cpu() for k, v in trainable.items()}
        _write(staging / "trainable.safetensors", lambda path: save_file(tensors, path))
        state_tensors: dict[str, torch.Tensor] = {}
        tree = encode_state(state, state_tensors)
        _write(staging / "trainer_state.safetensors", lambda path: save_file(state_tensors, path))
        _write(staging / "trainer_state.json", lambda path: path.write_text(json.dumps(tree)))
        files = sorted(p.name for p in staging.iterdir())
        manifest = {"format_version": FORMAT_VERSION, "step": step, "fingerprints": fingerprints,
                    "files": {name: _sha256(staging / name) for name in files}}
        _write(staging / MANIFEST, lambda path: path.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
        for name in files + [MANIFEST]:
            _fsync(staging / name)
        if final.is_symlink() or (final.exists() and not run.owns(final.name)):
            raise CheckpointError(f"{final} exists and was not written by this run (or is a link); "
                                  "hypo does not replace it. Move it away and resume.")
        run.record(dirs=[final.name], files=[f"{final.name}/{n}" for n in files + [MANIFEST]])
        old = None
        if final.exists():  # an older copy of the same step: set aside until the new one is in place
            old = output_dir / f".{PREFIX}{step}.old-{os.getpid()}-{time.time_ns()}"
            run.record(trees=[old.name])
            os.replace(final, old)
        os.replace(staging, final)
    _fsync(output_dir)
    if old is not None:
        run.remove(old.name)
    prune(output_dir, limit, keep=final)
    return final


LEGACY_HELP = ("uses checkpoint format {found}, whose trainer_state.pt is a Python pickle: loading "
               "it could run any code put into it, so this hypo (format {fmt}) does not open it. "
               "Finish that run with the hypo version that wrote it, or start a new run in a fresh "
               "output_dir (see docs/security.md).")


def _verify(folder: Path) -> dict:
    """verify_checkpoint without the memo."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: missing or unreadable {MANIFEST} ({err}).") from None
    except RecursionError:
        raise CheckpointError(f"{folder}: {MANIFEST} is malformed (nested too deeply).") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{folder}: {MANIFEST} is malformed.")
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        if isinstance(found, int) and found < FORMAT_VERSION:
            raise CheckpointError(f"{folder} " + LEGACY_HELP.format(found=found, fmt=FORMAT_VERSION))
        raise CheckpointError(f"{folder}: unknown checkpoint format {found!r} (this hypo reads "
                              f"format {FORMAT_VERSION}); use the hypo version that wrote it.")
    for name in FILES:
        if name not in manifest["files"]:
            raise CheckpointError(f"{folder}: {MANIFEST} does not list {name}.")
    for name, digest in manifest["files"].items():
        path = folder / name
        if Path(name).name != name or name in (".", "..") or not path.is_file() or path.is_symlink():
            raise CheckpointError(f"{folder}: file {name!r} listed in {MANIFEST} is missing.")
        if _sha256(path) != digest:
            raise CheckpointError(f"{folder}: {name} does not match the SHA-256 in {MANIFEST}: the "
                                  "file is damaged or was changed after the checkpoint was written.")
    return manifest


_VERIFIED: dict[str, tuple] = {}  # folder -> (stat signature of its files, manifest)


def _signature(folder: Path) -> tuple:
    try:
        return tuple(sorted((e.name, e.stat(follow_symlinks=False).st_size,
                             e.stat(follow_symlinks=False).st_mtime_ns, e.inode())
                            for e in os.scandir(folder)))
    except OSError:
        return ()


def verify_checkpoint(folder: Path) -> dict:
    """The manifest of an intact checkpoint of this format; else CheckpointError saying why.

    Reads only JSON and hashes bytes: an old or hostile folder is judged without being parsed.
    A folder verified before whose files have not changed (names, sizes, times, inodes) is not
    hashed again: the pre-flight check and the resume read it once.
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise CheckpointError(f"{folder} is a symbolic link; hypo loads only checkpoint folders it "
                              "wrote in place.")
    signature = _signature(folder)
    cached = _VERIFIED.get(str(folder))
    if cached and cached[0] == signature and signature:
        return cached[1]
    manifest = _verify(folder)
    _VERIFIED[str(folder)] = (signature, manifest)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    """The manifest if the folder is a complete, intact checkpoint; else None."""
    try:
        return verify_checkpoint(folder)
    except CheckpointError:
        return None


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    found = []
    for folder in Path(output_dir).glob(f"{PREFIX}*"):
        match = re.fullmatch(rf"{PREFIX}(\d+)", folder.name)
        if match and folder.is_dir() and read_manifest(folder) is not None:
            found.append((int(match.group(1)), folder))
    return sorted(found)


def restore_set_aside(output_dir: str | Path) -> None:
    """Put back a checkpoint that save_checkpoint set aside to replace it with a new copy of the
    same step, when the process died between the two renames: then the set-aside folder is the
    only copy of that step, and pruning it as an abandoned save would lose it."""
    from .runfolder import RunFolder

    output_dir = Path(output_dir)
    for tree in sorted(RunFolder(output_dir).entries()["trees"]):
        match = re.fullmatch(rf"\.{PREFIX}(\d+)\.old-[\d-]+", tree)
        final = output_dir / f"{PREFIX}{match.group(1)}" if match else None
        if final is not None and not final.exists() and (output_dir / tree).is_dir():
            os.replace(output_dir / tree, final)


def prune(output_dir: Path, limit: int, keep: Path | None = None) -> None:
    """Keep the `limit` newest complete checkpoints (at least 1) and always `keep` (the one just
    written, even if a later step from an abandoned run exists); clear abandoned staging folders.
    Only what the run's hypo_files.json lists is removed (``RunFolder.remove``)."""
    from .runfolder import RunFolder

    run = RunFolder(output_dir)
    restore_set_aside(output_dir)
    for tree in sorted(run.entries()["trees"]):
        if tree.startswith(f".{PREFIX}"):  # staging of a save that never finished
            run.remove(tree)
    found = []
    for step, folder in complete_checkpoints(output_dir):
        if not run.owns(folder.name):
            continue  # not written by this run: never removed
        if keep is not None and folder != keep and step > int(keep.name[len(PREFIX):]):
            # written by an abandoned run that went further: resuming from `keep`'s past ended it
            run.remove(folder.name)
        elif folder != keep:
            found.append(folder)
    budget = max(limit, 1) - (keep is not None)
    for folder in found[: max(len(found) - budget, 0)]:
        run.remove(folder.name)


def _is_legacy(folder: Path) -> bool:
    """Whether `folder` has a manifest of an older format (read as JSON only)."""
    try:
        found = json.loads((folder / MANIFEST).read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(found, int) and found < FORMAT_VERSION


def checkpoint_status(output_dir: str | Path) -> list[tuple[int, Path, str | None]]:
    """(step, folder, why it cannot load or None) of every checkpoint-N folder, oldest first."""
    found = []
    for folder in Path(output_dir).glob(f"{PREFIX}*"):
        match = re.fullmatch(rf"{PREFIX}(\d+)", folder.name)
        if not match:
            continue
        try:
            if not folder.is_dir():
                raise CheckpointError(f"{folder} is not a folder.")
            verify_checkpoint(folder)
            found.append((int(match.group(1)), folder, None))
        except CheckpointError as err:
            found.append((int(match.group(1)), folder, str(err)))
    return sorted(found, key=lambda x: x[0])


def refuse_if_none_intact(output_dir: str | Path) -> None:
    """'auto' over checkpoints that all fail to verify: refuse, naming each and why, instead of
    starting over (which would replace the run)."""
    status = checkpoint_status(output_dir)
    if status and all(why for _, _, why in status):
        reasons = "; ".join(f"{folder.name}: {why}" for _, folder, why in status)
        raise CheckpointError(
            f"resume_from_checkpoint=auto: {output_dir} holds {len(status)} checkpoint(s) and none is "
            f"intact ({reasons}). Nothing was changed. To start this run over add "
            "--overwrite_output_dir (without --resume_from_checkpoint); to keep its files, start "
            "in another --output_dir.")


def resolve_checkpoint(spec: str, output_dir: str | Path) -> Path | None:
    """'auto' -> newest complete checkpoint in output_dir (None if there is none); else the path.

    'auto' refuses (rather than silently skips) an older-format checkpoint newer than every
    loadable one, and a folder whose checkpoints are all damaged: starting over would hide that
    the run cannot continue from them. A damaged checkpoint newer than an intact one is skipped
    with a line that names it and why.
    """
    if spec == "auto":
        restore_set_aside(output_dir)
        refuse_if_none_intact(output_dir)
        found = complete_checkpoints(output_dir)
        newest = found[-1][0] if found else -1
        for folder in Path(output_dir).glob(f"{PREFIX}*"):
            match = re.fullmatch(rf"{PREFIX}(\d+)", folder.name)
            if match and int(match.group(1)) > newest and _is_legacy(folder):
                raise CheckpointError(f"resume_from_checkpoint=auto: {folder} " + LEGACY_HELP.format(
                    found=json.loads((folder / MANIFEST).read_text())["format_version"],
                    fmt=FORMAT_VERSION))
        for step, folder, why in checkpoint_status(output_dir):
            if why and step > newest:
                from .progress import console

                console.print(f"skipping {folder}: {why}", markup=False, highlight=False)
        return found[-1][1] if found else None
    folder = Path(spec)
    if not folder.is_dir():
        raise CheckpointError(f"resume_from_checkpoint: {folder} is not a folder.")
    try:
        verify_checkpoint(folder)
    except CheckpointError as err:
        hint = "" if _is_legacy(folder) else (" It is not a complete checkpoint; use 'auto' to pick "
                                              "the newest good one.")
        raise CheckpointError(f"resume_from_checkpoint: {err}{hint}") from None
    return folder


def load_checkpoint(folder: Path) -> tuple[dict, dict, dict]:
    """Returns (manifest, trainable tensors, trainer state); parses only JSON and safetensors."""
    from safetensors.torch import load_file

    manifest = verify_checkpoint(folder)
    try:
        trainable = load_file(folder / "trainable.safetensors")
        tensors = load_file(folder / "trainer_state.safetensors")
        state = decode_state(json.loads((folder / "trainer_state.json").read_text()), tensors)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - OSError, JSON errors, safetensors' SafetensorError
        raise CheckpointError(f"{folder}: unreadable checkpoint file ({err}).") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder}: trainer_state.json does not hold a trainer state.")
    for key in ("optimizer", "scheduler", "rng", "sampler", "step", "data_cursor"):
        if key not in state:
            raise CheckpointError(f"{folder}: trainer state lacks '{key}'; it cannot resume exactly.")
    return manifest, trainable, state


def _number(value, nonneg: bool = True) -> bool:
    """A finite int or float (not a bool), ≥ 0 if asked."""
    ok = type(value) in (int, float) and math.isfinite(value)
    return ok and (not nonneg or value >= 0)


def check_state(folder: Path, manifest: dict, state: dict, trainable: dict[str, torch.Tensor],
                params: dict[str, torch.Tensor], optimizer) -> None:
    """Refuse a trainer state that this run's code would misread (rather than fail later with a
    traceback, blame the data, or silently broadcast / cast): counters are non-negative integers
    that agree with the folder and the manifest, λ is finite, every tensor has the shape and dtype
    of the parameter it belongs to. The messages name the field and what was expected."""
    def bad(field: str, expected: str, found) -> CheckpointError:
        return CheckpointError(f"{folder}: {field}: expected {expected}, found {str(found)[:80]}. The "
                               "checkpoint was not written by hypo for this run; resume another one "
                               "or start a new run.")

    step = state.get("step")
    if type(step) is not int or step < 0:
        raise bad("step", "an integer ≥ 0", repr(step))
    named = re.fullmatch(rf"{PREFIX}(\d+)", Path(folder).name)
    if manifest.get("step") != step or (named and int(named.group(1)) != step):
        raise bad("step", f"the step in its name and in {MANIFEST} ({manifest.get('step')})", step)
    for key in ("skipped", "consecutive_skips"):
        if type(state.get(key, 0)) is not int or state.get(key, 0) < 0:
            raise bad(key, "an integer ≥ 0", repr(state.get(key)))
    if "kl_coef" in state and not _number(state["kl_coef"]):
        raise bad("kl_coef", "a finite number ≥ 0 (λ)", repr(state["kl_coef"]))
    for name, p in params.items():
        t = trainable.get(name)
        if isinstance(t, torch.Tensor) and (t.shape != p.shape or t.dtype != p.dtype):
            raise bad(f"trainable.safetensors: {name}", f"a {p.dtype} tensor of shape "
                      f"{tuple(p.shape)}", f"{t.dtype} {tuple(t.shape)}")
    _check_optimizer(state.get("optimizer"), optimizer, bad)
    sched = state.get("scheduler")
    if not isinstance(sched, dict) or sched.get("last_epoch") != step or type(sched.get("last_epoch")) is not int:
        raise bad("scheduler.last_epoch", f"the step, {step}",
                  repr(sched.get("last_epoch") if isinstance(sched, dict) else sched))
    for key in ("base_lrs", "_last_lr"):
        values = sched.get(key)
        if not isinstance(values, list) or len(values) != len(optimizer.param_groups) or \
                not all(_number(v) for v in values):
            raise bad(f"scheduler.{key}", f"{len(optimizer.param_groups)} finite numbers ≥ 0", values)


def _check_optimizer(saved, optimizer, bad) -> None:
    """The optimizer state must describe this optimizer's parameters: the same groups and sizes,
    finite hyper-parameters, and moments shaped and typed as their parameters."""
    groups = optimizer.param_groups
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) \
            or not isinstance(saved.get("state"), dict):
        raise bad("optimizer", "an optimizer state with a 'state' mapping and a 'param_groups' list",
                  repr(saved))
    if len(saved["param_groups"]) != len(groups):
        raise bad("optimizer.param_groups", f"{len(groups)} group(s)", len(saved["param_groups"]))
    params = []
    for g, (mine, theirs) in enumerate(zip(groups, saved["param_groups"])):
        ids = theirs.get("params") if isinstance(theirs, dict) else None
        if not isinstance(ids, list) or len(ids) != len(mine["params"]):
            raise bad(f"optimizer.param_groups[{g}].params", f"{len(mine['params'])} parameters", ids)
        for key, value in theirs.items():
            floats = value if isinstance(value, (list, tuple)) else [value]
            if key != "params" and any(type(v) is float and not math.isfinite(v) for v in floats):
                raise bad(f"optimizer.param_groups[{g}].{key}", "finite numbers", value)
        params += list(zip(ids, mine["params"]))
    where = dict(params)
    for index, moments in saved["state"].items():
        if index not in where or not isinstance(moments, dict):
            raise bad(f"optimizer.state[{index}]", "the state of one of this run's parameters", index)
        p = where[index]
        for key, value in moments.items():
            if key == "step":
                number = float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value
                if not _number(number):
                    raise bad(f"optimizer.state[{index}].step", "a finite count ≥ 0", value)
            elif not isinstance(value, torch.Tensor) or value.shape != p.shape or value.dtype != p.dtype:
                found = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else value
                raise bad(f"optimizer.state[{index}].{key}", f"a {p.dtype} tensor of shape "
                          f"{tuple(p.shape)}", found)
