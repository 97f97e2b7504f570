"""Shared fixtures: a tiny locally built model + tokenizer + synthetic preference file."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{'model': folder, 'data': jsonl} built once per test worker (no downloads)."""
    import torch

    from hypo.tiny import make_tiny_setup

    torch.set_num_threads(1)
    return make_tiny_setup(tmp_path_factory.mktemp("tiny"), n_train=128, seed=0)


@pytest.fixture
def base_config(tiny, tmp_path):
    """A fast TrainConfig on the tiny model; tests override what they need."""
    from hypo.config import TrainConfig

    def make(**overrides):
        values = dict(model_name_or_path=str(tiny["model"]), dataset_name=str(tiny["data"]),
                      output_dir=str(tmp_path / "out"), ref_cache_dir=str(tmp_path / "cache"),
                      learning_rate=3e-3, per_device_train_batch_size=8, max_steps=6,
                      max_new_tokens=8, max_length=64, max_prompt_length=32, save_steps=0,
                      report_to="none", disable_progress_bar=True, eval_online_prompts=0, seed=0)
        values.update(overrides)
        return TrainConfig(**values)

    return make
