"""``hypo bench --sweep``: how hypo's DPO and HyPO step time and peak memory grow with sequence
length, batch size, k (online samples per prompt) and model size — one factor at a time around a
base point, each point in its own process, so users can extrapolate to a planned run.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

from .runner import BenchSettings, _spec, run_worker, stats, versions, machine
from .workload import prepare

AXES = {  # the CPU defaults (base: small, max_length 128, batch 8, k 2); see axes_for
    "max_length": (64, 128, 256),
    "batch_size": (4, 8, 16),
    "num_online_samples": (2, 4, 8),
    "size": ("tiny", "small", "medium"),
}


def axes_for(settings: BenchSettings, quick: bool = False) -> dict:
    """Half, base and double of max_length and batch size; k = 2, 4, 8; sizes from tiny to the
    base size (plus the next one up). --quick keeps half and base only."""
    from .workload import SIZES

    names = list(SIZES)
    base = settings.sizes[0]
    upto = names.index(base) + (1 if not quick else 0)
    sizes = tuple(n for n in names[: upto + 1] if n not in ("large", "xl") or settings.cuda)
    L, B = settings.max_length, settings.batch_size
    axes = {"max_length": (L // 2, L, 2 * L), "batch_size": (max(1, B // 2), B, 2 * B),
            "num_online_samples": (2, 4, 8), "size": sizes or (base,)}
    if quick:
        axes = {k: v[:2] if k != "size" else v for k, v in axes.items()}
    return axes


def sweep_points(settings: BenchSettings, axes: dict) -> list[dict]:
    base = {"max_length": settings.max_length, "batch_size": settings.batch_size,
            "num_online_samples": settings.num_online_samples, "size": settings.sizes[0]}
    seen, points = set(), []
    for factor, values in axes.items():
        for value in values:
            point = {**base, factor: value}
            for mode in ("hypo-dpo", "hypo-hypo"):
                if factor == "num_online_samples" and mode == "hypo-dpo":
                    continue  # k does not touch DPO
                key = (mode, *point.values())
                if key in seen:
                    continue
                seen.add(key)
                points.append({"mode": mode, **point})
    return points


def run_sweep(settings: BenchSettings, quick: bool = False, progress=print) -> dict:
    settings.validate()
    axes = axes_for(settings, quick)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = []
    for point in sweep_points(settings, axes):
        s = replace(settings, batch_size=point["batch_size"], num_online_samples=point["num_online_samples"],
                    max_length=point["max_length"])
        n_records = max(settings.n_records, point["batch_size"] * (settings.warmup + settings.steps))
        wl = prepare(out / "setup", point["size"], point["max_length"], n_records, settings.seed).to_dict()
        runs = [run_worker(point["mode"], _spec(s, wl, r), out / "logs-sweep", settings.worker_timeout)
                for r in range(settings.repeats)]
        ok = [r for r in runs if "error" not in r]
        times = [t for r in ok for t in r["step_times"][settings.warmup:]]
        row = {**point, "params": wl["num_params"], "step_time": stats(times),
               "peak_rss_mb": stats([r["peak_rss_mb"] for r in ok]),
               "peak_above_baseline_mb": stats([r["peak_rss_mb"] - r["baseline_rss_mb"] for r in ok]),
               "errors": [r["error"] for r in runs if "error" in r]}
        if ok and ok[0].get("tokens"):
            row["tokens_per_step"] = statistics.median(t for r in ok for t in r["tokens"][settings.warmup:])
        rows.append(row)
        st = row["step_time"]["median"]
        progress(f"sweep {point['mode']:9s} size={point['size']:6s} L={point['max_length']:<4d} "
                 f"B={point['batch_size']:<3d} k={point['num_online_samples']:<2d} "
                 + (f"step {st:.3f}s  peak {row['peak_rss_mb']['median']:.0f} MB" if st else "FAILED"))
    result = {"settings": asdict(settings), "axes": {k: list(v) for k, v in axes.items()},
              "versions": versions(), "machine": machine(), "points": rows,
              "elapsed_s": time.time() - started}
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_sweep(result, out / "sweep.png")
    return result


def _series(result: dict, factor: str, mode: str, key: str):
    base = result["settings"]
    base_point = {"max_length": base["max_length"], "batch_size": base["batch_size"],
                  "num_online_samples": base["num_online_samples"], "size": base["sizes"][0]}
    xs, ys = [], []
    for value in result["axes"][factor]:
        want = {**base_point, factor: value}
        for row in result["points"]:
            if row["mode"] == mode and all(row[f] == v for f, v in want.items()) and row[key]["median"]:
                xs.append(row["params"] / 1e6 if factor == "size" else value)
                ys.append(row[key]["median"])
                break
    return xs, ys


def plot_sweep(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = list(result["axes"])
    fig, axes = plt.subplots(2, len(factors), figsize=(4 * len(factors), 6.5), squeeze=False)
    xlabel = {"max_length": "max_length (tokens)", "batch_size": "batch size (pairs)",
              "num_online_samples": "k (samples per prompt)", "size": "model parameters (M)"}
    for col, factor in enumerate(factors):
        for row, (key, ylabel) in enumerate((("step_time", "step time (s)"),
                                             ("peak_above_baseline_mb", "peak RSS above imports (MB)"))):
            ax = axes[row][col]
            for mode, style in (("hypo-dpo", "o-"), ("hypo-hypo", "s--")):
                xs, ys = _series(result, factor, mode, key)
                if xs:
                    ax.plot(xs, ys, style, label=mode.replace("hypo-", "").upper().replace("HYPO", "HyPO"))
            ax.set_xlabel(xlabel[factor])
            ax.set_ylabel(ylabel)
            ax.set_xscale("log", base=2 if factor != "size" else 10)
            if factor != "size":
                ax.set_xticks(list(result["axes"][factor]), [str(v) for v in result["axes"][factor]])
                ax.minorticks_off()
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    s = result["settings"]
    fig.suptitle(f"hypo step time and memory, one factor at a time around size={s['sizes'][0]}, "
                 f"L={s['max_length']}, B={s['batch_size']}, k={s['num_online_samples']}, "
                 f"{s['threads']} thread(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_sweep(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title="hypo bench --sweep (median step time, min–max; peak RSS per process)", title_justify="left")
    for col in ("mode", "size", "params", "max_length", "batch", "k", "step s", "tokens/step",
                "peak RSS MB", "above imports MB"):
        t.add_column(col, justify="left" if col in ("mode", "size") else "right")
    for row in result["points"]:
        st = row["step_time"]
        t.add_row(row["mode"], row["size"], f"{row['params'] / 1e6:.1f}M", str(row["max_length"]),
                  str(row["batch_size"]), str(row["num_online_samples"]) if row["mode"] == "hypo-hypo" else "-",
                  f"{st['median']:.3f} ({st['min']:.3f}–{st['max']:.3f})" if st["median"] else "[red]failed[/]",
                  f"{row.get('tokens_per_step', 0):.0f}",
                  f"{row['peak_rss_mb']['median']:.0f}" if row["peak_rss_mb"]["median"] else "-",
                  f"{row['peak_above_baseline_mb']['median']:.0f}" if row["peak_above_baseline_mb"]["median"] else "-")
    console.print(t)
