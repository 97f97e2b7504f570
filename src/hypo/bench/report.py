"""The printed form of bench.json: one table of modes per size, one of comparisons and targets."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _rng(s: dict | None, scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    if not s or s.get("median") is None:
        return "-"
    text = fmt.format(s["median"] * scale)
    if "min" in s and s.get("n", 2) > 1:
        text += f" [dim]({fmt.format(s['min'] * scale)}–{fmt.format(s['max'] * scale)})[/]"
    return text


def mode_table(size: str, block: dict, peak: float | None) -> Table:
    wl = block["workload"]
    t = Table(title=f"{size}: {wl['num_params'] / 1e6:.2f}M params, max_length {wl['max_length']} "
                    f"— medians (min–max) over measured steps; GFLOP and MFU count the unshared "
                    f"computation (the work), so a prefix-shared mode can pass 100%",
              title_justify="left")
    for col in ("mode", "step s", "CPU s/step", "tokens/s", "samples/s", "GFLOP/step", "GFLOP/s",
                "MFU", "peak RSS MB", "above imports MB"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for mode, m in block["modes"].items():
        if not m.get("step_time"):
            t.add_row(mode, "[red]failed[/]", *["-"] * 8)
            continue
        label = mode + (" [dim](bf16+GC)[/]" if mode == "trl-dpo-defaults" else "")
        t.add_row(label, _rng(m["step_time"]), _rng(m.get("cpu_time")), _rng(m.get("tokens_per_s"), fmt="{:.0f}"),
                  _rng(m.get("samples_per_s"), fmt="{:.1f}"), _rng(m.get("flops"), 1e-9),
                  _rng(m.get("flops_per_s"), 1e-9, "{:.1f}"), _rng(m.get("mfu"), 100, "{:.1f}%"),
                  _rng(m.get("peak_rss_mb"), fmt="{:.0f}"), _rng(m.get("peak_above_baseline_mb"), fmt="{:.0f}"))
    return t


LABELS = {
    "dpo_tokens_per_s_vs_trl": "hypo DPO / TRL DPO (fp32, no GC, live ref): tokens/s",
    "dpo_tokens_per_s_vs_trl_precompute": "hypo DPO / TRL DPO precomputed ref: tokens/s",
    "dpo_tokens_per_s_vs_trl_defaults": "hypo DPO / TRL DPO defaults (bf16 autocast + GC): tokens/s",
    "dpo_tokens_per_cpu_s_vs_trl": "  same, tokens per CPU-second (less load-sensitive)",
    "dpo_tokens_per_cpu_s_vs_trl_precompute": "  same vs precomputed ref, tokens per CPU-second",
    "hypo_step_time_vs_dpo": "HyPO / DPO step time",
    "hypo_cpu_time_vs_dpo": "HyPO / DPO CPU time per step",
    "hypo_flops_vs_dpo": "HyPO / DPO FLOPs per step",
    "hypo_time_ratio_over_flops_ratio": "(HyPO/DPO time) / (HyPO/DPO FLOPs)",
    "hypo_samples_per_s_vs_rloo": "HyPO / TRL RLOO: online samples/s",
    "hypo_samples_per_cpu_s_vs_rloo": "  same, samples per CPU-second",
    "hypo_online_part_samples_per_s_vs_rloo": "  same, HyPO's online part only (step − DPO step)",
    "hypo_peak_rss_vs_dpo": "HyPO / DPO peak RSS",
    "hypo_peak_above_baseline_vs_dpo": "HyPO / DPO peak RSS above imports",
    "hypo-dpo_mfu": "DPO step FLOP/s / matmul peak",
    "hypo-hypo_mfu": "HyPO step FLOP/s / matmul peak",
    "hypo_decode_roofline": "HyPO sampling, decode: roofline bound / measured time",
    "hypo_prefill_roofline": "HyPO sampling, prefill: roofline bound / measured time",
    "dpo_shared_vs_unshared": "hypo DPO prefix-shared / unshared: pairs' tokens/s",
    "hypo_shared_vs_unshared": "HyPO prefix-shared / unshared: online samples/s",
    "dpo_shared_vs_unshared_peak_rss": "hypo DPO prefix-shared / unshared: peak RSS",
    "hypo_shared_vs_unshared_peak_rss": "HyPO prefix-shared / unshared: peak RSS",
    "dpo_tokens_per_s_vs_trl_padfree": "hypo DPO / TRL DPO padding_free (live ref): tokens/s",
}

# Why a ratio of medians can lie outside the range of the per-round ratios (printed under the table).
OUTSIDE_NOTE = ("† the ratio of the pooled medians lies outside the range of the per-round ratios: each "
                "mode's median is taken over the steps of all rounds together, so when the machine's "
                "speed drifts between rounds (other load, frequency) the two pooled medians can come "
                "from different rounds, while each per-round ratio compares steps measured minutes "
                "apart. Trust the per-round range; re-run on a quiet machine to close the gap.")


def outside_range(c: dict) -> bool:
    """Whether the ratio of medians lies outside its per-round range (see OUTSIDE_NOTE)."""
    lo, hi, v = c.get("min"), c.get("max"), c.get("median")
    return None not in (lo, hi, v) and not lo - 1e-9 <= v <= hi + 1e-9


def comparison_rows(block: dict):
    """(label, formatted value, target row or None, is-percentage) per reported comparison."""
    targets = {row["key"]: row for row in block["targets"]}
    for key, label in LABELS.items():
        c = block["comparisons"].get(key)
        if not c:
            continue
        pct = key.endswith(("_mfu", "_roofline"))
        value = _rng(c, 100, "{:.1f}%") if pct else _rng(c, fmt="{:.2f}")
        if "of" in c and outside_range(c):  # a ratio of medians with per-round ratios around it
            value += " †"
        yield label, value, targets.get(key), pct


def comparison_table(size: str, block: dict) -> Table:
    t = Table(title=f"{size}: comparisons (ratio of medians; range = per-round ratios)", title_justify="left")
    t.add_column("comparison")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    t.add_column("met", justify="center")
    for label, value, row, pct in comparison_rows(block):
        target, met = "", ""
        if row:
            target = row["target"] if not pct else row["target"].replace("0.5", "50%")
            met = "[green]yes[/]" if row["met"] else "[red]no[/]"
        t.add_row(label, value, target, met)
    if any(v.endswith("†") for _, v, _, _ in comparison_rows(block)):
        t.caption, t.caption_justify = OUTSIDE_NOTE, "left"
    return t


def roofline_table(size: str, block: dict) -> Table | None:
    """HyPO's online sampling against the machine: decode and prefill times, tokens/s and the
    fraction of the roofline bound max(bytes / bandwidth, FLOPs / peak) they reach."""
    s = block["modes"].get("hypo-hypo", {}).get("sampling")
    if not s:
        return None
    t = Table(title=f"{size}: online sampling ({s['rows']} rows per generate call, "
                    f"{s['calls_per_step']:.0f} call(s) per step) — medians (min–max)", title_justify="left")
    for col in ("phase", "ms (per decode step)", "roofline bound ms", "tokens/s", "of roofline"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for phase, ms, bound in (("decode", "decode_ms_per_step", "decode_bound_ms_per_step"),
                             ("prefill", "prefill_ms", "prefill_bound_ms")):
        t.add_row(phase, _rng(s.get(ms)), _rng(s.get(bound)), _rng(s.get(f"{phase}_tokens_per_s"), fmt="{:.0f}"),
                  _rng(s.get(f"{phase}_roofline"), 100, "{:.1f}%"))
    return t


def print_report(result: dict, console: Console | None = None) -> None:
    console = console or Console()
    peak = result.get("matmul_peak_flops_per_s") or {}
    v = result["versions"]
    console.print(f"[bold]hypo bench[/] — torch {v.get('torch')}, transformers {v.get('transformers')}, "
                  f"trl {v.get('trl')}, hypo {v.get('hypo')}; {result['threads']} thread(s); "
                  f"matmul peak {_rng(peak, 1e-9, '{:.1f}')} GFLOP/s; copy bandwidth "
                  f"{_rng(result.get('bandwidth_bytes_per_s'), 1e-9, '{:.1f}')} GB/s; load "
                  f"{result['machine'].get('loadavg_before', ['?'])[0]:.2f} → "
                  f"{result['machine'].get('loadavg_after', ['?'])[0]:.2f}")
    if result["machine"].get("shared"):
        console.print("[yellow]warning:[/] the load average exceeded the core count: other processes "
                      "competed for the CPU and wall-clock figures are unreliable (multi-thread steps "
                      "stall on descheduled threads). Re-run when the machine is quiet, or with --threads 1.")
    for size, block in result["sizes"].items():
        console.print(mode_table(size, block, peak.get("median")))
        console.print(comparison_table(size, block))
        roof = roofline_table(size, block)
        if roof is not None:
            console.print(roof)
        for mode, m in block["modes"].items():
            for err in m.get("failed", []):
                console.print(f"[red]{size} {mode} failed:[/] {err[:400]}")
    s = result["settings"]
    console.print(f"settings: batch {s['batch_size']} pairs, max_length {s['max_length']}, k {s['num_online_samples']}, "
                  f"max_new_tokens {s['max_new_tokens']}, {s['steps']} measured + {s['warmup']} warm-up steps × "
                  f"{s['repeats']} rounds, {s['dtype']}; targets apply to size '{result['targets_size']}'. "
                  f"{result['elapsed_s']:.0f}s in all.")


def markdown_tables(result: dict) -> str:
    """The same figures as Markdown (for benchmarks/LOG.md)."""
    lines = []
    for size, block in result["sizes"].items():
        lines += [f"**{size}** ({block['workload']['num_params'] / 1e6:.2f}M params)", "",
                  "| mode | step s | CPU s/step | tokens/s | samples/s | GFLOP/step | MFU | peak RSS MB | above imports MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for mode, m in block["modes"].items():
            if not m.get("step_time"):
                lines.append(f"| {mode} | failed | | | | | | | |")
                continue
            cells = [_rng(m["step_time"]), _rng(m.get("cpu_time")), _rng(m.get("tokens_per_s"), fmt="{:.0f}"),
                     _rng(m.get("samples_per_s"), fmt="{:.1f}"), _rng(m.get("flops"), 1e-9),
                     _rng(m.get("mfu"), 100, "{:.1f}%"), _rng(m.get("peak_rss_mb"), fmt="{:.0f}"),
                     _rng(m.get("peak_above_baseline_mb"), fmt="{:.0f}")]
            lines.append("| " + " | ".join([mode] + [c.replace("[dim]", "").replace("[/]", "") for c in cells]) + " |")
        lines += ["", "| comparison | value (range) | target | met |", "|---|---|---|---|"]
        for label, value, row, _ in comparison_rows(block):
            value = value.replace("[dim]", "").replace("[/]", "")
            lines.append(f"| {label.strip()} | {value} | {row['target'] if row else ''} | "
                         f"{'' if not row else ('yes' if row['met'] else 'no')} |")
        if any(v.endswith("†") for _, v, _, _ in comparison_rows(block)):
            lines += ["", OUTSIDE_NOTE]
        s = block["modes"].get("hypo-hypo", {}).get("sampling")
        if s:
            lines += ["", f"Online sampling ({s['rows']} rows per generate call):", "",
                      "| phase | ms (per decode step) | roofline bound ms | tokens/s | of roofline |",
                      "|---|---|---|---|---|"]
            for phase, ms, bound in (("decode", "decode_ms_per_step", "decode_bound_ms_per_step"),
                                     ("prefill", "prefill_ms", "prefill_bound_ms")):
                cells = [_rng(s.get(ms)), _rng(s.get(bound)), _rng(s.get(f"{phase}_tokens_per_s"), fmt="{:.0f}"),
                         _rng(s.get(f"{phase}_roofline"), 100, "{:.1f}%")]
                lines.append("| " + " | ".join([phase] + [c.replace("[dim]", "").replace("[/]", "") for c in cells]) + " |")
        lines.append("")
    return "\n".join(lines)
