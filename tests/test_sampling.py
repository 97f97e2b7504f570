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
