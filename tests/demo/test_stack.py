"""The frontier's batched tiny Llama (hypo.demo.stack) against transformers' LlamaForCausalLM.

Equalities here are up to float32 rounding: the Stack runs the same operations as transformers
in other kernels (one bmm for all runs, fused q/k/v), so each tolerance is derived from the
reductions the value goes through (conftest.Float32Rounding).
"""

import math

import pytest
import torch

from hypo.demo.build import build_tokenizer
from hypo.demo.stack import Stack, Trainable, clip_per_run, response_logps, sample
from hypo.tiny import build_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two differently initialised demo-shaped models (random weights are enough here)."""
    tok = build_tokenizer()
    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"m{seed}")
        build_model(tok, hidden_size=64, num_layers=2, num_heads=4, seed=seed).save_pretrained(folder)
        folders.append(folder)
    return tok, folders


def _two(folders, trainable=False) -> Stack:
    a, b = (Stack.from_pretrained(f, 1, trainable=trainable) for f in folders)
    return Stack({k: torch.cat([a.params[k], b.params[k]]).detach().requires_grad_(trainable) for k in a.params},
                 a.shape)


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _tol(f32, config, seq_len, logits):
    # n: the forward's reductions; scale: the largest |logit| plus log V (a log-softmax term)
    return f32.reorder(f32.model_terms(config, seq_len), float(logits.abs().max()) + math.log(config.vocab_size))


def test_every_run_computes_its_own_llama(models, f32):
    tok, folders = models
    stack = _two(folders)
    ids = torch.randint(4, len(tok), (2, 3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = stack.logits(ids).log_softmax(-1)
        for r, folder in enumerate(folders):
            model = _hf(folder)
            want = model(ids[r]).logits.log_softmax(-1)
            assert torch.allclose(got[r], want, rtol=0, atol=_tol(f32, model.config, 11, want))
        assert not torch.allclose(got[0], got[1], atol=1e-3)  # the runs do differ


def test_shared_prompts_and_decoding_cache_equal_the_plain_forward(models, f32):
    tok, folders = models
    stack = _two(folders)
    config = _hf(folders[0]).config
    g = torch.Generator().manual_seed(1)
    prompts, responses = torch.randint(4, len(tok), (2, 3, 7), generator=g), torch.randint(4, len(tok), (2, 3, 4, 5), generator=g)
    full = torch.cat([prompts[:, :, None].expand(-1, -1, 4, -1), responses], 3).reshape(2, 12, 12)
    with torch.no_grad():
        plain = stack.logits(full).view(2, 3, 4, 12, -1)[:, :, :, 6:11].log_softmax(-1)
        grouped = stack.grouped_logits(prompts, responses).log_softmax(-1)
        cache: list = []
        steps = [stack.logits(full[:, :, :7], cache)] + [stack.logits(full[:, :, t:t + 1], cache) for t in range(7, 12)]
        decoded = torch.cat(steps, 2).log_softmax(-1)
    tol = _tol(f32, config, 12, plain)
    assert torch.allclose(grouped, plain, rtol=0, atol=tol)
    assert torch.allclose(decoded, stack.logits(full).log_softmax(-1), rtol=0, atol=tol)


def test_sampling_is_inverse_cdf_of_each_runs_policy(models, f32):
    tok, folders = models
    stack = _two(folders)
    prompts = torch.tensor(tok(["tell me about cats plainly :", "tell me about dogs warmly :"])["input_ids"])
    prompts = prompts[None].expand(2, -1, -1)
    uniforms = torch.rand(2 * 3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = sample(stack, prompts, 3, 6, tok.eos_token_id, tok.pad_token_id, uniforms=uniforms)
    assert s.ids.shape[:3] == (2, 2, 3)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for r in range(2):
        for i in range(2):
            for j in range(3):
                row, n = s.ids[r, i, j].tolist(), int(s.lengths[r, i, j])
                assert bool(s.clipped[r, i, j]) == (eos not in row)
                assert all(t == pad for t in row[n:]) and (s.clipped[r, i, j] or row[n - 1] == eos)
                # replay: each token is the inverse CDF of π(·|prefix) at its uniform
                for t in range(n):
                    with torch.no_grad():
                        logits = stack.logits(torch.tensor([prompts[r, i].tolist() + row[:t]]).expand(2, 1, -1))[r, 0, -1]
                    cdf = logits.softmax(-1).cumsum(-1, dtype=torch.float64)
                    u = float(uniforms[i * 3 + j, t])
                    # rounding can move a uniform across a CDF step only when it is that close to it
                    if float((cdf - u).abs().min()) > 1e-5:
                        assert row[t] == int((cdf <= u).sum().clamp(max=len(cdf) - 1))
    logps = response_logps(stack.grouped_logits(prompts, s.ids), s.ids, s.mask)
    assert logps.shape == (2, 2, 3) and bool((logps < 0).all())


def test_per_run_clipping_and_dropping_runs_keep_each_run_on_its_own(models, f32):
    tok, folders = models
    ids = torch.randint(4, len(tok), (2, 2, 9), generator=torch.Generator().manual_seed(3))

    def loss(stack, x):
        return stack.logits(x).log_softmax(-1)[..., 0].sum((1, 2))  # one loss per run

    # clipping: per run, as torch.nn.utils.clip_grad_norm_ on that run's parameters alone
    stack = _two(folders, trainable=True)
    loss(stack, ids).sum().backward()
    grads = {k: v.grad.clone() for k, v in stack.params.items()}
    norms = clip_per_run(list(stack.params.values()), 1.0)
    for r in range(2):
        flat = torch.cat([g[r].flatten() for g in grads.values()])
        want = flat.norm()
        # the norm: a float32 sum of 88k squares in another order (Float32Rounding.reorder), then
        # a square root (|Δ√s| ≤ |Δs| / (2√s))
        assert math.isclose(float(norms[r]), float(want), abs_tol=f32.reorder(flat.numel(), float(want) ** 2) / float(want))
        assert float(want) > 1  # so clipping does act
        scale = (1.0 / (norms[r] + 1e-6)).clamp(max=1.0)  # the same float32 operations as clip_per_run
        for k, p in stack.params.items():
            assert torch.equal(p.grad[r], grads[k][r] * scale)
    # dropping run 0 keeps run 1's weights and AdamW state: its next update is the same. The same
    # gradients are handed to both (AdamW is elementwise, so equal inputs give equal outputs).
    both, alone = Trainable(_two(folders, trainable=True), 1e-2), Trainable(_two(folders, trainable=True), 1e-2)
    gen = torch.Generator().manual_seed(4)
    first = {k: torch.randn(v.shape, generator=gen) for k, v in both.stack.params.items()}
    second = {k: torch.randn(v.shape, generator=gen) for k, v in both.stack.params.items()}
    for t in (both, alone):
        for k, v in t.stack.params.items():
            v.grad = first[k].clone()
        t.optimizer.step()
    alone.keep(torch.tensor([1]))
    for t, rows in ((both, slice(None)), (alone, slice(1, None))):
        for k, v in t.stack.params.items():
            v.grad = second[k][rows].clone()
        t.optimizer.step()
    for k in both.stack.params:
        assert torch.equal(both.stack.params[k][1], alone.stack.params[k][0])
    assert not torch.equal(both.stack.params["embed"][0], both.stack.params["embed"][1])
