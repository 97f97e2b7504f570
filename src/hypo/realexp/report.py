"""The experiment's table (console), figure (PNG) and report (Markdown); cells as in `hypo demo`."""

from __future__ import annotations

from pathlib import Path

from ..demo.report import LABELS, ROWS, cell, plot, verdicts

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
