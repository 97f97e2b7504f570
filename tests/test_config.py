"""The configuration surface: derived length limits, TRL names, renamed settings, new choices."""

import json

import pytest
import torch

from hypo.cli import build_config, make_parser
from hypo.config import SCHEDULERS, ConfigError, TrainConfig, result_settings

REQUIRED = ["--model_name_or_path", "m", "--dataset_name", "d.jsonl"]


def from_cli(*flags) -> TrainConfig:
    return build_config(make_parser().parse_args(["train", *REQUIRED, *flags]))


# ---- item 2: max_length alone; max_completion_length ---------------------------------------------

def test_max_length_alone_derives_the_prompt_limit():
    assert from_cli("--max_length", "128").prompt_limit() == 64  # max_length // 2
    assert TrainConfig().prompt_limit() == 512  # the old default, now derived from 1024
    cfg = from_cli("--max_length", "128", "--max_completion_length", "100")
    assert cfg.prompt_limit() == 28  # max_length − max_completion_length
    assert from_cli("--max_length", "128", "--max_prompt_length", "100").prompt_limit() == 100


def test_inconsistent_lengths_name_the_setting():
    with pytest.raises(ConfigError, match=r"max_prompt_length=128: must be below max_length=128"):
        from_cli("--max_length", "128", "--max_prompt_length", "128")
    with pytest.raises(ConfigError, match=r"max_completion_length=128: must be below max_length"):
        from_cli("--max_length", "128", "--max_completion_length", "128")
    with pytest.raises(ConfigError, match="max_completion_length"):
        from_cli("--max_completion_length", "0")
    with pytest.raises(ConfigError, match="max_length"):
        from_cli("--max_length", "1")


def test_max_completion_length_caps_responses(base_config):
    from hypo.trainer import prepare_data

    cap = 2
    data = prepare_data(base_config(max_length=64, max_prompt_length=None, max_completion_length=cap))
    assert max(len(r) for p in data.train for r in (p.chosen_ids, p.rejected_ids)) <= cap
    assert data.report["train_tokenize"]["truncated_responses"] > 0
    free = prepare_data(base_config(max_length=64, max_prompt_length=None))
    assert max(len(r) for p in free.train for r in (p.chosen_ids, p.rejected_ids)) > cap


# ---- item 8: renamed and new settings -----------------------------------------------------------

def test_dataset_split_is_the_older_name_of_dataset_train_split(tmp_path):
    assert from_cli("--dataset_split", "validation").dataset_train_split == "validation"
    assert from_cli("--dataset_train_split", "validation").dataset_train_split == "validation"
    old = tmp_path / "old.yaml"
    old.write_text("dataset_split: train_prefs\n")
    assert TrainConfig.from_yaml(old).dataset_train_split == "train_prefs"
    both = tmp_path / "both.yaml"
    both.write_text("dataset_split: a\ndataset_train_split: b\n")
    with pytest.raises(ConfigError, match="dataset_split .*dataset_train_split"):
        TrainConfig.from_yaml(both)


def test_checkpoint_config_of_an_older_version_compares_equal():
    """A checkpoint written before these settings existed (old name, explicit 512 prompt limit)
    resumes under today's defaults: same results, nothing reported as changed."""
    old = TrainConfig(model_name_or_path="m", dataset_name="d").to_dict()
    for name in ("max_completion_length", "dataset_config", "dataset_test_split", "model_revision",
                 "lora_dropout", "optim", "eval_strategy", "save_strategy"):
        old.pop(name)
    old["dataset_split"] = old.pop("dataset_train_split")
    old["max_prompt_length"] = 512
    now = TrainConfig(model_name_or_path="m", dataset_name="d").to_dict()
    assert result_settings(old) == result_settings(now)
    changed = dict(now, max_length=256)
    assert result_settings(old)["max_prompt_length"] != result_settings(changed)["max_prompt_length"]


def test_new_settings_in_yaml_and_their_choices(tmp_path):
    path = tmp_path / "trl.yaml"
    path.write_text("model_name_or_path: m\ndataset_name: d\noptim: adamw_torch_fused\n"
                    "eval_strategy: epoch\nsave_strategy: 'no'\nlr_scheduler_type: inverse_sqrt\n"
                    "dataset_config: en\ntrust_remote_code: true\nattn_implementation: eager\n"
                    "lora_dropout: 0.05\nmodel_revision: v1\nmax_completion_length: 256\n")
    with pytest.raises(ConfigError, match="trust_remote_code: true is refused in a config file"):
        TrainConfig.from_yaml(path)  # a file alone cannot turn on remote code (docs/security.md)
    cfg = TrainConfig.from_yaml(path, allow_remote_code=True).validate()
    assert (cfg.optim, cfg.eval_strategy, cfg.save_strategy, cfg.lr_scheduler_type) == (
        "adamw_torch_fused", "epoch", "no", "inverse_sqrt")
    assert (cfg.dataset_config, cfg.trust_remote_code, cfg.attn_implementation, cfg.lora_dropout,
            cfg.model_revision, cfg.max_completion_length) == ("en", True, "eager", 0.05, "v1", 256)
    for name, bad in (("optim", "sgd"), ("eval_strategy", "always"), ("save_strategy", "best"),
                      ("lr_scheduler_type", "cosine_with_min_lr"), ("lora_dropout", 1.0)):
        with pytest.raises(ConfigError, match=name):
            TrainConfig(model_name_or_path="m", dataset_name="d", **{name: bad}).validate()


def test_dataset_test_split_conflicts_are_config_errors():
    with pytest.raises(ConfigError, match="two eval sources"):
        from_cli("--dataset_test_split", "test", "--eval_split_size", "0.1")
    with pytest.raises(ConfigError, match="training split"):
        from_cli("--dataset_test_split", "train")
    assert from_cli("--dataset_test_split", "test").dataset_test_split == "test"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_and_steps(name):
    from hypo.trainer import make_optimizer, make_scheduler

    cfg = TrainConfig(model_name_or_path="m", dataset_name="d", learning_rate=1.0,
                      lr_scheduler_type=name, warmup_steps=2).validate()
    param = torch.nn.Parameter(torch.zeros(2))
    opt = make_optimizer(cfg, [param])
    sched = make_scheduler(cfg, opt, total_steps=10)
    lrs = []
    for _ in range(10):
        param.grad = torch.ones(2)
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert all(0 <= lr <= 1.0 for lr in lrs)
    assert lrs[0] == 0.5  # warm-up honoured by every schedule, 'constant' included
    assert len(set(lrs)) > 1 or name not in ("linear", "cosine")


@pytest.mark.parametrize("optim,fused", [("adamw_torch", None), ("adamw_torch_fused", True)])
def test_optim_picks_the_adamw_kernel(optim, fused):
    from hypo.trainer import make_optimizer

    cfg = TrainConfig(model_name_or_path="m", dataset_name="d", optim=optim, learning_rate=0.1)
    param = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer(cfg, [param])
    assert opt.param_groups[0]["fused"] is fused
    param.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(param.detach(), torch.full((3,), 0.9), atol=1e-6)


# ---- model loading options ----------------------------------------------------------------------

def test_model_options_reach_from_pretrained(base_config, monkeypatch):
    import transformers

    from hypo.modeling import build_policy
    from hypo.trainer import prepare_data

    seen = {}
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, name, *args, _orig=original, _key=cls.__name__, **kwargs):
            seen[_key] = dict(kwargs)
            kwargs.pop("revision", None)  # a local folder has no revisions
            return _orig(klass, name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    cfg = base_config(model_revision="abc123", trust_remote_code=True, attn_implementation="eager")
    prepare_data(cfg)
    pair = build_policy(cfg, need_reference=False)
    model_kwargs, tok_kwargs = seen["AutoModelForCausalLM"], seen["AutoTokenizer"]
    assert (model_kwargs["revision"], model_kwargs["trust_remote_code"],
            model_kwargs["attn_implementation"]) == ("abc123", True, "eager")
    assert pair.policy.config._attn_implementation == "eager"
    assert (tok_kwargs["revision"], tok_kwargs["trust_remote_code"]) == ("abc123", True)
    # A separate tokenizer repository does not get the model's revision.
    prepare_data(base_config(model_revision="abc123", tokenizer_name_or_path=cfg.model_name_or_path))
    assert "revision" not in seen["AutoTokenizer"]


def test_lora_dropout_acts_only_in_the_training_forward(base_config):
    from hypo.logprobs import pack_sequences, sequence_logps
    from hypo.modeling import build_policy, lora_dropout_active

    cfg = base_config(use_peft=True, lora_r=4, lora_dropout=0.5)
    pair = build_policy(cfg, need_reference=False)
    drops = [m for n, m in pair.policy.named_modules() if n.endswith("lora_dropout.default")]
    assert drops and all(m.p == 0.5 and not m.training for m in drops)
    batch = pack_sequences([[1, 2, 3]] * 2, [[4, 5, 6, 7]] * 2, 0)
    with torch.no_grad():
        for name, p in pair.policy.named_parameters():
            if "lora_B" in name:  # B starts at 0 (π = π_ref at step 0); make the branch matter
                p.normal_(0, 0.5)
        torch.manual_seed(0)
        plain = sequence_logps(pair.policy, batch)
        assert torch.equal(plain, sequence_logps(pair.policy, batch))  # deterministic outside
        with lora_dropout_active(pair.policy):
            dropped = sequence_logps(pair.policy, batch)
            assert not any(m.training for n, m in pair.policy.named_modules()
                           if isinstance(m, torch.nn.Dropout) and "lora" not in n)
        assert not torch.allclose(plain, dropped)
        assert all(not m.training for m in drops)  # restored
        with pair.policy.disable_adapter(), lora_dropout_active(pair.policy):  # π_ref: no LoRA
            assert torch.equal(sequence_logps(pair.policy, batch), sequence_logps(pair.policy, batch))


# ---- data splits --------------------------------------------------------------------------------

def _split_folder(tmp_path, records):
    import datasets

    folder = tmp_path / "dsdict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:10]),
                          "test": datasets.Dataset.from_list(records[10:14])}).save_to_disk(folder)
    return folder


def test_dataset_test_split_reads_the_eval_split(base_config, tmp_path):
    from hypo.tiny import synthetic_preferences
    from hypo.trainer import prepare_data

    records = synthetic_preferences(14, seed=3)
    folder = _split_folder(tmp_path, records)
    data = prepare_data(base_config(dataset_name=str(folder), dataset_test_split="test"))
    assert len(data.train) == 10 and len(data.eval) == 4
    # With eval_dataset_name, dataset_test_split is the split read from it (was: the train split).
    data = prepare_data(base_config(dataset_name=str(folder), eval_dataset_name=str(folder),
                                    dataset_test_split="test"))
    assert len(data.eval) == 4


def test_test_split_of_a_single_table_file_is_refused(base_config):
    from hypo.data import DataError
    from hypo.trainer import prepare_data

    with pytest.raises(DataError, match="no split 'test'.*eval_dataset_name"):
        prepare_data(base_config(dataset_test_split="test"))


def test_dataset_config_reaches_load_dataset(base_config, monkeypatch, tiny):
    import datasets

    from hypo.trainer import prepare_data

    records = [json.loads(x) for x in open(tiny["data"]).read().splitlines()[:12]]
    calls = []

    def fake_load_dataset(path, split=None, name=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(records)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = prepare_data(base_config(dataset_name="org/prefs", dataset_config="en",
                                    dataset_train_split="train_prefs"))
    assert calls == [("org/prefs", "en", "train_prefs")] and len(data.train) == 12


# ---- eval_strategy / save_strategy --------------------------------------------------------------

def run_steps(base_config, tmp_path, name, **overrides):
    from hypo.tiny import synthetic_preferences, write_jsonl
    from hypo.tracking import read_metrics
    from hypo.trainer import Trainer

    data = write_jsonl(synthetic_preferences(12, seed=4), tmp_path / "twelve.jsonl")
    cfg = base_config(algo="dpo", dataset_name=str(data), eval_dataset_name=str(data), max_steps=5,
                      per_device_train_batch_size=8, save_total_limit=10,
                      output_dir=str(tmp_path / name), **overrides)
    Trainer(cfg).train()
    evals = [m["step"] for m in read_metrics(cfg.output_dir) if "eval_loss" in m]
    saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / name).glob("checkpoint-*"))
    return evals, saved


def test_epoch_strategy_acts_at_epoch_boundaries(base_config, tmp_path):
    # 12 pairs, 8 per step: steps 2 (16), 3 (24) and 5 (40) complete a pass over the data.
    evals, saved = run_steps(base_config, tmp_path, "epoch", eval_strategy="epoch", save_strategy="epoch")
    assert evals == [2, 3, 5] and saved == [2, 3, 5]


def test_no_strategy_and_steps_strategy(base_config, tmp_path):
    evals, saved = run_steps(base_config, tmp_path, "no", eval_strategy="no", save_strategy="no",
                             eval_steps=1, save_steps=1)
    assert evals == [] and saved == []
    evals, saved = run_steps(base_config, tmp_path, "steps", eval_steps=2, save_steps=2)
    assert evals == [2, 4, 5] and saved == [2, 4, 5]  # every N steps; both also at the end


def test_final_checkpoint_follows_the_save_strategy(base_config, tmp_path, monkeypatch):
    """The last step is checkpointed (so a finished run can be extended) once, and never under
    save_strategy 'no' (whatever save_steps says)."""
    import hypo.checkpoint as ckpt

    written = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda out, step, *a, **k: written.append(step) or
                        real(out, step, *a, **k))
    run_steps(base_config, tmp_path, "no-with-steps", save_strategy="no", save_steps=3)
    assert written == []
    run_steps(base_config, tmp_path, "epoch-once", save_strategy="epoch", save_steps=3)
    assert written == [2, 3, 5]  # step 5 ends a pass: written once, not again as the final step


@pytest.mark.parametrize("value", ["x", ["attn_implementation"]])
def test_model_init_kwargs_not_a_mapping_is_named(value):
    """Not a bare ValueError/TypeError from dict(): the field and the fix are named."""
    from hypo import DPOConfig

    with pytest.raises(ConfigError, match="model_init_kwargs.*must be a mapping"):
        DPOConfig("out", model_name_or_path="m", dataset_name="d", model_init_kwargs=value).validate()
