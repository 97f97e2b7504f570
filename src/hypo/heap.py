"""Optionally give freed tensor memory back to the OS (glibc on Linux): a fixed mmap threshold.

glibc serves a large allocation with its own ``mmap`` (returned to the OS on ``free``) only above
the *mmap threshold*, and by default it raises that threshold to the size of every mmapped block
freed (up to 32 MiB). After the first activations are freed, most later ones come from the heap,
which keeps freed memory resident and grows with the mix of sizes: a process's peak RSS then says
more about the allocator's history than about the live tensors.

Fixing the threshold keeps every large tensor in its own mapping, so RSS follows the live tensors.
Measured on this 2-core VM (SmolLM2-135M, LoRA, bench settings, ``benchmarks/LOG.md``): peak RSS
DPO 5,204 → 3,230 MB, HyPO 6,041 → 3,243 MB, but steps 1.35-1.8x slower (every allocation faults
in fresh zeroed pages). So it is opt-in, for runs that are short of memory rather than of time:
``HYPO_MMAP_THRESHOLD=131072`` (bytes); unset or 0 keeps glibc's default, and a
``MALLOC_MMAP_THRESHOLD_`` set by the user wins.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from .config import ConfigError

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_applied: int | None = None


def fix_mmap_threshold() -> int:
    """Apply HYPO_MMAP_THRESHOLD once per process; returns the threshold set, 0 if untouched (unset
    or 0, not glibc, or MALLOC_MMAP_THRESHOLD_ given: glibc applies the user's own value)."""
    global _applied
    if _applied is not None:
        return _applied
    raw = os.environ.get("HYPO_MMAP_THRESHOLD", "0")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"HYPO_MMAP_THRESHOLD must be a number of bytes (e.g. 131072; 0 = glibc's "
                          f"default), got {raw!r}")
    _applied = 0
    if (value == 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux")
            or platform.libc_ver()[0] != "glibc"):
        return 0
    try:
        ok = ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, value)
    except (OSError, AttributeError):
        return 0
    _applied = value if ok else 0
    return _applied
