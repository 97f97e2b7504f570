"""The experiment's table (console), figure (PNG) and report (Markdown); cells as in `hypo demo`."""

from __future__ import annotations

from pathlib import Path

from ..demo.report import LABELS, ROWS, cell, plot, verdicts
from .frontier import KL_RATE, KNOB

QUICK = {"seeds": (0,), "train_prompts": 40, "steps": 8, "eval_every": 8, "eval_prompts": 8}


def table_lines(results: dict) -> list[str]:
    lines = ["| coverage | metric | DPO | HyPO |", "|---|---|---|---|"]
    for regime, res in results["regimes"].items():
        for i, (key, name, fmt) in enumerate(ROWS):
            label = (f"{regime} ({res['coverage']:.2f}; kinds: {', '.join(res['covered_kinds'])}; "
                     f"{res['n_pairs']} pairs)") if i == 0 else ""
            name = "share outside the data's kinds" if key == "ood_rate" else name
            lines.append(f"| {label} | {name} | {cell(res['dpo'][key], fmt)} | {cell(res['hypo'][key], fmt)} |")
        se = {m: ", ".join(f"{v:.3f}" for v in res[m]["kl_stderr"]) for m in ("dpo", "hypo")}
        lines.append(f"|  | KL standard error (per seed) | {se['dpo']} | {se['hypo']} |")
    return lines


PANELS = (("eval_gold/reward", "gold reward"), ("eval_gold/win_rate", "gold win rate vs π_ref"),
          ("eval_gold/kl", "reverse KL(π‖π_ref)"), ("eval_gold/ood_rate", "share outside the data's kinds"))


def sample_lines(results: dict, per_policy: int = 4) -> list[str]:
    lines = ["| policy | prompt | response | kind |", "|---|---|---|---|"]

    def row(policy, x):
        text = x["text"].strip().replace("|", "\\|").replace("\n", " ⏎ ")
        return f"| {policy} | {x['prompt']} | {text} | {x['kind']} |"

    lines += [row("π_ref", x) for x in results["reference"]["samples"][:per_policy]]
    for regime, methods in results["samples"].items():
        for method, seeds in methods.items():
            first = seeds[min(seeds)]
            lines += [row(f"{LABELS[method]} ({regime}, seed {min(seeds)})", x) for x in first[:per_policy]]
    return lines


def write_report(results: dict, out: Path) -> Path:
    figure = plot(results, out / "realexp.png", PANELS)
    s, ref = results["settings"], results["reference"]
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in ref["eval_kinds"].items())
    lines = ["# hypo realexp: DPO vs HyPO on SmolLM2-135M-Instruct under partial and global coverage", "",
             f"π_ref on the eval prompts: gold reward {ref['gold_reward']:+.3f}; kinds {kinds}; "
             f"cut at max_new_tokens {ref.get('eval_clipped', float('nan')):.2f}.", "",
             f"Shared: β {s['beta']}, learning rate {s['learning_rate']} (constant, LoRA r {s['lora_r']}), "
             f"batch {s['batch_size']} pairs, {s['steps']} steps, seeds {list(s['seeds'])}, "
             f"max_new_tokens {s['max_new_tokens']}. HyPO only: λ {s['kl_coef']}, k {s['num_online_samples']}. "
             f"Evaluation: {s['eval_prompts']} held-out prompts × {s['eval_samples_per_prompt']} samples.", ""]
    lines += table_lines(results)
    lines += ["", "Cells: median [min, max] over seeds.", "", "## The paper's predictions", ""]
    lines += [f"- {v}" for v in verdicts(results)]
    lines += ["", f"![curves]({figure.name})", "", "## Samples (first sample of the first eval prompts)", ""]
    lines += sample_lines(results)
    lines += ["", f"Wall time: {s.get('wall_seconds', '?')} s."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


FRONTIER_QUICK = {"seeds": (0,), "train_prompts": 40, "steps": 8, "eval_every": 4, "eval_prompts": 8,
                  "dpo_betas": (0.1, 1.0), "kl_budgets": (0.25, 1.0)}


def plot_frontier(results: dict, path: Path) -> Path:
    """Gold reward and win rate against reverse KL: each run (small), each point's median (large,
    joined along the knob), π_ref at KL 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..demo.report import COLORS

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, title) in zip(axes, (("gold_reward", "gold reward"), ("win_rate", "gold win rate vs π_ref"))):
        ref = results["reference"]
        ax.plot([0.0], [ref[metric]], "k*", markersize=10, label="π_ref")
        for method, pts in results["points"].items():
            color, knob = COLORS.get(method), KNOB[method]
            med = sorted((p["kl"]["median"], p[metric]["median"], v) for v, p in pts.items())
            for v, p in pts.items():
                ax.plot(p["kl"]["per_seed"], p[metric]["per_seed"], ".", color=color, alpha=0.4)
            ax.plot([m[0] for m in med], [m[1] for m in med], "o-", color=color, label=f"{LABELS[method]} over {knob}")
            for x, y, v in med:
                ax.annotate(f"{knob}={v}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("reverse KL(π‖π_ref), nats")
        ax.set_title(f"{title}: {results['regime']} coverage ({results['coverage']:.2f})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_lines(results: dict) -> list[str]:
    lines = ["| method | knob | reverse KL | gold reward | win rate | outside the data's kinds | "
             "last change of KL / gold | final λ | s per run |", "|---|---|---|---|---|---|---|---|---|"]
    for method, pts in results["points"].items():
        knob = KNOB[method]
        for v, p in pts.items():
            lam = cell(p["final_lambda"], "{:.3f}") if "final_lambda" in p else ""
            lines.append(f"| {LABELS[method]} | {knob} = {v} | {cell(p['kl'], '{:.2f}')} | "
                         f"{cell(p['gold_reward'], '{:+.3f}')} | {cell(p['win_rate'], '{:.3f}')} | "
                         f"{cell(p['ood_rate'], '{:.2f}')} | {p['kl_last_change']['median']:+.2f} / "
                         f"{p['gold_reward_last_change']['median']:+.3f} | {lam} | {p['seconds']['median']:.0f} |")
    return lines


def write_frontier_report(results: dict, out: Path) -> Path:
    figure = plot_frontier(results, out / "frontier.png")
    s, v = results["settings"], results["verdict"]
    lines = ["# hypo realexp --frontier: gold reward against KL on SmolLM2-135M-Instruct, partial coverage", "",
             f"π_ref: gold reward {results['reference']['gold_reward']:+.3f}. {results['n_pairs']} pairs "
             f"(kinds {', '.join(results['covered_kinds'])}; coverage {results['coverage']:.2f}). Shared: "
             f"learning rate {s['learning_rate']} (LoRA r {s['lora_r']}), batch {s['batch_size']}, {s['steps']} steps, "
             f"seeds {list(s['seeds'])}; HyPO: DPO term at β {s['beta']}, k {s['num_online_samples']}, "
             f"λ₀ {s['beta']}, η = {KL_RATE}·β/κ. Evaluation: {s['eval_prompts']} held-out prompts × "
             f"{s['eval_samples_per_prompt']} samples at every {s['eval_every']} steps.", ""]
    lines += frontier_lines(results)
    lines += ["", "Cells: median [min, max] over seeds at the last step; last change: median change over the "
              "last evaluation interval (still moving if large).", "",
              f"- {v['claim']} ({v['rule']}): **{'holds' if v['holds'] else 'does NOT hold'}**"]
    for b, per_seed in v["per_setting"].items():
        gaps = ", ".join(f"seed {sd}: {g['gap']:+.3f} at KL {g['kl_dpo']:.2f}" for sd, g in per_seed.items())
        lines.append(f"  - {b}: {gaps}")
    if v.get("pi_ref_is_the_frontier_at_seeds"):
        lines.append(f"  - trivially at seeds {v['pi_ref_is_the_frontier_at_seeds']}: no HyPO point beats π_ref's "
                     "gold reward there, so HyPO's frontier is π_ref's own point, flat; the gap then says DPO is "
                     "below π_ref, not that HyPO improved on it. Compare the points at matched KL in the table.")
    lines += ["", f"![frontier]({figure.name})", "",
              f"Wall time: {s.get('wall_seconds', '?')} s (this invocation); the runs' own times add up to "
              f"{s.get('runs_seconds', '?')} s."]
    path = out / "frontier.md"
    path.write_text("\n".join(lines) + "\n")
    return path
