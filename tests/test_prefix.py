"""Shared-prefix forwards (hypo.prefix): layout, mask, values and gradients against the unshared
forward, the model check, the trainer's layouts, and generation's shared prefill."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hypo.logprobs import pack_sequences, position_logps_and_kls, response_positions, sequence_logps
from hypo.prefix import (group_logps, pack_groups, response_logps, response_positions_of,
                         supports_prefix_sharing)

GROUPS = [([1, 5, 6, 7], [[8, 9, 2], [10, 2], [11, 12, 13, 2]]),
          ([1, 20, 21], [[22, 2], [23, 24, 25, 26, 2]]),
          ([1, 30], [[31, 2]])]


def unshared(groups):
    return [p for p, rs in groups for _ in rs], [r for _, rs in groups for r in rs]


def test_pack_groups_puts_each_prompt_once_with_restarting_positions():
    batch = pack_groups([([1, 5], [[7, 8], [9]]), ([3], [[4, 2]])], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 7, 8, 9], [3, 4, 2, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 0, 0]]
    assert batch.segments.tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, -1, -1]]
    # each response's first token is predicted by its prompt's last position (flat index row·5 + t)
    assert batch.predictors.tolist() == [1, 2, 1, 5, 6]
    assert batch.targets.tolist() == [7, 8, 9, 4, 2]
    assert batch.response.tolist() == [0, 0, 1, 2, 2] and batch.col.tolist() == [0, 1, 0, 0, 1]
    assert batch.num_responses == 3
    with pytest.raises(ValueError, match="non-empty prompt"):
        pack_groups([([], [[4]])], 0)


def test_mask_lets_each_response_see_the_prompt_and_itself_only():
    batch = pack_groups([([1, 5], [[7, 8], [9]]), ([3], [[4]])], pad_token_id=0)
    mask = batch.attention_mask("sdpa", torch.float32)[:, 0]
    assert mask.dtype == torch.bool
    assert mask[0].int().tolist() == [[1, 0, 0, 0, 0],   # prompt: causal
                                      [1, 1, 0, 0, 0],
                                      [1, 1, 1, 0, 0],   # response 1
                                      [1, 1, 1, 1, 0],
                                      [1, 1, 0, 0, 1]]   # response 2: the prompt and itself
    assert mask[1].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0],
                                      [1, 0, 1, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 0, 1]]  # padding: prompt, itself
    eager = batch.attention_mask("eager", torch.float32)[:, 0]
    assert torch.equal(eager == 0, mask) and float(eager.min()) == torch.finfo(torch.float32).min


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fast_head", [False, True])
def test_shared_log_probs_and_gradients_equal_the_unshared_forward(tiny, f32, attn, fast_head):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], attn_implementation=attn)
    shared = group_logps(model, pack_groups(GROUPS, 0), fast_head)
    plain = sequence_logps(model, pack_sequences(*unshared(GROUPS), 0))
    # Equal up to rounding: the attention sums run over rows of another length. n: the forward's
    # reductions; scale: Σ|log p| over a response ≤ its tokens × (|log p|max + log V).
    width = max(len(p) + sum(map(len, rs)) for p, rs in GROUPS)
    n = f32.model_terms(model.config, width) + 5
    assert torch.allclose(shared, plain, rtol=0, atol=f32.reorder(n, plain.abs().max() + 5 * 6))
    params = [p for p in model.parameters()]
    g_shared = torch.autograd.grad(shared.sum(), params)
    g_plain = torch.autograd.grad(plain.sum(), params)
    # Gradients: backward n as well, scale: the largest gradient entry times the 15 positions.
    n = f32.model_terms(model.config, width, backward=True) + 15
    for a, b in zip(g_shared, g_plain):
        assert torch.allclose(a, b, rtol=0, atol=f32.reorder(n, 15 * b.abs().max())), (a - b).abs().max()


def test_bucketed_shared_log_probs_come_back_in_group_order(tiny, f32):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    plain = sequence_logps(model, pack_sequences(*unshared(GROUPS), 0))
    for buckets in (1, 2, 3):
        got = response_logps(model, GROUPS, 0, "cpu", buckets, shared=True)
        off = response_logps(model, GROUPS, 0, "cpu", buckets, shared=False)
        tol = f32.reorder(f32.model_terms(model.config, 12) + 5, plain.abs().max() + 30)
        assert torch.allclose(got, plain, rtol=0, atol=tol) and torch.allclose(off, plain, rtol=0, atol=tol)


def test_shared_per_position_kls_equal_the_unshared(tiny, f32):
    """The analytic estimator's per-position quantities from shared rows, in the same (row, col)
    places as from unshared rows."""
    policy = AutoModelForCausalLM.from_pretrained(tiny["model"])
    ref = AutoModelForCausalLM.from_pretrained(tiny["model"])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = []
    for shared in (True, False):
        with torch.no_grad():
            ref_pos = response_positions_of(ref, GROUPS, 0, "cpu", True, shared)
        pos = response_positions_of(policy, GROUPS, 0, "cpu", True, shared)
        logp, kl = position_logps_and_kls(pos, ref_pos)
        out.append((pos.padded(logp, 6)[0], pos.padded(kl, 6)[0], pos.padded(logp, 6)[1]))
    (lp_s, kl_s, mask_s), (lp_u, kl_u, mask_u) = out
    assert torch.equal(mask_s, mask_u) and float(kl_u.max()) > 0
    n = f32.model_terms(policy.config, 12) + policy.config.vocab_size
    assert torch.allclose(lp_s, lp_u, rtol=0, atol=f32.reorder(n, lp_u.abs().max() + 6))
    assert torch.allclose(kl_s, kl_u, rtol=0, atol=f32.reorder(n, 2 * (lp_u.abs().max() + 6)))
    plain = response_positions(policy, pack_sequences(*unshared(GROUPS), 0), True)
    assert torch.equal(plain.row, response_positions_of(policy, GROUPS, 0, "cpu", True, False).row)


def test_models_that_cannot_share_are_detected(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    assert supports_prefix_sharing(model, GROUPS, 0) == (True, "")
    model.config._attn_implementation = "flash_attention_2"
    ok, why = supports_prefix_sharing(model, GROUPS, 0)
    assert not ok and "flash_attention_2" in why
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    forward = model.model.forward
    model.model.forward = lambda *a, position_ids=None, **kw: forward(*a, **kw)  # ignores positions
    ok, why = supports_prefix_sharing(model, GROUPS, 0)
    assert not ok and "differ" in why


def _forward_rows(trainer):
    """Record the responses per row of every policy forward of the trainer (shared rows)."""
    import hypo.prefix as prefix

    seen = []
    real = prefix.group_logps

    def recording(model, batch, *args):
        if model is trainer.model:
            seen.append([int((batch.segments[r].max())) for r in range(batch.input_ids.shape[0])])
        return real(model, batch, *args)

    prefix.group_logps = recording
    return seen, lambda: setattr(prefix, "group_logps", real)


@pytest.mark.parametrize("algo,joint,expected", [("dpo", None, {2}), ("hypo", True, {2 + 2}),
                                                 ("hypo", False, {2})])
def test_trainer_computes_each_prompt_once_per_pair(base_config, monkeypatch, algo, joint, expected):
    """DPO's rows hold [prompt | chosen | rejected]; HyPO's [prompt | chosen | rejected | s_1 s_2]
    in the joint layout (one forward, one backward), else [prompt | chosen | rejected] and
    [prompt | s_1 s_2] (split layout); step 0 stays exact."""
    from hypo.trainer import Trainer

    if joint is not None:  # the layout the token count would pick for long prompts, or for short
        monkeypatch.setattr(Trainer, "_joint_fits", staticmethod(lambda pairs, groups: joint))
    trainer = Trainer(base_config(algo=algo, max_steps=2, num_online_samples=2, kl_coef=0.1))
    assert trainer.shared and trainer.data.report["prefix_sharing"] == "on"
    seen, restore = _forward_rows(trainer)
    try:
        trainer.train()
    finally:
        restore()
    assert seen and {n for rows in seen for n in rows} == expected
    first = json.loads(open(f"{trainer.cfg.output_dir}/metrics.jsonl").readline())
    assert first["rewards/chosen"] == 0.0 and first["rewards/margins"] == 0.0  # exact by construction
    if algo == "hypo":
        assert first["kl/online"] == 0.0


def test_joint_layout_only_where_it_holds_no_more_tokens_than_the_plain_split():
    """Activations grow with tokens: the joint rows [P|c|r|s1 s2] are taken only when they are no
    longer than the larger unshared part (2P + |c| + |r| or 2P + |s1| + |s2|)."""
    from hypo.data import TokenizedPair
    from hypo.trainer import Trainer

    def fits(prompt, chosen, rejected, samples):
        pair = TokenizedPair([1] * prompt, [2] * chosen, [3] * rejected, 0)
        return Trainer._joint_fits([pair], [(pair.prompt_ids, [[4] * n for n in samples])])

    assert fits(384, 48, 40, [48, 30])  # TL;DR's shape: the prompt dominates
    assert not fits(20, 30, 25, [32, 32])  # short prompt: joint 139 tokens > max(95, 104)
    assert fits(64, 30, 25, [32, 32])  # 183 ≤ max(183, 192): the samples part is the larger
    assert not fits(54, 30, 25, [32, 32])  # 173 > max(163, 172): one token over


@pytest.mark.parametrize("variant", [{}, {"use_weighting": True, "rpo_alpha": 0.5}], ids=["dpo", "wpo+rpo"])
def test_prefix_sharing_off_trains_like_on(base_config, f32, monkeypatch, variant):
    """--prefix_sharing false: every response in its own row; the run agrees with the shared one
    (HyPO's joint layout) to float32 rounding, with TRL's variants in the pairs' loss too."""
    from hypo.tracking import read_metrics
    from hypo.trainer import Trainer

    rows, weights = {}, {}
    lr, eps, steps = 3e-3, 1e-3, 2
    monkeypatch.setattr(Trainer, "_joint_fits", staticmethod(lambda pairs, groups: True))  # joint vs split
    for on in (True, False):
        cfg = base_config(algo="hypo", max_steps=steps, prefix_sharing=on, adam_epsilon=eps, kl_coef=0.1,
                          learning_rate=lr, output_dir=base_config().output_dir + str(on), **variant)
        trainer = Trainer(cfg)
        assert trainer.shared is on and trainer.data.report["prefix_sharing"] == ("on" if on else "off")
        assert trainer._joint is on
        trainer.train()
        rows[on] = [m for m in read_metrics(cfg.output_dir) if "loss" in m]
        weights[on] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    config, first = trainer.pair.policy.config, rows[False][0]
    # Log-probs are sums of non-positive terms, so Σ|x| = |sum|: the scale is the value itself.
    # (The same draws: shared and unshared prefill give the sampler logits equal to rounding.)
    assert rows[True][0]["online/length"] == first["online/length"]
    n = f32.model_terms(config, 64)
    for key in ("logps/chosen", "logps/rejected"):
        assert rows[True][0][key] == pytest.approx(first[key], abs=f32.reorder(n, abs(first[key]))), key
    # Loss and KL are β- / 1-Lipschitz in the log-probs they are made of (2 per pair, per sample;
    # WPO's weights are ≤ 1 and come from the same plain forward either way; RPO adds α·NLL/token).
    logp_tol = f32.reorder(n, abs(first["logps/chosen"]) + abs(first["logps/rejected"]))
    assert rows[True][0]["loss"] == pytest.approx(first["loss"], abs=3 * logp_tol)
    assert rows[True][0]["kl/online"] == pytest.approx(first["kl/online"], abs=2 * logp_tol)
    # Weights: Adam moves each by lr·m/(√v + ε), so a gradient difference δ moves it by ≤ lr·δ/ε
    # per step; δ ≤ the backward's reordering bound with the gradient norm as scale.
    delta = f32.reorder(f32.model_terms(config, 64, backward=True), first["grad_norm"] * 64)
    assert torch.allclose(weights[True], weights[False], rtol=0, atol=steps * lr * delta / eps)


def test_trainer_falls_back_when_the_model_cannot_share(base_config, monkeypatch, capsys):
    import hypo.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "supports_prefix_sharing", lambda *a: (False, "no 4D masks here"))
    trainer = trainer_module.Trainer(base_config(algo="hypo", max_steps=1))
    assert not trainer.shared and trainer.data.report["prefix_sharing"] == "off: no 4D masks here"
    assert "prefix sharing off: no 4D masks here" in capsys.readouterr().err
    trainer.train()


def test_shared_prefill_continues_each_prompt_like_the_unshared_prefill(tiny, f32):
    """The prefilled cache, expanded to k rows, gives the last prompt token the logits of a plain
    forward over each row (to rounding); the sampler prefills P rows, not P·k."""
    from transformers import AutoTokenizer

    from hypo.sampling import OnlineSampler

    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny["model"])
    prompts = [[1, 5, 6, 7, 8], [1, 20, 21], [1, 30, 31, 32]]
    sampler = OnlineSampler(tok, 3, 4, seed=0)
    width = 5
    ids = torch.full((3, width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        cache = sampler._shared_prefill(model, ids, mask, "cpu")["cache"]
        assert cache.get_seq_length() == width - 1 and cache.layers[0].keys.shape[0] == 9
        rows, rows_mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
        positions = (rows_mask.cumsum(-1) - 1).clamp(min=0)
        last = model(input_ids=rows[:, -1:], attention_mask=rows_mask, position_ids=positions[:, -1:],
                     cache=cache).logits[:, -1]
        full = model(input_ids=rows, attention_mask=rows_mask, position_ids=positions).logits[:, -1]
    n = f32.model_terms(model.config, width)
    assert torch.allclose(last, full, rtol=0, atol=f32.reorder(n, full.abs().max()))

    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape),
                                           with_kwargs=True)
    sampler.sample(model, prompts)
    hook.remove()
    assert calls[0] == (3, width - 1) and all(c[0] == 9 for c in calls[1:])
    assert sampler.last_timing["shared_prefill"]
    unshared_sampler = OnlineSampler(tok, 3, 4, seed=0, share_prefill=False)
    unshared_sampler.sample(model, prompts)
    assert not unshared_sampler.last_timing["shared_prefill"]
