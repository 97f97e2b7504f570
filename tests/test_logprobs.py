"""Response-only log-probs: masks, padding invariance, agreement with a token-by-token loop."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from hypo.logprobs import pack_sequences, sequence_logps, token_logps
from hypo.losses import preference_loss


def test_token_logps_matches_log_softmax():
    torch.manual_seed(0)
    logits, targets = torch.randn(7, 11), torch.randint(0, 11, (7,))
    expected = torch.log_softmax(logits, -1)[torch.arange(7), targets]
    assert torch.allclose(token_logps(logits, targets), expected, atol=1e-6)


def test_pack_masks_only_responses():
    batch = pack_sequences([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    assert batch.num_tokens == 9


def test_sequence_logps_equals_manual_sum(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    prompt, response = [1, 30, 31, 32], [40, 41, 2]
    got = sequence_logps(model, pack_sequences([prompt], [response], 0))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].log_softmax(-1)
    manual = sum(float(logits[len(prompt) - 1 + t, tok]) for t, tok in enumerate(response))
    assert abs(float(got) - manual) < 1e-5


def test_extra_padding_changes_nothing(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    prompts = [[1, 30, 31], [1, 40, 41, 42, 43]]
    chosen, rejected = [[50, 51, 2], [52, 2]], [[60, 2], [61, 62, 63, 2]]
    ref = torch.tensor([-20.0, -21.0]), torch.tensor([-19.0, -22.0])

    def outputs(pad_to):
        logps = sequence_logps(model, pack_sequences(prompts * 2, chosen + rejected, 0, pad_to=pad_to))
        out = preference_loss(logps[:2], logps[2:], *ref, beta=0.1)
        return torch.cat([logps, out.losses, out.chosen_rewards, out.rejected_rewards])

    tight, padded = outputs(None), outputs(40)
    # Loss and rewards: within 1e-6 absolute. Log-probs themselves (magnitude ~20) within float32
    # resolution: BLAS sums in a shape-dependent order, so 1 ulp (~2e-6 at 20) can differ.
    assert torch.allclose(tight[4:], padded[4:], atol=1e-6, rtol=0), (tight - padded).abs().max()
    assert torch.allclose(tight[:4], padded[:4], atol=0, rtol=2e-7), (tight - padded).abs().max()


def test_gradients_flow_only_through_responses(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    batch = pack_sequences([[1, 30, 31]], [[50, 2]], 0)
    sequence_logps(model, batch).sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_bucket_rows_partitions_and_reduces_padding():
    from hypo.logprobs import bucket_rows

    lengths = [120, 118, 60, 61, 59, 119, 30, 31]
    groups = bucket_rows(lengths, max_buckets=3, overhead_tokens=0)
    assert sorted(i for g in groups for i in g) == list(range(8))
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded < len(lengths) * max(lengths)
    assert [sorted(g) for g in groups] == [[0, 1, 5], [2, 3, 4], [6, 7]]
    # A large per-forward overhead keeps everything in one forward.
    assert len(bucket_rows(lengths, max_buckets=3, overhead_tokens=10_000)) == 1


def test_bucketed_and_target_only_head_equal_the_plain_forward(tiny):
    from hypo.logprobs import bucketed_logps, supports_target_only_head

    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    torch.manual_seed(0)
    prompts = [[1] + torch.randint(10, 300, (n,)).tolist() for n in (3, 20, 4, 25, 5)]
    responses = [torch.randint(10, 300, (n,)).tolist() + [2] for n in (2, 30, 3, 2, 12)]
    plain = sequence_logps(model, pack_sequences(prompts, responses, 0))
    assert supports_target_only_head(model, pack_sequences(prompts, responses, 0))
    for buckets in (1, 3):
        for fast in (False, True):
            got, slots = bucketed_logps(model, prompts, responses, 0, "cpu", buckets, fast)
            assert torch.allclose(got, plain, atol=1e-5, rtol=1e-6), (buckets, fast)
    # Gradients agree too.
    g_plain = torch.autograd.grad(plain.sum(), model.lm_head.weight)[0]
    got, _ = bucketed_logps(model, prompts, responses, 0, "cpu", 3, True)
    g_fast = torch.autograd.grad(got.sum(), model.lm_head.weight)[0]
    assert torch.allclose(g_plain, g_fast, atol=1e-5)


def test_scaled_logits_model_keeps_the_full_forward(tiny):
    from hypo.logprobs import supports_target_only_head

    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    real_forward = model.forward

    def scaled_forward(*args, **kwargs):  # a model whose logits are not head(decoder(x))
        out = real_forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled_forward
    assert not supports_target_only_head(model, pack_sequences([[1, 5, 6]], [[7, 2]], 0))


def test_exact_bucketing_gives_the_same_number_of_forwards_for_any_lengths():
    from hypo.logprobs import bucket_rows

    for lengths in ([10] * 8, [10, 200, 11, 199, 12, 198, 13, 197], list(range(1, 9))):
        assert len(bucket_rows(lengths, max_buckets=3, exact=True)) == 3
    assert len(bucket_rows([5, 6], max_buckets=4, exact=True)) == 2


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_head_matches_the_full_head_in_value_and_gradient(bias):
    """The chunked LM head (logits recomputed in backward) gives the same log-probs and the same
    gradients for hidden states, weight and bias as log_softmax over the full logits."""
    from hypo.logprobs import _ChunkedHeadLogps, head_token_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=bias).double()
    hidden = torch.randn(23, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    weights = torch.randn(23, dtype=torch.float64)

    def run(chunk_values):
        for p in [hidden, *head.parameters()]:
            p.grad = None
        calls = []
        apply = _ChunkedHeadLogps.apply
        _ChunkedHeadLogps.apply = lambda *a: calls.append(a[-1]) or apply(*a)
        try:
            out = head_token_logps(head, hidden, targets, chunk_values)
        finally:
            _ChunkedHeadLogps.apply = apply
        (out * weights).sum().backward()
        return out.detach(), [p.grad.clone() for p in [hidden, *head.parameters()]], calls

    full, full_grads, none = run(10**9)  # one chunk: the direct path
    chunked, grads, calls = run(5 * 50)  # 5 rows per chunk: 5 chunks
    assert none == [] and calls == [5]
    ref = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(full.double(), ref.detach(), atol=1e-6)
    assert torch.allclose(chunked.double(), ref.detach(), atol=1e-6)
    for a, b in zip(grads, full_grads):
        assert torch.allclose(a, b, atol=1e-6)
