"""The claims each coverage-lab experiment demonstrates (docs/lab/*.md), asserted with margins.

Each experiment runs once per module with its default configuration (the same one `hypo lab` and
the docs use); every margin below says where it comes from.
"""

import numpy as np
import pytest

from hypo.lab.experiments import extrapolation, ood_mass, separation


@pytest.fixture(scope="module")
def sep():
    return separation.run()


@pytest.fixture(scope="module")
def ood():
    return ood_mass.run()


# ---- separation -----------------------------------------------------------------------------------

def test_global_coverage_all_methods_reach_pi_star(sep):
    runs = sep["global"]["runs"]
    for m in ("dpo", "rlhf"):
        assert runs[m]["tv_to_star"][-1] < 1e-3
    # HyPO (penalty form, fixed λ) reaches its own optimum, which is O(λ) from π*: the λ sweep is
    # linear (TV/λ within a factor 2 across three decades) and below 1e-3 once λ ≤ 1e-4.
    sweep = sep["global"]["hypo_lambda_sweep"]
    ratios = [s["tv_to_star"] / s["lam"] for s in sweep]
    assert max(ratios) / min(ratios) < 2
    assert all(a["tv_to_star"] > b["tv_to_star"] for a, b in zip(sweep, sweep[1:]))  # λ decreasing
    assert sweep[-1]["lam"] <= 1e-4 and sweep[-1]["tv_to_star"] < 1e-3
    # The sampled (RLOO) HyPO ends near the exact one: noise of a k=4 estimator at lr=2, λ=0.01.
    assert abs(runs["hypo-sampled"]["tv_to_star"][-1] - runs["hypo"]["tv_to_star"][-1]) < 0.01


def test_counterexample_minimises_dpo_yet_is_far_and_bad(sep):
    c = sep["counterexample"]
    fam = c["family"]
    assert max(abs(f["dpo_loss_minus_star"]) for f in fam) <= 1e-9
    # KL approaches the bound log(1/δ) = 13.8 (δ = 1e-6): within 1% at c = 30.
    assert fam[-1]["kl"] >= 0.99 * c["kl_bound"]
    assert fam[-1]["kl"] > 40 * c["kl_star"]
    r_u = -3.0
    assert fam[-1]["gold_reward"] < r_u + 0.01
    assert fam[-1]["gold_value"] < c["gold_value_star"] - 5


def test_rlhf_and_hypo_rank_far_counterexamples_below_pi_star(sep):
    c = sep["counterexample"]
    lam = sep["config"]["lam"]
    far = [f for f in c["family"] if f["kl"] > c["ball"]["radius"]]
    assert len(far) >= 10
    for f in far:
        # HyPO: same DPO loss, so L(π_c) − L(π*) = λ(KL_c − KL*) > λ·ball_margin (= 0.01 nats·λ).
        assert f["hypo_loss"] - c["hypo_star_loss"] >= lam * (f["kl"] - c["kl_star"]) - 1e-12
        assert f["hypo_loss"] - c["hypo_star_loss"] > 0.99 * lam * 1.0
        # RLHF: the KL penalty outweighs r̂'s range once outside the ball (measured gap ≥ 0.57).
        assert f["rlhf_objective"] < c["rlhf_star_objective"] - 0.2


def test_rlhf_and_hypo_optima_stay_in_the_kl_ball(sep):
    c = sep["counterexample"]
    for m in ("rlhf", "rlhf_closed_form", "hypo", "hypo-sampled"):
        o = c["optima"][m]
        assert o["kl"] < c["ball"]["radius"]
        assert o["ood_mass"] <= c["ball"]["max_u_mass_in_ball"]
    assert c["optima"]["rlhf"]["tv_to_star"] < 1e-3
    assert c["optima"]["hypo"]["tv_to_star"] < 0.05  # the O(λ) bias seen under global coverage


def test_trajectories_dpo_drifts_hypo_does_not(sep):
    t = sep["trajectories"]["runs"]
    c = sep["counterexample"]
    for opt in ("gd", "adam"):
        d = t[f"dpo/{opt}"]
        assert d["kl"][-1] > 8.0               # > 25× KL(π*) = 0.28 and > 6× the ball radius
        assert d["ood_mass"][-1] > 0.5
        assert d["gold_reward"][-1] < 0.0      # π* has 0.83
        assert abs(d["dpo_loss"][-1] - c["dpo_loss_star"]) < 1e-6   # and it is a DPO minimiser
        for m in ("hypo", "hypo-sampled"):
            h = t[f"{m}/{opt}"]
            assert max(h["kl"]) < c["ball"]["radius"]
            assert h["ood_mass"][-1] < c["ball"]["max_u_mass_in_ball"]
            assert h["gold_reward"][-1] > 0.6
    # Reported, not hidden: RLHF with a linear reward model on the same features extrapolates
    # r̂(u) = 8 and lands where GD-DPO does (same optimum, π_ref·exp(r̂/β)).
    assert abs(t["rlhf/gd"]["kl"][-1] - t["dpo/gd"]["kl"][-1]) < 0.01


# ---- extrapolation --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extrapolation_best_unseen_response_rises_preferred_fall(seed):
    res = extrapolation.run(extrapolation.ExtrapolationConfig(seed=seed))
    assert res["best_reward"] > res["max_reward_in_data"]
    for key, r in res["runs"].items():
        if key.startswith("dpo-tabular"):
            # No function approximation: the unseen response's logit never moves; it loses mass.
            assert r["p_best"][-1] <= r["p_best"][0]
            continue
        # From 1/20 to > 0.35 (measured 0.40-0.999 over seeds 0-4: close runners-up, also absent
        # from the data, share the mass on some seeds), while the in-data responses lose > 75%.
        assert r["p_best"][-1] > 7 * r["p_best"][0]
        assert r["p_chosen"][-1] < 0.25 * r["p_chosen"][0]
        assert r["p_rejected"][-1] < 0.25 * r["p_rejected"][0]


# ---- out-of-data mass -------------------------------------------------------------------------------

def test_gd_dpo_ends_at_the_closed_form_limit(ood):
    for g in ood["grid"]:
        assert g["runs"]["dpo/gd"]["final_ratio"] == pytest.approx(g["gd_dpo_limit_ratio"], rel=1e-5)  # GD converges linearly; 1500 steps


def test_gd_growth_condition(ood):
    grows = 0
    for g in ood["grid"]:
        cond = g["gd_condition"]["sum_ref_exp_theta"] < g["gd_condition"]["ref_covered_mass"]
        final = g["runs"]["dpo/gd"]["final_ratio"]
        assert (final > 1) == cond
        grows += cond
    assert 0 < grows < len(ood["grid"])  # both outcomes occur in the grid


def test_adam_breaks_conservation_by_pattern(ood):
    for g in ood["grid"]:
        gd = g["runs"]["dpo/gd"]["final_ratio"]
        if g["pattern"] == "best-vs-rest":      # 1 winner, 3 losers: covered logits sink under Adam
            assert g["runs"]["dpo/adam"]["final_ratio"] > 1.1 * gd
        if g["pattern"] == "worst-vs-rest":     # 3 winners, 1 loser: they rise
            assert g["runs"]["dpo/adam"]["final_ratio"] < 0.9 * gd


def test_hypo_pins_uncovered_logratio_at_kl(ood):
    for g in ood["grid"]:
        for key in ("hypo/gd", "hypo/adam"):
            # Stationarity of L_dpo + λ·KL in an uncovered logit: log π/π_ref = KL (residual from
            # 1500 finite steps; worst measured 3e-3).
            assert abs(g["runs"][key]["uncovered_logratio_minus_kl"]) < 5e-3
            assert g["runs"][key]["final_ratio"] >= 1.0 - 1e-9
        if g["runs"]["dpo/gd"]["final_ratio"] > 1:
            assert g["runs"]["hypo/gd"]["final_ratio"] < g["runs"]["dpo/gd"]["final_ratio"]
