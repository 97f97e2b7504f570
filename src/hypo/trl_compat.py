"""TRL's setting names that are not hypo config fields: what each one does here, in one table.

Every field of TRL 1.16's ``DPOConfig`` and of transformers' ``TrainingArguments`` is either a
field of ``hypo.config.TrainConfig`` with TRL's meaning, or an entry of ``TRL_SETTINGS``:

- ``Alias``: another name (or spelling) of a hypo field; the value is carried over;
- ``Ignored``: accepted with any value, because it changes nothing hypo computes (why says so);
- ``Fixed``: hypo always behaves as TRL does at ``value`` (TRL's default); any other value is
  refused with a ``ConfigError`` naming the setting, why, and what to do instead.

``tests/test_trl_compat.py`` walks both classes' fields against this table, so a setting TRL adds
fails a test until it is placed. TRL's command-line names from ``ModelConfig`` / ``ScriptArguments``
(``--torch_dtype``, ``--load_in_4bit``, ...) are here too, for the hints of ``hypo train``.
This module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Alias:
    target: str  # the hypo field
    convert: Callable[[Any], Any] | None = None  # value -> hypo value (None: skip the setting)


@dataclass(frozen=True)
class Ignored:
    why: str


@dataclass(frozen=True)
class Fixed:
    value: Any  # TRL's default: the behaviour hypo always has
    why: str
    fix: str = ""


_LAUNCH = ("set it through `accelerate launch` / `accelerate config` (docs/scale-out.md)")
_LOADER = "hypo tokenizes the data up front and builds its batches in the main process"
_NO_LOGITS = "hypo never gathers full logits during evaluation"

TRL_SETTINGS: dict[str, Alias | Ignored | Fixed] = {
    # ---- transformers.TrainingArguments ----------------------------------------------------------
    "optim_args": Fixed(None, "AdamW's settings are adam_beta1, adam_beta2, adam_epsilon and "
                        "weight_decay", "set those fields"),
    "optim_target_modules": Fixed(None, "only AdamW is supported (no GaLore / APOLLO)"),
    "average_tokens_across_devices": Ignored("hypo's loss is a mean over preference pairs, not "
                                             "over tokens, so there is no token count to average"),
    "label_smoothing_factor": Fixed(0.0, "that is the language-modelling loss's smoothing",
                                    "DPO's label smoothing is label_smoothing"),
    "fp16": Fixed(False, "fp16 mixed precision needs a loss scaler, which hypo does not have",
                  "use bf16=True (GPUs with bf16), or dtype='float16' weights"),
    "bf16_full_eval": Fixed(False, "evaluation runs under the same precision as training"),
    "fp16_full_eval": Fixed(False, "evaluation runs under the same precision as training"),
    "tf32": Fixed(None, "hypo does not switch TF32 matmuls", "set "
                  "torch.backends.cuda.matmul.allow_tf32 before training"),
    "activation_checkpointing": Alias("gradient_checkpointing"),  # transformers 5's new name
    "activation_checkpointing_kwargs": Alias("gradient_checkpointing_kwargs"),
    "torch_compile": Fixed(False, "hypo's forwards change shape every step (length buckets, online "
                           "samples), so torch.compile recompiles; measured and not kept "
                           "(benchmarks/README.md)"),
    "torch_compile_backend": Fixed(None, "torch.compile is not used (see torch_compile)"),
    "torch_compile_mode": Fixed(None, "torch.compile is not used (see torch_compile)"),
    "use_liger_kernel": Fixed(False, "hypo computes log-probs with its own chunked LM head",
                              "for Hub kernels pass model_init_kwargs={'use_kernels': True}"),
    "liger_kernel_config": Fixed(None, "Liger kernels are not used (see use_liger_kernel)"),
    "use_cache": Ignored("training forwards never use a KV cache and online sampling always does"),
    "neftune_noise_alpha": Fixed(None, "NEFTune noise is for SFT; in DPO it would make the policy "
                                 "differ from the reference at step 0"),
    "torch_empty_cache_steps": Fixed(None, "hypo does not empty the CUDA cache on a schedule",
                                     "call torch.cuda.empty_cache() in a callback's on_step_end"),
    "auto_find_batch_size": Fixed(False, "hypo does not retry smaller batches after an out-of-memory",
                                  "lower per_device_train_batch_size and raise "
                                  "gradient_accumulation_steps"),
    "log_on_each_node": Ignored("hypo logs on the main process only"),
    "logging_nan_inf_filter": Ignored("a step with a NaN/inf loss is never applied or averaged "
                                      "(see nonfinite_policy)"),
    "include_num_input_tokens_seen": Fixed("no", "hypo logs tokens/pairs and tokens/online every "
                                           "step instead"),
    "log_level": Ignored("console verbosity only"),
    "log_level_replica": Ignored("console verbosity only"),
    "disable_tqdm": Alias("disable_progress_bar"),
    "project": Fixed("huggingface", "trackio projects are not supported",
                     "for W&B set WANDB_PROJECT"),
    "trackio_space_id": Fixed(None, "trackio is not a supported tracker",
                              "use report_to tensorboard or wandb"),
    "trackio_bucket_id": Fixed(None, "trackio is not a supported tracker",
                               "use report_to tensorboard or wandb"),
    "trackio_static_space_id": Fixed(None, "trackio is not a supported tracker",
                                     "use report_to tensorboard or wandb"),
    "prediction_loss_only": Fixed(False, "evaluation always reports the DPO metrics and the online "
                                  "KL"),
    "eval_do_concat_batches": Ignored(_NO_LOGITS),
    "eval_use_gather_object": Ignored(_NO_LOGITS),
    "eval_accumulation_steps": Ignored(_NO_LOGITS),
    "include_for_metrics": Fixed([], "compute_metrics receives the per-pair implicit rewards only"),
    "batch_eval_metrics": Fixed(False, "compute_metrics is called once per evaluation with every "
                                "pair's rewards"),
    "save_only_model": Fixed(False, "checkpoints keep the optimizer, schedule and RNG state, which "
                             "exact resume needs; the final model is saved on its own"),
    "save_on_each_node": Fixed(False, "the main process writes checkpoints and the model"),
    "enable_jit_checkpoint": Ignored("always on: a SIGTERM/SIGINT writes a checkpoint"),
    "hub_always_push": Ignored("hypo pushes once, synchronously, at the end of train()"),
    "hub_token": Fixed(None, "a token in the config would be written to hypo_config.json and "
                       "checkpoints", "log in with `hf auth login` or set HF_TOKEN"),
    "ignore_data_skip": Fixed(False, "resume restores the exact data cursor"),
    "full_determinism": Fixed(False, "hypo does not switch PyTorch to deterministic algorithms",
                              "call transformers.enable_full_determinism(seed) first"),
    "accelerator_config": Fixed(None, "accelerate's settings are " + _LAUNCH),
    "parallelism_config": Fixed(None, "parallelism is " + _LAUNCH),
    "dataloader_drop_last": Ignored("hypo's pair stream runs across epoch boundaries, so every "
                                    "batch is full and no pair is dropped"),
    "dataloader_num_workers": Ignored(_LOADER),
    "dataloader_pin_memory": Ignored(_LOADER),
    "dataloader_persistent_workers": Ignored(_LOADER),
    "dataloader_prefetch_factor": Ignored(_LOADER),
    "dataloader_multiprocessing_context": Ignored(_LOADER),
    "dataloader_in_order": Ignored(_LOADER),
    "remove_unused_columns": Ignored("hypo reads prompt, chosen, rejected, tools and "
                                     "chat_template_kwargs, and ignores other columns either way"),
    "label_names": Fixed(None, "preference data has no label columns"),
    "train_sampling_strategy": Fixed("random", "hypo shuffles the pairs with its own seeded stream "
                                     "(exact resume)"),
    "length_column_name": Ignored("only used by length-grouped sampling, which hypo replaces by "
                                  "length buckets inside each batch"),
    "ddp_find_unused_parameters": Fixed(None, "DDP is " + _LAUNCH),
    "ddp_bucket_cap_mb": Fixed(None, "DDP is " + _LAUNCH),
    "ddp_broadcast_buffers": Fixed(None, "DDP is " + _LAUNCH),
    "ddp_static_graph": Fixed(None, "DDP is " + _LAUNCH),
    "ddp_backend": Fixed(None, "DDP is " + _LAUNCH),
    "ddp_timeout": Fixed(1800, "DDP is " + _LAUNCH),
    "fsdp": Fixed(None, "FSDP is " + _LAUNCH),
    "fsdp_config": Fixed(None, "FSDP is " + _LAUNCH),
    "deepspeed": Fixed(None, "DeepSpeed is " + _LAUNCH),
    "debug": Fixed("", "transformers' debug options (underflow / TPU metrics) are not available"),
    "skip_memory_metrics": Ignored("hypo does not report transformers' memory metrics"),
    "do_train": Ignored("not used by the trainer (as in transformers)"),
    "do_eval": Ignored("not used by the trainer (as in transformers)"),
    "do_predict": Ignored("not used by the trainer (as in transformers)"),
    "local_rank": Ignored("set by the launcher"),
    "restore_callback_states_from_checkpoint": Fixed(False, "callback states are not saved in "
                                                     "hypo's checkpoints"),
    # ---- trl.DPOConfig ---------------------------------------------------------------------------
    "router_aux_loss_coef": Fixed(None, "the Mixture-of-Experts load-balancing loss is not added"),
    "disable_dropout": Fixed(True, "hypo always disables dropout, so the policy equals the reference "
                             "at step 0", "LoRA's own dropout is lora_dropout"),
    "dataset_num_proc": Ignored("tokenization runs in the main process"),
    "pad_to_multiple_of": Ignored("padding is masked, so it never changes a result; hypo pads each "
                                  "length bucket to its own longest row"),
    "precompute_ref_batch_size": Ignored("the reference log-probs are computed in the loop's own "
                                         "batch layout (so at step 0 they equal the policy's), which "
                                         "only speed would change"),
    "activation_offloading": Fixed(False, "activations are not offloaded to the CPU",
                                   "use gradient_checkpointing"),
    "pad_token": Fixed(None, "deprecated in TRL", "set tokenizer.pad_token and pass the tokenizer as "
                       "processing_class"),
    # ---- TRL's command line: ModelConfig / ScriptArguments (hints for `hypo train`) ---------------
    "torch_dtype": Alias("dtype", lambda v: str(v).removeprefix("torch.")),
    "lora_task_type": Fixed("CAUSAL_LM", "hypo trains causal LMs"),
    "lora_target_parameters": Fixed(None, "LoRA on parameters (MoE experts) is not supported",
                                    "use lora_target_modules"),
    "lora_modules_to_save": Fixed(None, "extra fully trained modules are not supported with LoRA",
                                  "pass a peft LoraConfig(modules_to_save=...) as peft_config"),
    "use_rslora": Fixed(False, "", "pass a peft LoraConfig(use_rslora=True) as peft_config"),
    "use_dora": Fixed(False, "", "pass a peft LoraConfig(use_dora=True) as peft_config"),
    "load_in_8bit": Fixed(False, "quantized loading is not supported yet",
                          "load the quantized model yourself and pass it as model="),
    "load_in_4bit": Fixed(False, "quantized loading is not supported yet",
                          "load the quantized model yourself and pass it as model="),
    "bnb_4bit_quant_type": Ignored("only with load_in_4bit, which is not supported"),
    "use_bnb_nested_quant": Fixed(False, "quantized loading is not supported yet"),
    "bnb_4bit_quant_storage": Ignored("only with load_in_4bit, which is not supported"),
    "dataset_streaming": Fixed(False, "from the command line data is read whole",
                               "in Python pass an IterableDataset as train_dataset (with max_steps)"),
    "gradient_checkpointing_use_reentrant": Fixed(False, "hypo checkpoints without reentrancy",
                                                  "set gradient_checkpointing_kwargs"),
    "ignore_bias_buffers": Ignored("only for DDP with bias buffers, which hypo's models do not need"),
}


def _describe(name: str, entry) -> str:
    why = f": {entry.why}" if entry.why else ""
    fix = f"; {entry.fix}" if getattr(entry, "fix", "") else ""
    return f"{why}{fix}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, (list, tuple)) and not b:
        return a is None or a == [] or a == ()
    return a == b or (b is None and a in ("", None)) or (b == "no" and a is False)


def translate(settings: dict[str, Any], source: str = "DPOConfig") -> dict[str, Any]:
    """TRL-named settings -> hypo fields: aliases renamed, ignored ones dropped, TRL's default of a
    Fixed one dropped, anything else in the table refused with a ConfigError naming it.

    Names not in the table pass through unchanged (hypo fields, or unknown: the caller decides)."""
    from .config import ConfigError

    out = {}
    for name, value in settings.items():
        entry = TRL_SETTINGS.get(name)
        if entry is None:
            out[name] = value
        elif isinstance(entry, Alias):
            if value is None:
                continue
            value = entry.convert(value) if entry.convert else value
            if entry.target in settings and settings[entry.target] != value:
                raise ConfigError(f"{source}: {name}={value!r} and {entry.target}="
                                  f"{settings[entry.target]!r} are set to different values; "
                                  f"{name} is another name of {entry.target}: keep one.")
            out[entry.target] = value
        elif isinstance(entry, Fixed) and not _same(value, entry.value):
            raise ConfigError(f"{source}: {name}={value!r} is not supported by hypo"
                              f"{_describe(name, entry)}. (TRL's default {entry.value!r} is "
                              "accepted; docs/python-api.md lists every TRL setting.)")
    return out


def hint(name: str) -> str | None:
    """One line about a TRL setting that is not a hypo field (for unknown-option errors)."""
    entry = TRL_SETTINGS.get(name)
    if entry is None:
        return None
    if isinstance(entry, Alias):
        return f"--{name} is TRL's name for --{entry.target}; use that."
    if isinstance(entry, Ignored):
        return f"--{name} has no effect in hypo ({entry.why}); leave it out."
    return f"--{name} is not supported by hypo{_describe(name, entry)}."


def default_of(name: str) -> Any:
    """The value a Fixed / Ignored TRL setting always has in hypo (for ``args.<name>`` reads by
    callbacks written for transformers); AttributeError for other names."""
    entry = TRL_SETTINGS.get(name)
    if isinstance(entry, Fixed):
        return entry.value
    if isinstance(entry, Ignored) and name in _IGNORED_DEFAULTS:
        return _IGNORED_DEFAULTS[name]
    raise AttributeError(name)


# TrainingArguments' defaults of the ignored settings, for callbacks that read them.
_IGNORED_DEFAULTS = {
    "average_tokens_across_devices": True, "use_cache": False, "log_on_each_node": True,
    "logging_nan_inf_filter": True, "log_level": "passive", "log_level_replica": "warning",
    "eval_do_concat_batches": True, "eval_use_gather_object": False, "eval_accumulation_steps": None,
    "enable_jit_checkpoint": False, "hub_always_push": False, "dataloader_drop_last": False,
    "dataloader_num_workers": 0, "dataloader_pin_memory": True,
    "dataloader_persistent_workers": False, "dataloader_prefetch_factor": None,
    "dataloader_multiprocessing_context": None, "dataloader_in_order": True,
    "remove_unused_columns": True, "length_column_name": "length", "skip_memory_metrics": True,
    "do_train": False, "do_eval": False, "do_predict": False, "local_rank": -1,
    "dataset_num_proc": None, "pad_to_multiple_of": None, "precompute_ref_batch_size": None,
}
