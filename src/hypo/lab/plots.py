"""Figures for the three experiments (matplotlib, Agg backend). Each function writes one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"dpo": "tab:red", "rlhf": "tab:blue", "hypo": "tab:green", "hypo-sampled": "tab:olive",
          "dpo-tabular": "tab:gray", "rlhf-bounded": "tab:cyan", "hypo-decay": "tab:purple",
          "dpo_worst": "darkred", "dpo_gd": "tab:red", "rlhf_bounded": "tab:cyan", "hypo_decay": "tab:purple"}


def _style_legend(ax, names, styles: dict[str, str], loc="best", title=None) -> None:
    """One legend for colours (methods) and one for line styles (e.g. optimiser), instead of
    one entry per (method, style) pair."""
    from matplotlib.lines import Line2D
    h = [Line2D([], [], color=COLORS[n], label=n) for n in names]
    h += [Line2D([], [], color="k", ls=ls, label=lab) for lab, ls in styles.items()]
    ax.legend(handles=h, fontsize=7, loc=loc, title=title, title_fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def separation(res: dict, out: Path) -> list[Path]:
    paths = []
    # 1. global coverage: TV to π* along training, and HyPO's λ sweep.
    g = res["global"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in g["runs"].items():
        ax[0].semilogy(run["steps"], [max(v, 1e-16) for v in run["tv_to_star"]], label=name,
                       color=COLORS[name])
    ax[0].set(xlabel=f"step ({g['optimizer']}, tabular)", ylabel="TV(π, π*)",
              title="global coverage: distance to π*")
    ax[0].legend(fontsize=8)
    sw = g["hypo_lambda_sweep"]
    lams = [s["lam"] for s in sw]
    ax[1].loglog(lams, [s["tv_to_star"] for s in sw], "o-", color=COLORS["hypo"], label="TV(π, π*): O(λ)")
    ax[1].loglog(lams, [max(s["j_gap"], 1e-16) for s in sw], "s--", color=COLORS["hypo"],
                 label="J(π*) − J(π): O(λ²)")
    ax[1].set(xlabel="HyPO's fixed λ", ylabel="gap of HyPO's end point to π*",
              title="fixed-λ HyPO: offset vanishes as λ → 0")
    ax[1].legend(fontsize=8)
    fig.suptitle("Global coverage (every pair of the 5 responses), tabular policy, population labels", fontsize=10)
    paths.append(_save(fig, out / "separation_global.png"))

    # 2. the counterexample family.
    c = res["counterexample"]
    fam = c["family"]
    cs = [f["c"] for f in fam]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(cs, [f["dpo_loss_minus_star"] for f in fam], color=COLORS["dpo"])
    ax[0].set(xlabel="c", ylabel="L_dpo(π_c) − L_dpo(π*)", title="DPO loss: flat in c")
    ax[0].set_ylim(-1e-9, 1e-9)
    ax[1].plot(cs, [f["kl"] for f in fam], label="KL(π_c‖π_ref)")
    ax[1].axhline(c["kl_bound"], ls="--", color="k", lw=0.8, label="log 1/π_ref(u)")
    ax[1].axhline(c["ball"]["radius"], ls=":", color="tab:green", lw=0.8, label="KL ball radius")
    ax[1].plot(cs, [f["gold_reward"] for f in fam], label="gold E[r]")
    ax[1].set(xlabel="c", ylabel="nats / reward", title="reverse KL grows, gold reward falls")
    ax[1].legend(fontsize=8)
    ax[2].plot(cs, [f["rlhf_objective"] - c["rlhf_star_objective"] for f in fam], color=COLORS["rlhf"],
               label="RLHF: J_r̂(π_c) − J_r̂(π*)  (↑ better)")
    ax[2].plot(cs, [f["hypo_loss"] - c["hypo_star_loss"] for f in fam], color=COLORS["hypo"],
               label="HyPO: L(π_c) − L(π*)  (↓ better)")
    ax[2].axhline(0, color="k", lw=0.5)
    ax[2].set(xlabel="c", ylabel="objective of π_c minus that of π*", title="RLHF / HyPO objectives tell π_c from π*")
    ax[2].legend(fontsize=8)
    fig.suptitle("Partial coverage (u never in the data): the family π_c ∝ π*·exp(−c·1[y covered]), tabular", fontsize=10)
    paths.append(_save(fig, out / "separation_counterexample.png"))

    # 3. trajectories under partial coverage (log-linear).
    t = res["trajectories"]
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.0))
    names, opts = [], {}
    for key, run in t["runs"].items():
        name, opt = key.split("/")
        ls = "-" if opt == "gd" else "--"
        names += [name] if name not in names else []
        opts[run["optimizer"]] = ls
        ax[0].plot(run["steps"], run["kl"], ls, color=COLORS[name])
        ax[1].plot(run["steps"], run["ood_mass"], ls, color=COLORS[name])
        ax[2].plot(run["steps"], run["gold_reward"], ls, color=COLORS[name])
    ax[0].axhline(res["counterexample"]["kl_bound"], ls=":", color="k", lw=0.8)
    ax[0].text(0, res["counterexample"]["kl_bound"], " log 1/δ", va="bottom", fontsize=7)
    ax[0].set(xlabel="step", ylabel="KL(π‖π_ref)", title="reverse KL", ylim=(-0.5, 15.5))
    ax[1].set(xlabel="step", ylabel="π(u)", title="mass on the uncovered bad response u")
    ax[2].set(xlabel="step", ylabel="gold E[r]", title="gold reward")
    _style_legend(ax[1], names, opts, loc="center right")
    fig.suptitle(f"Partial coverage, log-linear class [style, is_u], u's style {t['style_u']:g} outside the "
                 "data's range", fontsize=10)
    paths.append(_save(fig, out / "separation_trajectories.png"))

    # 4. u's feature inside the data's range, and the off-policy tabular case.
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    names, opts = [], {}
    for key, run in t["inside"]["runs"].items():
        name, opt = key.split("/")
        names += [name] if name not in names else []
        opts[run["optimizer"]] = "-" if opt == "gd" else "--"
        ax[0].plot(run["steps"], run["kl"], opts[run["optimizer"]], color=COLORS[name])
    kl_star = res["counterexample"]["kl_star"]
    ax[0].axhline(kl_star, ls=":", color="k", lw=0.8)
    ax[0].set(xlabel="step", ylabel="KL(π‖π_ref)", ylim=(-0.02, 2 * kl_star),
              title=f"log-linear, u's style {t['inside']['style_u']:g} inside the data's range: no drift")
    _style_legend(ax[0], names, {**opts, "KL(π*‖π_ref)": ":"}, loc="lower right")
    o = res["offpolicy"]
    for name, run in o["runs"].items():
        ax[1].plot(run["steps"], run["ood_mass"], color=COLORS[name], label=name)
    ax[1].axhline(o["star"]["ood_mass"], ls=":", color="k", lw=0.8, label="π*")
    ax[1].set(xlabel=f"step ({o['optimizer']})", ylabel="π(u)", yscale="log",
              title="tabular, π_ref on the rejected response: DPO drifts")
    ax[1].legend(fontsize=7)
    fig.suptitle("Partial coverage: the two corrected experiments (separation parts 3b and 4)", fontsize=10)
    paths.append(_save(fig, out / "separation_more.png"))
    return paths


def sweep(res: dict, out: Path) -> list[Path]:
    """KL, J gap and π(u) against log(1/δ), one line style per data weight w_u."""
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.3))
    weights = sorted({c["w_u"] for c in res["cells"]})
    styles = ["-", "--", ":", "-."]
    names = ("dpo_worst", "dpo_gd", "rlhf_bounded", "hypo", "hypo_decay")
    for i, w in enumerate(weights):
        cells = [c for c in res["cells"] if c["w_u"] == w]
        x = [c["log_inv_delta"] for c in cells]
        ls = styles[i % len(styles)]
        for name in names:
            ax[0].plot(x, [c["runs"][name]["kl"] for c in cells], ls, color=COLORS[name], marker=".")
            ax[1].plot(x, [max(c["runs"][name]["j_gap"], 1e-16) for c in cells], ls, color=COLORS[name], marker=".")
            ax[2].plot(x, [max(c["runs"][name]["u_mass"], 1e-17) for c in cells], ls, color=COLORS[name], marker=".")
    x = [c["log_inv_delta"] for c in res["cells"] if c["w_u"] == weights[0]]
    ax[0].plot(x, x, color="k", lw=2, alpha=0.25)
    ax[0].text(x[-1], x[-1], "y = log 1/δ ", ha="right", va="top", fontsize=7)
    ax[0].set(xlabel="log 1/δ   (δ = π_ref(u))", ylabel="final KL(π‖π_ref)", title="reverse KL")
    _style_legend(ax[0], names, {}, loc="upper left", title="method (colour)")
    ax[1].set(xlabel="log 1/δ   (δ = π_ref(u))", ylabel="J(π*) − J(π)  (0 drawn at 1e-16)", yscale="log",
              title="gold gap in J = E[r] − β·KL")
    ax[2].set(xlabel="log 1/δ   (δ = π_ref(u))", ylabel="π(u)", yscale="log", title="mass on u")
    from matplotlib.lines import Line2D
    ax[2].legend(handles=[Line2D([], [], color="k", ls=styles[i % len(styles)],
                                 label=f"w_u = {w:g}" + (" (partial)" if w == 0 else " (global)"))
                          for i, w in enumerate(weights)], fontsize=7, loc="lower left",
                 title="data weight on pairs with u", title_fontsize=7)
    fig.suptitle("Coverage-strength sweep: separation bandit, tabular policy, population labels, "
                 f"β = {res['config']['beta']:g}, HyPO λ = {res['config']['lam']:g}", fontsize=10)
    return [_save(fig, out / "sweep.png")]


def finite(res: dict, out: Path) -> list[Path]:
    """J gap against N (mean ± s.e. over seeds) per coverage, with N^-1/2 and N^-1 slopes."""
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for i, (kind, curves) in enumerate(res["curves"].items()):
        for name, c in curves.items():
            ax[i].errorbar(c["n"], [max(v, 1e-8) for v in c["j_gap_mean"]], yerr=c["j_gap_se"],
                           color=COLORS[name], marker="o", ms=3, label=name)
        n = curves["rlhf"]["n"]
        g0 = max(curves["rlhf"]["j_gap_mean"][0], 1e-6)
        ax[i].plot(n, [g0 * (n[0] / v) ** 0.5 for v in n], "k:", lw=0.8, label="∝ N^-1/2 (bound's rate)")
        ax[i].plot(n, [g0 * (n[0] / v) for v in n], "k--", lw=0.8, label="∝ N^-1")
        what = {"partial": "μ uniform on responses 0–3, never u", "global": "μ uniform on all 5 responses"}
        ax[i].set(xscale="log", yscale="log", xlabel="N labelled pairs (one BT label each)",
                  title=f"{kind} coverage ({what.get(kind, kind)})")
    ax[0].set_ylabel(f"J(π*) − J(π̂), mean ± s.e. over {res['config']['seeds']} seeds")
    ax[0].legend(fontsize=7)
    fig.suptitle(f"Finite samples: separation bandit, δ = {res['config']['delta']:g}, log-linear class, "
                 f"HyPO λ = {res['config']['lam']:g}, RLHF with a bounded (clipped) linear reward", fontsize=10)
    return [_save(fig, out / "finite_samples.png")]


def extrapolation(res: dict, out: Path) -> list[Path]:
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for i, name in enumerate(("dpo", "rlhf", "dpo-tabular")):
        for opt, ls in (("gd", "-"), ("adam", "--")):
            run = res["runs"][f"{name}/{opt}"]
            ax[i].plot(run["steps"], run["p_best"], ls, color="tab:purple", label=f"π(best, not in data) {opt}")
            ax[i].plot(run["steps"], run["p_chosen"], ls, color="tab:blue", label=f"avg π(preferred in data) {opt}")
            ax[i].plot(run["steps"], run["p_rejected"], ls, color="tab:orange", label=f"avg π(dispreferred) {opt}")
        ax[i].set(xlabel="step", title=f"{name} ({res['runs'][f'{name}/gd']['policy_class']})", yscale="log")
        ax[i].set_ylim(1e-4, 1.5)
    ax[0].set_ylabel("probability")
    ax[0].legend(fontsize=7)
    return [_save(fig, out / "extrapolation.png")]


def ood_mass(res: dict, out: Path) -> list[Path]:
    s = res["shown"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, run in s["runs"].items():
        name, opt = key.split("/")
        ax[0].plot(run["steps"], run["ood_ratio"], "-" if opt == "gd" else "--", color=COLORS[name],
                   label=f"{name} ({run['optimizer']})")
    ax[0].axhline(s["gd_dpo_limit_ratio"], ls=":", color=COLORS["dpo"], lw=0.8, label="GD-DPO limit (closed form)")
    ax[0].axhline(s["pi_star_ratio"], ls=":", color="k", lw=0.8, label="π*")
    ax[0].set(xlabel="step", ylabel="π(out-of-data) / π_ref(out-of-data)",
              title=f"tabular: {s['ref']}, {s['pattern']}, spread {s['spread']:g}")
    ax[0].legend(fontsize=7)
    # grid: final DPO ratio per condition, GD vs Adam.
    labels, gd, adam, hy = [], [], [], []
    for g in res["grid"]:
        labels.append(f"{g['ref']}/{g['pattern']}/{g['spread']:g}")
        gd.append(g["runs"]["dpo/gd"]["final_ratio"])
        adam.append(g["runs"]["dpo/adam"]["final_ratio"])
        hy.append(g["runs"]["hypo/gd"]["final_ratio"])
    y = range(len(labels))
    ax[1].scatter(gd, y, color=COLORS["dpo"], marker="o", label="DPO, GD")
    ax[1].scatter(adam, y, color=COLORS["dpo"], marker="x", label="DPO, Adam")
    ax[1].scatter(hy, y, color=COLORS["hypo"], marker="s", s=12, label="HyPO, GD")
    ax[1].axvline(1.0, color="k", lw=0.6)
    ax[1].set_yticks(list(y), labels, fontsize=6)
    ax[1].set(xscale="log", xlabel="final out-of-data mass / π_ref's", title="all conditions")
    ax[1].legend(fontsize=7)
    return [_save(fig, out / "ood_mass.png")]
