"""Exact objectives and gradients of the coverage lab (hypo.lab) against torch autograd and theory."""

import numpy as np
import pytest
import torch

from hypo.lab import objectives as obj
from hypo.lab.policies import LogLinear, Tabular
from hypo.lab.setting import Bandit, all_pairs, bt_population, kl_ball_max_mass, log_softmax, sample_data


def _bandit(seed=0, X=2, Y=5):
    rng = np.random.default_rng(seed)
    return Bandit(log_softmax(rng.normal(size=(X, Y))), rng.normal(size=(X, Y)), np.array([0.3, 0.7]), 0.7)


def _torch_losses(theta, policy, bandit, data, lam, r_hat):
    """The same objectives written directly in torch (float64), for autograd."""
    ref = torch.tensor(bandit.ref_logp)
    if isinstance(policy, LogLinear):
        logits = ref + torch.tensor(policy.features) @ theta
    else:
        logits = ref + theta
    lp = torch.log_softmax(logits, dim=1)
    ratio = lp - ref
    x, a, b = (torch.tensor(v) for v in (data.x, data.a, data.b))
    h = bandit.beta * (ratio[x, a] - ratio[x, b])
    p, w = torch.tensor(data.pref), torch.tensor(data.weight)
    dpo = (w * (-p * torch.nn.functional.logsigmoid(h) - (1 - p) * torch.nn.functional.logsigmoid(-h))).sum()
    rho = torch.tensor(bandit.rho)
    kl = (rho * (lp.exp() * ratio).sum(1)).sum()
    rl = -((rho * (lp.exp() * torch.tensor(r_hat)).sum(1)).sum() - bandit.beta * kl)
    return {"dpo": dpo, "hypo": dpo + lam * kl, "kl": kl, "rlhf": rl}


@pytest.mark.parametrize("cls", ["tabular", "log-linear"])
def test_exact_gradients_match_autograd(cls):
    bandit = _bandit()
    data = bt_population(bandit, [all_pairs(range(3)), all_pairs([0, 2, 3, 4])])
    rng = np.random.default_rng(1)
    if cls == "tabular":
        policy, theta = Tabular(bandit.ref_logp), rng.normal(size=bandit.shape)
    else:
        policy = LogLinear(bandit.ref_logp, rng.normal(size=(*bandit.shape, 3)))
        theta = rng.normal(size=3)
    lam, r_hat = 0.3, rng.normal(size=bandit.shape)
    lp = policy.logp(theta)
    ours = {
        "dpo": obj.dpo(lp, bandit.ref_logp, data, bandit.beta),
        "hypo": obj.hypo(lp, bandit.ref_logp, data, bandit.beta, lam, bandit.rho),
        "kl": obj.kl(lp, bandit.ref_logp, bandit.rho),
        "rlhf": obj.rlhf_policy_loss(lp, bandit.ref_logp, r_hat, bandit.beta, bandit.rho),
    }
    for name, (value, g_logp) in ours.items():
        t = torch.tensor(theta, requires_grad=True)
        ref_loss = _torch_losses(t, policy, bandit, data, lam, r_hat)[name]
        ref_loss.backward()
        # float64 end to end: agreement to round-off.
        assert value == pytest.approx(ref_loss.item(), abs=1e-12)
        np.testing.assert_allclose(policy.grad(theta, lp, g_logp), t.grad.numpy(), atol=1e-12)


def test_hypo_with_lambda_zero_is_dpo():
    bandit = _bandit()
    data = bt_population(bandit, [all_pairs(range(5))] * 2)
    lp = log_softmax(np.random.default_rng(2).normal(size=bandit.shape))
    v0, g0 = obj.dpo(lp, bandit.ref_logp, data, bandit.beta)
    v1, g1 = obj.hypo(lp, bandit.ref_logp, data, bandit.beta, 0.0, bandit.rho)
    assert v0 == v1 and np.array_equal(g0, g1)


@pytest.mark.parametrize("k", [2, 3])
def test_rloo_estimator_is_unbiased_exactly(k):
    """E over all Y^k sample tuples of the RLOO gradient equals ∇KL exactly (to round-off)."""
    bandit = _bandit(X=2, Y=4)
    policy = Tabular(bandit.ref_logp)
    theta = np.random.default_rng(3).normal(size=bandit.shape)
    lp = policy.logp(theta)
    exact = policy.grad(theta, lp, obj.kl(lp, bandit.ref_logp, bandit.rho)[1])
    expected = policy.grad(theta, lp, obj.rloo_expected_grad_logp(lp, bandit.ref_logp, bandit.rho, k))
    np.testing.assert_allclose(expected, exact, atol=1e-12)


def test_rloo_estimator_monte_carlo_mean():
    """The sampled estimator's mean over n draws is within 5 standard errors of ∇KL per coordinate
    (a CLT bound; false alarm chance ≈ 6e-7 per coordinate, and the seed is fixed anyway)."""
    bandit = _bandit()
    policy = LogLinear(bandit.ref_logp, np.random.default_rng(4).normal(size=(*bandit.shape, 3)))
    theta = np.array([0.5, -1.0, 0.8])
    lp = policy.logp(theta)
    exact = policy.grad(theta, lp, obj.kl(lp, bandit.ref_logp, bandit.rho)[1])
    rng = np.random.default_rng(0)
    n = 4000
    draws = np.array([policy.grad(theta, lp, obj.rloo_kl_grad_logp(
        lp, bandit.ref_logp, bandit.rho, obj.sample_responses(lp, 2, rng))) for _ in range(n)])
    se = draws.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(draws.mean(0) - exact) <= 5 * se)
    assert np.all(se < 0.1 * np.abs(exact).max())  # the test has power: SE is small next to ∇KL


def test_sampler_matches_policy():
    lp = np.log(np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
    s = obj.sample_responses(lp, 20000, np.random.default_rng(0))
    freq = np.stack([np.bincount(row, minlength=3) / 20000 for row in s])
    # binomial SE ≤ sqrt(0.25/20000) ≈ 0.0035; 0.02 is > 5 SE.
    np.testing.assert_allclose(freq, np.exp(lp), atol=0.02)


def test_reward_mle_recovers_rewards_on_covered_responses_only():
    bandit = _bandit()
    data = bt_population(bandit, [all_pairs(range(4))] * 2)
    r_hat = obj.tabular_design(bandit.shape) @ obj.fit_reward(data, obj.tabular_design(bandit.shape))
    cov = bandit.reward[:, :4]
    # BT identifies rewards up to a per-prompt shift; min-norm picks mean zero; uncovered stays 0.
    np.testing.assert_allclose(r_hat[:, :4], cov - cov.mean(1, keepdims=True), atol=1e-9)
    np.testing.assert_allclose(r_hat[:, 4], 0.0, atol=1e-12)


def test_kl_ball_max_mass_solves_binary_kl():
    for eps, delta in [(1.0, 1e-6), (0.3, 1e-3), (3.0, 0.01)]:
        p = kl_ball_max_mass(eps, delta)
        kl = p * np.log(p / delta) + (1 - p) * np.log((1 - p) / (1 - delta))
        assert kl == pytest.approx(eps, rel=1e-9)
    assert kl_ball_max_mass(20.0, 1e-6) == 1.0  # log(1/δ) = 13.8 < 20: the whole simplex


def test_sample_data_is_empirical_distribution():
    bandit = _bandit()
    pop = bt_population(bandit, [all_pairs(range(5))] * 2)
    d = sample_data(bandit, pop, 500, np.random.default_rng(0))
    assert d.weight.sum() == pytest.approx(1.0)
    assert np.all((d.pref >= 0) & (d.pref <= 1))
    assert np.all(np.isclose(d.weight * 500, np.round(d.weight * 500)))
