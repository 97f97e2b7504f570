"""Reference log-probs of the offline pairs, computed once and cached on disk.

π_ref never changes, so logp_ref(y±|x) of every offline pair is a constant of the run. The cache
key fingerprints what decides those numbers: the reference weights, the tokenizer, the exact token
ids of every pair (which already reflect data, chat template and max lengths) and the dtype.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import TokenizedPair, fingerprint
from .logprobs import batched_logps

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("HYPO_CACHE", Path.home() / ".cache" / "hypo"))


def cache_key(weights_fp: str, tokenizer_fp: str, pairs_fp: str, dtype: str) -> str:
    return fingerprint({"v": CACHE_VERSION, "weights": weights_fp, "tokenizer": tokenizer_fp,
                        "pairs": pairs_fp, "dtype": dtype})


def compute_reference_logps(pairs: list[TokenizedPair], ref_logps_fn, pad_token_id: int,
                            batch_size: int, device, progress=None) -> torch.Tensor:
    """(n, 2) float32 tensor of [logp_ref(chosen), logp_ref(rejected)] per pair.

    Each forward holds the chosen and the rejected responses of `batch_size` pairs.
    ref_logps_fn: SequenceBatch -> (N,) reference log-probs. progress: optional callable(pairs done).
    """
    prompts, responses, rows = [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = range(start, min(start + batch_size, len(pairs)))
        for column, field in enumerate(("chosen_ids", "rejected_ids")):
            prompts += [pairs[i].prompt_ids for i in chunk]
            responses += [getattr(pairs[i], field) for i in chunk]
            rows += [(i, column) for i in chunk]
    logps = batched_logps(ref_logps_fn, prompts, responses, pad_token_id, 2 * batch_size, device,
                          progress=(lambda n: progress(n // 2)) if progress else None)
    out = torch.empty(len(pairs), 2, dtype=torch.float32)
    if rows:
        index = torch.tensor(rows)
        out[index[:, 0], index[:, 1]] = logps
    return out


def load_or_compute(key: str, cache_dir: Path | None, compute) -> tuple[torch.Tensor, bool]:
    """Return (logps, was_cached). Writes atomically (temp file + rename) so a kill never leaves a
    half-written cache entry; an unreadable entry is recomputed."""
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"ref-logps-{key}.safetensors"
    if path.exists():
        try:
            return load_file(path)["logps"], True
        except Exception:  # noqa: BLE001 - a damaged entry is simply recomputed
            pass
    logps = compute()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"logps": logps.contiguous()}, tmp, metadata={"key": key})
        os.replace(tmp, path)
    except OSError as err:  # an unwritable cache costs a recomputation next time, not this run
        import warnings

        warnings.warn(f"could not write the reference log-prob cache to {path} ({err}); set "
                      "ref_cache_dir to a writable folder to reuse it across runs.", stacklevel=2)
    return logps, False
