"""The KL estimators beyond the paper: exact by enumeration, and KL control of λ.

Like ``test_losses.test_kl_estimator_expected_gradient_is_exact``: on a tabular autoregressive
policy over tokens {0, 1, eos} with responses cut at 3 tokens, the expected gradient of each
surrogate over ALL k-tuples of responses (weighted by their probability) must equal ∇KL(π‖π_ref)
of the (truncated-length) response distribution to float precision.
"""

import itertools
import math

import pytest
import torch

from hypo.losses import (
    adaptive_kl_coef,
    analytic_kl_loss,
    kl_coef_at,
    leave_one_out_baseline,
    reverse_kl_loss,
    suffix_sums,
    token_kl_loss,
)

D = torch.float64
VOCAB, EOS, MAX_LEN = 3, 2, 3


def all_responses():
    """Every terminal response: ends in eos, or has MAX_LEN tokens (cut at the length limit)."""
    return [seq for n in range(1, MAX_LEN + 1) for seq in itertools.product(range(VOCAB), repeat=n)
            if EOS not in seq[:-1] and (n == MAX_LEN or seq[-1] == EOS)]


class Tabular:
    """π and π_ref whose logits depend on the whole prefix; per-token quantities padded to MAX_LEN."""

    def __init__(self, seed):
        torch.manual_seed(seed)
        self.prefixes = {p: i for i, p in enumerate(
            p for n in range(MAX_LEN) for p in itertools.product(range(2), repeat=n))}
        self.theta = torch.randn(len(self.prefixes), VOCAB, dtype=D, requires_grad=True)
        self.theta_ref = torch.randn(len(self.prefixes), VOCAB, dtype=D)
        self.responses = all_responses()
        rows = [self.per_token(y) for y in self.responses]
        self.lp, self.lp_ref, self.kls, self.mask = (torch.stack(x) for x in zip(*rows))  # (n, T)

    def per_token(self, seq):
        lp, lp_ref, kls = (torch.zeros(MAX_LEN, dtype=D) for _ in range(3))
        mask = torch.zeros(MAX_LEN, dtype=torch.bool)
        for t, token in enumerate(seq):
            s = self.prefixes[seq[:t]]
            logp = torch.log_softmax(self.theta[s], -1)
            logq = torch.log_softmax(self.theta_ref[s], -1)
            lp = lp.index_put((torch.tensor([t]),), logp[token:token + 1])
            lp_ref = lp_ref.index_put((torch.tensor([t]),), logq[token:token + 1])
            kls = kls.index_put((torch.tensor([t]),), (logp.exp() * (logp - logq)).sum().view(1))
            mask[t] = True
        return lp, lp_ref, kls, mask

    def exact_grad(self):
        seq_lp = self.lp.sum(-1)
        probs = seq_lp.exp()
        assert abs(float(probs.detach().sum()) - 1) < 1e-12  # the response space is complete
        kl = (probs * (seq_lp - self.lp_ref.sum(-1))).sum()
        # the chain rule: the sequence KL is the expected sum of per-position KLs
        assert abs(float(kl) - float((probs * self.kls.sum(-1)).sum())) < 1e-12
        (grad,) = torch.autograd.grad(kl, self.theta, retain_graph=True)
        return grad

    def expected_grad(self, k, surrogate):
        """Σ over all k-tuples of P(tuple)·∇surrogate(tuple as one prompt's group)."""
        n = len(self.responses)
        tuples = torch.tensor(list(itertools.product(range(n), repeat=k)))  # (n^k, k)
        weights = self.lp.sum(-1).exp().detach()[tuples].prod(-1)
        total = sum(w * surrogate(t.view(1, k)) for w, t in zip(weights, tuples))
        (grad,) = torch.autograd.grad(total, self.theta, retain_graph=True)
        return grad


def surrogates(model: Tabular):
    return {
        "seq": lambda t: reverse_kl_loss(model.lp.sum(-1)[t], model.lp_ref.sum(-1)[t]),
        "token": lambda t: token_kl_loss(model.lp[t], model.lp_ref[t], model.mask[t]),
        "analytic": lambda t: analytic_kl_loss(model.lp[t], model.kls[t], model.mask[t]),
    }


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("estimator", ["token", "analytic"])
def test_estimator_expected_gradient_is_exact(estimator, k):
    model = Tabular(seed=3)
    exact = model.exact_grad()
    expected = model.expected_grad(k, surrogates(model)[estimator])
    assert float(exact.abs().max()) > 1e-2  # not trivially 0 == 0
    assert torch.allclose(expected, exact, atol=1e-10, rtol=0)


def test_estimators_differ_per_draw():
    """Same expectation, different estimators: on a single draw the gradients are not the seq one's
    (else the exactness tests above would prove nothing new)."""
    model = Tabular(seed=3)
    group = torch.tensor([[0, 5]])  # two responses of different lengths
    grads = {name: torch.autograd.grad(f(group), model.theta, retain_graph=True)[0]
             for name, f in surrogates(model).items()}
    assert not torch.allclose(grads["token"], grads["seq"])
    assert not torch.allclose(grads["analytic"], grads["seq"])
    assert not torch.allclose(grads["analytic"], grads["token"])


def test_the_exactness_check_catches_biased_variants():
    """The exactness test can fail: a baseline that uses the sample's own reward-to-go is biased."""
    model = Tabular(seed=3)
    exact = model.exact_grad()

    def own_baseline(t):  # subtracts half of the sample's OWN reward-to-go: correlated with y_i
        lp, ref, m = model.lp[t], model.lp_ref[t], model.mask[t].to(D)
        go = suffix_sums((lp - ref).detach() * m)
        return ((go - 0.5 * go.detach()[:, :, :1]) * lp * m).sum(-1).mean()

    assert not torch.allclose(model.expected_grad(2, own_baseline), exact, atol=1e-6, rtol=0)
    # ... and the analytic estimator without its score-function term misses the later positions
    no_score = lambda t: (model.kls[t] * model.mask[t]).sum(-1).mean()  # noqa: E731
    assert not torch.allclose(model.expected_grad(2, no_score), exact, atol=1e-6, rtol=0)


def test_suffix_sums_and_baseline():
    v = torch.tensor([[1.0, 2.0, 3.0]])
    assert suffix_sums(v).tolist() == [[6.0, 5.0, 3.0]]
    assert suffix_sums(v, inclusive=False).tolist() == [[5.0, 3.0, 0.0]]
    g = torch.tensor([[[1.0], [3.0], [8.0]]])  # (P=1, k=3, T=1)
    assert leave_one_out_baseline(g).flatten().tolist() == [5.5, 4.5, 2.0]
    with pytest.raises(ValueError, match="k ≥ 2"):
        leave_one_out_baseline(torch.zeros(1, 1, 2))


def test_padding_adds_nothing():
    """Positions past a sample's end (mask False) contribute neither value nor gradient."""
    torch.manual_seed(0)
    lp = torch.randn(2, 2, 3, dtype=D, requires_grad=True)
    ref, kls = torch.randn(2, 2, 3, dtype=D), torch.rand(2, 2, 3, dtype=D, requires_grad=True)
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]], [[1, 1, 1], [1, 1, 0]]], dtype=torch.bool)
    for loss in (token_kl_loss(lp, ref, mask), analytic_kl_loss(lp, kls, mask)):
        g_lp, g_kl = torch.autograd.grad(loss, (lp, kls), allow_unused=True)
        assert float(g_lp[~mask].abs().max()) == 0.0
        if g_kl is not None:
            assert float(g_kl[~mask].abs().max()) == 0.0
    # garbage at padded positions changes nothing
    junk = torch.where(mask, lp.detach(), torch.full_like(lp, 1e3))
    assert torch.equal(token_kl_loss(junk, ref, mask), token_kl_loss(lp.detach(), ref, mask))


# ---- KL control: schedules and the adaptive controller --------------------------------------------
def test_kl_coef_schedules():
    assert kl_coef_at(0.3, "constant", 0.7) == 0.3
    assert kl_coef_at(0.3, "linear", 0.0) == 0.3 and kl_coef_at(0.3, "linear", 1.0) == 0.0
    assert math.isclose(kl_coef_at(0.3, "linear", 0.25, final=0.1), 0.25)
    assert math.isclose(kl_coef_at(0.3, "cosine", 0.5, final=0.1), 0.2)
    assert math.isclose(kl_coef_at(0.3, "cosine", 1.0), 0.0, abs_tol=1e-15)
    with pytest.raises(ValueError, match="unknown"):
        kl_coef_at(0.3, "step", 0.5)


def test_adaptive_kl_coef_law_and_limits():
    # KL above target raises λ, below lowers it, by at most exp(±0.2·rate) per step
    assert math.isclose(adaptive_kl_coef(0.1, 2.0, 1.0, 0.5, 1e-3, 10.0), 0.1 * math.exp(0.1))
    assert math.isclose(adaptive_kl_coef(0.1, 1.1, 1.0, 0.5, 1e-3, 10.0), 0.1 * math.exp(0.05))
    assert math.isclose(adaptive_kl_coef(0.1, 0.0, 1.0, 0.5, 1e-3, 10.0), 0.1 * math.exp(-0.1))
    assert adaptive_kl_coef(0.1, 1.0, 1.0, 0.5, 1e-3, 10.0) == 0.1
    assert adaptive_kl_coef(9.9, 5.0, 1.0, 1.0, 1e-3, 10.0) == 10.0  # clamped to the limits
    assert adaptive_kl_coef(0.1, float("nan"), 1.0, 1.0, 1e-3, 10.0) == 0.1  # no step on NaN
