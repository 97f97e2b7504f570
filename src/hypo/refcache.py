"""Reference log-probs of the offline pairs, computed once and cached on disk.

π_ref never changes, so logp_ref(y±|x) of every offline pair is a constant of the run. The cache
key fingerprints what decides those numbers: the reference weights (the base weights with LoRA),
the model config and attention implementation, the tokenizer, the exact token ids of every pair
(which already reflect data, chat template and max lengths) and the precision (dtype, autocast).

An entry is a safetensors file (no pickle) that carries its key in its metadata; an entry whose
key or shape does not match, or whose values are not log-probabilities (finite, ≤ 0), is
recomputed, never trusted.

The values are computed by the policy's own pair forward over the training loop's own groups of
pairs (``compute_reference_logps``), so the run that computes an entry sees exactly 0 rewards at
step 0 on any CPU. How the pairs were grouped is not part of the key: a run with another seed or
batch size reuses the entry, and its step-0 rewards are 0 up to float32 rounding (docs/precision.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import TokenizedPair, fingerprint

CACHE_VERSION = 2  # 2: the key covers the model config, attention implementation and precision


def default_cache_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("HYPO_CACHE", "~/.cache/hypo")))


def cache_key(weights_fp: str, tokenizer_fp: str, pairs_fp: str, precision: str,
              model_config_fp: str = "") -> str:
    """precision: the dtype plus the autocast mode, e.g. 'float32' or 'float32+bf16-autocast'."""
    return fingerprint({"v": CACHE_VERSION, "weights": weights_fp, "tokenizer": tokenizer_fp,
                        "pairs": pairs_fp, "precision": precision, "model_config": model_config_fp})


def make_private_dirs(folder: Path, root: Path | None = None) -> bool:
    """Create ``folder`` and its missing parents. Under ``root`` (None: ``folder`` is the cache
    itself) every folder created gets mode 0700, whichever command creates it first; an existing
    folder keeps its mode. Returns whether ``folder`` is in the cache."""
    folder = Path(folder).absolute()
    root = folder if root is None else Path(root).absolute()
    private = folder == root or root in folder.parents
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700 if private else 0o777, exist_ok=True)
        if private:
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
    return private


def _read_entry(path: Path, key: str, rows: int | None) -> torch.Tensor | None:
    """The cached (rows, 2) float32 log-probs if the file's metadata key is `key`; else None."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            if (fh.metadata() or {}).get("key") != key:
                return None  # a file under another entry's name: never trusted
            logps = fh.get_tensor("logps")
    except Exception:  # noqa: BLE001 - a damaged entry is simply recomputed
        return None
    if logps.dtype != torch.float32 or logps.dim() != 2 or logps.shape[1] != 2:
        return None
    if rows is not None and logps.shape[0] != rows:
        return None
    if not bool(torch.isfinite(logps).all()) or bool((logps > 0).any()):
        return None  # not log-probabilities (a sequence's log-prob is finite and ≤ 0)
    return logps


def compute_reference_logps(pairs: list[TokenizedPair], groups: list[list[int]], pair_logps_fn,
                            progress=None) -> torch.Tensor:
    """(n, 2) float32 tensor of [logp_ref(chosen), logp_ref(rejected)] per pair.

    groups: the pairs' indices as the training loop's forwards hold them (one list per micro-batch,
    every pair once); pair_logps_fn(list of b pairs) -> (b, 2) [chosen, rejected] under π_ref,
    the very function of the policy's forward. Same rows, same padding, same head path, hence the
    same kernels: at step 0 (π = π_ref) the rewards are exactly 0 on any CPU (docs/reliability.md).
    progress: optional callable(pairs done).
    """
    if sorted(i for group in groups for i in group) != list(range(len(pairs))):
        raise ValueError("groups must hold every pair's index exactly once")
    out = torch.empty(len(pairs), 2, dtype=torch.float32)
    for group in groups:
        logps = pair_logps_fn([pairs[i] for i in group]).float().cpu()
        index = torch.tensor(group, dtype=torch.long)
        out[index] = logps
        if progress:
            progress(len(group))
    return out


def load_or_compute(key: str, cache_dir: Path | None, compute,
                    rows: int | None = None) -> tuple[torch.Tensor, bool]:
    """Return (logps, was_cached). Writes atomically (temp file + rename) so a kill never leaves a
    half-written cache entry; an unreadable entry, or one whose metadata key or row count (`rows`,
    the number of pairs) does not match, is recomputed and replaced."""
    from safetensors.torch import save_file

    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"ref-logps-{key}.safetensors"
    if path.exists():
        logps = _read_entry(path, key, rows)
        if logps is not None:
            return logps, True
    logps = compute()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        make_private_dirs(path.parent)
        save_file({"logps": logps.contiguous()}, tmp, metadata={"key": key})
        os.replace(tmp, path)
    except OSError as err:  # an unwritable cache costs a recomputation next time, not this run
        import warnings

        warnings.warn(f"could not write the reference log-prob cache to {path} ({err}); set "
                      "ref_cache_dir to a writable folder to reuse it across runs.", stacklevel=2)
    return logps, False
