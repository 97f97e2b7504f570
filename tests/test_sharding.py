"""hypo.sharding in one process: what the launch config turns on or is refused, which layers get
sharded, the plain copy of gathered weights, and checkpoints that name another sharding. The
2-process runs are in tests/sharded/."""

import os

import pytest
import torch

from hypo import checkpoint as ckpt
from hypo import sharding
from hypo.config import ConfigError


@pytest.fixture
def launch_env(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_OFFLOAD_PARAMS",
                 "FSDP_ACTIVATION_CHECKPOINTING", "FSDP_RESHARD_AFTER_FORWARD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_fsdp_version_2_is_requested_by_the_launch_config(launch_env):
    assert not sharding.requested()
    launch_env.setenv("ACCELERATE_USE_FSDP", "true")
    assert not sharding.requested()  # accelerate's default version is 1
    launch_env.setenv("FSDP_VERSION", "2")
    assert sharding.requested()
    sharding.check_launch(has_gpu=False)  # accepted on CPU
    assert sharding.reshard_after_forward()
    launch_env.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert not sharding.reshard_after_forward()


@pytest.mark.parametrize("variable, value, fix", [
    ("FSDP_VERSION", "1", "fsdp_version: 2"),
    ("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params"),
    ("FSDP_ACTIVATION_CHECKPOINTING", "true", "--gradient_checkpointing"),
])
def test_settings_hypo_would_ignore_are_refused(launch_env, variable, value, fix):
    launch_env.setenv("ACCELERATE_USE_FSDP", "true")
    launch_env.setenv("FSDP_VERSION", "2")
    launch_env.setenv(variable, value)
    with pytest.raises(ConfigError, match=fix):
        sharding.check_launch(has_gpu=False)


def test_fsdp1_is_left_to_accelerate_on_gpus(launch_env):
    launch_env.setenv("ACCELERATE_USE_FSDP", "true")
    sharding.check_launch(has_gpu=True)
    assert not sharding.requested()


def test_accelerate_does_not_see_the_request_while_hypo_shards(launch_env):
    launch_env.setenv("ACCELERATE_USE_FSDP", "true")
    with sharding.hidden_from_accelerate():
        assert os.environ["ACCELERATE_USE_FSDP"] == "false"
    assert os.environ["ACCELERATE_USE_FSDP"] == "true"


def test_decoder_layers_are_the_models_repeated_blocks(tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    assert [type(m).__name__ for m in sharding.decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    lora = get_peft_model(model, LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert sharding.decoder_layers(lora) == list(lora.get_base_model().model.layers)
    with pytest.raises(ConfigError, match="_no_split_modules"):
        sharding.decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_plain_copy_holds_the_given_weights_and_merges_like_the_model(tiny):
    """The unsharded copy merge_adapter uses under FSDP2 / ZeRO-3: built without initialising
    weights, it holds exactly the gathered ones and computes what the model computes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny["model"]),
                           LoraConfig(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # a trained-looking adapter (B starts at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    copy = sharding.plain_copy(model, full)
    assert copy.state_dict().keys() == full.keys()
    assert all(torch.equal(copy.state_dict()[k], full[k]) for k in full)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():  # the same modules on the same weights: the same kernels
        assert torch.equal(copy(input_ids=ids).logits, model(input_ids=ids).logits)
        merged = copy.merge_and_unload()
        expected = model.merge_and_unload()
        assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(),
                                                     expected.state_dict().values()))


@pytest.mark.parametrize("written, message", [("deepspeed-zero2", "DeepSpeed"),
                                              ("fsdp2", "sharding 'fsdp2'")])
def test_checkpoints_of_another_sharding_are_refused(base_config, monkeypatch, written, message):
    from hypo.trainer import Trainer

    settings = dict(max_steps=1, save_steps=1, algo="dpo")
    monkeypatch.setattr(Trainer, "_sharding_name", lambda self: written)
    Trainer(base_config(**settings)).train()
    monkeypatch.undo()  # this run's own: "none"
    with pytest.raises(ckpt.CheckpointError, match=message):
        Trainer(base_config(**settings, resume_from_checkpoint="auto")).train()
