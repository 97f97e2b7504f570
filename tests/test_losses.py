"""Loss math against closed-form values, exact gradients and an enumerated policy."""

import itertools
import math

import pytest
import torch

from hypo.losses import (
    hypo_loss,
    leave_one_out_advantages,
    preference_loss,
    reverse_kl_estimate,
    reverse_kl_loss,
)

D = torch.float64


def logps(*values):
    return torch.tensor(values, dtype=D)


def test_dpo_sigmoid_closed_form():
    pc, pr, rc, rr = logps(-1.0, -3.0), logps(-2.0, -1.0), logps(-1.5, -2.0), logps(-1.5, -2.5)
    beta = 0.5
    out = preference_loss(pc, pr, rc, rr, beta)
    for i in range(2):
        u = (pc[i] - rc[i]) - (pr[i] - rr[i])
        expected = math.log1p(math.exp(-beta * float(u)))
        assert abs(float(out.losses[i]) - expected) < 1e-12
        assert abs(float(out.chosen_rewards[i]) - beta * float(pc[i] - rc[i])) < 1e-12
        assert abs(float(out.rejected_rewards[i]) - beta * float(pr[i] - rr[i])) < 1e-12
    # pair 0: u = 0.5 - (-0.5) = 1 -> log(1 + e^-0.5)
    assert abs(float(out.losses[0]) - math.log(1 + math.exp(-0.5))) < 1e-12


def test_conservative_and_hinge_closed_form():
    pc, pr, rc, rr = logps(-1.0), logps(-2.0), logps(-1.2), logps(-1.7)
    u = 0.2 - (-0.3)  # 0.5
    beta, eps = 0.2, 0.1
    cdpo = preference_loss(pc, pr, rc, rr, beta, "sigmoid", eps).losses.item()
    sig = lambda z: 1 / (1 + math.exp(-z))
    assert abs(cdpo - (-(1 - eps) * math.log(sig(beta * u)) - eps * math.log(sig(-beta * u)))) < 1e-12
    hinge = preference_loss(pc, pr, rc, rr, beta, "hinge").losses.item()
    assert abs(hinge - max(0.0, 1 - beta * u)) < 1e-12
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(pc, pr, rc, rr, beta, "bogus")


def test_ipo_uses_per_token_mean_log_ratios():
    """IPO as TRL 1.16 / the IPO authors: ū = Δ+/|y+| − Δ−/|y−| with the summed log-ratios Δ."""
    pc, pr, rc, rr = logps(-1.0, -6.0), logps(-2.0, -3.0), logps(-1.2, -5.0), logps(-1.7, -3.5)
    lc, lr = torch.tensor([2, 4]), torch.tensor([5, 1])
    beta = 0.2
    out = preference_loss(pc, pr, rc, rr, beta, "ipo", chosen_lengths=lc, rejected_lengths=lr)
    # pair 0: Δ+ = 0.2 over 2 tokens, Δ− = −0.3 over 5 -> ū = 0.1 + 0.06 = 0.16
    assert abs(out.losses[0].item() - (0.16 - 1 / (2 * beta)) ** 2) < 1e-12
    # pair 1: Δ+ = −1 over 4, Δ− = 0.5 over 1 -> ū = −0.25 − 0.5 = −0.75
    assert abs(out.losses[1].item() - (-0.75 - 1 / (2 * beta)) ** 2) < 1e-12
    # rewards stay β·(summed log-ratio), as for every loss type
    assert torch.allclose(out.chosen_rewards, beta * (pc - rc))
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss(pc, pr, rc, rr, beta, "ipo")


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0),
                                                 ("hinge", 0.0)])
def test_preference_loss_gradcheck(loss_type, smoothing):
    torch.manual_seed(0)
    args = [torch.randn(4, dtype=D, requires_grad=True) for _ in range(4)]
    lengths = torch.tensor([1, 2, 3, 7]), torch.tensor([4, 1, 2, 5])
    fn = lambda a, b, c, d: preference_loss(a, b, c, d, 0.3, loss_type, smoothing, *lengths).losses
    assert torch.autograd.gradcheck(fn, args)


def test_kl_surrogate_gradient_is_advantage():
    torch.manual_seed(1)
    pol = torch.randn(3, 4, dtype=D, requires_grad=True)
    ref = torch.randn(3, 4, dtype=D)
    # Advantages are constants, so the gradient is A / (P*k) exactly.
    loss = reverse_kl_loss(pol, ref)
    (grad,) = torch.autograd.grad(loss, pol)
    adv = leave_one_out_advantages(pol - ref)
    assert torch.allclose(grad, adv / pol.numel(), atol=1e-12)
    # (No numerical gradcheck: the advantages are held constant on purpose, so the surrogate's
    # value is not the antiderivative of its gradient.)


def test_leave_one_out_advantages():
    r = torch.tensor([[1.0, 2.0, 6.0]], dtype=D)
    adv = leave_one_out_advantages(r)
    assert torch.allclose(adv, torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5]], dtype=D))
    assert abs(float(adv.sum())) < 1e-12
    with pytest.raises(ValueError, match="k ≥ 2"):
        leave_one_out_advantages(torch.zeros(2, 1))


def test_kl_coef_zero_is_exactly_dpo():
    torch.manual_seed(2)
    pc, pr, rc, rr = (torch.randn(5, dtype=D, requires_grad=True) for _ in range(4))
    online = torch.randn(5, 2, dtype=D, requires_grad=True)
    online_ref = torch.randn(5, 2, dtype=D)
    dpo = preference_loss(pc, pr, rc, rr, 0.1).losses.mean()
    dpo_grads = torch.autograd.grad(dpo, (pc, pr))
    out = preference_loss(pc, pr, rc, rr, 0.1)
    hypo = hypo_loss(out.losses, reverse_kl_loss(online, online_ref), kl_coef=0.0)
    hypo_grads = torch.autograd.grad(hypo, (pc, pr, online), allow_unused=True)
    assert torch.equal(hypo, dpo)
    assert torch.equal(hypo_grads[0], dpo_grads[0]) and torch.equal(hypo_grads[1], dpo_grads[1])
    assert hypo_grads[2] is None  # the KL term is not even in the graph


def test_reverse_kl_estimate_mean_and_stderr():
    pol = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, se = reverse_kl_estimate(pol, torch.zeros(4))
    assert abs(mean - 2.5) < 1e-12
    assert abs(se - float(torch.tensor([1.0, 2, 3, 4], dtype=D).std() / 2)) < 1e-12
    assert reverse_kl_estimate(torch.zeros(4), torch.zeros(4)) == (0.0, 0.0)


# ---- the KL term's expected gradient equals ∇KL(π‖π_ref), by enumeration -------------------------
VOCAB, EOS, MAX_LEN = 3, 2, 3  # tokens {0, 1, eos}; responses stop at eos or after 3 tokens


def all_responses():
    """Every terminal response: ends in eos, or has MAX_LEN tokens."""
    out = []
    for length in range(1, MAX_LEN + 1):
        for seq in itertools.product(range(VOCAB), repeat=length):
            if EOS in seq[:-1]:
                continue
            if length < MAX_LEN and seq[-1] != EOS:
                continue
            out.append(seq)
    return out


def seq_logp(table, prefixes, seq):
    """Autoregressive tabular policy: logits depend on the whole prefix."""
    total = torch.zeros((), dtype=D)
    for t, token in enumerate(seq):
        total = total + torch.log_softmax(table[prefixes[seq[:t]]], -1)[token]
    return total


@pytest.mark.parametrize("k", [2, 3])
def test_kl_estimator_expected_gradient_is_exact(k):
    torch.manual_seed(3)
    prefixes = {p: i for i, p in enumerate(
        p for n in range(MAX_LEN) for p in itertools.product(range(2), repeat=n))}
    theta = torch.randn(len(prefixes), VOCAB, dtype=D, requires_grad=True)
    theta_ref = torch.randn(len(prefixes), VOCAB, dtype=D)
    responses = all_responses()
    assert len(responses) == 15
    lp = torch.stack([seq_logp(theta, prefixes, y) for y in responses])
    lp_ref = torch.stack([seq_logp(theta_ref, prefixes, y) for y in responses])
    probs = lp.exp()
    assert abs(float(probs.sum()) - 1) < 1e-12  # the response space is complete

    exact_kl = (probs * (lp - lp_ref)).sum()
    (exact_grad,) = torch.autograd.grad(exact_kl, theta, retain_graph=True)

    # E over y_1..y_k iid ~ π of ∇ reverse_kl_loss: enumerate all k-tuples with their probability.
    n = len(responses)
    tuples = torch.tensor(list(itertools.product(range(n), repeat=k)))  # (n^k, k)
    weights = probs.detach()[tuples].prod(-1)  # (n^k,)
    group_lp, group_ref = lp[tuples], lp_ref[tuples]  # (n^k, k)
    adv = leave_one_out_advantages(group_lp - group_ref)
    per_tuple = (adv * group_lp).mean(-1)  # reverse_kl_loss of a single prompt's group
    assert torch.allclose(per_tuple[:5], torch.stack(
        [reverse_kl_loss(group_lp[i:i + 1], group_ref[i:i + 1]) for i in range(5)]))
    (expected_grad,) = torch.autograd.grad((weights * per_tuple).sum(), theta)

    assert float(exact_grad.abs().max()) > 1e-2  # the comparison is not trivially 0 == 0
    assert torch.allclose(expected_grad, exact_grad, atol=1e-10, rtol=0)
    # ... and the logged estimate mean(r) is unbiased for the KL value itself.
    assert abs(float((probs * (lp - lp_ref)).sum()) - float(exact_kl)) < 1e-12


def test_reinforce_kl_loss_is_unbiased_and_differs_from_rloo():
    """The no-baseline surrogate (measured by hypo.demo.variance): its expected gradient over all
    k-tuples is ∇KL like the leave-one-out one's, while single draws differ."""
    import itertools

    from hypo.losses import reinforce_kl_loss, reverse_kl_loss

    torch.manual_seed(0)
    logits = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(4, dtype=torch.float64).log_softmax(0)
    logp = logits.log_softmax(0)
    kl = (logp.exp() * (logp - ref)).sum()
    (want,) = torch.autograd.grad(kl, logits)
    for surrogate in (reinforce_kl_loss, reverse_kl_loss):
        total = torch.zeros(4, dtype=torch.float64)
        for ys in itertools.product(range(4), repeat=2):  # every ordered pair of samples, exactly
            lp = logits.log_softmax(0)
            (g,) = torch.autograd.grad(surrogate(lp[list(ys)].view(1, 2), ref[list(ys)].view(1, 2)), logits)
            total += lp[list(ys)].exp().prod().detach() * g
        assert torch.allclose(total, want, atol=1e-12)  # float64 sums of 16 terms
    def one_draw(surrogate):
        lp = logits.log_softmax(0)
        return torch.autograd.grad(surrogate(lp[[0, 1]].view(1, 2), ref[[0, 1]].view(1, 2)), logits)[0]

    assert not torch.allclose(one_draw(reinforce_kl_loss), one_draw(reverse_kl_loss))
