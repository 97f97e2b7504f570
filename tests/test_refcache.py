"""The reference log-prob cache never serves stale values and is reused when it should be."""

import json
import os
import shutil
import stat

import torch

from hypo.refcache import cache_key, default_cache_dir, load_or_compute
from hypo.trainer import Trainer


def _model_copy(tiny, tmp_path, name, **config_changes):
    """A copy of the tiny model folder (same weights) with config.json entries changed."""
    folder = tmp_path / name
    shutil.copytree(tiny["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in config_changes.items():
        if key == "rope_theta" and "rope_parameters" in config:  # transformers >= 5 layout
            config["rope_parameters"]["rope_theta"] = value
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_model_config_is_part_of_the_key(base_config, tiny, tmp_path):
    first = Trainer(base_config(algo="dpo", max_steps=1))
    assert first.data.report["ref_cache_train"] == "computed"
    # Same weights and config under another path: the path is not part of the key.
    moved = Trainer(base_config(algo="dpo", max_steps=1,
                                model_name_or_path=_model_copy(tiny, tmp_path, "same")))
    assert moved.data.report["ref_cache_train"] == "reused"
    for change in ({"rope_theta": 500.0}, {"rms_norm_eps": 0.5}):
        cfg = base_config(algo="dpo", max_steps=1,
                          model_name_or_path=_model_copy(tiny, tmp_path, "changed", **change))
        trainer = Trainer(cfg)
        assert trainer.fingerprints["weights"] == first.fingerprints["weights"]  # same weights
        assert trainer.data.report["ref_cache_train"] == "computed", change
        assert not torch.equal(trainer.ref_train, first.ref_train), change
        shutil.rmtree(tmp_path / "changed")


def test_attention_implementation_is_part_of_the_key(tiny):
    from hypo.modeling import load_causal_lm, model_config_fingerprint

    model = load_causal_lm(str(tiny["model"]))
    before = model_config_fingerprint(model)
    model.config._attn_implementation = "sdpa" if model.config._attn_implementation == "eager" else "eager"
    assert model_config_fingerprint(model) != before


def test_precision_is_part_of_the_key(base_config):
    trainer = Trainer(base_config(algo="dpo", max_steps=1))
    head = "+head" if trainer.fast_head else ""  # the LM-head path changes the arithmetic too
    assert trainer._precision() == "float32" + head
    trainer.cfg.bf16 = True
    assert trainer._precision() == "float32+bf16-autocast" + head
    trainer.fast_head = not trainer.fast_head
    assert trainer._precision() == "float32+bf16-autocast" + ("" if head else "+head")
    keys = {cache_key("w", "t", "p", trainer._precision(), "c"),
            cache_key("w", "t", "p", "float32", "c")}
    assert len(keys) == 2


def test_lora_runs_share_the_base_models_cache(base_config):
    lora = dict(algo="dpo", max_steps=1, use_peft=True)
    first = Trainer(base_config(**lora, lora_r=4, seed=0))
    assert first.data.report["ref_cache_train"] == "computed"
    # Another adapter init (seed), rank or targets: π_ref is the same base model.
    for changes in ({"lora_r": 4, "seed": 1}, {"lora_r": 8, "seed": 0},
                    {"lora_r": 4, "lora_target_modules": "q_proj,v_proj"}):
        other = Trainer(base_config(**lora, **changes))
        assert other.data.report["ref_cache_train"] == "reused", changes
        assert torch.equal(other.ref_train, first.ref_train)
    # The cached values are what the adapter-disabled base computes live, and what full
    # fine-tuning of the same model uses.
    live = Trainer(base_config(**lora, lora_r=8, seed=5, precompute_ref_log_probs=False))
    assert torch.equal(live.ref_train, first.ref_train)
    full = Trainer(base_config(algo="dpo", max_steps=1))
    assert full.data.report["ref_cache_train"] == "reused"


def test_entry_whose_metadata_key_does_not_match_is_recomputed(tmp_path):
    from safetensors.torch import save_file

    cache = tmp_path / "cache"
    cache.mkdir()
    planted = torch.full((3, 2), -1.0)
    # A file under key "k"'s name that was written for another key (or forged without one).
    for metadata in ({"key": "other"}, None):
        save_file({"logps": planted}, cache / "ref-logps-k.safetensors", metadata=metadata)
        logps, cached = load_or_compute("k", cache, lambda: torch.zeros(3, 2))
        assert not cached and torch.equal(logps, torch.zeros(3, 2))
        # ...and replaced by a correct entry, which is then reused.
        logps, cached = load_or_compute("k", cache, lambda: torch.ones(3, 2))
        assert cached and torch.equal(logps, torch.zeros(3, 2))


def test_entry_with_the_wrong_shape_is_recomputed(tmp_path):
    load_or_compute("k", tmp_path, lambda: torch.zeros(3, 2))
    logps, cached = load_or_compute("k", tmp_path, lambda: torch.ones(4, 2), rows=4)
    assert not cached and torch.equal(logps, torch.ones(4, 2))


def test_default_cache_folder_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPO_CACHE", str(tmp_path / "home" / "cache" / "hypo"))
    old_umask = os.umask(0o022)
    try:
        load_or_compute("k", default_cache_dir(), lambda: torch.zeros(1, 2))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(default_cache_dir().stat().st_mode) == 0o700


def test_launcher_mixed_precision_keys_the_cache(base_config, monkeypatch):
    """Autocast set by the launcher (accelerate launch --mixed_precision bf16, without --bf16)
    computes the cache in bf16: a float32 run must not reuse those numbers."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    launched = Trainer(base_config(algo="dpo", max_steps=1))
    assert launched.acc.mixed_precision == "bf16" and "bf16-autocast" in launched._precision()
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    plain = Trainer(base_config(algo="dpo", max_steps=1))
    assert plain.acc.mixed_precision == "no"
    assert plain.data.report["ref_cache_train"] == "computed"  # not the bf16 entry
