"""`hypo demo --sweep`: coverage as a curve.

Five coverage levels (one kind ≈ 0.2 of π_ref's mass … truly global = 1.0, see
``task.SWEEP_REGIMES``) × five seeds × {DPO, HyPO (seq), HyPO (analytic KL)}, shared
hyper-parameters, each run evaluated at its start and end only. Writes results.json (with the
runs' start/end rows), summary.json (without them), sweep.md and sweep.png.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .report import COLORS, LABELS, REGIME_TITLES, markdown_table, wins_at_every_seed, end_close
from .run import DemoSettings
from .task import SWEEP_REGIMES

PANELS = (("gold_reward", "gold reward (mean r*)"), ("win_rate", "gold win rate vs π_ref"),
          ("kl", "reverse KL(π‖π_ref), nats"), ("ood_rate", "share of samples out of the grammar"))
PARTIAL = ("one_kind", "partial", "three_kinds")  # levels where the data misses some of π_ref's kinds
FLAT = 0.25  # "HyPO's KL stays flat": its medians vary by ≤ FLAT × DPO's variation across levels


def sweep_settings(base: DemoSettings | None = None, seeds: tuple[int, ...] | None = None) -> DemoSettings:
    """The sweep's defaults: the demo's shared hyper-parameters, five seeds, final eval only."""
    base = base or DemoSettings()
    return replace(base, seeds=seeds or (0, 1, 2, 3, 4), regimes=tuple(SWEEP_REGIMES),
                   methods=("dpo", "hypo", "hypo_analytic"), eval_every=base.steps,
                   kl_target=None)  # fixed λ, as the documented sweep was run


def hypo_methods(results: dict) -> list[str]:
    return [m for m in results["settings"]["methods"] if m != "dpo"]


def sweep_verdicts(results: dict) -> list[str]:
    """The issue's four predictions, each checked with the rule it states (never tuned for)."""
    regimes, lines = results["regimes"], []
    for method in hypo_methods(results):
        name = LABELS.get(method, method)
        for regime in (r for r in PARTIAL if r in regimes):
            won, n = wins_at_every_seed(regimes[regime], method)
            lines.append(f"{REGIME_TITLES[regime]} coverage ({regimes[regime]['coverage']:.2f}): {name}'s "
                         f"gold win rate ≥ DPO's at {won} of {n} seeds — prediction 'at every seed' "
                         f"{'holds' if won == n else 'does NOT hold'}.")
        if "truly_global" in regimes:
            ok, text = end_close(regimes["truly_global"], method)
            lines.append(f"truly global coverage, gold reward: {text} — prediction 'the two end close "
                         f"(ranges overlap, medians within 0.05)' {'holds' if ok else 'does NOT hold'}.")
    kl = {m: [regimes[r][m]["kl"]["median"] for r in regimes] for m in results["settings"]["methods"]}
    if "dpo" in kl and len(kl["dpo"]) > 1:
        d = kl["dpo"]
        steps_down = sum(b < a for a, b in zip(d, d[1:]))
        falls = d[-1] < d[0] / 2
        lines.append(f"DPO's median reverse KL from lowest to highest coverage: "
                     f"{' → '.join(f'{v:.2f}' for v in d)} ({steps_down} of {len(d) - 1} steps down) — "
                     f"prediction 'falls as coverage grows' (last < half the first) "
                     f"{'holds' if falls else 'does NOT hold'}.")
        spread_dpo = max(d) - min(d)
        for method in hypo_methods(results):
            h = kl[method]
            spread = max(h) - min(h)
            lines.append(f"{LABELS.get(method, method)}'s median reverse KL: {' → '.join(f'{v:.2f}' for v in h)} "
                         f"(spread {spread:.2f} vs DPO's {spread_dpo:.2f}) — prediction 'stays flat' "
                         f"(spread ≤ {FLAT} × DPO's) {'holds' if spread <= FLAT * spread_dpo else 'does NOT hold'}.")
    return lines


def plot_sweep(results: dict, path: Path) -> Path:
    """One row of four panels, each a metric against coverage: medians with min–max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(results["regimes"])
    methods = results["settings"]["methods"]
    xs = range(len(regimes))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.3 * len(PANELS), 3.9))
    for ax, (key, title) in zip(axes, PANELS):
        for j, method in enumerate(methods):
            shift = (j - (len(methods) - 1) / 2) * 0.09  # side by side, so bars do not hide each other
            med = [results["regimes"][r][method][key]["median"] for r in regimes]
            lo = [results["regimes"][r][method][key]["min"] for r in regimes]
            hi = [results["regimes"][r][method][key]["max"] for r in regimes]
            x = [i + shift for i in xs]
            ax.errorbar(x, med, yerr=[[m - a for m, a in zip(med, lo)], [b - m for m, b in zip(med, hi)]],
                        fmt="o-", color=COLORS.get(method), capsize=3, lw=1.6, ms=4,
                        label=LABELS.get(method, method))
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{REGIME_TITLES.get(r, r)}\n{results['regimes'][r]['coverage']:.2f}" for r in regimes],
                           fontsize=7)
        ax.set_xlabel("coverage of π_ref's mass by the pairs", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    s = results["settings"]
    fig.suptitle(f"hypo demo --sweep: after {s['steps']} steps, median and min–max over {len(s['seeds'])} seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep_report(results: dict, out: Path) -> Path:
    figure = plot_sweep(results, out / "sweep.png")
    s = results["settings"]
    lines = ["# hypo demo --sweep: DPO vs HyPO with coverage as a curve", "",
             f"Shared settings: β = {s['beta']}, learning rate {s['learning_rate']} (constant), batch "
             f"{s['batch_size']} pairs, {s['steps']} steps, {s['n_pairs']} pairs per level, seeds "
             f"{list(s['seeds'])}. HyPO only: λ = {s['kl_coef']}, k = {s['num_online_samples']}, KL "
             "estimator seq (the paper's) or analytic. Evaluation after the last step: "
             f"{s['eval_samples_per_prompt']} samples per held-out prompt, temperature 1.", "",
             *markdown_table(results), "", "Cells: median [min, max] over seeds.", "",
             "## The issue's predictions, and what happened", ""]
    lines += [f"- {v}" for v in sweep_verdicts(results)]
    lines += ["", f"![coverage sweep]({figure.name})", "", f"Wall time: {s.get('wall_seconds', '?')} s."]
    path = out / "sweep.md"
    path.write_text("\n".join(lines) + "\n")
    return path
