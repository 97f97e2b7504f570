"""The Python API, shaped like TRL's ``DPOTrainer``: the one entry point every front-end uses.

    from hypo import HyPOConfig, HyPOTrainer

    trainer = HyPOTrainer(model=model, args=HyPOConfig(output_dir="out", kl_coef=0.05),
                          train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    metrics = trainer.train()

``model`` / ``train_dataset`` / ``eval_dataset`` / ``prompt_dataset`` / ``processing_class`` may be
objects or paths; with paths only (``HyPOTrainer(args=cfg)``) this is exactly ``hypo train``.
Objects go through the same validation, reference cache, checkpoints, resume, signal handling and
non-finite guard as files (``trainer.Trainer`` does the work; this module only wires it up).
See docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ALGOS, ConfigError, TrainConfig, opt
from .data import records_from_object
from .runfolder import resolve_output_dir
from .tracking import read_metrics
from .trainer import Trainer

HyPOConfig = TrainConfig  # every `hypo train` option, same names (TRL's DPOConfig names where shared)


@dataclass
class DPOConfig(TrainConfig):
    """HyPOConfig with ``algo="dpo"`` by default: offline DPO, the spelling TRL users look for."""

    algo: str = opt("dpo", "Training algorithm: 'hypo' (DPO + reverse-KL penalty on online "
                    "samples, arXiv 2406.01462) or 'dpo' (offline only).", ALGOS, group="algorithm")


@dataclass
class TrainerState:
    """What callbacks and users see of a run (TRL's ``TrainerState`` names)."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    log_history: list[dict] = field(default_factory=list)  # logged rows, each with "step"
    should_training_stop: bool = False  # set it in a callback to end training after this step
    is_world_process_zero: bool = True  # only one process should write to external systems


class HyPOCallback:
    """Base class of callbacks (override any subset; plain objects with these methods work too).

    on_step_end and on_evaluate run on every process with the same (process-reduced) metrics,
    on_save on the main process only (``state.is_world_process_zero``). Set
    ``state.should_training_stop = True`` in any hook to end training after the current step:
    the final evaluation and ``save_model`` then run as at a normal end.
    """

    def on_step_end(self, trainer: "HyPOTrainer", state: TrainerState, metrics: dict) -> None:
        """After every optimizer step; ``metrics`` are the step's training metrics."""

    def on_evaluate(self, trainer: "HyPOTrainer", state: TrainerState, metrics: dict) -> None:
        """After every evaluation; ``metrics`` carry the ``eval_`` prefix."""

    def on_save(self, trainer: "HyPOTrainer", state: TrainerState, checkpoint_dir: Path) -> None:
        """After a checkpoint (``output_dir/checkpoint-N``) or the final model (``output_dir``)."""


class TrainOutput(dict):
    """``train()``'s result: the final metrics (last logged training row + last evaluation, TRL
    names, with "step"), also readable as TRL's ``TrainOutput`` (global_step, training_loss, metrics)."""

    @property
    def global_step(self) -> int:
        return self["step"]

    @property
    def training_loss(self) -> float | None:
        return self.get("train_loss")

    @property
    def metrics(self) -> dict:
        return dict(self)


# TRL DPOTrainer arguments hypo does not take, and why (raised as ConfigError, not a TypeError).
UNSUPPORTED = {
    "data_collator": "hypo tokenizes, packs and length-buckets the pairs itself",
    "compute_metrics": "evaluation reports DPO metrics and the online reverse KL; add your own "
                       "in a callback's on_evaluate",
    "optimizers": "hypo uses AdamW with a transformers schedule (learning_rate, lr_scheduler_type, "
                  "adam_* settings); their state is part of exact resume",
    "optimizer_cls_and_kwargs": "see optimizers",
    "preprocess_logits_for_metrics": "full logits are never materialised",
    "model_init": "pass the model object or its path",
    "tokenizer": "pass the tokenizer as processing_class",
}
_PATH_FIELDS = ("model_name_or_path", "tokenizer_name_or_path", "dataset_name", "eval_dataset_name",
                "prompt_dataset_name")
_ARGUMENT_OF = {"model_name_or_path": "model", "tokenizer_name_or_path": "processing_class",
                "dataset_name": "train_dataset", "eval_dataset_name": "eval_dataset",
                "prompt_dataset_name": "prompt_dataset"}


class HyPOTrainer:
    """Train a causal LM with HyPO or DPO; TRL ``DPOTrainer``'s constructor and methods.

    model: path / hub id or a ``PreTrainedModel`` (or ``PeftModel``); an object is trained in place.
    ref_model: None = the base with the adapter disabled (LoRA) or one frozen copy made only if
        needed (full fine-tuning); an object = that reference, frozen, never copied.
    args: HyPOConfig (every CLI option); copied, never modified. Arguments given here override
        its model / data / tokenizer fields.
    train_dataset / eval_dataset / prompt_dataset: a ``datasets.Dataset``, ``DatasetDict``
        (train: ``args.dataset_train_split``; eval: ``args.dataset_test_split`` or "test"), pandas DataFrame, list of dicts, or a path.
        prompt_dataset holds HyPO's online prompts (default: the prompts of the pairs).
    processing_class: the tokenizer (needed when model is an object without ``name_or_path``).
    peft_config: a peft ``LoraConfig`` (replaces args' lora_* settings).
    callbacks: HyPOCallback-like objects (on_step_end, on_evaluate, on_save).
    """

    def __init__(self, model: Any = None, ref_model: Any = None, args: TrainConfig | None = None,
                 train_dataset: Any = None, eval_dataset: Any = None, processing_class: Any = None,
                 peft_config: Any = None, callbacks: list | None = None, prompt_dataset: Any = None,
                 **unsupported: Any):
        for name in unsupported:
            why = UNSUPPORTED.get(name, "not a DPOTrainer argument hypo knows")
            raise ConfigError(f"HyPOTrainer does not take {name}= ({why}). See the TRL comparison "
                              "table in docs/python-api.md.")
        cfg = dataclasses.replace(args) if args is not None else TrainConfig()
        if isinstance(cfg.report_to, (list, tuple)):  # TRL takes a list
            cfg.report_to = ",".join(cfg.report_to) or "none"
        _check_path_fields(cfg)
        model_obj = _object_or_path(cfg, "model_name_or_path", model)
        tokenizer = _object_or_path(cfg, "tokenizer_name_or_path", processing_class)
        if model_obj is not None:
            # A label for configs, logs and resume checks; the model's own path when it has one
            # (then also the place its tokenizer and generation config come from).
            cfg.model_name_or_path = getattr(model_obj, "name_or_path", "") or \
                f"<in-memory {type(model_obj).__name__}>"
            if tokenizer is None and cfg.model_name_or_path.startswith("<in-memory"):
                raise ConfigError(f"model is a {type(model_obj).__name__} object with no name_or_path "
                                  "to load its tokenizer from: pass processing_class=<your tokenizer>.")
        if model_obj is not None and cfg.gguf_file:
            raise ConfigError(f"model is a {type(model_obj).__name__} object and args.gguf_file is "
                              "set: pass one of them (gguf_file loads the model from the GGUF file).")
        if cfg.model_name_or_path is None and not cfg.gguf_file:
            raise ConfigError("no model: pass model=<a PreTrainedModel or a path / hub id> (or set "
                              "model_name_or_path or gguf_file in args).")
        if peft_config is not None:
            if model_obj is not None and _is_peft(model_obj):
                raise ConfigError("model is already a PeftModel: drop peft_config (its adapter is "
                                  "trained as it is).")
            cfg.use_peft = True
        if ref_model is not None and (cfg.use_peft or (model_obj is not None and _is_peft(model_obj))):
            raise ConfigError("ref_model with LoRA: the reference is the base model with the adapter "
                              "disabled, so no reference model is needed; drop ref_model.")
        datasets = {}
        for key, name, value, split in (("train", "dataset_name", train_dataset, cfg.dataset_train_split),
                                        ("eval", "eval_dataset_name", eval_dataset,
                                         cfg.dataset_test_split or "test"),
                                        ("prompts", "prompt_dataset_name", prompt_dataset,
                                         cfg.dataset_train_split)):
            obj = _object_or_path(cfg, name, value)
            if obj is not None:
                label = f"<{_ARGUMENT_OF[name]}>"
                setattr(cfg, name, label)
                datasets[key] = records_from_object(obj, split, label)
        if cfg.dataset_name is None:
            raise ConfigError("no training data: pass train_dataset=<a datasets.Dataset, a list of "
                              "dicts or a file path> (or set dataset_name in args).")
        self.args = cfg
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            _check_callback(cb)
        self.state = TrainerState()
        self._loss_sum, self._loss_steps, self._resume_checked = 0.0, 0, True
        self._trained = False  # save_model() before train() must not write into another run
        self.core = _Core(self, cfg, model=model_obj, ref_model=ref_model, peft_config=peft_config,
                          processing_class=tokenizer, datasets=datasets)
        self.state.max_steps = self.core.total_steps
        self.state.is_world_process_zero = self.core.acc.is_main_process
        self.core.step_callbacks.append(self._step_end)

    # ---- TRL-shaped surface -------------------------------------------------------------------
    @property
    def model(self):
        """The trained model (unwrapped; a PeftModel with LoRA)."""
        return self.core.acc.unwrap_model(self.core.model)

    @property
    def processing_class(self):
        return self.core.data.tokenizer

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Train to max_steps / num_train_epochs; resume_from_checkpoint: a checkpoint folder,
        True / "auto" (newest in output_dir) or None (args.resume_from_checkpoint)."""
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            self.args.resume_from_checkpoint = ("auto" if resume_from_checkpoint is True
                                                else str(resume_from_checkpoint))
        self.state.should_training_stop = False
        self._trained = True
        self._resume_checked = not self.args.resume_from_checkpoint
        self._loss_sum, self._loss_steps = 0.0, 0
        self.core.train()
        self._sync_state()
        if self._loss_steps:
            self.state.log_history.append({"step": self.state.global_step,
                                           "train_loss": self._loss_sum / self._loss_steps})
        return TrainOutput(self._final_metrics())

    def evaluate(self) -> dict:
        """DPO metrics and the online reverse KL on the eval data (``eval_``-prefixed, TRL names)."""
        if not self.core.data.eval:
            raise ConfigError("no evaluation data: pass eval_dataset=... or set eval_split_size > 0 "
                              "in args.")
        return self.core.evaluate()

    def save_model(self, output_dir: str | None = None) -> None:
        """save_pretrained of the model (adapter, and merged with merge_adapter) + tokenizer + card.
        Before this trainer has trained, a folder holding another run is refused (as in train())."""
        if not self._trained:
            from .preflight import check_output_dir

            check_output_dir(dataclasses.replace(self.core.cfg, resume_from_checkpoint=None,
                                                 output_dir=str(output_dir or self.args.output_dir)))
        if output_dir is None or resolve_output_dir(output_dir) == resolve_output_dir(self.args.output_dir):
            return self.core.save_model()
        kept = self.core.cfg
        self.core.cfg = dataclasses.replace(kept, output_dir=str(output_dir))
        try:
            self.core.save_model()
        finally:
            self.core.cfg = kept

    # ---- wiring to the core trainer -----------------------------------------------------------
    def _sync_state(self) -> None:
        core = self.core
        self.state.global_step = core.step
        self.state.epoch = core.step * self.args.gradient_accumulation_steps * core.global_batch / \
            len(core.data.train)

    def _step_end(self, core: Trainer, metrics: dict) -> None:
        self._sync_state()
        if not self._resume_checked:  # first step after a resume: restore the earlier history
            self._resume_checked = True
            self._restore_history(core.step - 1)
        self._loss_sum += metrics["loss"]
        self._loss_steps += 1
        self._fire("on_step_end", dict(metrics))
        # The same rule as the loop's logging (it runs right after this callback).
        if core.step % self.args.logging_steps == 0 or core.step == core.total_steps:
            self.state.log_history.append({**metrics, "step": core.step})

    def _restore_history(self, step: int) -> None:
        """Rows up to the checkpoint's step come from output_dir/metrics.jsonl (as TRL restores
        log_history from its checkpoint)."""
        path = Path(self.args.output_dir) / "metrics.jsonl"
        earlier = [r for r in read_metrics(self.args.output_dir) if r.get("step", 0) <= step] \
            if path.exists() else []
        self.state.log_history = earlier + [r for r in self.state.log_history if r["step"] > step]

    def _on_evaluate(self, metrics: dict) -> None:
        self._sync_state()
        self.state.log_history.append({**metrics, "step": self.core.step})
        self._fire("on_evaluate", dict(metrics))

    def _on_save(self, folder) -> None:
        if folder is not None:
            self._sync_state()
            self._fire("on_save", Path(folder))

    def _fire(self, hook: str, payload: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, self.state, payload)
        if self.state.should_training_stop and self.core.step > 0:
            # The loop runs while step < total_steps: it ends after this step, then evaluates and
            # saves the final model as at a normal end (the LR schedule is not changed).
            self.core.total_steps = min(self.core.total_steps, self.core.step)

    def _final_metrics(self) -> dict:
        train = next((r for r in reversed(self.state.log_history) if "loss" in r), {})
        evals = next((r for r in reversed(self.state.log_history)
                      if any(k.startswith("eval_") for k in r)), {})
        out = {**train, **{k: v for k, v in evals.items() if k != "step"}}
        if self._loss_steps:
            out["train_loss"] = self._loss_sum / self._loss_steps
        out["step"] = self.core.step
        return out


class DPOTrainer(HyPOTrainer):
    """HyPOTrainer whose default config is ``DPOConfig()`` (offline DPO)."""

    def __init__(self, model: Any = None, ref_model: Any = None, args: TrainConfig | None = None,
                 *rest: Any, **kw: Any):
        super().__init__(model, ref_model, args if args is not None else DPOConfig(), *rest, **kw)


class _Core(Trainer):
    """The training loop, reporting evaluations and saves to its HyPOTrainer's callbacks."""

    def __init__(self, api: HyPOTrainer, cfg: TrainConfig, **objects):
        self._api = api
        # TRL's flow gives resume_from_checkpoint to train(), so output_dir is checked there.
        super().__init__(cfg, check_output=False, **objects)

    def evaluate(self) -> dict:
        metrics = super().evaluate()
        self._api._on_evaluate(metrics)
        return metrics

    def save_checkpoint(self):
        folder = super().save_checkpoint()
        self._api._on_save(folder)
        return folder

    def save_model(self) -> None:
        super().save_model()
        if self.acc.is_main_process:
            self._api._on_save(self.cfg.output_dir)


# ---- helpers ------------------------------------------------------------------------------------

def _check_path_fields(cfg: TrainConfig) -> None:
    """A config's path fields hold paths; objects there get an error that names the argument
    (and never prints the object)."""
    for name in _PATH_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, os.PathLike):
            setattr(cfg, name, str(value))
        elif value is not None and not isinstance(value, str):
            raise ConfigError(f"args.{name} is a {type(value).__name__}, not a path or hub id: pass "
                              f"the object as HyPOTrainer({_ARGUMENT_OF[name]}=...) instead.")


def _object_or_path(cfg: TrainConfig, name: str, value: Any) -> Any:
    """A path argument goes into cfg.<name>; an object is returned (None for a path / None)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        setattr(cfg, name, str(value))
        return None
    return value


def _is_peft(model: Any) -> bool:
    from .modeling import _is_peft as is_peft

    return is_peft(model)


def _check_callback(cb: Any) -> None:
    hooks = ("on_step_end", "on_evaluate", "on_save")
    from_transformers = any(c.__module__.startswith("transformers") for c in type(cb).__mro__)
    if from_transformers or not any(hasattr(cb, h) for h in hooks):
        raise ConfigError(f"callback {type(cb).__name__} is not a hypo callback: subclass "
                          "hypo.HyPOCallback and implement on_step_end / on_evaluate / on_save "
                          "(trainer, state, metrics-or-folder). transformers TrainerCallbacks "
                          "(args, state, control) are not supported.")
