"""What a TRL user relies on, in TRL's test style: a tiny local model, train, then check that the
parameters changed, the metrics were logged and the attributes exist. Written for hypo (the
measurement against TRL's own test file is kept outside the repository)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")
from transformers import (EarlyStoppingCallback, PrinterCallback,  # noqa: E402
                          TrainerCallback)
from transformers.trainer_utils import TrainOutput  # noqa: E402

from hypo import ConfigError, DPOConfig, DPOTrainer, HyPOConfig, HyPOTrainer  # noqa: E402
from hypo.tiny import WORDS, build_model, build_tokenizer, synthetic_preferences  # noqa: E402

TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|system|>tools:' + (tools | tojson) + eos_token }}{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{% if chat_style is defined and chat_style %}{{ '[styled]' }}{% endif %}"
    "{{ m['content'] }}{% if m.tool_calls %}{{ 'call:' + (m.tool_calls | tojson) }}{% endif %}"
    "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Llama-style model folder (with tokenizer) and records, like TRL's tiny test models."""
    torch.set_num_threads(1)
    records = synthetic_preferences(24, seed=0)
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in records]
                                + [" ".join(WORDS)] * 4)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    build_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), records


def args(tmp_path, cls=DPOConfig, **kw):
    values = dict(learning_rate=0.1, max_steps=3, per_device_train_batch_size=4, max_length=32,
                  gradient_checkpointing=False, disable_progress_bar=True,
                  ref_cache_dir=str(tmp_path / "cache"))
    values.update(kw)
    return cls(str(tmp_path / "out"), **values)


def snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def assert_trained(trainer, before):
    assert trainer.state.log_history[-1]["train_loss"] is not None
    changed = [n for n, p in before.items() if not torch.equal(p, trainer.model.get_parameter(n))]
    assert changed, "no parameter changed"


# ---- training ------------------------------------------------------------------------------------

def test_train_from_a_path(tiny_model, tmp_path):
    model, records = tiny_model
    trainer = DPOTrainer(model=model, args=args(tmp_path), train_dataset=datasets.Dataset.from_list(records))
    before = snapshot(trainer)
    output = trainer.train()
    assert isinstance(output, TrainOutput) and output.global_step == 3
    assert set(output.metrics) >= {"train_runtime", "train_samples_per_second", "train_loss", "epoch"}
    assert output.training_loss == output.metrics["train_loss"] == trainer.state.log_history[-1]["train_loss"]
    assert_trained(trainer, before)
    # TRL's attributes
    assert trainer.ref_model is not None  # full fine-tuning, live reference: TRL's default
    assert trainer.accelerator is trainer.core.acc and trainer.is_world_process_zero()
    assert trainer.processing_class is not None and trainer.optimizer is not None
    assert "prompt_ids" in trainer.train_dataset[0] and trainer.eval_dataset is None
    for tag in ("trl", "dpo"):
        assert tag in trainer.model.model_tags


@pytest.mark.parametrize("loss_type", ["hinge", "exo_pair", "robust", "bco_pair", "sppo_hard", "aot",
                                       "apo_zero", "discopop", "sft", "sigmoid_norm"])
def test_loss_types_train_with_hypo_kl(tiny_model, tmp_path, loss_type):
    """Each TRL loss type trains, with HyPO's online KL term on top (kl_coef > 0)."""
    model, records = tiny_model
    cfg = args(tmp_path, HyPOConfig, loss_type=loss_type, kl_coef=0.1, max_new_tokens=4,
               label_smoothing=1e-3 if loss_type == "exo_pair" else 0.0, max_steps=2)
    trainer = HyPOTrainer(model=model, args=cfg, train_dataset=records)
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, before)
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert rows and "kl/online" in rows[-1] and "rewards/margins" in rows[-1]


@pytest.mark.parametrize("settings", [
    {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    {"use_weighting": True}, {"ld_alpha": 0.5}, {"rpo_alpha": 0.5},
    {"f_divergence_type": "alpha_divergence"}, {"f_divergence_type": "js_divergence"}], ids=str)
def test_dpo_variants_train(tiny_model, tmp_path, settings):
    model, records = tiny_model
    trainer = DPOTrainer(model=model, args=args(tmp_path, **settings), train_dataset=records)
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, before)


def test_ld_alpha_one_is_plain_dpo(tiny_model, tmp_path):
    """ld_alpha = 1 weighs every token fully: the shared-prefix forward changes nothing (up to the
    rounding of α·a + (1 − α)·b with α = 1, which is exact)."""
    model, records = tiny_model
    losses = []
    for name, extra in (("plain", {}), ("ld", {"ld_alpha": 1.0})):
        trainer = DPOTrainer(model=model, args=args(tmp_path / name, max_steps=1, **extra),
                             train_dataset=records)
        losses.append(trainer.train().training_loss)
    assert losses[0] == losses[1]


def test_sync_ref_model_moves_the_reference(tiny_model, tmp_path):
    model, records = tiny_model
    trainer = DPOTrainer(model=model, args=args(tmp_path, sync_ref_model=True, ref_model_sync_steps=2),
                         train_dataset=records)
    assert trainer.ref_model is not None
    ref_before = {n: p.clone() for n, p in trainer.ref_model.named_parameters()}
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, before)
    moved = [n for n, p in trainer.ref_model.named_parameters() if not torch.equal(p, ref_before[n])]
    assert len(moved) == len(ref_before)
    with pytest.raises(ConfigError, match="sync_ref_model.*stale"):
        DPOTrainer(model=model, args=args(tmp_path, sync_ref_model=True, precompute_ref_log_probs=True),
                   train_dataset=records)


def test_explicit_ref_model_stays_fixed(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model, records = tiny_model
    ref = AutoModelForCausalLM.from_pretrained(model)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args(tmp_path), train_dataset=records)
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, before)
    for n, p in before.items():
        torch.testing.assert_close(trainer.ref_model.get_parameter(n), p, rtol=0, atol=0)


def test_peft_config_trains_the_adapter_and_records_it(tiny_model, tmp_path):
    from peft import LoraConfig

    model, records = tiny_model
    trainer = DPOTrainer(model=model, args=args(tmp_path, learning_rate=0.5), train_dataset=records,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    base = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, before)
    assert all(torch.equal(p, trainer.model.get_parameter(n)) for n, p in base.items())
    saved = json.loads((Path(trainer.args.output_dir) / "hypo_config.json").read_text())
    assert (saved["lora_r"], saved["lora_alpha"], saved["lora_target_modules"]) == (4, 8, "q_proj,v_proj")
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert "| lora_r | 4 |" in card and "| lora_alpha | 8 |" in card
    assert "trl" in trainer.model.model_tags


def test_a_second_trainer_on_the_same_model_object_is_refused(tiny_model, tmp_path):
    """A re-run notebook cell: injecting LoRA twice left the first trainer training nothing."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    model, records = tiny_model
    obj = AutoModelForCausalLM.from_pretrained(model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    first = DPOTrainer(model=obj, args=args(tmp_path / "a"), train_dataset=records, peft_config=lora)
    with pytest.raises(ConfigError, match="already carries LoRA layers.*Load the model afresh"):
        DPOTrainer(model=obj, args=args(tmp_path / "b"), train_dataset=records, peft_config=lora)
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                losses.append(logs["loss"])

    first.add_callback(Losses)
    first.args.logging_steps = 1
    first.train()
    assert len(set(round(v, 6) for v in losses)) > 1  # it trains (was 0.693147 every step)


def test_model_dtype_from_model_init_kwargs(tiny_model, tmp_path):
    model, records = tiny_model
    trainer = DPOTrainer(model=model, args=args(tmp_path, model_init_kwargs={"dtype": torch.float16}),
                         train_dataset=records)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float16}
    assert trainer.args.dtype == "float16" and trainer.args.model_init_kwargs is None


def test_iterable_dataset_and_train_called_twice(tiny_model, tmp_path):
    model, records = tiny_model
    stream = datasets.Dataset.from_list(records).to_iterable_dataset()
    trainer = DPOTrainer(model=model, args=args(tmp_path, max_steps=2), train_dataset=stream)
    assert len(trainer.train_dataset) == 8  # max_steps × batch: what training uses
    before = snapshot(trainer)
    assert trainer.train().global_step == 2
    middle = snapshot(trainer)
    second = trainer.train()  # continues from the current weights, as transformers does
    assert second.global_step == 4 and trainer.state.global_step == 4
    assert any(not torch.equal(p, middle[n]) for n, p in snapshot(trainer).items())
    assert any(not torch.equal(p, before[n]) for n, p in middle.items())
    with pytest.raises(ConfigError, match="max_steps"):
        DPOTrainer(model=model, args=args(tmp_path, max_steps=-1), train_dataset=stream)
    with pytest.raises(ConfigError, match="precompute_ref_log_probs.*IterableDataset"):
        DPOTrainer(model=model, args=args(tmp_path, precompute_ref_log_probs=True), train_dataset=stream)


def test_tool_calls_tools_and_chat_template_kwargs_reach_the_template(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    model, _ = tiny_model
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = TOOLS_TEMPLATE
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    rows = [{"prompt": [{"role": "user", "content": f"add {i}"},
                        {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "content": "3"}],
             "chosen": [{"role": "assistant", "content": "three"}],
             "rejected": [{"role": "assistant", "content": "seven"}],
             "tools": json.dumps(tools), "chat_template_kwargs": {"chat_style": bool(i % 2)}}
            for i in range(8)]
    trainer = DPOTrainer(model=model, args=args(tmp_path, max_length=512), train_dataset=rows,
                         processing_class=tokenizer)
    prompts = [tokenizer.decode(r["prompt_ids"]) for r in trainer.train_dataset]
    assert all("tools:" in p and "call:" in p and "<|tool|>" in p for p in prompts), prompts[0]
    assert ["[styled]" in p for p in prompts] == [bool(i % 2) for i in range(8)]
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, before)


def test_keep_start_drops_pairs_whose_prompt_fills_max_length(tiny_model, tmp_path):
    model, _ = tiny_model
    rows = [{"prompt": "Say red:", "chosen": " red", "rejected": " blue"},
            {"prompt": "Say " + "red blue " * 20 + ":", "chosen": " red", "rejected": " blue"}]
    trainer = DPOTrainer(model=model, args=args(tmp_path, max_length=12), train_dataset=rows)
    assert len(trainer.train_dataset) == 1
    assert trainer.train_dataset[0]["prompt_ids"] == trainer.processing_class("Say red:")["input_ids"]


# ---- evaluation ----------------------------------------------------------------------------------

def test_evaluate_dataset_dict_prefix_and_compute_metrics(tiny_model, tmp_path):
    model, records = tiny_model
    seen = []

    def compute_metrics(pred):
        seen.append(pred.predictions.shape)
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    evals = datasets.DatasetDict({"a": datasets.Dataset.from_list(records[:4]),
                                  "b": datasets.Dataset.from_list(records[4:8])})
    trainer = DPOTrainer(model=model, args=args(tmp_path, eval_strategy="steps", eval_steps=2),
                         train_dataset=records[8:], eval_dataset=evals, compute_metrics=compute_metrics)
    assert set(trainer.eval_dataset) == {"a", "b"} and "prompt_ids" in trainer.eval_dataset["a"][0]
    trainer.train()
    history = trainer.state.log_history
    assert "eval_a_loss" in history[-3] and "eval_b_loss" in history[-2]
    assert history[-3]["eval_a_accuracy"] == history[-3]["eval_a_rewards/accuracies"]
    assert seen[0] == (4, 2)
    metrics = trainer.evaluate(datasets.Dataset.from_list(records[:6]).to_iterable_dataset(),
                               metric_key_prefix="test")
    assert metrics["test_loss"] > 0 and "test_accuracy" in metrics
    assert "eval_a_loss" in trainer.evaluate("a")


def test_evaluate_after_training_needs_a_reference(tiny_model, tmp_path):
    model, records = tiny_model
    # No live reference: cached reference log-probs and no eval KL (which would keep a copy).
    trainer = DPOTrainer(model=model, args=args(tmp_path, precompute_ref_log_probs=True,
                                                eval_online_prompts=0),
                         train_dataset=records[4:], eval_dataset=records[:4])
    assert trainer.ref_model is None
    assert trainer.evaluate(records[:4])["eval_loss"] == pytest.approx(0.6931, abs=1e-3)  # π = π_ref
    trainer.train()
    assert trainer.evaluate()["eval_loss"] > 0  # the set given at init keeps its reference
    with pytest.raises(ConfigError, match="Cannot compute reference log-probs for a dataset passed to"):
        trainer.evaluate(records[:4])


def test_train_after_evaluate_reports_the_final_evaluation(tiny_model, tmp_path):
    """evaluate() before train() returned its step-0 eval_loss as train()'s result."""
    model, records = tiny_model
    trainer = DPOTrainer(model=model, args=args(tmp_path, eval_strategy="steps"),
                         train_dataset=records[4:], eval_dataset=records[:4])
    start = trainer.evaluate()
    output = trainer.train()
    evals = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 3]
    assert evals[-1]["eval_loss"] != start["eval_loss"]
    assert "eval_loss" not in output.metrics  # TRL's TrainOutput holds training metrics only


# ---- callbacks -----------------------------------------------------------------------------------

class Events(TrainerCallback):
    def __init__(self):
        self.names = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def record(args, state, control, **kwargs):
                assert {"model", "processing_class", "optimizer", "lr_scheduler"} <= set(kwargs)
                self.names.append(name)
                return control
            return record
        return super().__getattribute__(name)


def test_every_trainer_event_reaches_a_transformers_callback(tiny_model, tmp_path):
    model, records = tiny_model
    events = Events()
    trainer = DPOTrainer(model=model, args=args(tmp_path, gradient_accumulation_steps=2, save_steps=3,
                                                eval_strategy="steps", logging_steps=1, max_steps=3),
                         train_dataset=records[4:], eval_dataset=records[:4], callbacks=[events])
    trainer.train()
    names = events.names
    for event in ("on_init_end", "on_train_begin", "on_epoch_begin", "on_step_begin", "on_substep_end",
                  "on_pre_optimizer_step", "on_optimizer_step", "on_step_end", "on_log",
                  "on_prediction_step", "on_evaluate", "on_save", "on_epoch_end", "on_train_end"):
        assert event in names, event
    assert names[0] == "on_init_end" and names[-1] == "on_train_end"
    assert names.count("on_step_end") == 3 and names.count("on_substep_end") == 3


def test_printer_and_early_stopping_work_unchanged(tiny_model, tmp_path, capfd):
    model, records = tiny_model

    class StepWeights(TrainerCallback):  # the trainable weights after each optimizer step
        def __init__(self):
            self.trainer, self.weights = None, {}

        def on_step_end(self, args, state, control, **kwargs):
            self.weights[state.global_step] = snapshot(self.trainer)

    steps = StepWeights()
    cfg = args(tmp_path, max_steps=20, logging_steps=1, eval_strategy="steps", eval_steps=1,
               metric_for_best_model="same", load_best_model_at_end=True)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=records[4:], eval_dataset=records[:4],
                         compute_metrics=lambda pred: {"same": 1.0},
                         callbacks=[PrinterCallback, EarlyStoppingCallback(early_stopping_patience=2), steps])
    steps.trainer = trainer
    before = snapshot(trainer)
    trainer.train()
    # A metric that never improves: two evaluations after the first best stop the run, and the
    # best weights (after step 1) are put back.
    assert trainer.state.global_step == 3 and trainer.state.best_global_step == 1
    assert trainer.state.best_metric == 1.0
    assert any(not torch.equal(p, before[n]) for n, p in snapshot(trainer).items())
    assert sorted(steps.weights) == [1, 2, 3]
    final = snapshot(trainer)
    # exactly step 1's weights (a bit-exact copy back), not the last step's
    assert final.keys() == steps.weights[1].keys()
    assert all(torch.equal(p, steps.weights[1][n]) for n, p in final.items())
    assert any(not torch.equal(p, steps.weights[3][n]) for n, p in final.items())
    out = capfd.readouterr().out
    assert out.count("'loss'") == 3 and "'eval_loss'" in out
    with pytest.raises(ConfigError, match="not a transformers.TrainerCallback"):
        DPOTrainer(model=model, args=args(tmp_path), train_dataset=records, callbacks=[object()])


def test_control_flags_drive_the_loop(tiny_model, tmp_path):
    model, records = tiny_model

    class Flags(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = state.global_step == 1
            control.should_log = False
            control.should_training_stop = state.global_step == 2

    trainer = DPOTrainer(model=model, args=args(tmp_path, save_steps=0, logging_steps=1),
                         train_dataset=records, callbacks=[Flags()])
    trainer.train()
    out = Path(trainer.args.output_dir)
    assert trainer.state.global_step == 2 and (out / "checkpoint-1").is_dir()
    assert not [r for r in trainer.state.log_history if "loss" in r]


# ---- the hub ---------------------------------------------------------------------------------------

class FakeHub:
    """A local stand-in for huggingface_hub.HfApi: repos are folders under ROOT."""

    root: Path = None
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        self.calls.append(("create", repo_id, private))
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://hub.local/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None, revision=None,
                      ignore_patterns=None):
        import fnmatch
        import shutil

        self.calls.append(("upload", repo_id, commit_message))
        for path in Path(folder_path).rglob("*"):
            rel = str(path.relative_to(folder_path))
            if path.is_file() and not any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                (self.root / repo_id / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, self.root / repo_id / rel)
        return f"https://hub.local/{repo_id}/commit/1"


def test_push_to_hub_with_a_local_stand_in(tiny_model, tmp_path, monkeypatch):
    import hypo.hub

    model, records = tiny_model
    FakeHub.root, FakeHub.calls = tmp_path / "hub", []
    monkeypatch.setattr(hypo.hub, "HfApi", FakeHub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    trainer = DPOTrainer(model=model, args=args(tmp_path, push_to_hub=True, hub_model_id="me/tiny-dpo",
                                                save_steps=2), train_dataset=records)
    trainer.train()
    repo = tmp_path / "hub" / "me" / "tiny-dpo"
    assert (repo / "model.safetensors").is_file() and (repo / "tokenizer.json").is_file()
    assert not list(repo.glob("checkpoint-*"))
    card = (repo / "README.md").read_text()
    assert "- trl" in card and "- dpo" in card
    assert [c[0] for c in FakeHub.calls] == ["create", "create", "upload"]


def test_push_to_hub_refuses_in_one_line_when_the_hub_cannot_be_reached(tiny_model, tmp_path, monkeypatch):
    model, records = tiny_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        DPOTrainer(model=model, args=args(tmp_path, push_to_hub=True), train_dataset=records)
    message = str(err.value)
    assert "\n" not in message and "cannot create" in message and "HF_HUB_OFFLINE" in message


# ---- the walkthrough's bugs ----------------------------------------------------------------------

def test_positional_output_dir_with_a_model_object(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model, records = tiny_model
    monkeypatch.chdir(tmp_path)
    from transformers import AutoTokenizer

    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model),
                         args=DPOConfig("out", max_steps=1, max_length=32, disable_progress_bar=True,
                                        gradient_checkpointing=False),
                         train_dataset=records, processing_class=AutoTokenizer.from_pretrained(model))
    trainer.train()
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "hypo-output").exists()


def test_errors_from_python_name_python_settings(tiny_model, tmp_path):
    model, records = tiny_model
    DPOTrainer(model=model, args=args(tmp_path, max_steps=1), train_dataset=records).train()
    again = DPOTrainer(model=model, args=args(tmp_path, max_steps=1), train_dataset=records)
    with pytest.raises(ConfigError) as err:
        again.train()
    message = str(err.value)
    assert "overwrite_output_dir=True" in message and "resume_from_checkpoint='auto'" in message
    assert "--" not in message


def test_sigterm_says_what_happened(tiny_model, tmp_path):
    from hypo.trainer import Interrupted

    model, records = tiny_model

    class Term(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    trainer = DPOTrainer(model=model, args=args(tmp_path, save_steps=0), train_dataset=records,
                         callbacks=[Term()])
    assert threading.current_thread() is threading.main_thread()
    with pytest.raises(Interrupted) as err:
        trainer.train()
    assert err.value.code == 143
    assert "SIGTERM after step 1" in str(err.value) and "checkpoint-1" in str(err.value)
    assert "train(resume_from_checkpoint=True)" in str(err.value)


def test_cli_logs_a_line_per_logging_step_off_a_terminal_and_no_loading_bars(tiny_model, tmp_path):
    """stderr not a terminal: one plain line per logged step; --disable_progress_bar also silences
    transformers' loading bars."""
    model, records = tiny_model
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    base = [sys.executable, "-m", "hypo.cli", "train", "--model_name_or_path", model, "--dataset_name",
            str(data), "--max_steps", "4", "--logging_steps", "2", "--max_length", "32", "--algo", "dpo",
            "--report_to", "none", "--save_steps", "0", "--ref_cache_dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # test_trl_parity sets it
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src")
    run = subprocess.run(base + ["--output_dir", str(tmp_path / "a")], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    lines = [x for x in run.stderr.splitlines() if x.startswith("training ")]
    assert [x.split()[1] for x in lines] == ["2/4", "4/4"], run.stderr
    quiet = subprocess.run(base + ["--output_dir", str(tmp_path / "b"), "--disable_progress_bar"],
                           capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" in run.stderr and "Loading weights" not in quiet.stderr
    assert not [x for x in quiet.stderr.splitlines() if x.startswith("training ")]


def test_readme_links_resolve():
    import re

    root = Path(__file__).parent.parent
    text = (root / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)", text) + re.findall(r"`(\.\./[^`]+)`", text):
        if not target.startswith("http"):  # inside the repository: a clone has nothing else
            path = (root / target).resolve()
            assert path.exists() and path.is_relative_to(root.resolve()), target
