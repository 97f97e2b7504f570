"""Shipped example configs parse, validate and build their objects (with a tiny stand-in model)."""

from pathlib import Path

import pytest

from hypo.config import TrainConfig

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_builds(path, tiny, tmp_path):
    cfg = TrainConfig.from_yaml(path).validate()
    assert cfg.model_name_or_path and cfg.dataset_name
    from hypo.trainer import Trainer

    # Swap in the tiny local model and data (no downloads); everything else as shipped.
    values = cfg.to_dict()
    values.update(model_name_or_path=str(tiny["model"]), dataset_name=str(tiny["data"]),
                  output_dir=str(tmp_path / "out"), ref_cache_dir=str(tmp_path / "cache"),
                  dtype="float32", max_steps=1, report_to="none", disable_progress_bar=True,
                  eval_online_prompts=2, max_new_tokens=4, lora_r=4)
    trainer = Trainer(TrainConfig(**values))
    assert trainer.pair.is_peft == cfg.use_peft
    trainer.train()
    assert (tmp_path / "out" / "metrics.jsonl").exists()
