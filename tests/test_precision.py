"""Precision: --bf16 (float32 master weights + bf16 autocast on every forward) and exactness at
step 0, where π = π_ref, so rewards and the online KL must be exactly 0 in every mode."""

import json
import warnings

import pytest
import torch

from hypo.config import ConfigError
from hypo.modeling import precision_warnings
from hypo.trainer import Trainer

MODES = {"float32": {}, "bf16": {"bf16": True}, "pure-bfloat16": {"dtype": "bfloat16"}}


def first_logged(cfg_out) -> dict:
    with open(f"{cfg_out}/metrics.jsonl") as fh:
        return json.loads(fh.readline())


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("fast_head", [True, False], ids=["fast-head", "full-head"])
@pytest.mark.parametrize("mode", list(MODES))
def test_step_zero_rewards_and_kl_are_exactly_zero(base_config, monkeypatch, mode, fast_head, use_peft):
    """Step 1's metrics are computed with the initial weights (π = π_ref): any difference in the
    arithmetic of the policy and the reference (autocast on one side only, another LM-head path
    for the reference cache) shows up as non-zero rewards / KL."""
    monkeypatch.setattr(Trainer, "_check_target_only_head", lambda self: fast_head)
    cfg = base_config(max_steps=1, per_device_train_batch_size=4, max_new_tokens=4, use_peft=use_peft,
                      **MODES[mode])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pure-bf16 warning is tested below
        trainer = Trainer(cfg)
    assert trainer.fast_head is fast_head
    trainer.train()
    m = first_logged(cfg.output_dir)
    assert m["rewards/chosen"] == 0.0 and m["rewards/rejected"] == 0.0 and m["rewards/margins"] == 0.0
    assert m["kl/online"] == 0.0


def _layout_sensitive_model(folder):
    """The tiny model with arithmetic that depends on the shape of each forward's batch, as a
    BLAS's kernel choice does (MKL on AVX-512 picks other blockings for other row counts): the
    decoder's output moves by 1e-4·((7·rows + width) mod 11). A reference computed in any other
    batch layout than the policy's then differs from it at step 0."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)

    def shift(_module, _inputs, output):
        rows, width = output.last_hidden_state.shape[:2]
        output.last_hidden_state = output.last_hidden_state + 1e-4 * ((7 * rows + width) % 11)
        return output

    model.get_decoder().register_forward_hook(shift)
    return model


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("fast_head", [True, False], ids=["fast-head", "full-head"])
def test_step_zero_is_exact_when_kernels_depend_on_the_batch_shape(base_config, tiny, monkeypatch,
                                                                  fast_head, use_peft):
    """Step-0 exactness is by construction, not by luck of one CPU's kernels: the reference cache
    runs the training loop's own groups of pairs (and evaluation's), and the samples' reference
    forward the policy's layout, so even a model whose values depend on the batch shape gives
    rewards, margins and KL of exactly 0 while π = π_ref."""
    monkeypatch.setattr(Trainer, "_check_target_only_head", lambda self: fast_head)
    cfg = base_config(algo="hypo", max_steps=1, per_device_train_batch_size=3, max_new_tokens=4,
                      use_peft=use_peft, eval_split_size=0.1, per_device_eval_batch_size=5,
                      eval_online_prompts=4, length_buckets=3)
    trainer = Trainer(cfg, model=_layout_sensitive_model(tiny["model"]))
    initial = trainer.evaluate()
    assert initial["eval_rewards/margins"] == 0.0 and initial["eval_rewards/chosen"] == 0.0
    assert initial["eval_kl/online"] == 0.0
    trainer.train()
    m = first_logged(cfg.output_dir)
    assert m["rewards/chosen"] == 0.0 and m["rewards/rejected"] == 0.0 and m["kl/online"] == 0.0


def test_bf16_keeps_float32_master_weights_and_autocasts(base_config):
    cfg = base_config(bf16=True, max_steps=2, per_device_train_batch_size=4, max_new_tokens=4)
    trainer = Trainer(cfg)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    with trainer.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    head_dtypes = set()  # every forward, target-only head included, must run in bf16
    trainer.pair.policy.get_output_embeddings().register_forward_hook(
        lambda _m, _i, out: head_dtypes.add(out.dtype))
    trainer.train()
    assert head_dtypes == {torch.bfloat16}
    # AdamW's first steps move (almost) every weight by ~lr; pure bf16 weights would round most away.
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in trainer.model.named_parameters())
    total = sum(p.numel() for p in before.values())
    assert changed / total > 0.5
    assert all(state["exp_avg"].dtype == torch.float32 for state in trainer.optimizer.state.values())


def test_bf16_needs_float32_weights(base_config):
    with pytest.raises(ConfigError, match="dtype"):
        base_config(bf16=True, dtype="bfloat16").validate()


def test_pure_bf16_full_fine_tuning_warns_with_the_fix(base_config):
    cpu = torch.device("cpu")
    messages = precision_warnings(base_config(dtype="bfloat16"), cpu)
    assert len(messages) == 1 and "--bf16" in messages[0] and "float32" in messages[0]
    assert precision_warnings(base_config(dtype="bfloat16", use_peft=True), cpu) == []
    assert precision_warnings(base_config(), cpu) == []
    with pytest.warns(UserWarning, match="--bf16"):
        Trainer(base_config(dtype="bfloat16", max_steps=1, algo="dpo", eval_online_prompts=0))


def test_bf16_on_a_cpu_without_native_bf16_warns(base_config, monkeypatch):
    import hypo.modeling as modeling

    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: False)
    messages = precision_warnings(base_config(bf16=True), torch.device("cpu"))
    assert len(messages) == 1 and "slower" in messages[0]
    monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: True)
    assert precision_warnings(base_config(bf16=True), torch.device("cpu")) == []
