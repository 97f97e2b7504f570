"""frontier.json, frontier.md and frontier.png from the runs of `hypo demo --frontier`.

Statistics are over seeds, paired: one bootstrap resample of the seeds is applied to every
method, setting and coverage level at once (the seeds share π_ref's data set within a level), so
differences between methods are resampled together.

A method's **frontier** is the upper concave envelope of its settled points (reverse KL, gold
reward) together with π_ref's (0, gold of π_ref), flat beyond its largest KL: mixing two policies
reaches any point on the segment between them at no more KL (KL is convex, the gold reward
linear), so the envelope is reachable wherever the method has points on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .frontier import METRICS, SETTING

LABELS = {"dpo": "DPO (β)", "hypo": "HyPO (budget κ)", "hypo_fixed": "HyPO (fixed λ)",
          "rlhf_unbounded": "RLHF, unbounded RM (κ)", "rlhf_bounded": "RLHF, bounded RM (κ)"}
COLORS = {"dpo": "tab:red", "hypo": "tab:blue", "hypo_fixed": "tab:cyan", "rlhf_unbounded": "tab:orange",
          "rlhf_bounded": "tab:green"}
TITLES = {"partial": "partial", "global": "global (grammar)", "truly_global": "truly global"}
STATS = METRICS + ("step",)


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper concave envelope of (x, y) points, left to right (monotone-chain upper hull, with the
    points after the highest y dropped: the frontier never falls as KL grows)."""
    pts = sorted(set(points))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    top = max(range(len(hull)), key=lambda i: hull[i][1])
    return hull[:top + 1]


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def frontier_at(hull: list[tuple[float, float]], x: float) -> float:
    """The envelope's gold reward at KL x (flat beyond its last point)."""
    xs, ys = zip(*hull)
    return float(np.interp(x, xs, ys))


class Table:
    """Per (regime, method, value): an array (seeds, statistics) in a fixed seed order."""

    def __init__(self, results: dict):
        self.seeds = list(results["settings"]["seeds"])
        self.cells: dict[tuple, np.ndarray] = {}
        self.capped: dict[tuple, list[bool]] = {}
        for r in results["runs"]:
            key = (r["regime"], r["method"], r["value"])
            arr = self.cells.setdefault(key, np.full((len(self.seeds), len(STATS)), np.nan))
            arr[self.seeds.index(r["seed"])] = [r[k] for k in STATS]
            self.capped.setdefault(key, [False] * len(self.seeds))[self.seeds.index(r["seed"])] = r["capped"]
        self.reference = results["reference"]

    def settings(self, regime: str, method: str) -> list[float]:
        return sorted(v for (g, m, v) in self.cells if g == regime and m == method)

    def medians(self, rows: np.ndarray | None = None) -> dict[tuple, np.ndarray]:
        """Median over seeds (or over the seed indices `rows`, a bootstrap resample) of each cell."""
        return {k: np.median(v if rows is None else v[rows], axis=0) for k, v in self.cells.items()}


def summarize(results: dict, seed: int = 0) -> dict:
    """frontier.json: per regime, method and setting, median and paired-bootstrap 95% CI over
    seeds of every metric and of the stopping step, the capped count; plus the verdicts."""
    table = Table(results)
    n, B = len(table.seeds), results["settings"]["bootstrap"]
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, n, n) for _ in range(B)]
    boots = [table.medians(rows) for rows in resamples]
    med = table.medians()
    out = {"settings": results["settings"], "timing": results["timing"], "optimum": results.get("optimum", []),
           "reward_models": results.get("reward_models", {}), "coverage": results["coverage"],
           "regimes": {}}
    for regime in results["settings"]["regimes"]:
        methods = {}
        for method in SETTING:
            cells = {}
            for value in table.settings(regime, method):
                key = (regime, method, value)
                boot = np.stack([b[key] for b in boots])
                cell = {name: {"median": _num(med[key][i]), "ci95": [_num(x) for x in _ci(boot[:, i])],
                               "per_seed": [_num(x) for x in table.cells[key][:, i]]}
                        for i, name in enumerate(STATS)}
                cell["convergence_step"] = cell.pop("step")
                cell["capped"] = sum(table.capped[key])
                cells[f"{value:g}"] = cell
            if cells:
                methods[method] = {"setting": SETTING[method], "points": cells}
        out["regimes"][regime] = {"coverage": results["coverage"][regime],
                                  "reference": table.reference[regime], "methods": methods}
    out["verdicts"] = verdicts(table, med, boots, results["settings"])
    return out


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


# ---- the verdicts (fixed in docs/demo.md before the first full run) ------------------------------
KL, GOLD, OOD = STATS.index("kl"), STATS.index("gold_reward"), STATS.index("out_of_data_share")


def _hull(med: dict, table: Table, regime: str, methods: tuple[str, ...]) -> list[tuple[float, float]]:
    points = [(0.0, table.reference[regime]["gold_reward"])]
    points += [(float(med[(regime, m, v)][KL]), float(med[(regime, m, v)][GOLD]))
               for m in methods for v in table.settings(regime, m)]
    return envelope(points)


def gaps_to_frontier(table: Table, med: dict, regime: str, method: str, against: tuple[str, ...]) -> dict:
    """For each setting of `method`: (frontier of `against` at that point's KL) − (its gold)."""
    hull = _hull(med, table, regime, against)
    return {v: frontier_at(hull, float(med[(regime, method, v)][KL])) - float(med[(regime, method, v)][GOLD])
            for v in table.settings(regime, method)}


def _ci(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def verdicts(table: Table, med: dict, boots: list[dict], s: dict) -> list[dict]:
    """Each prediction with its rule, the numbers, and 'holds' True / False."""
    out = []
    hypo = ("hypo", "hypo_fixed")
    for regime, rule in (("partial", "above"), ("global", "above"), ("truly_global", "meet")):
        if regime not in s["regimes"] or not table.settings(regime, "dpo"):
            continue
        point = gaps_to_frontier(table, med, regime, "dpo", hypo)
        boot = [gaps_to_frontier(table, b, regime, "dpo", hypo) for b in boots]
        cis = {v: _ci([b[v] for b in boot]) for v in point}
        if rule == "above":
            ok = all(lo > 0 for lo, _ in cis.values())
            claim = "HyPO's frontier is above DPO's at every KL that DPO reaches"
            test = "for every β, the 95% CI of (HyPO's frontier at DPO's KL − DPO's gold reward) is above 0"
        else:
            ok = all(lo <= 0 <= hi for lo, hi in cis.values())
            claim = "the frontiers meet within their CIs"
            test = "for every β, the 95% CI of (HyPO's frontier at DPO's KL − DPO's gold reward) contains 0"
        out.append({"id": f"{regime}:hypo_vs_dpo", "regime": regime, "claim": claim, "rule": test, "holds": ok,
                    "per_setting": {f"β={v:g}": {"kl_dpo": _num(med[(regime, 'dpo', v)][KL]), "gap": _num(point[v]),
                                                 "ci95": [_num(cis[v][0]), _num(cis[v][1])]} for v in point}})
    if "partial" in s["regimes"]:
        for method, claim in (("rlhf_unbounded", "the unbounded-reward RLHF arm drifts like DPO"),
                              ("rlhf_bounded", "the bounded-reward RLHF arm behaves like HyPO")):
            if not table.settings("partial", method):
                continue
            rows = {}
            for v in table.settings("partial", method):
                a, h = ("partial", method, v), ("partial", "hypo", v)
                if h not in med:
                    continue
                dg = _ci([b[a][GOLD] - b[h][GOLD] for b in boots])
                do = _ci([b[a][OOD] - b[h][OOD] for b in boots])
                rows[v] = {"gold_minus_hypo": _num(med[a][GOLD] - med[h][GOLD]), "gold_ci95": [_num(x) for x in dg],
                           "out_of_data_minus_hypo": _num(med[a][OOD] - med[h][OOD]), "out_of_data_ci95": [_num(x) for x in do]}
            if method == "rlhf_unbounded":
                ok = all(r["gold_ci95"][1] < 0 and r["out_of_data_ci95"][0] > 0 for r in rows.values())
                test = ("partial coverage, at every budget κ: the 95% CI of (its gold reward − HyPO's at the same κ) "
                        "is below 0 and that of (its out-of-data share − HyPO's) is above 0")
            else:
                ok = all(r["gold_ci95"][1] >= 0 and r["out_of_data_ci95"][0] <= 0 for r in rows.values())
                test = ("partial coverage, at every budget κ: the 95% CI of (its gold reward − HyPO's at the same κ) "
                        "reaches 0 or above, and that of (its out-of-data share − HyPO's) reaches 0 or below")
            out.append({"id": f"partial:{method}", "regime": "partial", "claim": claim, "rule": test, "holds": ok and bool(rows),
                        "per_setting": {f"κ={v:g}": r for v, r in rows.items()}})
    # the controller's own check: a budget is a budget
    over = {}
    for regime in s["regimes"]:
        for method in ("hypo", "rlhf_unbounded", "rlhf_bounded"):
            for v in table.settings(regime, method):
                kl = float(med[(regime, method, v)][KL])
                if kl > 1.1 * v:
                    over[f"{regime}/{method}/κ={v:g}"] = _num(kl)
    out.append({"id": "budgets", "regime": "all", "claim": "runs under a KL budget κ settle within it",
                "rule": "the median settled KL of every budgeted run is ≤ 1.1·κ", "holds": not over,
                "per_setting": over})
    return out


# ---- files ----------------------------------------------------------------------------------------
def plot_frontier(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(summary["regimes"])
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.2 * len(regimes), 4.4), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        res = summary["regimes"][regime]
        ref = res["reference"]["gold_reward"]
        ax.axhline(ref, color="gray", lw=0.8, ls=":", label="π_ref")
        if summary.get("optimum"):
            opt = sorted((p["kl"], p["gold_reward"]) for p in summary["optimum"])
            ax.plot(*zip(*opt), "--", color="black", lw=1, label="optimum π*_β (exact)")
        for method, m in res["methods"].items():
            pts = sorted(((p["kl"]["median"], p["gold_reward"]["median"], p) for p in m["points"].values()),
                         key=lambda t: t[0])
            xs = [x for x, _, _ in pts]
            ys = [y for _, y, _ in pts]
            xerr = [[x - p["kl"]["ci95"][0] for x, _, p in pts], [p["kl"]["ci95"][1] - x for x, _, p in pts]]
            yerr = [[y - p["gold_reward"]["ci95"][0] for _, y, p in pts], [p["gold_reward"]["ci95"][1] - y for _, y, p in pts]]
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", ms=4, capsize=2, lw=1, color=COLORS[method],
                        label=LABELS[method], alpha=0.9)
            hull = envelope([(0.0, ref)] + list(zip(xs, ys)))
            ax.plot(*zip(*hull), "-", color=COLORS[method], lw=1.2, alpha=0.7)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("reverse KL(π‖π_ref), nats (symlog)")
        ax.set_ylabel("gold reward")
        ax.set_title(f"{TITLES.get(regime, regime)} coverage ({res['coverage']:.2f})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    s = summary["settings"]
    fig.suptitle(f"hypo demo --frontier: settled points, median and 95% bootstrap CI over seeds "
                 f"{list(s['seeds'])}; lines: each method's frontier (concave envelope with π_ref)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(c: dict, fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(c['median'])} [{fmt.format(c['ci95'][0])}, {fmt.format(c['ci95'][1])}]"


def markdown(summary: dict, figure: str = "frontier.png") -> str:
    s = summary["settings"]
    lines = ["# hypo demo --frontier: gold reward against reverse KL, at matched KL", "",
             f"Seeds {list(s['seeds'])} (paired: one data set per coverage level and seed, shared by every "
             f"method); {s['n_pairs']} pairs; batch {s['batch_size']}; k = {s['num_online_samples']}; "
             f"learning rate {s['learning_rate']} (AdamW, constant); HyPO's β = {s['hypo_beta']}. "
             f"Convergence: evaluated every {s['eval_every']} steps; stopped when the means of the last "
             f"{s['window']} evaluations and the {s['window']} before differ by ≤ {s['gold_tol']} in gold reward "
             f"and ≤ {s['kl_tol_abs']} + {s['kl_tol_rel']}·KL in reverse KL (after ≥ {s['min_steps']} steps), "
             f"or at the cap of {s['max_steps']} steps. Settled values: means of the last {s['window']} "
             "evaluations. Cells: median [95% bootstrap CI] over seeds.", ""]
    for regime, res in summary["regimes"].items():
        lines += [f"## {TITLES.get(regime, regime)} coverage ({res['coverage']:.2f})", "",
                  f"π_ref: gold reward {res['reference']['gold_reward']:+.3f}, out-of-grammar share "
                  f"{res['reference']['ood_share']:.3f}.", "",
                  "| method | setting | reverse KL | gold reward | win rate | out-of-grammar | out-of-data | stop step | capped |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, m in res["methods"].items():
            for value, p in m["points"].items():
                lines.append(f"| {LABELS[method]} | {m['setting']} = {value} | {_cell(p['kl'])} | "
                             f"{_cell(p['gold_reward'], '{:+.3f}')} | {_cell(p['win_rate'], '{:.3f}')} | "
                             f"{_cell(p['ood_share'], '{:.3f}')} | {_cell(p['out_of_data_share'], '{:.3f}')} | "
                             f"{p['convergence_step']['median']:.0f} | {p['capped']}/{len(s['seeds'])} |")
        lines.append("")
    lines += ["## Verdicts (rules fixed before the first full run: docs/demo.md)", ""]
    for v in summary["verdicts"]:
        lines.append(f"- **{v['claim']}** ({v['regime']}): {'holds' if v['holds'] else 'does NOT hold'}. "
                     f"Rule: {v['rule']}.")
        for name, row in v["per_setting"].items():
            lines.append(f"  - {name}: " + ", ".join(f"{k} {row_fmt(x)}" for k, x in
                                                    (row.items() if isinstance(row, dict) else [("KL", row)])))
    t = summary["timing"]
    parts = s.get("merged_from")
    lines += ["", f"![frontier]({figure})", "",
              (f"Merged from runs on seeds {' and '.join(map(str, parts))} (`--merge`); times summed. " if parts else "")
              + f"Wall time: {t['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total") + ")."]
    if summary.get("reward_models"):
        acc = list(summary["reward_models"].values())
        lines.append(f"Reward models: held-out label accuracy {min(acc):.3f}–{max(acc):.3f}.")
    return "\n".join(lines) + "\n"


def row_fmt(x) -> str:
    if isinstance(x, list):
        return "[" + ", ".join("–" if v is None else f"{v:+.3f}" for v in x) + "]"
    return "–" if x is None else f"{x:+.3f}"


def write_frontier(results: dict, out: Path) -> dict:
    summary = summarize(results)
    out = Path(out)
    (out / "frontier.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "frontier-runs.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_frontier(summary, out / "frontier.png")
    (out / "frontier.md").write_text(markdown(summary))
    return summary
