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
    analytic_kl_loss,
    dual_ascent_kl_coef,
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
        assert abs(float(kl.detach()) - float((probs * self.kls.sum(-1)).sum().detach())) < 1e-12
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


def test_dual_ascent_kl_coef_law():
    # λ ← max(0, λ + η·(KL̂ − κ)): linear in the error, projected on λ ≥ 0
    assert dual_ascent_kl_coef(0.1, 2.0, 1.0, 0.05) == pytest.approx(0.15)
    assert dual_ascent_kl_coef(0.1, 0.8, 1.0, 0.05) == pytest.approx(0.09)
    assert dual_ascent_kl_coef(0.1, 1.0, 1.0, 0.05) == 0.1
    assert dual_ascent_kl_coef(0.01, 0.0, 1.0, 0.05) == 0.0  # never below 0
    assert dual_ascent_kl_coef(0.0, 1.5, 1.0, 0.05) == pytest.approx(0.025)  # and back up from 0
    assert dual_ascent_kl_coef(0.1, float("nan"), 1.0, 1.0) == 0.1  # no step on NaN


def _clipped_proportional(kl_coef, kl, target, rate):
    """The law kl_target used before (TRL's AdaptiveKLController on log λ), kept here only to show
    that the closed loop below tells the two apart."""
    error = min(max((kl - target) / target, -0.2), 0.2)
    return min(max(kl_coef * math.exp(0.5 * error), 1e-3), 1e3)


def _closed_loop(law, target=0.7, rate=0.05, steps=4500, n=8, lag=0.2, seed=0):
    """Mean true KL(π‖π_ref) over the last two thirds of a closed loop: π_ref uniform over 1,000
    responses with rewards s (Exp(1) quantiles squared: a heavy right tail); each step draws n
    responses from π, estimates KL̂ = mean(log π − log π_ref) (right-skewed: E_π[e^−r] = 1), updates
    λ by `law`, and moves π's logits a fraction `lag` towards the KL-regularised optimum
    log π_ref + s/λ (the policy follows λ with a lag, as training does)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    m = 1000
    log_ref = np.full(m, -math.log(m))
    s = (-np.log(1 - (np.arange(m) + 0.5) / m)) ** 2
    logits, lam, kls, estimates = log_ref.copy(), 0.5, [], []
    for _ in range(steps):
        logp = logits - np.logaddexp.reduce(logits)
        p = np.exp(logp)
        kls.append(float((p * (logp - log_ref)).sum()))
        y = rng.choice(m, size=n, p=p)
        estimates.append(float((logp[y] - log_ref[y]).mean()))
        lam = law(lam, estimates[-1], target, rate)
        logits = logits + lag * (log_ref + s / max(lam, 1e-2) - logits)
    tail = slice(steps // 3, None)
    return float(np.mean(kls[tail])), np.array(estimates[tail])


def test_dual_ascent_settles_the_mean_kl_at_the_budget_under_skewed_noise():
    import numpy as np

    target = 0.7
    mean_kl, estimates = _closed_loop(dual_ascent_kl_coef, target)
    # the noise is right-skewed: its median sits well below its mean
    assert np.median(estimates) < 0.95 * estimates.mean()
    assert abs(mean_kl - target) <= 0.05 * target, mean_kl
    # the clipped proportional law on the same loop settles on the median, so the mean KL overshoots
    biased, _ = _closed_loop(_clipped_proportional, target)
    assert biased > 1.1 * target, biased


# ---- on a real (tiny) LM: per-position log-probs and KLs, chunked -------------------------------
def _two_models(tiny):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # π ≠ π_ref, so the KLs are not all 0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref


@pytest.mark.parametrize("fast_head", [True, False])
def test_position_kls_match_full_logits(tiny, fast_head, f32):
    """Chunked per-position log-probs and full-vocabulary KLs equal a direct computation from the
    full logits, land at the right (row, response index), and chunking changes no gradient."""
    from hypo.logprobs import pack_sequences, position_logps_and_kls, response_positions

    policy, ref = _two_models(tiny)
    prompts, responses = [[1, 30, 31], [1, 40, 41, 42, 43]], [[50, 51, 2], [52, 53, 54, 55]]
    batch = pack_sequences(prompts, responses, 0)
    with torch.no_grad():
        ref_pos = response_positions(ref, batch, fast_head)
    grads = []
    for chunk in (1 << 24, 40):  # one chunk; about one position per chunk (vocab ~ 40+)
        policy.zero_grad()
        pos = response_positions(policy, batch, fast_head)
        logp, kl = position_logps_and_kls(pos, ref_pos, chunk_elements=chunk)
        lp, mask = pos.padded(logp, 2)
        kls, _ = pos.padded(kl, 2)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([p + r])
            with torch.no_grad():
                a = policy(ids).logits[0].log_softmax(-1)[len(p) - 1: len(p) + len(r) - 1]
                b = ref(ids).logits[0].log_softmax(-1)[len(p) - 1: len(p) + len(r) - 1]
            # Equal up to rounding: the same forward in another batch shape (one sequence alone).
            # Log-probs: n = the forward's reductions, scale = the largest |logit|-sized term
            # (bounded by |log-prob| + log V); KLs sum V such terms more.
            n = f32.model_terms(policy.config, len(p) + len(r))
            scale = float(a.abs().max()) + math.log(policy.config.vocab_size)
            assert mask[i].tolist() == [t < len(r) for t in range(4)]
            assert torch.allclose(lp[i, : len(r)], a[torch.arange(len(r)), torch.tensor(r)], rtol=0,
                                  atol=f32.reorder(n, scale))
            assert torch.allclose(kls[i, : len(r)], (a.exp() * (a - b)).sum(-1), rtol=0,
                                  atol=f32.reorder(n + policy.config.vocab_size, 2 * scale))
        assert float(kl.min()) > 0
        (logp.sum() + kl.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    # Equal up to rounding: chunking reorders the head's sums (V terms each) and the accumulation
    # of its gradient over the M positions, then the backward through the network; scale: the
    # largest gradient entry times the M positions that add into it.
    m = sum(len(r) for r in responses)
    n = f32.model_terms(policy.config, max(len(p) + len(r) for p, r in zip(prompts, responses)),
                        backward=True) + m
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=f32.reorder(n, m * grads[0].abs().max()))


# ---- the trainer: options, λ logged every step, schedules and the controller ----------------------
def _metrics(cfg):
    import json
    from pathlib import Path

    return [json.loads(x) for x in Path(cfg.output_dir, "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("estimator", ["token", "analytic"])
def test_trainer_runs_each_estimator(base_config, estimator):
    from hypo.api import train

    cfg = base_config(kl_estimator=estimator, max_steps=3, kl_coef=0.5)
    train(cfg)
    rows = _metrics(cfg)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) and r["kl/coef"] == 0.5 for r in rows)
    assert rows[-1]["kl/online"] != 0  # the policy moved; the KL is measured as with 'seq'


def test_trainer_kl_gradient_matches_pure_function(base_config):
    """The trainer's analytic KL surrogate for one micro-batch equals analytic_kl_loss on
    per-token quantities built independently from full logits (ordering, padding, indexing)."""
    from hypo.logprobs import pack_sequences
    from hypo.sampling import sample_groups
    from hypo.trainer import Trainer

    trainer = Trainer(base_config(kl_estimator="analytic", online_prompts_per_step=2))
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [trainer.data.train[i].prompt_ids for i in range(2)]
    samples = trainer.sampler.sample(trainer.model, prompts)
    groups = sample_groups(samples)  # shared-prefix rows when the model takes them (it does)
    assert trainer.shared
    with torch.no_grad(), trainer.pair.reference_view() as ref_model:
        _, ref_positions = trainer._reference_positions(ref_model, groups)
    seq, loss = trainer._token_kl_loss(groups, (2, samples.k), ref_positions)

    n, width = len(samples.response_ids), max(len(r) for r in samples.response_ids)
    lp, kls = torch.zeros(n, width), torch.zeros(n, width)
    mask = torch.zeros(n, width, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(samples.prompt_ids, samples.response_ids)):
        ids = pack_sequences([p], [r], trainer.pad).input_ids
        a = trainer.model(ids).logits[0].log_softmax(-1)[len(p) - 1: len(p) + len(r) - 1]
        with torch.no_grad():
            b = trainer.pair.reference(ids).logits[0].log_softmax(-1)[len(p) - 1: len(p) + len(r) - 1]
        lp[i, : len(r)] = a[torch.arange(len(r)), torch.tensor(r)]
        kls[i, : len(r)] = (a.exp() * (a - b)).sum(-1)
        mask[i, : len(r)] = True
    expected = analytic_kl_loss(lp.view(2, samples.k, -1), kls.view(2, samples.k, -1),
                                mask.view(2, samples.k, -1))
    assert torch.allclose(seq, lp.sum(-1), atol=1e-4)
    assert torch.allclose(loss, expected, atol=1e-5)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for g, w in zip(got, want):
        if w is not None:
            assert torch.allclose(g, w, atol=1e-5)


def test_trainer_linear_schedule_logs_kl_coef(base_config):
    from hypo.api import train

    cfg = base_config(max_steps=5, kl_coef=0.4, kl_coef_schedule="linear", kl_coef_final=0.0)
    train(cfg)
    coefs = [r["kl/coef"] for r in _metrics(cfg)]
    assert coefs == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0])


def test_trainer_kl_target_follows_the_controller_law(base_config):
    from hypo.api import train

    cfg = base_config(max_steps=5, kl_coef=0.2, kl_target=0.05, kl_target_rate=1.0)
    train(cfg)
    rows = _metrics(cfg)
    assert rows[0]["kl/coef"] == 0.2
    assert all(r["kl/target"] == 0.05 and math.isfinite(r["kl/online"]) for r in rows)  # κ, KL̂ every step
    for before, after in zip(rows, rows[1:]):
        assert after["kl/coef"] == pytest.approx(
            dual_ascent_kl_coef(before["kl/coef"], before["kl/online"], 0.05, 1.0))
    assert len({r["kl/coef"] for r in rows}) > 2  # λ actually moves


def test_kl_control_settings_are_checked(base_config):
    from hypo.config import ConfigError

    with pytest.raises(ConfigError, match="kl_coef_schedule"):
        base_config(kl_target=0.1, kl_coef_schedule="cosine").validate()
    with pytest.raises(ConfigError, match="kl_target_rate"):
        base_config(kl_target=0.1, kl_target_rate=0.0).validate()
    base_config(kl_target=0.1, kl_coef=0.0).validate()  # dual ascent may start from λ = 0
    with pytest.raises(ConfigError, match="kl_estimator"):
        base_config(kl_estimator="vimco").validate()


def test_adapted_kl_coef_survives_resume(base_config):
    """λ under kl_target is training state: a resumed run continues with the saved λ."""
    from pathlib import Path

    from hypo.api import train

    cfg = base_config(max_steps=4, save_steps=2, save_total_limit=3, kl_coef=0.2, kl_target=0.05,
                      kl_target_rate=1.0)
    train(cfg)
    first = [r["kl/coef"] for r in _metrics(cfg)]
    train(base_config(max_steps=4, save_steps=2, save_total_limit=3, kl_coef=0.2, kl_target=0.05,
                      kl_target_rate=1.0, resume_from_checkpoint=str(Path(cfg.output_dir, "checkpoint-2"))))
    resumed = [r["kl/coef"] for r in _metrics(cfg)]
    assert first[2] != 0.2 and resumed == pytest.approx(first, rel=1e-6)
