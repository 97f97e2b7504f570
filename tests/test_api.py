"""The TRL-shaped Python API (hypo.HyPOTrainer) on in-memory objects: a tiny model built in
memory, datasets.Dataset / lists of dicts, LoRA via peft_config, callbacks, resume."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hypo.tiny import WORDS, build_model, build_tokenizer, synthetic_preferences

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def objects():
    """(tokenizer, records, make_model): a fresh, identical model object on every call."""
    torch.set_num_threads(1)
    records = synthetic_preferences(40, seed=0)
    corpus = [r["prompt"] + r["chosen"] for r in records] + [r["rejected"] for r in records]
    tokenizer = build_tokenizer(corpus + [" ".join(WORDS)] * 4)
    return tokenizer, records, lambda seed=0: build_model(tokenizer, hidden_size=32, seed=seed)


@pytest.fixture
def config(tmp_path):
    from hypo import HyPOConfig

    def make(**overrides):
        values = dict(output_dir=str(tmp_path / "out"), ref_cache_dir=str(tmp_path / "cache"),
                      learning_rate=1e-2, per_device_train_batch_size=4, max_steps=4,
                      max_new_tokens=6, max_length=48, max_prompt_length=24, save_steps=0,
                      report_to="none", disable_progress_bar=True, eval_online_prompts=0, seed=0,
                      # hypo's CLI habits rather than TRL's defaults, for these tests
                      eval_strategy="steps", eval_steps=0, logging_steps=1,
                      gradient_checkpointing=False, precompute_ref_log_probs=True)
        values.update(overrides)
        return HyPOConfig(**values)

    return make


def test_exports_and_dpo_spelling_without_importing_torch_for_the_config():
    from hypo import DPOConfig, DPOTrainer, HyPOConfig, HyPOTrainer
    from hypo.config import TrainConfig

    assert issubclass(HyPOConfig, TrainConfig) and issubclass(DPOTrainer, HyPOTrainer)
    assert DPOConfig().algo == "dpo" and HyPOConfig().algo == "hypo"
    assert DPOConfig("out").output_dir == "out"  # TRL's positional output_dir
    code = "import sys, hypo.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


from transformers import TrainerCallback  # noqa: E402


class Recorder(TrainerCallback):
    """Records logs, evaluations and saves; stops training once `stop_at` steps are done."""

    def __init__(self, stop_at=None):
        self.stop_at, self.steps, self.evals, self.saves = stop_at, [], [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.steps.append((state.global_step, logs["loss"]))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at:
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evals.append((state.global_step, metrics))

    def on_save(self, args, state, control, **kwargs):
        self.saves.append(f"checkpoint-{state.global_step}")


def test_lora_on_a_dataset_with_callbacks_stopping_early(objects, config):
    from datasets import Dataset
    from peft import LoraConfig

    from hypo import HyPOTrainer

    tokenizer, records, make_model = objects
    model = make_model()  # built in memory: no name_or_path, so the tokenizer must be passed
    recorder = Recorder(stop_at=2)
    trainer = HyPOTrainer(model=model, args=config(max_steps=6, save_steps=2, kl_coef=0.05),
                          train_dataset=Dataset.from_list(records[:32]), eval_dataset=records[32:],
                          processing_class=tokenizer, callbacks=[recorder],
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    core = trainer.core
    assert core.pair.is_peft and core.pair.reference is None  # adapter disabled, no copy
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    result = trainer.train()

    assert [s for s, _ in recorder.steps] == [1, 2] and trainer.state.global_step == 2
    assert result.global_step == 2
    assert result.training_loss == pytest.approx((recorder.steps[0][1] + recorder.steps[1][1]) / 2)
    last = [r for r in trainer.state.log_history if "loss" in r][-1]
    for key in ("rewards/margins", "logps/chosen", "kl/online"):
        assert key in last, key
    # One evaluation at the (early) end, reported to the callback and the history.
    assert [(s, "eval_loss" in m) for s, m in recorder.evals] == [(2, True)]
    assert recorder.saves == ["checkpoint-2"]
    assert [r["step"] for r in trainer.state.log_history if "loss" in r] == [1, 2]
    assert any("eval_loss" in r for r in trainer.state.log_history)
    for n, p in trainer.model.named_parameters():  # only the adapter trained
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    out = Path(trainer.args.output_dir)
    assert (out / "adapter_config.json").exists() and (out / "tokenizer.json").exists()
    assert trainer.args.dataset_name == "<train_dataset>"  # the label in configs and errors


def test_bad_input_errors_name_the_record_and_field_and_never_print_the_model(objects, config):
    from hypo import ConfigError, DataError, HyPOConfig, HyPOTrainer

    tokenizer, records, make_model = objects
    model = make_model()
    bad = [dict(r) for r in records[:6]]
    del bad[3]["rejected"]
    with pytest.raises(DataError, match=r"^<train_dataset>: record 3: field 'rejected': is missing"):
        HyPOTrainer(model=model, args=config(), train_dataset=bad, processing_class=tokenizer)
    bad_eval = [dict(r) for r in records[:3]]
    bad_eval[1]["chosen"] = "  "
    with pytest.raises(DataError, match=r"^<eval_dataset>: record 1: field 'chosen': is empty"):
        HyPOTrainer(model=model, args=config(), train_dataset=records, eval_dataset=bad_eval,
                    processing_class=tokenizer)

    with pytest.raises(ConfigError) as err:  # no name_or_path to find its tokenizer from
        HyPOTrainer(model=model, args=config(), train_dataset=records)
    assert "LlamaForCausalLM object" in str(err.value) and "processing_class" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a model object put where a path belongs
        HyPOTrainer(args=HyPOConfig(model_name_or_path=model), train_dataset=records)
    message = str(err.value)
    assert "args.model_name_or_path is a LlamaForCausalLM" in message and "model=" in message
    assert "LlamaForCausalLM(" not in message and len(message) < 300  # the model is not printed
    with pytest.raises(ConfigError, match="data_collator"):
        HyPOTrainer(model=model, args=config(), train_dataset=records, processing_class=tokenizer,
                    data_collator=object())
    with pytest.raises(DataError, match=r"<train_dataset>: a set is not supported"):
        HyPOTrainer(model=model, args=config(), train_dataset={1, 2}, processing_class=tokenizer)


def test_model_object_resume_equals_an_uninterrupted_run(objects, config, tmp_path):
    """4 steps in one go vs 2 steps (stopped by a callback) + resume for 2 more: same weights."""
    from hypo import HyPOTrainer

    tokenizer, records, make_model = objects

    def run(name, callbacks=(), resume=None):
        trainer = HyPOTrainer(model=make_model(), args=config(output_dir=str(tmp_path / name),
                                                              save_steps=2, lr_scheduler_type="constant"),
                              train_dataset=records, processing_class=tokenizer,
                              callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run("whole")
    assert whole.core.pair.reference is not None  # full fine-tuning of HyPO: one frozen copy
    run("split", [Recorder(stop_at=2)])
    resumed = run("split", resume=True)
    # The reference cache is keyed by the weights' content: in-memory models reuse it too.
    assert resumed.core.data.report["ref_cache_train"] == "reused"
    assert resumed.state.global_step == 4
    assert [r["step"] for r in resumed.state.log_history if "loss" in r] == [1, 2, 3, 4]
    for (n, p), (_, q) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n


def test_given_ref_model_is_used_frozen_and_keys_the_reference_cache(objects, config):
    from hypo import DPOTrainer

    tokenizer, records, make_model = objects
    plain = DPOTrainer(model=make_model(), args=config(algo="dpo"), train_dataset=records,
                       processing_class=tokenizer)
    assert plain.core.pair.reference is None  # DPO with the cache needs no live reference

    ref = make_model(seed=1)
    other = DPOTrainer(make_model(), ref, config(algo="dpo"),  # TRL's positional order
                       train_dataset=records, processing_class=tokenizer)
    assert other.core.pair.reference is ref  # used as given, not copied
    assert not any(p.requires_grad for p in ref.parameters())
    # Same policy weights as `plain`, another reference: a new cache entry, other log-probs.
    assert other.core.data.report["ref_cache_train"] == "computed"
    assert not torch.allclose(other.core.ref_train, plain.core.ref_train)


def test_paths_only_trains_exactly_like_the_trainer(base_config, tiny):
    from hypo import HyPOTrainer
    from hypo.trainer import Trainer

    params = []
    for name in ("api", "core"):
        cfg = base_config(algo="hypo", max_steps=2, output_dir=base_config().output_dir + name)
        trainer = HyPOTrainer(args=cfg) if name == "api" else Trainer(cfg)
        result = trainer.train()
        params.append([p.detach().clone() for p in trainer.model.parameters()])
    assert result.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(*params))
    # A path given as an argument lands in the config (TRL's model="path").
    trainer = HyPOTrainer(model=str(tiny["model"]), args=base_config(model_name_or_path=None),
                          train_dataset=Path(tiny["data"]))
    assert trainer.args.model_name_or_path == str(tiny["model"])
    assert trainer.args.dataset_name == str(tiny["data"])


def test_docs_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYPO_CACHE", str(tmp_path / "cache"))
    namespace = {"__name__": "docs_example"}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)
    assert (tmp_path / "hypo-api-demo" / "adapter_config.json").exists()
    assert os.path.isdir(tmp_path / "hypo-api-demo")


def test_a_folder_holding_a_run_is_refused_at_train_unless_resumed(objects, config, tmp_path):
    """TRL's flow names resume only in train(): the output_dir check waits for it, and still
    refuses to overwrite a run that is not resumed."""
    from hypo import DPOTrainer
    from hypo.config import ConfigError

    tokenizer, records, make_model = objects
    args = dict(output_dir=str(tmp_path / "run"), save_steps=2, max_steps=2, algo="dpo")
    DPOTrainer(model=make_model(), args=config(**args), train_dataset=records,
                processing_class=tokenizer).train()
    again = DPOTrainer(model=make_model(), args=config(**args), train_dataset=records,
                        processing_class=tokenizer)
    with pytest.raises(ConfigError, match="already holds a run"):
        again.train()
    assert (tmp_path / "run" / "checkpoint-2").is_dir()


def test_gguf_file_alone_names_the_model(base_config, tiny, tmp_path, monkeypatch):
    """args with gguf_file and no model_name_or_path (as `hypo train --gguf_file NAME`) train
    through the API too, from the converted folder, and the model card names the GGUF."""
    import hypo.gguf
    from hypo import DPOTrainer

    calls = []
    monkeypatch.setattr(hypo.gguf, "model_folder",
                        lambda model, gguf: calls.append((model, gguf)) or str(tiny["model"]))
    args = base_config(model_name_or_path=None, gguf_file="some-model.gguf", algo="dpo", max_steps=1,
                       output_dir=str(tmp_path / "gguf-run"))
    DPOTrainer(args=args).train()
    assert calls and all(c == (None, "some-model.gguf") for c in calls)
    card = (tmp_path / "gguf-run" / "README.md").read_text()
    assert "some-model.gguf" in card and "`None`" not in card


def test_save_model_before_training_refuses_another_runs_folder(objects, config, tmp_path):
    from hypo import DPOTrainer
    from hypo.config import ConfigError

    tokenizer, records, make_model = objects
    args = dict(output_dir=str(tmp_path / "run"), max_steps=1, algo="dpo")
    DPOTrainer(model=make_model(), args=config(**args), train_dataset=records,
                processing_class=tokenizer).train()
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    fresh = DPOTrainer(model=make_model(), args=config(**args), train_dataset=records,
                        processing_class=tokenizer)
    with pytest.raises(ConfigError, match="already holds a run"):
        fresh.save_model()
    fresh.save_model(tmp_path / "elsewhere")  # an empty folder is fine
    assert (tmp_path / "elsewhere" / "config.json").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
