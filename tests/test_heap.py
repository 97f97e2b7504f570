"""glibc's mmap threshold (hypo.heap): freed tensor memory goes back to the OS.

Each case runs in a fresh interpreter, since the threshold is a process-wide setting."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

# A 16 MiB block freed first raises glibc's dynamic threshold; then 100 blocks of 2 MiB are
# allocated and all but the last freed. With the dynamic threshold they come from the heap, which
# cannot shrink below the last one: ~200 MB stay resident. With a fixed threshold each block is
# its own mapping and goes back to the OS when freed.
SCRIPT = """
import sys, torch
from hypo.heap import fix_mmap_threshold
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
applied = fix_mmap_threshold()
base = rss()
big = torch.ones(4 * 1024 * 1024); del big
blocks = [torch.ones(512 * 1024) for _ in range(100)]
del blocks[:-1]
print(applied, round(rss() - base))
"""


def run(env_extra: dict) -> tuple[int, int]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "HYPO_MMAP"))}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    applied, retained = out.stdout.split()
    return int(applied), int(retained)


def test_fixed_threshold_returns_freed_blocks_that_glibc_default_keeps():
    applied, retained = run({"HYPO_MMAP_THRESHOLD": "131072"})
    assert applied == 131072
    assert retained < 50  # MB: only the last 2 MiB block is live
    applied, retained_default = run({})  # not asked for: glibc's default
    assert applied == 0
    assert retained_default > 150  # the 99 freed 2 MiB blocks stay resident


def test_user_malloc_setting_wins_and_bad_value_is_named():
    import os

    assert run({"MALLOC_MMAP_THRESHOLD_": "131072", "HYPO_MMAP_THRESHOLD": "65536"})[0] == 0  # glibc's own
    for value in ("lots", "-1"):
        bad = subprocess.run([sys.executable, "-c", "from hypo.heap import fix_mmap_threshold; fix_mmap_threshold()"],
                             env={**os.environ, "HYPO_MMAP_THRESHOLD": value}, capture_output=True, text=True)
        assert bad.returncode != 0 and f"HYPO_MMAP_THRESHOLD must be a number of bytes (e.g. 131072; 0 = glibc's default), got '{value}'" in bad.stderr
