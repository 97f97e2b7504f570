"""Online sampling: exact temperature-1 sampling, seeded generator, clipping and stop tokens."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hypo.sampling import OnlineSampler


def load(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny["model"]).eval(), AutoTokenizer.from_pretrained(tiny["model"])


import pytest


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (1.0, 5)])
def test_samples_come_from_the_model_distribution(tiny, temperature, top_k):
    """One-token samples match softmax(logits): a top-k=50 default or a temperature slip would
    put the total-variation distance far above the bound (the vocabulary has >300 tokens)."""
    model, tok = load(tiny)
    prompt = [tok.bos_token_id, 30, 31]
    # A shipped generation_config must not leak into HyPO's samples (it would bias the KL).
    model.generation_config.repetition_penalty = 1e9  # would all but forbid tokens 1, 30, 31
    model.generation_config.suppress_tokens = list(range(100, 300))
    model.generation_config.min_new_tokens = 1
    n = 20000
    sampler = OnlineSampler(tok, k=n, max_new_tokens=1, seed=0, temperature=temperature, top_k=top_k)
    samples = sampler.sample(model, [prompt])
    counts = torch.bincount(torch.tensor([r[0] for r in samples.response_ids]), minlength=len(tok))
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1] / temperature
    if top_k:
        logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
    probs = logits.softmax(-1)
    tv = 0.5 * float((counts / n - probs).abs().sum())
    # Sampling noise alone gives E[TV] ≈ 0.5·Σ sqrt(2p/(πn)) ≈ 0.1 for a near-uniform p here.
    assert tv < 0.2, tv


def test_generator_is_explicit_and_isolated(tiny):
    model, tok = load(tiny)
    prompts = [[tok.bos_token_id, 30], [tok.bos_token_id, 40, 41, 42]]
    a = OnlineSampler(tok, k=3, max_new_tokens=6, seed=5)
    b = OnlineSampler(tok, k=3, max_new_tokens=6, seed=5)
    torch.manual_seed(123)
    global_before = torch.get_rng_state()
    first = a.sample(model, prompts)
    assert torch.equal(torch.get_rng_state(), global_before)  # the global RNG is untouched
    torch.manual_seed(999)  # ... and does not influence the samples
    assert b.sample(model, prompts).response_ids == first.response_ids
    state = a.state_dict()
    nxt = a.sample(model, prompts)
    a.load_state_dict(state)
    assert a.sample(model, prompts).response_ids == nxt.response_ids
    assert nxt.response_ids != first.response_ids


def test_layout_clipping_and_stop_tokens(tiny):
    model, tok = load(tiny)
    prompts = [[tok.bos_token_id, 30], [tok.bos_token_id, 40, 41]]
    samples = OnlineSampler(tok, k=4, max_new_tokens=5, seed=1).sample(model, prompts)
    assert len(samples.response_ids) == 8 and samples.k == 4
    assert samples.prompt_ids[:4] == [prompts[0]] * 4 and samples.prompt_ids[4:] == [prompts[1]] * 4
    for resp, clipped in zip(samples.response_ids, samples.clipped):
        assert 1 <= len(resp) <= 5
        eos_at = [i for i, t in enumerate(resp) if t == tok.eos_token_id]
        if clipped:
            assert len(resp) == 5 and not eos_at
        else:
            assert eos_at == [len(resp) - 1]
    assert samples.clipped_ratio == sum(samples.clipped) / 8
    # Stop at a custom token: make it the most likely one by forcing a high temperature-free prompt.
    stop = OnlineSampler(tok, k=2, max_new_tokens=5, seed=1, stop_token_ids=list(range(len(tok))))
    assert all(len(r) == 1 for r in stop.sample(model, prompts).response_ids)


# ---- exact draws from π, whatever the model ships -------------------------------------------------

V, EOS, PAD, PROMPT = 6, 5, 0, [1, 2, 3]


def tiny_vocab_model(peft: bool = False):
    """A 6-token Llama with a peaked (but full-support) next-token distribution."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    return model


@torch.no_grad()
def exact_pi(model, max_new_tokens: int = 2) -> dict[tuple, float]:
    """π(y|x) of every response of ≤ max_new_tokens tokens (ending in EOS or cut at the limit)."""
    out = {}

    def walk(prefix: list[int], prob: float) -> None:
        probs = model(torch.tensor([PROMPT + prefix])).logits[0, -1].float().softmax(-1)
        for t in range(V):
            y, p = prefix + [t], prob * float(probs[t])
            if t == EOS or len(y) == max_new_tokens:
                out[tuple(y)] = out.get(tuple(y), 0.0) + p
            else:
                walk(y, p)

    walk([], 1.0)
    return out


def chi_square(counts: dict[tuple, int], pi: dict[tuple, float], n: int) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expected < 5 are pooled into one."""
    stat, dof, pooled_obs, pooled_exp = 0.0, -1, 0, 0.0
    for y, p in pi.items():
        if n * p >= 5:
            stat += (counts.get(y, 0) - n * p) ** 2 / (n * p)
            dof += 1
        else:
            pooled_obs, pooled_exp = pooled_obs + counts.get(y, 0), pooled_exp + n * p
    unknown = sum(c for y, c in counts.items() if y not in pi)  # impossible under π
    pooled_obs += unknown
    if pooled_exp > 0 or pooled_obs:
        stat += (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9)
        dof += 1
    return stat, dof


PLANTED = {
    "bad_words_ids": [[2]], "sequence_bias": {(3,): 10.0}, "num_beams": 3,
    "forced_eos_token_id": EOS, "forced_bos_token_id": 4,
    "exponential_decay_length_penalty": (0, 3.0), "repetition_penalty": 1e9,
    "suppress_tokens": [4], "min_new_tokens": 2, "no_repeat_ngram_size": 1,
}


@pytest.mark.parametrize("peft", [False, True], ids=["plain", "peft"])
@pytest.mark.parametrize("option", list(PLANTED))
def test_samples_are_exact_draws_from_pi_whatever_the_model_ships(option, peft):
    """Goodness of fit against the exact π (enumerated) with an option planted in the model's own
    generation_config: generate would inherit it and sample from something else."""
    from types import SimpleNamespace

    model = tiny_vocab_model(peft)
    pi = exact_pi(model)
    base = model.get_base_model() if peft else model
    setattr(base.generation_config, option, PLANTED[option])
    n = 4000
    tok = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)
    samples = OnlineSampler(tok, k=n, max_new_tokens=2, seed=0).sample(model, [PROMPT])
    counts: dict[tuple, int] = {}
    for y in samples.response_ids:
        counts[tuple(y)] = counts.get(tuple(y), 0) + 1
    stat, dof = chi_square(counts, pi, n)
    # Generous bound (the 1e-6 tail of χ² is below 3·dof + 30 here); a planted option gives 1000s.
    assert stat < 3 * dof + 30, (option, stat, dof)
    assert getattr(base.generation_config, option) == PLANTED[option]  # restored after sampling


def test_no_generation_warnings_from_hypos_own_settings(tiny):
    """transformers must not warn at every sampling round about settings hypo itself passes."""
    import logging
    import warnings

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")  # its module loggers propagate to it
    hf_logger.addHandler(handler)
    model, tok = load(tiny)
    sampler = OnlineSampler(tok, k=2, max_new_tokens=3, seed=0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sampler.sample(model, [[tok.bos_token_id, 30]])
    finally:
        hf_logger.removeHandler(handler)
    messages = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    messages += [str(w.message) for w in caught if "generat" in str(w.message).lower()]
    assert messages == [], messages


def test_sampler_times_prefill_and_every_decode_step(tiny):
    """`last_timing` (the bench's decode roofline): one prefill, then one processor call per new
    token, so a call that runs to max_new_tokens has max_new_tokens − 1 decode steps."""
    model, tok = load(tiny)
    prompts = [[tok.bos_token_id, 30], [tok.bos_token_id, 40, 41]]
    sampler = OnlineSampler(tok, k=2, max_new_tokens=6, seed=1, stop_token_ids=[len(tok) + 5])
    sampler.stop_token_ids = [len(tok) + 5]  # a token that never comes: every row runs to the limit
    samples = sampler.sample(model, prompts)
    assert all(len(r) == 6 for r in samples.response_ids)
    t = sampler.last_timing
    assert t["rows"] == 4 and t["prompt_lens"] == [2, 2, 3, 3] and t["decode_steps"] == 5
    assert t["prefill_s"] > 0 and t["decode_s"] > 0
    from hypo.packed_linear import available

    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert t["packed_layers"] == (linears if available() else 0)  # every layer packed (2·7 + head)
    sampler.packed = False
    sampler.sample(model, prompts)
    assert sampler.last_timing["packed_layers"] == 0


def test_one_generate_call_per_optimizer_step_for_all_micro_batches(base_config):
    """With gradient accumulation, every micro-batch's prompts are sampled in one call (same
    weights within a step), and each micro-batch gets the samples of its own prompts."""
    from hypo.trainer import Trainer

    trainer = Trainer(base_config(algo="hypo", max_steps=2, per_device_train_batch_size=4,
                                  gradient_accumulation_steps=3, num_online_samples=2))
    calls, checked = [], []
    sample, micro_step = trainer.sampler.sample, trainer._micro_step

    def counting_sample(model, prompts):
        calls.append(len(prompts))
        return sample(model, prompts)

    def checking_micro_step(indices, prompts, *args, presampled=None, **kwargs):
        assert presampled.prompt_ids == [p for p in prompts for _ in range(2)]
        assert len(presampled.response_ids) == len(presampled.clipped) == 8
        checked.append(len(prompts))
        return micro_step(indices, prompts, *args, presampled=presampled, **kwargs)

    trainer.sampler.sample, trainer._micro_step = counting_sample, checking_micro_step
    assert trainer.train().global_step == 2
    assert calls == [12, 12] and checked == [4] * 6


def test_split_keeps_prompt_major_rows():
    from hypo.sampling import OnlineSamples

    s = OnlineSamples([[1], [1], [2], [2], [3], [3]], [[7], [8], [9], [10], [11], [12]],
                      [False, True, False, False, True, True], k=2)
    a, b = s.split([1, 2])
    assert (a.prompt_ids, a.response_ids, a.clipped) == ([[1], [1]], [[7], [8]], [False, True])
    assert b.prompt_ids == [[2], [2], [3], [3]] and b.response_ids == [[9], [10], [11], [12]] and b.k == 2
