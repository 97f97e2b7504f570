"""Sampling's prepacked oneDNN linear layers: same outputs as the modules they stand in for."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from hypo import packed_linear
from hypo.packed_linear import packed_linears

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this torch build has no oneDNN")

IDS = torch.tensor([[1, 30, 31, 40, 41, 50, 7, 9], [1, 60, 61, 62, 63, 64, 65, 66]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def lora_model(tiny, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora)).eval()
    with torch.no_grad():  # B starts at zero: give the adapter an effect worth checking
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def test_packed_model_computes_the_same_logits_and_leaves_it_untouched(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    params = {n: p.clone() for n, p in model.named_parameters()}
    expected = logits(model)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    with packed_linears(model, rows=2) as count:
        got = logits(model)
    assert count == linears > 0
    assert_close(got, expected)
    assert all("forward" not in vars(m) for m in model.modules())  # the class's forward is back
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert torch.equal(logits(model), expected)


def test_lora_layers_pack_their_merged_adapter_or_their_base_when_disabled(tiny):
    model = lora_model(tiny)
    with_adapter = logits(model)
    with model.disable_adapter():
        base = logits(model)
    assert (with_adapter - base).abs().max() > 1e-2  # the adapter matters: a lost delta would show
    with packed_linears(model, rows=2) as count:
        assert count > 0
        assert_close(logits(model), with_adapter)
    with model.disable_adapter(), packed_linears(model, rows=2):
        assert_close(logits(model), base)
    assert torch.equal(logits(model), with_adapter)


def test_what_is_not_a_plain_linear_map_keeps_its_own_forward(tiny):
    dora = lora_model(tiny, use_dora=True)
    expected = logits(dora)
    with packed_linears(dora, rows=2):
        assert all("forward" not in vars(m) for m in dora.modules() if hasattr(m, "lora_A"))
        assert_close(logits(dora), expected)

    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), packed_linears(model, rows=2) as count:
        assert count == 0  # autocast decides the matmul dtype: packing float32 would change π
    with packed_linears(model.to(torch.bfloat16), rows=2) as count:
        assert count == 0
    with packed_linears(model, rows=2, enabled=False) as count:
        assert count == 0


def test_training_mode_lora_is_not_packed(tiny):
    model = lora_model(tiny, lora_dropout=0.5).train()
    with packed_linears(model, rows=2):
        assert all("forward" not in vars(m) for m in model.modules() if hasattr(m, "lora_A"))
