"""Every TRL 1.16 DPO loss variant in ``hypo.losses`` against TRL's own ``_compute_loss``.

TRL's loss code runs unchanged on a bare ``trl.DPOTrainer`` whose "model" returns given per-token
log-probs P (a leaf, (2B, T−1), [chosen | rejected]) and whose reference returns given R. hypo's
pure functions get the per-sequence reductions of the same P and R (sums; the first
min(|y+|, |y−|) tokens for LD-DPO; WPO's aligned means). Both losses and their gradients with
respect to P must agree. Tolerances: float32, the same reductions in the same order; what differs
is the order of a few elementwise operations, so a few ulps (rtol 1e-5) bound it.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

trl = pytest.importorskip("trl")

from hypo.config import F_DIVERGENCE_LOSSES, LOSS_TYPES  # noqa: E402
from hypo.losses import (PAIR_LOSSES, hypo_loss, ld_logps, preference_loss,  # noqa: E402
                         reverse_kl_loss, wpo_weights)

B, T = 6, 9
BETA = 0.3


def make_inputs(seed=0):
    """Per-token log-probs (policy P as a leaf, reference R, WPO's log Σp² S) and masks."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 4, (B,), generator=g)
    lengths = torch.randint(1, T - 4, (2 * B,), generator=g)
    completion = torch.zeros(2 * B, T, dtype=torch.long)
    for i in range(2 * B):
        p = int(prompt[i % B])
        completion[i, p:p + int(lengths[i])] = 1
    shift = completion[:, 1:].float()
    policy = (-torch.rand(2 * B, T - 1, generator=g) * 3).requires_grad_(True)
    ref = -torch.rand(2 * B, T - 1, generator=g) * 3
    logsumsq = -torch.rand(2 * B, T - 1, generator=g)  # log Σ_v p_v², ≤ 0
    return policy, ref, logsumsq, completion, shift


def trl_loss(policy, ref, logsumsq, completion, **settings):
    """TRL 1.16's DPOTrainer._compute_loss on these per-token log-probs."""
    shift = completion[:, 1:].float()
    trainer = object.__new__(trl.DPOTrainer)
    cfg = dict(beta=BETA, loss_type=["sigmoid"], loss_weights=None, ld_alpha=None,
               f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, label_smoothing=0.0,
               use_weighting=False, discopop_tau=0.05)
    cfg.update(settings)
    trainer.beta, trainer.loss_types = cfg["beta"], cfg["loss_type"]
    trainer.loss_weights = cfg["loss_weights"] or [1.0] * len(trainer.loss_types)
    for name in ("ld_alpha", "f_divergence_type", "f_alpha_divergence_coef", "label_smoothing",
                 "use_weighting"):
        setattr(trainer, name, cfg[name])
    trainer.args = types.SimpleNamespace(discopop_tau=cfg["discopop_tau"],
                                         gradient_checkpointing_kwargs=None)
    trainer.precompute_ref_logps, trainer.aux_loss_enabled = False, False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    trainer.accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                                gather_for_metrics=lambda x: x)

    def outputs(per_token, **extra):
        zeros = torch.zeros_like(shift)
        return types.SimpleNamespace(log_probs=per_token * shift, entropy=zeros, mean_logits=zeros,
                                     is_top1=zeros.bool(), **extra)

    class Model(torch.nn.Module):
        is_gradient_checkpointing = False

        def __init__(self, per_token, **extra):
            super().__init__()
            self.per_token, self.extra = per_token, extra

        def forward(self, **kwargs):
            return outputs(self.per_token, **self.extra)

    model = Model(policy, log_sum_sq_probs=logsumsq)
    trainer.model, trainer.ref_model = model.train(), Model(ref)
    inputs = {"input_ids": torch.ones_like(completion), "attention_mask": torch.ones_like(completion),
              "completion_mask": completion}
    return trainer._compute_loss(model, inputs, return_outputs=False)


def hypo_value(policy, ref, logsumsq, shift, kl_coef=0.0, kl=None, **settings):
    """hypo.losses on the per-sequence reductions of the same per-token inputs."""
    lengths = shift.sum(1)
    full_p, full_r = (policy * shift).sum(1), (ref * shift).sum(1)
    pc, pr, rc, rr = full_p[:B], full_p[B:], full_r[:B], full_r[B:]
    sft = pc
    alpha = settings.pop("ld_alpha", None)
    if alpha is not None:  # the first s = min(|y+|, |y−|) tokens of each response
        position = shift.cumsum(1)
        s = torch.minimum(lengths[:B], lengths[B:]).repeat(2).unsqueeze(1)
        shared = ((position <= s) * shift)
        sp, sr = (policy * shared).sum(1), (ref * shared).sum(1)
        pc, pr = ld_logps(pc, sp[:B], alpha), ld_logps(pr, sp[B:], alpha)
        rc, rr = ld_logps(rc, sr[:B], alpha), ld_logps(rr, sr[B:], alpha)
    weights = None
    if settings.pop("use_weighting", False):
        aligned = ((policy - logsumsq) * shift).sum(1) / lengths.clamp(min=1)
        weights = wpo_weights(aligned[:B], aligned[B:])
    out = preference_loss(pc, pr, rc, rr, BETA, settings.pop("loss_type", "sigmoid"),
                          settings.pop("label_smoothing", 0.0), lengths[:B], lengths[B:],
                          pair_weights=weights, sft_chosen_logps=sft, **settings)
    return hypo_loss(out.losses, kl, kl_coef)


def _wpo(policy, logsumsq, ref, shift, loss):
    """TRL's hinge or sft with WPO weights, as its code reads, without the in-place product."""
    lengths = shift.sum(1)
    ratio = ((policy - ref) * shift).sum(1)
    aligned = (((policy - logsumsq) * shift).sum(1) / lengths.clamp_min(1)).detach()
    weights = torch.exp(aligned[:B]) * torch.exp(aligned[B:])
    if loss == "hinge":
        per_pair = torch.relu(1 - BETA * (ratio[:B] - ratio[B:]))
    else:
        per_pair = -(policy[:B] * shift[:B]).sum() / lengths[:B].sum()
    return (per_pair * weights).mean()


CASES = ([{"loss_type": [t], **({"label_smoothing": 1e-3} if t == "exo_pair" else {})}
          for t in LOSS_TYPES]
         + [{"loss_type": ["robust"], "label_smoothing": 0.1},
            {"loss_type": ["aot"], "label_smoothing": 0.2},
            {"loss_type": ["aot_unpaired"], "label_smoothing": 0.2},
            {"loss_type": ["discopop"], "discopop_tau": 0.5},
            {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},  # MPO
            {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}]  # RPO, rpo_alpha 0.5
         + [{"loss_type": [t], "f_divergence_type": f, "f_alpha_divergence_coef": 0.3,
             **({"label_smoothing": 1e-3} if t == "exo_pair" else {})}
            for t in F_DIVERGENCE_LOSSES
            for f in ("forward_kl", "js_divergence", "alpha_divergence")]
         + [{"loss_type": [t], "use_weighting": True} for t in LOSS_TYPES
            if t not in ("aot", "aot_unpaired", "exo_pair")]
         + [{"loss_type": [t], "ld_alpha": a} for t in LOSS_TYPES if t != "exo_pair"
            for a in (0.0, 0.5)]
         + [{"loss_type": ["sigmoid", "ipo"], "ld_alpha": 0.3, "use_weighting": True,
             "f_divergence_type": "js_divergence"}])


def _id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def test_every_trl_loss_type_has_a_function():
    assert set(LOSS_TYPES) == set(PAIR_LOSSES)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_value_and_gradient_match_trl(case):
    policy, ref, logsumsq, completion, shift = make_inputs(seed=len(_id(case)))
    if case.get("use_weighting") and case["loss_type"] == ["sft"]:
        # TRL 1.16 scales an expanded scalar in place (`per_sequence_loss *= weights`) and fails;
        # checked against the same formula written out of place.
        with pytest.raises(RuntimeError, match="memory location"):
            trl_loss(policy, ref, logsumsq, completion, **case)
        expected = _wpo(policy, logsumsq, ref, shift, "sft")
    else:
        expected = trl_loss(policy, ref, logsumsq, completion, **case)
    if case.get("use_weighting") and case["loss_type"] == ["hinge"]:
        # TRL 1.16 scales relu's output in place, so its backward fails (as above).
        with pytest.raises(RuntimeError, match="inplace"):
            torch.autograd.grad(expected, policy, retain_graph=True)
        expected = _wpo(policy, logsumsq, ref, shift, "hinge")
    (expected_grad,) = torch.autograd.grad(expected, policy)
    got = hypo_value(policy, ref, logsumsq, shift, **dict(case))
    (got_grad,) = torch.autograd.grad(got, policy)
    # float32, same reductions: a few ulps of difference (see the module docstring).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert got_grad.abs().sum() > 0  # the comparison is not of two zeros


@pytest.mark.parametrize("case", [CASES[i] for i in (0, 2, 8, 17, 19)], ids=_id)
def test_each_loss_combines_with_the_online_kl_term(case):
    """HyPO adds λ·L_kl to any of them: the gradient is TRL's plus λ·∇L_kl, and λ = 0 is the
    DPO variant exactly (the same computation: torch.equal)."""
    policy, ref, logsumsq, completion, shift = make_inputs(seed=3)
    g = torch.Generator().manual_seed(1)
    online = (-torch.rand(2, 3, generator=g) * 4).requires_grad_(True)
    kl = reverse_kl_loss(online, -torch.rand(2, 3, generator=g) * 4)
    kl_grad = torch.autograd.grad(kl, online, retain_graph=True)[0]
    base = hypo_value(policy, ref, logsumsq, shift, **dict(case))
    assert torch.equal(hypo_value(policy, ref, logsumsq, shift, 0.0, kl, **dict(case)), base)
    total = hypo_value(policy, ref, logsumsq, shift, 0.7, kl, **dict(case))
    grads = torch.autograd.grad(total, (policy, online))
    trl_grad = torch.autograd.grad(trl_loss(policy, ref, logsumsq, completion, **case), policy)[0]
    torch.testing.assert_close(grads[0], trl_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1], 0.7 * kl_grad)  # same ops: rounding of one product
    assert kl_grad.abs().sum() > 0


def test_tr_dpo_sync_matches_trl_callback():
    """sync_ref_model: π_ref ← α·π + (1 − α)·π_ref, as TRL's SyncRefModelCallback."""
    from trl.trainer.callbacks import SyncRefModelCallback

    from hypo.variants import mix_into_reference

    torch.manual_seed(0)
    policy, ref = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    ours = torch.nn.Linear(4, 3)
    ours.load_state_dict(ref.state_dict())
    SyncRefModelCallback._sync_target_model(policy, ref, 0.6)
    mix_into_reference(policy, ours, 0.6)
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same in-place ops
    assert not torch.equal(ours.weight, policy.weight)
