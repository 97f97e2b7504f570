"""``hypo bench``: hypo against TRL on the same work, HyPO against DPO, and both against the
machine's matmul peak (issue 6).

Library entry points: :func:`run_bench` (the comparison; writes ``bench.json``),
:func:`run_sweep` (step time and memory against sequence length, batch size, k and model size).
Worker processes: ``python -m hypo.bench --worker MODE --spec SPEC.json --result OUT.json``.
See ``benchmarks/README.md`` for how to run and read it.
"""

from .flops import ModelShape, dpo_step_flops, hypo_step_flops
from .runner import DEFAULT_MODES, TARGETS, BenchSettings, run_bench
from .workers import MODES
from .workload import SIZES

__all__ = ["BenchSettings", "DEFAULT_MODES", "MODES", "ModelShape", "SIZES", "TARGETS", "dpo_step_flops",
           "hypo_step_flops", "run_bench", "run_sweep"]


def run_sweep(*args, **kwargs):
    from .sweep import run_sweep as _run

    return _run(*args, **kwargs)
