"""Orchestration of ``hypo bench``: workloads, worker processes in alternation, aggregation.

Every (size, mode) runs in its own process (so peak RSS figures do not mix), with the same
thread count. Rounds alternate the modes (A B C … A B C …); the first ``warmup`` steps of each
process are dropped; medians are taken over all remaining steps of all rounds and reported with
their min and max. Ratios are ratios of medians, with the range of the per-round ratios.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .flops import ModelShape, decode_bound_s, dpo_step_flops, hypo_step_flops, prefill_bound_s
from .workers import MODES
from .workload import REAL_SIZES, SIZES, WORKLOADS, prepare

DEFAULT_MODES = ("hypo-dpo", "hypo-dpo-unshared", "trl-dpo", "trl-dpo-precompute", "trl-dpo-defaults",
                 "trl-dpo-padfree", "hypo-hypo", "hypo-hypo-unshared", "trl-rloo")


@dataclass
class BenchSettings:
    sizes: tuple[str, ...] = ("tiny", "small")
    batch_size: int = 8
    max_length: int = 128
    num_online_samples: int = 2
    max_new_tokens: int = 32
    steps: int = 5
    warmup: int = 1
    repeats: int = 2
    threads: int = 2
    out: str = "bench-out"
    modes: tuple[str, ...] = DEFAULT_MODES
    n_records: int = 128
    learning_rate: float = 1e-5
    seed: int = 0
    dtype: str = "float32"
    cuda: bool = False
    worker_timeout: float = 900.0
    model: str | None = None  # the real sizes' model folder (default: SmolLM2-135M-Instruct)
    workload: str = "standard"  # workload.WORKLOADS: standard, or long-prompt (prompt ≈ 8× response)
    extra: dict = field(default_factory=dict)

    def validate(self) -> "BenchSettings":
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        bad = [s for s in self.sizes if s not in SIZES and s not in REAL_SIZES]
        if bad:
            raise ValueError(f"unknown size(s) {bad}; choose from {', '.join([*SIZES, *REAL_SIZES])}")
        if self.warmup < 1:
            raise ValueError("warmup must be ≥ 1: the first step of every process carries one-off costs")
        if self.steps < 1 or self.repeats < 1 or self.threads < 1:
            raise ValueError("steps, repeats and threads must be ≥ 1")
        if self.num_online_samples < 2:
            raise ValueError("num_online_samples must be ≥ 2 (leave-one-out baseline)")
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; choose from {', '.join(WORKLOADS)}")
        return self


def stats(values: list[float]) -> dict:
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_worker(mode: str, spec: dict, log_dir: Path, timeout: float) -> dict:
    """Run one mode in a fresh ``python -m hypo.bench --worker`` process; returns its result dict
    (or {"error": ...} when it failed, with the tail of its log)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"hypo-bench-{mode}-"))
    spec = {**spec, "tmp": str(tmp)}
    spec_path, result_path = tmp / "spec.json", tmp / "result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore",
           "HF_DATASETS_CACHE": str(tmp / "datasets")}
    log = log_dir / f"{spec['workload']['size']}-{mode}-r{spec['round']}.log"
    started = time.perf_counter()
    try:
        with log.open("w") as fh:
            proc = subprocess.run([sys.executable, "-m", "hypo.bench", "--worker", mode, "--spec",
                                   str(spec_path), "--result", str(result_path)],
                                  stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        if proc.returncode != 0 or not result_path.exists():
            tail = log.read_text()[-2000:]
            return {"error": f"worker exited with {proc.returncode}; log {log}:\n{tail}"}
        result = json.loads(result_path.read_text())
    except subprocess.TimeoutExpired:
        return {"error": f"worker ran past {timeout:.0f}s; log {log}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["wall_s"] = time.perf_counter() - started
    return result


def _spec(settings: BenchSettings, workload: dict, round_: int) -> dict:
    return {"workload": workload, "batch_size": settings.batch_size,
            "num_online_samples": settings.num_online_samples, "max_new_tokens": settings.max_new_tokens,
            "steps": settings.steps, "warmup": settings.warmup, "threads": settings.threads,
            "learning_rate": settings.learning_rate, "seed": settings.seed, "dtype": settings.dtype,
            "cuda": settings.cuda, "round": round_}


def _measured(result: dict, key: str, warmup: int) -> list:
    return list(result.get(key) or [])[warmup:]


def per_step_figures(mode: str, result: dict, shape: ModelShape, settings: BenchSettings) -> dict:
    """Per measured step: time, tokens/s, samples/s, FLOPs and FLOP/s."""
    w = settings.warmup
    times = _measured(result, "step_times", w)
    out = {"step_time": times}
    cpu = _measured(result, "cpu_times", w)
    if cpu and len(cpu) == len(times):
        out["cpu_time"] = cpu
    tokens = _measured(result, "tokens", w)
    if tokens and len(tokens) == len(times):
        out["tokens"] = tokens
        out["tokens_per_s"] = [n / t for n, t in zip(tokens, times)]
        if "cpu_time" in out:
            out["tokens_per_cpu_s"] = [n / t for n, t in zip(tokens, out["cpu_time"])]
    samples = _measured(result, "samples", w)
    if samples and len(samples) == len(times):
        out["samples_per_s"] = [n / t for n, t in zip(samples, times)]
        if "cpu_time" in out:
            out["samples_per_cpu_s"] = [n / t for n, t in zip(samples, out["cpu_time"])]
    if mode.startswith("hypo-"):  # FLOPs of the unshared computation: the same work in every mode
        seq = _measured(result, "seq_lens", w)
        if mode.startswith("hypo-dpo"):
            flops = [dpo_step_flops(shape, lens) for lens in seq]
        else:
            prompts, new = _measured(result, "prompt_lens", w), _measured(result, "new_tokens", w)
            parts = [hypo_step_flops(shape, lens, p, settings.num_online_samples, m)
                     for lens, p, m in zip(seq, prompts, new)]
            flops = [p["total"] for p in parts]
            out["flops_parts"] = {k: statistics.median(p[k] for p in parts) for k in parts[0]} if parts else {}
            out["new_tokens"] = new
        out["flops"] = flops
        out["flops_per_s"] = [f / t for f, t in zip(flops, times)]
    return out


def sampling_figures(calls: list[dict], shape: ModelShape, peak: float | None,
                     bandwidth: float | None, dtype_bytes: int = 4) -> dict[str, list]:
    """Per ``generate`` call: decode ms per step, decode tokens/s, prefill ms and tokens/s, and
    the fraction of the roofline bound (see ``flops.decode_bound_s``) each achieved."""
    out: dict[str, list] = {}
    for c in calls:
        if c["decode_steps"] > 0 and c["decode_s"] > 0:
            out.setdefault("decode_ms_per_step", []).append(1e3 * c["decode_s"] / c["decode_steps"])
            out.setdefault("decode_tokens_per_s", []).append(c["rows"] * c["decode_steps"] / c["decode_s"])
            if peak and bandwidth:
                bound = decode_bound_s(shape, c["prompt_lens"], c["decode_steps"], peak, bandwidth, dtype_bytes)
                out.setdefault("decode_bound_ms_per_step", []).append(1e3 * bound / c["decode_steps"])
                out.setdefault("decode_roofline", []).append(bound / c["decode_s"])
        if c["prefill_s"] > 0:
            out.setdefault("prefill_ms", []).append(1e3 * c["prefill_s"])
            out.setdefault("prefill_tokens_per_s", []).append(sum(c["prompt_lens"]) / c["prefill_s"])
            if peak and bandwidth:
                bound = prefill_bound_s(shape, c["prompt_lens"], peak, bandwidth, dtype_bytes)
                out.setdefault("prefill_bound_ms", []).append(1e3 * bound)
                out.setdefault("prefill_roofline", []).append(bound / c["prefill_s"])
    return out


SAMPLING_KEYS = ("decode_ms_per_step", "decode_tokens_per_s", "decode_bound_ms_per_step", "decode_roofline",
                 "prefill_ms", "prefill_tokens_per_s", "prefill_bound_ms", "prefill_roofline")


def aggregate_mode(mode: str, rounds: list[dict], shape: ModelShape, settings: BenchSettings,
                   peak: float | None, bandwidth: float | None = None) -> dict:
    ok = [r for r in rounds if "error" not in r]
    summary: dict = {"rounds": len(rounds), "failed": [r["error"] for r in rounds if "error" in r]}
    if not ok:
        return summary
    pooled: dict[str, list] = {}
    per_round = []
    for r in ok:
        figs = per_step_figures(mode, r, shape, settings)
        per_round.append({k: statistics.median(v) for k, v in figs.items()
                          if isinstance(v, list) and v})
        for k, v in figs.items():
            if isinstance(v, list):
                pooled.setdefault(k, []).extend(v)
            else:
                summary[k] = v
    for k in ("step_time", "cpu_time", "tokens_per_s", "tokens_per_cpu_s", "samples_per_s",
              "samples_per_cpu_s", "flops", "flops_per_s", "tokens", "new_tokens"):
        if pooled.get(k):
            summary[k] = stats(pooled[k])
    calls = [c for r in ok for c in r.get("sampling", []) if c.get("step", 0) > settings.warmup]
    if calls:  # online sampling (HyPO): the roofline figures of every measured generate call
        figs = sampling_figures(calls, shape, peak, bandwidth, 2 if settings.dtype == "bfloat16" else 4)
        summary["sampling"] = {k: stats(figs[k]) for k in SAMPLING_KEYS if figs.get(k)}
        summary["sampling"]["rows"] = calls[0]["rows"]
        summary["sampling"]["calls_per_step"] = len(calls) / max(len(pooled.get("step_time", [])), 1)
    summary["per_round_median"] = per_round
    if peak and summary.get("flops_per_s"):
        summary["mfu"] = stats([f / peak for f in pooled["flops_per_s"]])
    summary["peak_rss_mb"] = stats([r["peak_rss_mb"] for r in ok])
    summary["baseline_rss_mb"] = stats([r["baseline_rss_mb"] for r in ok])
    summary["peak_above_baseline_mb"] = stats([r["peak_rss_mb"] - r["baseline_rss_mb"] for r in ok])
    if any("peak_cuda_mb" in r for r in ok):
        summary["peak_cuda_mb"] = stats([r["peak_cuda_mb"] for r in ok if "peak_cuda_mb" in r])
    for key in ("bf16", "gradient_checkpointing"):
        if key in ok[0]:
            summary[key] = ok[0][key]
    summary["worker_wall_s"] = stats([r["wall_s"] for r in ok])
    return summary


def ratio(modes: dict, a: str, b: str, key: str, invert: bool = False) -> dict | None:
    """median(a)/median(b) of a per-step figure, with the range of the per-round ratios."""
    ma, mb = modes.get(a, {}), modes.get(b, {})
    if not (ma.get(key) and mb.get(key)) or ma[key]["median"] is None or mb[key]["median"] is None:
        return None
    value = ma[key]["median"] / mb[key]["median"]
    rounds = [ra[key] / rb[key] for ra, rb in zip(ma.get("per_round_median", []), mb.get("per_round_median", []))
              if key in ra and key in rb and rb[key]]
    if invert:
        value, rounds = 1 / value, [1 / r for r in rounds]
    return {"median": value, "min": min(rounds, default=value), "max": max(rounds, default=value),
            "of": f"{a} / {b}" if not invert else f"{b} / {a}", "figure": key}


def _rss_ratio(modes: dict, a: str, b: str) -> dict | None:
    ma, mb = modes.get(a, {}).get("peak_rss_mb"), modes.get(b, {}).get("peak_rss_mb")
    return {"median": ma["median"] / mb["median"], "of": f"{a} / {b}"} if ma and mb else None


def compare(modes: dict) -> dict:
    out = {
        "dpo_tokens_per_s_vs_trl": ratio(modes, "hypo-dpo", "trl-dpo", "tokens_per_s"),
        "dpo_tokens_per_s_vs_trl_precompute": ratio(modes, "hypo-dpo", "trl-dpo-precompute", "tokens_per_s"),
        "dpo_tokens_per_s_vs_trl_defaults": ratio(modes, "hypo-dpo", "trl-dpo-defaults", "tokens_per_s"),
        "hypo_step_time_vs_dpo": ratio(modes, "hypo-hypo", "hypo-dpo", "step_time"),
        "hypo_cpu_time_vs_dpo": ratio(modes, "hypo-hypo", "hypo-dpo", "cpu_time"),
        "dpo_tokens_per_cpu_s_vs_trl": ratio(modes, "hypo-dpo", "trl-dpo", "tokens_per_cpu_s"),
        "dpo_tokens_per_cpu_s_vs_trl_precompute": ratio(modes, "hypo-dpo", "trl-dpo-precompute",
                                                        "tokens_per_cpu_s"),
        "hypo_samples_per_cpu_s_vs_rloo": ratio(modes, "hypo-hypo", "trl-rloo", "samples_per_cpu_s"),
        "hypo_flops_vs_dpo": ratio(modes, "hypo-hypo", "hypo-dpo", "flops"),
        "hypo_samples_per_s_vs_rloo": ratio(modes, "hypo-hypo", "trl-rloo", "samples_per_s"),
        # prefix sharing: the same work (pairs, samples) per second, shared over unshared rows
        "dpo_shared_vs_unshared": ratio(modes, "hypo-dpo", "hypo-dpo-unshared", "tokens_per_s"),
        "hypo_shared_vs_unshared": ratio(modes, "hypo-hypo", "hypo-hypo-unshared", "samples_per_s"),
        "dpo_shared_vs_unshared_peak_rss": _rss_ratio(modes, "hypo-dpo", "hypo-dpo-unshared"),
        "hypo_shared_vs_unshared_peak_rss": _rss_ratio(modes, "hypo-hypo", "hypo-hypo-unshared"),
        "dpo_tokens_per_s_vs_trl_padfree": ratio(modes, "hypo-dpo", "trl-dpo-padfree", "tokens_per_s"),
    }
    t, f = out["hypo_step_time_vs_dpo"], out["hypo_flops_vs_dpo"]
    if t and f:
        out["hypo_time_ratio_over_flops_ratio"] = {"median": t["median"] / f["median"],
                                                   "min": t["min"] / f["median"], "max": t["max"] / f["median"]}
    h, d = modes.get("hypo-hypo", {}), modes.get("hypo-dpo", {})
    r = modes.get("trl-rloo", {})
    if all(x.get("step_time") for x in (h, d)) and h.get("samples_per_s") and r.get("samples_per_s"):
        # HyPO's step also trains the offline pairs (a whole DPO step), which RLOO's does not; its
        # online part alone takes (HyPO step − DPO step) for the same samples.
        online_s = h["step_time"]["median"] - d["step_time"]["median"]
        per_step = h["samples_per_s"]["median"] * h["step_time"]["median"]
        if online_s > 0:
            value = per_step / online_s / r["samples_per_s"]["median"]
            out["hypo_online_part_samples_per_s_vs_rloo"] = {"median": value, "min": value, "max": value}
    if h.get("peak_rss_mb") and d.get("peak_rss_mb"):
        out["hypo_peak_rss_vs_dpo"] = {"median": h["peak_rss_mb"]["median"] / d["peak_rss_mb"]["median"]}
        base = d["peak_above_baseline_mb"]["median"]
        if base > 0:
            out["hypo_peak_above_baseline_vs_dpo"] = {
                "median": h["peak_above_baseline_mb"]["median"] / base}
    for mode in ("hypo-dpo", "hypo-hypo"):
        if modes.get(mode, {}).get("mfu"):
            out[f"{mode}_mfu"] = modes[mode]["mfu"]
    for key in ("decode_roofline", "prefill_roofline"):
        if h.get("sampling", {}).get(key):
            out[f"hypo_{key}"] = h["sampling"][key]
    return {k: v for k, v in out.items() if v is not None}


TARGETS = (  # (key in comparisons, threshold, direction, description) — issue 6, on the ~5M size
    ("dpo_tokens_per_s_vs_trl", 1.5, ">=", "hypo DPO tokens/s ≥ 1.5× TRL DPOTrainer (fp32, no GC, live ref)"),
    ("dpo_tokens_per_s_vs_trl_precompute", 1.2, ">=", "hypo DPO tokens/s ≥ 1.2× TRL with precomputed ref"),
    ("hypo_time_ratio_over_flops_ratio", 1.2, "<=", "HyPO/DPO step time ≤ 1.2 × HyPO/DPO FLOPs"),
    ("hypo_samples_per_s_vs_rloo", 1.5, ">=", "HyPO online samples/s ≥ 1.5× TRL RLOOTrainer"),
    ("hypo_peak_rss_vs_dpo", 1.1, "<=", "HyPO peak RSS ≤ 1.1× DPO peak RSS"),
    ("hypo-dpo_mfu", 0.5, ">=", "DPO step FLOP/s ≥ 50% of the measured matmul peak"),
)


REAL_TARGETS = (  # the real model (performance issue, round two; real-model issue item 3)
    ("dpo_tokens_per_s_vs_trl", 2.0, ">=", "hypo DPO tokens/s ≥ 2× TRL DPOTrainer (live ref)"),
    ("dpo_tokens_per_s_vs_trl_precompute", 1.5, ">=", "hypo DPO tokens/s ≥ 1.5× TRL with precomputed ref"),
    ("hypo_time_ratio_over_flops_ratio", 1.3, "<=", "HyPO/DPO step time ≤ 1.3 × HyPO/DPO FLOPs"),
    ("hypo_samples_per_s_vs_rloo", 1.5, ">=", "HyPO online samples/s ≥ 1.5× TRL RLOOTrainer"),
    ("hypo_peak_rss_vs_dpo", 1.1, "<=", "HyPO peak RSS ≤ 1.1× DPO peak RSS"),
    ("hypo_decode_roofline", 0.5, ">=", "decode ≥ 50% of the roofline bound"),
)


PREFIX_TARGETS = (  # the long-prompt workload (prefix-sharing issue), on the real model with LoRA
    ("dpo_shared_vs_unshared", 1.5, ">=", "hypo DPO shared ≥ 1.5× unshared (pairs' tokens/s)"),
    ("hypo_shared_vs_unshared", 1.8, ">=", "HyPO shared ≥ 1.8× unshared (samples/s)"),
    ("dpo_tokens_per_s_vs_trl", 3.0, ">=", "hypo DPO ≥ 3× TRL DPOTrainer (live ref)"),
    ("hypo_samples_per_s_vs_rloo", 1.5, ">=", "HyPO online samples/s ≥ 1.5× TRL RLOOTrainer"),
    ("hypo_decode_roofline", 0.5, ">=", "decode ≥ 50% of the roofline bound"),
)
STANDARD_PREFIX_TARGETS = (  # the standard workload: sharing must cost nothing
    ("dpo_shared_vs_unshared", 0.95, ">=", "hypo DPO shared ≥ 0.95× unshared"),
    ("hypo_shared_vs_unshared", 0.95, ">=", "HyPO shared ≥ 0.95× unshared"),
    ("dpo_shared_vs_unshared_peak_rss", 1.0, "<=", "hypo DPO shared peak RSS ≤ unshared"),
    ("hypo_shared_vs_unshared_peak_rss", 1.0, "<=", "HyPO shared peak RSS ≤ unshared"),
)


def targets(comparisons: dict, real: bool = False, workload: str = "standard") -> list[dict]:
    rows = []
    table = (PREFIX_TARGETS if workload == "long-prompt" else
             (REAL_TARGETS if real else TARGETS) + STANDARD_PREFIX_TARGETS)
    for key, threshold, op, text in table:
        if key not in comparisons and key.endswith(("_unshared", "_unshared_peak_rss")):
            continue  # the unshared modes did not run
        value = comparisons.get(key, {}).get("median") if comparisons.get(key) else None
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        rows.append({"key": key, "target": f"{op} {threshold}", "value": value, "met": met, "what": text})
    return rows


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "trl", "hypo"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()}
    try:
        info["loadavg_before"] = os.getloadavg()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def run_bench(settings: BenchSettings, progress=print) -> dict:
    """Run every (size, mode) in alternating rounds; write and return bench.json's content."""
    settings.validate()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    setup, logs = out / "setup", out / "logs"
    started = time.time()
    result = {"settings": asdict(settings), "versions": versions(), "machine": machine(),
              "threads": settings.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              # the allocator settings every mode's process inherits (peak RSS depends on them: hypo.heap)
              "malloc_env": {k: v for k, v in os.environ.items()
                             if k in ("HYPO_MMAP_THRESHOLD", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")}}
    workloads = {size: prepare(setup, size, settings.max_length, settings.n_records, settings.seed,
                               settings.model, settings.workload).to_dict()
                 for size in settings.sizes}
    # TRL's defaults (bf16 autocast) on the real model: bf16 matmuls without native CPU kernels
    # run hundreds of times slower, so that mode is left out there on a CPU.
    skip = {"trl-dpo-defaults"} if not settings.cuda else set()
    raw: dict[str, dict[str, list]] = {
        size: {m: [] for m in settings.modes if m != "matmul" and not (size in REAL_SIZES and m in skip)}
        for size in settings.sizes}
    peaks: list[dict] = []
    for r in range(settings.repeats):
        peak = run_worker("matmul", _spec(settings, workloads[settings.sizes[0]], r), logs,
                          settings.worker_timeout)
        peaks.append(peak)
        progress(f"round {r + 1}/{settings.repeats}: matmul peak "
                 f"{peak.get('peak_flops_per_s', float('nan')) / 1e9:.1f} GFLOP/s, copy bandwidth "
                 f"{peak.get('bandwidth_bytes_per_s', float('nan')) / 1e9:.1f} GB/s")
        for size in settings.sizes:
            for mode in raw[size]:
                res = run_worker(mode, _spec(settings, workloads[size], r), logs, settings.worker_timeout)
                raw[size][mode].append(res)
                med = statistics.median(res["step_times"][settings.warmup:]) if "error" not in res and \
                    len(res.get("step_times", [])) > settings.warmup else float("nan")
                progress(f"round {r + 1}/{settings.repeats}: {size:6s} {mode:20s} "
                         + (f"median step {med:.3f}s  (process {res['wall_s']:.0f}s)" if "error" not in res
                            else "FAILED: " + res["error"].splitlines()[0]))
    ok_peaks = [p["peak_flops_per_s"] for p in peaks if "error" not in p]
    peak = statistics.median(ok_peaks) if ok_peaks else None
    result["matmul_peak_flops_per_s"] = stats(ok_peaks)
    bandwidths = [p["bandwidth_bytes_per_s"] for p in peaks if p.get("bandwidth_bytes_per_s")]
    bandwidth = statistics.median(bandwidths) if bandwidths else None
    result["bandwidth_bytes_per_s"] = stats(bandwidths)
    result["matmul_rounds"] = peaks
    result["sizes"] = {}
    for size in settings.sizes:
        shape = ModelShape(**workloads[size]["shape"])
        modes = {m: aggregate_mode(m, rounds, shape, settings, peak, bandwidth) for m, rounds in raw[size].items()}
        comparisons = compare(modes)
        result["sizes"][size] = {"workload": workloads[size], "matmul_params": shape.matmul_params,
                                 "modes": modes, "comparisons": comparisons,
                                 "targets": targets(comparisons, size in REAL_SIZES, settings.workload)}
    target_size = "small" if "small" in settings.sizes else settings.sizes[-1]
    result["targets_size"] = target_size
    try:
        result["machine"]["loadavg_after"] = os.getloadavg()
    except OSError:
        pass
    loads = [result["machine"].get(k, [0])[0] for k in ("loadavg_before", "loadavg_after")]
    result["machine"]["shared"] = max(loads) > (os.cpu_count() or 1)  # others competed for the cores
    result["elapsed_s"] = time.time() - started
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
