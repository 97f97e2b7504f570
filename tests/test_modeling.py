"""Model set-up: training mode with dropout disabled, activation checkpointing that runs."""

import json

import pytest
import torch

from hypo.logprobs import pack_sequences, sequence_logps
from hypo.modeling import build_policy, disable_dropout
from hypo.trainer import Trainer


def first_step(cfg, counter=None) -> tuple[dict, dict]:
    """(first logged metrics, trainable weights after one step); counter counts checkpointed calls."""
    trainer = Trainer(cfg)
    policy = trainer.pair.policy
    if counter is not None:
        for module in policy.modules():
            func = getattr(module, "_gradient_checkpointing_func", None)
            if func is not None and getattr(module, "gradient_checkpointing", False):
                def counted(*args, _func=func, **kwargs):
                    counter.append(1)
                    return _func(*args, **kwargs)
                module._gradient_checkpointing_func = counted
    trainer.train()
    with open(f"{cfg.output_dir}/metrics.jsonl") as fh:
        metrics = json.loads(fh.readline())
    return metrics, {n: p.detach().clone() for n, p in trainer._trainable().items()}


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_runs_and_changes_nothing(base_config, tmp_path, use_peft):
    common = dict(max_steps=1, per_device_train_batch_size=4, max_new_tokens=4, use_peft=use_peft)
    calls = []
    on, weights_on = first_step(base_config(gradient_checkpointing=True, output_dir=str(tmp_path / "on"),
                                            **common), calls)
    assert len(calls) > 0  # transformers checkpoints only in training mode, with gradients on
    off, weights_off = first_step(base_config(output_dir=str(tmp_path / "off"), **common))
    for key in ("loss", "grad_norm", "kl/online", "logps/chosen", "loss/kl"):
        assert on[key] == pytest.approx(off[key], rel=1e-5, abs=1e-6), key
    for name, w in weights_on.items():
        torch.testing.assert_close(w, weights_off[name], rtol=1e-5, atol=1e-6)


def test_policy_trains_in_training_mode_with_dropout_disabled(base_config, tiny, tmp_path):
    """A model shipped with dropout > 0 (module floats and nn.Dropout) trains deterministically."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    model.config.attention_dropout = 0.5  # Llama reads it as a plain float at construction
    folder = tmp_path / "dropout-model"
    AutoModelForCausalLM.from_config(model.config).save_pretrained(folder)
    pair = build_policy(base_config(model_name_or_path=str(folder)), need_reference=True)
    policy = pair.policy
    assert policy.training and all(m.training for m in policy.modules())
    assert not pair.reference.training
    batch = pack_sequences([[1, 30, 31]] * 4, [[40, 41, 42, 43]] * 4, pad_token_id=0)
    a, b = sequence_logps(policy, batch), sequence_logps(policy, batch)
    assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(a.detach(), sequence_logps(pair.reference, batch))


def test_disable_dropout_zeroes_modules_attributes_and_config():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                       attn_pdrop=0.5, resid_pdrop=0.5, embd_pdrop=0.5)).train()
    disable_dropout(model)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    assert model.config.attn_pdrop == model.config.resid_pdrop == model.config.embd_pdrop == 0.0
    ids = torch.arange(16).unsqueeze(0)
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_lora_dropout_with_gradient_checkpointing_trains_like_without(base_config, tmp_path):
    """The backward recomputes checkpointed layers: LoRA's dropout must be on there as in the
    pairs' forward (same masks: the RNG state is replayed), else torch refuses the recomputation
    and any step with lora_dropout > 0 under gradient checkpointing crashed."""
    common = dict(algo="dpo", max_steps=1, per_device_train_batch_size=4, use_peft=True, lora_r=4,
                  lora_dropout=0.5)
    on, weights_on = first_step(base_config(gradient_checkpointing=True, output_dir=str(tmp_path / "on"),
                                            **common))
    off, weights_off = first_step(base_config(output_dir=str(tmp_path / "off"), **common))
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-5)
    for name, w in weights_on.items():
        torch.testing.assert_close(w, weights_off[name], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_applies_to_a_given_peft_model(base_config, tiny):
    """A PeftModel passed in (hypo.api) gets activation checkpointing as a loaded model does,
    instead of gradient_checkpointing=True being ignored for it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hypo.modeling import quiet_peft

    with quiet_peft():  # peft's own deprecated call
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["model"]),
                                    LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    pair = build_policy(base_config(gradient_checkpointing=True), need_reference=False, model=peft_model)
    layers = [m for m in pair.policy.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)
    assert pair.policy.get_base_model().config.use_cache is False
