"""TRL's settings, table-driven: every field of trl.DPOConfig and transformers.TrainingArguments is
a hypo setting with TRL's meaning or an entry of hypo.trl_compat.TRL_SETTINGS (alias, ignored, or
fixed at TRL's default and refused otherwise). A field TRL adds fails here until it is placed."""

import dataclasses
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hypo.config import ConfigError, TrainConfig
from hypo.trl_compat import TRL_SETTINGS, Alias, Fixed, Ignored

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"
HYPO = {f.name for f in dataclasses.fields(TrainConfig)}
TRL_FIELDS = sorted({f.name for f in dataclasses.fields(trl.DPOConfig)}
                    | {f.name for f in dataclasses.fields(transformers.TrainingArguments)})


def test_every_trl_field_is_placed():
    unplaced = [n for n in TRL_FIELDS if n not in HYPO and n not in TRL_SETTINGS]
    assert not unplaced, f"TRL settings hypo neither implements nor tables: {unplaced}"
    both = [n for n in TRL_SETTINGS if n in HYPO]
    assert not both, f"tabled although hypo implements them: {both}"


@pytest.mark.parametrize("name", [n for n, e in TRL_SETTINGS.items() if isinstance(e, Fixed)])
def test_fixed_settings_accept_trls_default_and_refuse_the_rest(name):
    from hypo import DPOConfig

    entry = TRL_SETTINGS[name]
    DPOConfig("out", **{name: entry.value})  # TRL's default: accepted
    other = {bool: lambda v: not v, type(None): lambda v: "x", str: lambda v: "something-else",
             int: lambda v: v + 1, float: lambda v: v + 1.0, list: lambda v: ["x"]}[type(entry.value)](entry.value)
    with pytest.raises(ConfigError) as err:
        DPOConfig("out", **{name: other})
    message = str(err.value)
    assert message.startswith(f"DPOConfig: {name}=") and "not supported by hypo" in message
    assert entry.why in message and (not entry.fix or entry.fix in message)


def test_ignored_settings_accept_any_value_and_read_as_trls_default():
    from hypo import DPOConfig

    ignored = [n for n, e in TRL_SETTINGS.items() if isinstance(e, Ignored)]
    cfg = DPOConfig("out", **{n: "anything" for n in ignored})
    assert cfg.dataloader_num_workers == 0 and cfg.remove_unused_columns is True
    with pytest.raises(AttributeError, match="no setting 'not_a_setting'"):
        cfg.not_a_setting  # noqa: B018


def test_aliases_carry_their_value():
    from hypo import DPOConfig

    assert all(e.target in HYPO for e in TRL_SETTINGS.values() if isinstance(e, Alias))
    cfg = DPOConfig("out", activation_checkpointing=False, disable_tqdm=True,
                    activation_checkpointing_kwargs={"use_reentrant": True})
    assert cfg.gradient_checkpointing is False and cfg.disable_progress_bar is True
    assert cfg.gradient_checkpointing_kwargs == {"use_reentrant": True}
    with pytest.raises(ConfigError, match="keep one"):
        DPOConfig("out", activation_checkpointing=False, gradient_checkpointing=True)


def test_defaults_are_trls_where_the_concept_is_the_same():
    """Field by field against TRL's own DPOConfig() (built with use_cpu: this machine has no GPU,
    where TRL's bf16 default is refused); the differences left are the documented ones."""
    from hypo import DPOConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = DPOConfig("x"), trl.DPOConfig("x", use_cpu=True)
    differ = {}
    for f in dataclasses.fields(theirs):
        if f.name in HYPO and f.name != "use_cpu":
            a, b = getattr(ours, f.name), getattr(theirs, f.name)
            if a != b and not (f.name == "report_to" and a == "none" and b == []):
                differ[f.name] = (a, b)
    assert differ == {"bf16": (None, True)}  # None: on where the GPU has bf16 (docs)
    table = DOC.read_text().split("## Where hypo differs from TRL")[1]
    for name in ("bf16", "label_smoothing", "precompute_ref_log_probs", "truncation_mode",
                 "num_train_epochs", "logging_steps", "eval_steps", "dataloader_drop_last"):
        assert f"`{name}`" in table, name


def test_docs_table_lists_every_tabled_setting_and_no_foreign_field():
    text = DOC.read_text()
    for name in TRL_SETTINGS:
        assert f"`{name}`" in text, name
    # The comparison tables name no "TRL field" that TRL 1.16 does not have.
    trl_table = text.split("## TRL's `DPOConfig` / `TrainingArguments` fields")[1].split("\n## ")[0]
    names = set(re.findall(r"^\| `([a-z_0-9]+)`", trl_table, flags=re.M))
    assert names == set(TRL_SETTINGS), names ^ set(TRL_SETTINGS)
    implemented = trl_table.split("Implemented with TRL's meaning (same name): ")[1].split("\n")[0]
    assert set(re.findall(r"`([a-z_0-9]+)`", implemented)) == {n for n in TRL_FIELDS if n in HYPO}


def test_config_positional_output_dir_and_trl_types():
    from hypo import DPOConfig, HyPOConfig

    cfg = DPOConfig("out", loss_type="ipo", report_to=["tensorboard"],
                    model_init_kwargs={"dtype": "torch.float16", "attn_implementation": "eager",
                                       "low_cpu_mem_usage": True})
    assert cfg.output_dir == "out" and cfg.loss_type == ["ipo"] and cfg.report_to == "tensorboard"
    assert cfg.dtype == "float16" and cfg.attn_implementation == "eager"
    assert cfg.model_init_kwargs == {"low_cpu_mem_usage": True}
    assert HyPOConfig(Path("runs/a")).output_dir == "runs/a"
    with pytest.raises(ConfigError, match="only positional"):
        DPOConfig("out", 8)
    with pytest.raises(ConfigError, match="unknown setting.*lerning_rate"):
        DPOConfig("out", lerning_rate=1e-5)
    with pytest.raises(ConfigError, match="trust_remote_code.*itself"):
        DPOConfig("out", model_init_kwargs={"trust_remote_code": True})


def test_dpo_config_refuses_hypo_settings_and_trainers_check_the_algorithm(tiny, tmp_path):
    from hypo import DPOConfig, DPOTrainer, HyPOConfig, HyPOTrainer

    with pytest.raises(ConfigError, match=r"kl_coef=0.5.*Use HyPOConfig"):
        DPOConfig("out", kl_coef=0.5)
    with pytest.raises(ConfigError, match="DPOTrainer trains DPO"):
        DPOTrainer(model=str(tiny["model"]), args=HyPOConfig(tmp_path), train_dataset=str(tiny["data"]))
    with pytest.warns(UserWarning, match="it trains DPO"):
        trainer = HyPOTrainer(model=str(tiny["model"]), args=DPOConfig(tmp_path, max_length=64),
                              train_dataset=str(tiny["data"]))
    assert not trainer.core.hypo


def test_yaml_takes_trl_names_and_refuses_fixed_ones(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("activation_checkpointing: true\nremove_unused_columns: false\n"
                    "loss_type: [sigmoid, bco_pair, sft]\nloss_weights: [0.8, 0.2, 1]\n")
    cfg = TrainConfig.from_yaml(good)
    assert cfg.gradient_checkpointing and cfg.loss_type == ["sigmoid", "bco_pair", "sft"]
    assert cfg.loss_weights == [0.8, 0.2, 1.0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("torch_compile: true\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: torch_compile=True is not supported"):
        TrainConfig.from_yaml(bad)


def test_cli_lists_are_space_separated_and_trl_flags_get_hints():
    from hypo.cli import build_config, make_parser

    args = make_parser().parse_args(["train", "--model_name_or_path", "m", "--dataset_name", "d",
                                     "--lora_target_modules", "q_proj", "v_proj", "--loss_type",
                                     "sigmoid", "bco_pair", "sft", "--loss_weights", "0.8", "0.2", "1",
                                     "--report_to", "none"])
    cfg = build_config(args)
    assert cfg.lora_target_modules == "q_proj,v_proj"
    assert cfg.loss_type == ["sigmoid", "bco_pair", "sft"] and cfg.loss_weights == [0.8, 0.2, 1.0]
    args = make_parser().parse_args(["train", "--model_name_or_path", "m", "--dataset_name", "d",
                                     "--lora_target_modules", "q_proj,v_proj"])
    assert build_config(args).lora_target_modules == "q_proj,v_proj"  # commas still work
    run = subprocess.run([sys.executable, "-m", "hypo.cli", "train", "--torch_dtype", "bfloat16",
                          "--load_in_4bit", "--lr_scheduler_typ", "linear"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "--torch_dtype is TRL's name for --dtype" in run.stderr
    assert "--load_in_4bit is not supported by hypo: quantized loading" in run.stderr
    assert "unrecognized arguments" in run.stderr and "--lr_scheduler_typ" in run.stderr
