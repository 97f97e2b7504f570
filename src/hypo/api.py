"""The Python API, shaped like TRL's ``DPOTrainer``: the one entry point every front-end uses.

    from hypo import DPOConfig, DPOTrainer          # or HyPOConfig / HyPOTrainer

    trainer = DPOTrainer(model=model, args=DPOConfig("out", learning_rate=5e-7),
                         train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                         callbacks=[transformers.PrinterCallback])
    output = trainer.train()                        # transformers' TrainOutput

TRL's names, defaults, signatures and return types; callbacks are transformers' TrainerCallbacks
(``hypo.callbacks``). The loop itself is hypo's (``trainer.Trainer``: accelerate, exact resume,
the reference cache, online sampling); this module adapts TRL's and transformers' conventions onto
it. ``hypo train`` goes through here too. See docs/python-api.md.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig
from .data import records_from_object
from .runfolder import resolve_output_dir
from .trl_compat import translate

# ---- configs ------------------------------------------------------------------------------------


def _tuned(name: str, default: Any):
    """TrainConfig's field ``name`` (help, choices) with another default: TRL's."""
    meta = TrainConfig.__dataclass_fields__[name].metadata
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class HyPOConfig(TrainConfig):
    """Every hypo setting, with TRL 1.16 DPOConfig's defaults where the concept is the same
    (the remaining differences are tabled in docs/python-api.md). ``output_dir`` is the first
    positional argument; TRL settings hypo fixes or ignores are accepted at TRL's values and
    refused otherwise, with the reason (``hypo.trl_compat``)."""

    output_dir: str = _tuned("output_dir", "trainer_output")
    num_train_epochs: float = _tuned("num_train_epochs", 3.0)
    logging_steps: int = _tuned("logging_steps", 10)
    gradient_checkpointing: bool = _tuned("gradient_checkpointing", True)
    bf16: bool | None = _tuned("bf16", None)
    eval_strategy: str = _tuned("eval_strategy", "no")
    eval_steps: int | None = _tuned("eval_steps", None)
    save_total_limit: int | None = _tuned("save_total_limit", None)
    precompute_ref_log_probs: bool = _tuned("precompute_ref_log_probs", False)
    optim: str = _tuned("optim", "adamw_torch_fused")
    report_to: str | list[str] = _tuned("report_to", "none")
    truncation_mode: str = _tuned("truncation_mode", "keep_start")


# Settings of HyPO's online term: a DPOConfig that sets them trains nothing different, so it is
# refused rather than silently ignored.
HYPO_ONLY = ("kl_coef", "kl_estimator", "kl_coef_schedule", "kl_coef_final", "kl_target",
             "kl_target_rate", "online_prompts_per_step", "generation_backend",
             "vllm_gpu_memory_utilization", "log_online_samples", "prompt_dataset_name")


@dataclass
class DPOConfig(HyPOConfig):
    """HyPOConfig for offline DPO (``algo="dpo"``): the spelling TRL users look for."""

    algo: str = _tuned("algo", "dpo")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algo != "dpo":
            raise ConfigError(f"DPOConfig(algo={self.algo!r}): a DPOConfig trains DPO; for HyPO use "
                              "HyPOConfig (and HyPOTrainer).")
        fields = type(self).__dataclass_fields__
        changed = [n for n in HYPO_ONLY if getattr(self, n) != fields[n].default]
        if changed:
            raise ConfigError(f"DPOConfig sets {', '.join(f'{n}={getattr(self, n)!r}' for n in changed)}, "
                              "HyPO's online-KL setting(s), which DPO does not use. Use HyPOConfig "
                              "with HyPOTrainer to train HyPO, or drop them.")


def _positional_output_dir(cls):
    """TRL's signature: ``Config(output_dir, **settings)``; TRL names translated or refused."""
    generated = cls.__init__
    known = set(cls.__dataclass_fields__)

    def __init__(self, output_dir: str | os.PathLike | None = None, *more, **settings):
        if more:
            raise ConfigError(f"{cls.__name__} takes output_dir as its only positional argument; "
                              "pass the other settings by name.")
        settings = translate(settings, cls.__name__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}: neither a "
                              "hypo setting nor a TRL DPOConfig / TrainingArguments one (see the "
                              "tables in docs/python-api.md).")
        if output_dir is not None:
            if settings.get("output_dir", output_dir) != output_dir:
                raise ConfigError(f"{cls.__name__}: output_dir given twice ({output_dir!r} and "
                                  f"{settings['output_dir']!r}).")
            settings["output_dir"] = os.fspath(output_dir)
        generated(self, **settings)

    __init__.__doc__ = generated.__doc__
    cls.__init__ = __init__
    return cls


_positional_output_dir(HyPOConfig)
_positional_output_dir(DPOConfig)

# ---- error wording ------------------------------------------------------------------------------

# Errors are written for the command line ("--overwrite_output_dir"); from Python they name the
# setting as a Python user writes it. The CLI sets this to "cli".
FRONT_END = contextvars.ContextVar("hypo_front_end", default="python")
_FLAG = re.compile(r"--([a-z][a-z0-9_]*)(?: (auto|true|false|float32|bfloat16|float16|\d[\w.+-]*))?")


def python_wording(message: str) -> str:
    """'--overwrite_output_dir' -> 'overwrite_output_dir=True', '--resume_from_checkpoint auto' ->
    "resume_from_checkpoint='auto'", for hypo's own settings only."""
    known = TrainConfig.__dataclass_fields__

    def sub(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in known:
            return match.group(0)
        if "bool" in str(known[name].type) and value in (None, "true"):
            return f"{name}=True"
        if value is None:
            return name
        return f"{name}={value!r}" if not value[0].isdigit() else f"{name}={value}"

    return _FLAG.sub(sub, message)


def _python_errors(method):
    """Re-word hypo's errors for Python callers (same exception, message rewritten)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        from .checkpoint import CheckpointError
        from .data import DataError

        try:
            return method(*args, **kwargs)
        except (ConfigError, DataError, CheckpointError) as err:
            if FRONT_END.get() != "cli" and err.args and isinstance(err.args[0], str):
                err.args = (python_wording(err.args[0]), *err.args[1:])
            raise

    return wrapper


# ---- the trainer --------------------------------------------------------------------------------

# TRL DPOTrainer arguments hypo does not take, and why (ConfigError, not a TypeError).
UNSUPPORTED = {
    "data_collator": "hypo tokenizes, packs and length-buckets the pairs itself",
    "optimizers": "hypo builds AdamW (learning_rate, adam_*, weight_decay, optim) and a transformers "
                  "schedule (lr_scheduler_type, lr_scheduler_kwargs); their state is part of exact "
                  "resume",
    "optimizer_cls_and_kwargs": "see optimizers",
    "preprocess_logits_for_metrics": "full logits are never built; compute_metrics receives the "
                                     "per-pair rewards",
    "quantization_config": "quantized loading is not supported yet; load the quantized model "
                           "yourself and pass it as model=",
    "model_init": "pass the model object or its path as model=",
    "tokenizer": "pass the tokenizer as processing_class=",
}
_PATH_FIELDS = ("model_name_or_path", "tokenizer_name_or_path", "dataset_name", "eval_dataset_name",
                "prompt_dataset_name")
_ARGUMENT_OF = {"model_name_or_path": "model", "tokenizer_name_or_path": "processing_class",
                "dataset_name": "train_dataset", "eval_dataset_name": "eval_dataset",
                "prompt_dataset_name": "prompt_dataset"}
_DICTS = ("dict", "DatasetDict", "IterableDatasetDict")


class HyPOTrainer:
    """Train a causal LM with HyPO (or DPO); TRL ``DPOTrainer``'s constructor, methods and
    attributes.

    model: path / hub id, ``PreTrainedModel`` or ``PeftModel``; an object is trained in place.
    ref_model: None = the base with the adapter disabled (LoRA), or one frozen copy made only when
        something needs it live (full fine-tuning); an object = that reference, frozen, not copied.
    args: HyPOConfig / DPOConfig (every CLI option); copied, never modified. None: TRL's default
        config with output_dir "<model name>-HyPO" ("-DPO").
    train_dataset: ``datasets.Dataset``, ``IterableDataset`` (with max_steps), ``DatasetDict``
        (its ``args.dataset_train_split``), pandas DataFrame, list of dicts, or a path.
    eval_dataset: the same, or a dict / DatasetDict of named sets (metrics ``eval_<name>_*``).
    processing_class: the tokenizer. compute_metrics: callable(EvalPrediction) -> dict, where
        predictions are the per-pair implicit rewards [chosen, rejected] and label_ids are 0.
    callbacks: transformers ``TrainerCallback`` instances or classes.
    peft_config: a peft ``LoraConfig`` (its settings are recorded in the run's config).
    prompt_dataset: HyPO's online prompts (default: the prompts of the pairs).
    """

    _tag_names = ["trl", "hypo"]
    _name = "HyPO"
    aux_loss_enabled = False  # TRL's flag of the MoE load-balancing loss, which hypo does not add

    @_python_errors
    def __init__(self, model: Any = None, ref_model: Any = None, args: TrainConfig | None = None,
                 data_collator: Any = None, train_dataset: Any = None, eval_dataset: Any = None,
                 processing_class: Any = None, compute_metrics=None, callbacks: list | None = None,
                 optimizers: tuple = (None, None), quantization_config: Any = None,
                 peft_config: Any = None, *, prompt_dataset: Any = None, **unsupported: Any):
        given = dict(unsupported, data_collator=data_collator, quantization_config=quantization_config,
                     optimizers=None if tuple(optimizers or (None, None)) == (None, None) else optimizers)
        for name, value in given.items():
            if value is not None or name not in UNSUPPORTED:
                why = UNSUPPORTED.get(name, "not a DPOTrainer argument hypo knows")
                raise ConfigError(f"{type(self).__name__} does not take {name}= ({why}). See the TRL "
                                  "comparison tables in docs/python-api.md.")
        if args is None:
            args = self._config_class()(f"{_model_name(model)}-{self._name}")
        if not isinstance(args, TrainConfig):
            raise ConfigError(f"args is a {type(args).__name__}: pass a hypo.{self._name}Config (TRL's "
                              "setting names; hypo.DPOConfig for DPO).")
        cfg = dataclasses.replace(args)
        self._check_algo(cfg)
        if cfg.padding_free:  # TRL 1.16 also falls back (its padding-free path is disabled)
            warnings.warn("padding_free=True: hypo runs each micro-batch as length buckets, each "
                          "padded only to its own longest row (length_buckets), as TRL 1.16 falls "
                          "back to padding; the results are the same.", UserWarning, stacklevel=3)
        _resolve_bf16(cfg)
        if cfg.disable_progress_bar:
            _quiet_loading_bars()
        _check_path_fields(cfg)
        model_obj = _object_or_path(cfg, "model_name_or_path", model)
        tokenizer = _object_or_path(cfg, "tokenizer_name_or_path", processing_class)
        self._label_model(cfg, model_obj, tokenizer, peft_config, ref_model)
        datasets, named_evals = self._datasets(cfg, train_dataset, eval_dataset, prompt_dataset)
        from .trainer import Trainer

        self.args = cfg
        self.core = Trainer(cfg, model=model_obj, ref_model=ref_model, peft_config=peft_config,
                            processing_class=tokenizer, datasets=datasets, check_output=False,
                            callbacks=callbacks, compute_metrics=compute_metrics)
        self._trained = False  # save_model() before train() must not write into another run
        self._eval_given = eval_dataset
        for name, records in named_evals.items():
            pairs = self._tokenized(records)
            self.core.eval_sets[name] = (pairs, self.core._pair_reference(pairs, f"eval:{name}"))
        self._record_peft()
        self.model.add_model_tags(self._tag_names)
        if cfg.push_to_hub and self.core.acc.is_main_process:
            from .hub import create_repo

            create_repo(self._hub_repo(), cfg.hub_private_repo, folder=None)

    @classmethod
    def _config_class(cls):
        return HyPOConfig

    def _check_algo(self, cfg: TrainConfig) -> None:
        if cfg.algo == "dpo":
            warnings.warn("HyPOTrainer got a config with algo='dpo' (a DPOConfig?): it trains DPO, "
                          "offline only. Use HyPOConfig to train HyPO, or DPOTrainer to say DPO.",
                          UserWarning, stacklevel=4)

    # ---- set-up helpers ------------------------------------------------------------------------
    def _label_model(self, cfg, model_obj, tokenizer, peft_config, ref_model) -> None:
        if model_obj is not None:
            # A label for configs, logs and resume checks; the model's own path when it has one
            # (then also the place its tokenizer and generation config come from).
            cfg.model_name_or_path = getattr(model_obj, "name_or_path", "") or \
                f"<in-memory {type(model_obj).__name__}>"
            if tokenizer is None and cfg.model_name_or_path.startswith("<in-memory"):
                raise ConfigError(f"model is a {type(model_obj).__name__} object with no name_or_path "
                                  "to load its tokenizer from: pass processing_class=<your tokenizer>.")
            if cfg.gguf_file:
                raise ConfigError(f"model is a {type(model_obj).__name__} object and args.gguf_file is "
                                  "set: pass one of them (gguf_file loads the model from the GGUF file).")
        if cfg.model_name_or_path is None and not cfg.gguf_file:
            raise ConfigError("no model: pass model=<a PreTrainedModel or a path / hub id> (or set "
                              "model_name_or_path or gguf_file in args).")
        peft_model = model_obj is not None and _is_peft(model_obj)
        if peft_config is not None:
            if peft_model:
                raise ConfigError("model is already a PeftModel: drop peft_config (its adapter is "
                                  "trained as it is).")
            if model_obj is not None and _has_lora_layers(model_obj):
                raise ConfigError(
                    "model already carries LoRA layers (peft_config was applied to this object "
                    "before, e.g. by an earlier trainer in a re-run notebook cell); applying it "
                    "again would wrap them twice and the first trainer would train nothing. Load "
                    "the model afresh, or pass the earlier trainer's model (a PeftModel) without "
                    "peft_config to keep training its adapter.")
            cfg.use_peft = True
        if ref_model is not None and ref_model is model_obj:
            raise ConfigError("model and ref_model are the same object: leave ref_model=None (the "
                              "reference is then the untrained model, kept as a frozen copy or as "
                              "the adapter-disabled base).")
        if ref_model is not None and (cfg.use_peft or peft_model):
            raise ConfigError("ref_model with LoRA: the reference is the base model with the adapter "
                              "disabled, so no reference model is needed; drop ref_model.")

    def _datasets(self, cfg, train_dataset, eval_dataset, prompt_dataset) -> tuple[dict, dict]:
        """Records of the given datasets (objects; paths go into cfg) and the named eval sets."""
        out, named = {}, {}
        if train_dataset is None and cfg.dataset_name is None:
            raise ConfigError("`train_dataset` is required: pass a datasets.Dataset, an "
                              "IterableDataset, a list of dicts or a file path (or set dataset_name "
                              "in args).")
        _refuse_streamed_cache(cfg, train_dataset, eval_dataset)
        train = _object_or_path(cfg, "dataset_name", train_dataset)
        if train is not None:
            limit = None
            if type(train).__name__ == "IterableDataset":
                limit = _stream_limit(cfg)
            cfg.dataset_name = "<train_dataset>"
            out["train"] = records_from_object(train, cfg.dataset_train_split, "<train_dataset>", limit)
        evals = _object_or_path(cfg, "eval_dataset_name", eval_dataset)
        if evals is not None and type(evals).__name__ in _DICTS:
            named = {str(k): records_from_object(v, "test", f"<eval_dataset[{k!r}]>")
                     for k, v in evals.items()}
        elif evals is not None:
            cfg.eval_dataset_name = "<eval_dataset>"
            out["eval"] = records_from_object(evals, cfg.dataset_test_split or "test", "<eval_dataset>")
        prompts = _object_or_path(cfg, "prompt_dataset_name", prompt_dataset)
        if prompts is not None:
            cfg.prompt_dataset_name = "<prompt_dataset>"
            out["prompts"] = records_from_object(prompts, cfg.dataset_train_split, "<prompt_dataset>")
        return out, named

    def _tokenized(self, records):
        from .trainer import prepare_eval_pairs

        pairs, _ = prepare_eval_pairs(self.args, self.processing_class, records)
        return pairs

    def _record_peft(self) -> None:
        """The adapter that trains, as given (peft_config or a PeftModel), in the run's config:
        hypo_config.json and the model card then say what was trained."""
        if not self.core.pair.is_peft:
            return
        lora = self.model.peft_config.get("default")
        cfg = self.args
        cfg.use_peft = True
        for name, attr in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
            if hasattr(lora, attr):
                setattr(cfg, name, getattr(lora, attr))
        targets = getattr(lora, "target_modules", None)
        if targets:
            cfg.lora_target_modules = targets if isinstance(targets, str) else ",".join(sorted(targets))

    # ---- TRL-shaped surface --------------------------------------------------------------------
    @property
    def model(self):
        """The trained model (unwrapped; a PeftModel with LoRA)."""
        return self.core.acc.unwrap_model(self.core.model)

    @property
    def ref_model(self):
        """The held reference model: a given ref_model or the frozen copy; None with LoRA (the
        adapter-disabled base) or when no live reference is needed (cached log-probs)."""
        return self.core.pair.reference

    @property
    def processing_class(self):
        return self.core.data.tokenizer

    @property
    def accelerator(self):
        return self.core.acc

    @property
    def optimizer(self):
        return self.core.optimizer

    @property
    def lr_scheduler(self):
        return self.core.scheduler

    @property
    def state(self):
        """transformers' TrainerState (global_step, epoch, max_steps, log_history, best_metric,
        ...)."""
        return self.core.state

    @property
    def control(self):
        return self.core.control

    @property
    def callback_handler(self):
        return self.core.callback_handler

    @property
    def compute_metrics(self):
        return self.core.compute_metrics

    @property
    def train_dataset(self):
        """The tokenized training pairs as a ``datasets.Dataset`` (prompt_ids, chosen_ids,
        rejected_ids; with cached reference log-probs also ref_chosen_logps / ref_rejected_logps),
        as TRL's prepared dataset."""
        return _pairs_dataset(self.core.data.train, self.core.ref_train if self.args.precompute_ref_log_probs
                              else None)

    @property
    def eval_dataset(self):
        """The tokenized eval pairs: a Dataset, a dict of them (named sets), or None."""
        sets = {name: _pairs_dataset(pairs) for name, (pairs, _) in self.core.eval_sets.items()}
        if not sets:
            return None
        return sets[""] if list(sets) == [""] else {k: v for k, v in sets.items() if k}

    def is_world_process_zero(self) -> bool:
        return self.core.acc.is_main_process

    def is_local_process_zero(self) -> bool:
        return self.core.acc.is_local_main_process

    def add_callback(self, callback) -> None:
        from .callbacks import check_callbacks

        self.core.callback_handler.add_callback(check_callbacks([callback])[0])

    def pop_callback(self, callback):
        return self.core.callback_handler.pop_callback(callback)

    def remove_callback(self, callback) -> None:
        self.core.callback_handler.remove_callback(callback)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add a row to state.log_history (and metrics.jsonl while training), then on_log."""
        self.core._log(dict(logs))

    @_python_errors
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None,
              ignore_keys_for_eval=None, **kwargs):
        """Train; returns transformers' TrainOutput(global_step, training_loss, metrics).

        resume_from_checkpoint: a checkpoint folder, True / "auto" (newest in output_dir) or None
        (args.resume_from_checkpoint). A further call continues from the current weights with a
        new optimizer and schedule over another max_steps / num_train_epochs (as transformers);
        step numbers and the run folder go on."""
        if trial is not None or kwargs:
            raise ConfigError(f"train() does not take {'trial' if trial is not None else ', '.join(kwargs)}"
                              " (hyperparameter search is not supported).")
        core = self.core
        if core.runs:
            if resume_from_checkpoint:
                raise ConfigError("resume_from_checkpoint on a further train() call: this trainer "
                                  "already holds the run's state; call train() alone to go on.")
            core.start_segment()
        elif resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            self.args.resume_from_checkpoint = ("auto" if resume_from_checkpoint is True
                                                else str(resume_from_checkpoint))
        self._trained = True
        output = core.train(continue_run=core.runs > 0)
        if self.args.push_to_hub:
            self.push_to_hub()
        return output

    @_python_errors
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """DPO metrics and the online reverse KL (``{prefix}_loss``, ``{prefix}_rewards/...``,
        ``{prefix}_kl/online``) on the eval data given at construction, a name of one of its sets,
        or a new dataset / dict of datasets (``{prefix}_<name>_*``). Logged and reported to
        on_evaluate."""
        core = self.core
        if eval_dataset is None:
            if not core.eval_sets:
                raise ConfigError("no evaluation data: pass eval_dataset=... (here or to the "
                                  "trainer) or set eval_split_size > 0 in args.")
            return core._evaluate_and_log(prefix=metric_key_prefix)
        if isinstance(eval_dataset, str):
            if eval_dataset not in core.eval_sets:
                raise ConfigError(f"evaluate({eval_dataset!r}): no eval set of that name (have "
                                  f"{', '.join(repr(k) for k in core.eval_sets if k) or 'none'}).")
            return core._evaluate_and_log({eval_dataset: core.eval_sets[eval_dataset]},
                                          metric_key_prefix)
        return core._evaluate_and_log(self._new_eval_sets(eval_dataset), metric_key_prefix)

    def _new_eval_sets(self, eval_dataset) -> dict:
        """Tokenize a dataset (or dict of them) given to evaluate() and compute its reference."""
        core = self.core
        _refuse_streamed_cache(self.args, eval_dataset)
        if core.step > 0 and core.pair.reference is None and not core.pair.is_peft:
            raise ConfigError(
                "Cannot compute reference log-probs for a dataset passed to evaluate() after "
                "training has started: with full fine-tuning and precompute_ref_log_probs=True no "
                "reference model is kept in memory. Pass it as eval_dataset when building the "
                "trainer, pass ref_model=..., or set precompute_ref_log_probs=False.")
        named = eval_dataset.items() if type(eval_dataset).__name__ in _DICTS else [("", eval_dataset)]
        sets = {}
        for name, obj in named:
            pairs = self._tokenized(records_from_object(obj, "test", f"<eval_dataset[{name!r}]>"
                                                        if name else "<eval_dataset>"))
            sets[str(name)] = (pairs, core._pair_reference(pairs, f"evaluate:{name}", keep=False))
        return sets

    @_python_errors
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
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

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, **kwargs) -> Path | None:
        """Write output_dir/README.md: hypo's model card (data, algorithm, settings, final
        metrics, citation) with the model's tags and ``tags``."""
        from .model_card import final_metrics, write_model_card

        if not self.is_world_process_zero():
            return None
        out = Path(self.args.output_dir)
        extra = list(getattr(self.model, "model_tags", None) or [])
        extra += [tags] if isinstance(tags, str) else list(tags or [])
        return write_model_card(out, self.args, final_metrics(out), self.core.data.report,
                                extra_tags=extra, title=model_name, dataset=dataset_name)

    @_python_errors
    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, **kwargs) -> str | None:
        """Save the model (if this trainer has not yet) with its model card and upload output_dir
        (not checkpoints or logs) to hub_model_id (default: output_dir's name). Returns the commit
        URL; a Hub that cannot be reached is refused in one line."""
        from .hub import push_folder

        self.core._event("on_push_begin")
        if not self._trained:
            self.save_model()
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**{k: v for k, v in kwargs.items()
                                  if k in ("model_name", "dataset_name", "tags")})
        return push_folder(self.args.output_dir, self._hub_repo(), commit_message or "End of training",
                           revision or self.args.hub_revision, token, self.args.hub_private_repo)

    def _hub_repo(self) -> str:
        return self.args.hub_model_id or Path(self.args.output_dir).resolve().name


class DPOTrainer(HyPOTrainer):
    """HyPOTrainer for offline DPO: its default config is ``DPOConfig()``; a HyPO config is
    refused (use HyPOTrainer)."""

    _tag_names = ["trl", "dpo", "hypo"]
    _name = "DPO"

    @classmethod
    def _config_class(cls):
        return DPOConfig

    def _check_algo(self, cfg: TrainConfig) -> None:
        if cfg.algo != "dpo":
            raise ConfigError(f"DPOTrainer got a config with algo={cfg.algo!r} (a HyPOConfig?): "
                              "DPOTrainer trains DPO. Use HyPOTrainer for HyPO, or DPOConfig for DPO.")


# ---- helpers ------------------------------------------------------------------------------------

def _model_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return Path(os.fspath(model)).name or "model"
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Path(path).name or type(model).__name__


def _resolve_bf16(cfg: TrainConfig) -> None:
    """bf16 unset (the API's default): on where the GPU has bf16, off on CPUs (TRL: on unless fp16;
    hypo says so instead of running bf16 matmuls hundreds of times slower on CPUs)."""
    if cfg.bf16 is None:
        import torch

        cfg.bf16 = bool(not cfg.use_cpu and cfg.dtype == "float32" and torch.cuda.is_available()
                        and torch.cuda.is_bf16_supported())


def _quiet_loading_bars() -> None:
    """disable_progress_bar also silences transformers', datasets' and the Hub's loading bars."""
    import datasets
    import huggingface_hub.utils
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


def _stream_limit(cfg: TrainConfig) -> int:
    """Records of an IterableDataset that training can use: max_steps × pairs per step."""
    if cfg.max_steps <= 0:
        raise ConfigError("train_dataset is an IterableDataset, whose length is unknown: set "
                          "max_steps in args (as TRL requires).")
    from accelerate import PartialState

    world = 1 if cfg.use_cpu else PartialState().num_processes
    return cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world


def _refuse_streamed_cache(cfg, *datasets) -> None:
    """A reference cache needs the whole data set up front, which a stream does not have."""
    if cfg.precompute_ref_log_probs and any(type(d).__name__ == "IterableDataset" for d in _leaves(*datasets)):
        raise ConfigError("precompute_ref_log_probs=True is not supported with IterableDataset "
                          "(streaming) data: the reference log-prob cache is keyed by the whole "
                          "data set, which a stream does not have up front. Set "
                          "precompute_ref_log_probs=False.")


def _leaves(*objects) -> list:
    out = []
    for obj in objects:
        if obj is not None and type(obj).__name__ in _DICTS:
            out += list(obj.values())
        elif obj is not None:
            out.append(obj)
    return out


def _pairs_dataset(pairs, ref=None):
    import datasets

    columns = {"prompt_ids": [p.prompt_ids for p in pairs], "chosen_ids": [p.chosen_ids for p in pairs],
               "rejected_ids": [p.rejected_ids for p in pairs]}
    if ref is not None and len(ref):
        columns["ref_chosen_logps"] = ref[:, 0].tolist()
        columns["ref_rejected_logps"] = ref[:, 1].tolist()
    return datasets.Dataset.from_dict(columns)


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


def _has_lora_layers(model: Any) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def train(cfg: TrainConfig):
    """``hypo train``'s library entry: validate, check output_dir before anything loads, train."""
    from .preflight import check_output_dir

    check_output_dir(cfg.validate())
    trainer = (DPOTrainer if cfg.algo == "dpo" else HyPOTrainer)(args=cfg)
    return trainer.train()
