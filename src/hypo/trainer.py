"""The HyPO / DPO training loop on accelerate (arXiv 2406.01462, Algorithm 1).

One optimizer step = ``gradient_accumulation_steps`` micro-batches. Each micro-batch:

1. takes B offline pairs (their reference log-probs come from the on-disk cache);
2. HyPO: samples k responses per online prompt from the current policy (own seeded generator);
3. runs ONE policy forward over [chosen | rejected | samples] and one no-grad reference forward
   over the samples only;
4. loss = mean ℓ_dpo + λ·L_kl (``losses.hypo_loss``); backward.

Then clip, check for non-finite values (never applied to the weights), step, log, evaluate, save.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from . import checkpoint as ckpt
from . import sharding
from .batching import IndexStream
from .callbacks import TrainerControl, make_handler, new_state, update_best
from .config import RESULT_FIELDS, ConfigError, TrainConfig, result_settings
from .data import (DataError, TokenizedPair, fingerprint, fingerprint_pairs,
                   load_preferences, load_prompts, split_eval, tokenize_pairs,
                   tokenize_prompts)
from .heap import fix_mmap_threshold
from .logprobs import pack_sequences, supports_target_only_head
from .losses import hypo_loss, ld_logps, preference_loss, reverse_kl_estimate, reverse_kl_loss
from .losses import wpo_weights
from .losses import analytic_kl_loss, dual_ascent_kl_coef, kl_coef_at, token_kl_loss
from .logprobs import position_logps_and_kls
from .prefix import Group, response_logps, response_positions_of, supports_prefix_sharing
from .model_card import final_metrics, write_model_card
from .preflight import adopt_legacy_run, check_output_dir, clear_output_dir, preflight
from .runfolder import RunFolder
from .modeling import PolicyPair, build_policy, gathered_for_generation, load_tokenizer, tensor_digests, tokenizer_fingerprint, weights_fingerprint
from .modeling import has_lora_dropout, lora_dropout_active, model_config_fingerprint, model_source, precision_warnings, tokenizer_kwargs, with_pad_token
from .progress import console, step_progress
from .refcache import cache_key, compute_reference_logps, default_cache_dir, load_or_compute
from .sampling import OnlineSampler, sample_groups, samples_unbiased
from .tracking import MetricsLogger, append_jsonl, read_metrics, truncate_jsonl
from .variants import aligned_mean_logps, mix_into_reference, shared_prefix_pairs
from .vllm_backend import make_sampler


class NonFiniteError(RuntimeError):
    """The loss or gradient norm was NaN/inf; the update was not applied."""


class Interrupted(SystemExit):
    """Raised after a checkpoint was written in answer to SIGTERM/SIGINT (exit 143 / 130).
    ``code`` is the exit status; str() says what happened and how to resume."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message or f"interrupted (exit status {self.code})"


@dataclass
class RunData:
    """Tokenized inputs of a run and what happened to the raw records."""

    tokenizer: object
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    prompts: list[list[int]] | None  # separate online prompts, or None = prompts of the pairs
    report: dict = field(default_factory=dict)


def prepare_data(cfg: TrainConfig, tokenizer=None, datasets: dict | None = None) -> RunData:
    """Load, validate and tokenize everything; fails with DataError before any model loads.

    In-memory inputs (``hypo.api``): ``tokenizer`` replaces loading one; ``datasets`` maps
    "train" / "eval" / "prompts" to ``data.records_from_object`` records that replace loading
    cfg.dataset_name / eval_dataset_name / prompt_dataset_name (which then hold their labels).
    """
    given = datasets or {}
    tokenizer = (with_pad_token(tokenizer) if tokenizer is not None else
                 load_tokenizer(cfg.tokenizer_name_or_path or model_source(cfg), **tokenizer_kwargs(cfg)))
    train_ex, dropped = load_preferences(given.get("train", cfg.dataset_name), cfg.dataset_train_split,
                                         cfg.skip_invalid_records, cfg.dataset_config)
    report = {"train_records": len(train_ex), "dropped_invalid": dropped}
    if cfg.eval_dataset_name:
        eval_ex, eval_dropped = load_preferences(
            given.get("eval", cfg.eval_dataset_name), cfg.dataset_test_split or cfg.dataset_train_split,
            cfg.skip_invalid_records)
        report["eval_dropped_invalid"] = eval_dropped
    elif cfg.dataset_test_split:  # TRL's layout: the test split of the same dataset
        eval_ex, eval_dropped = load_preferences(cfg.dataset_name, cfg.dataset_test_split,
                                                 cfg.skip_invalid_records, cfg.dataset_config,
                                                 require_split=True)
        report["eval_dropped_invalid"] = eval_dropped
    else:
        train_ex, eval_ex = split_eval(train_ex, cfg.eval_split_size, cfg.seed)
    train, stats = tokenize_pairs(train_ex, tokenizer, *token_limits(cfg))
    evals, eval_stats = tokenize_pairs(eval_ex, tokenizer, *token_limits(cfg))
    report["train_tokenize"], report["eval_tokenize"] = vars(stats), vars(eval_stats)
    if not train:
        raise DataError(f"{cfg.dataset_name}: no usable preference pair is left after validation "
                        f"and truncation ({report}). If the pairs were dropped for length, raise "
                        "max_length, set max_prompt_length below it, or use truncation_mode keep_end.")
    prompts = None
    if cfg.prompt_dataset_name:
        prompt_ex, prompt_dropped = load_prompts(given.get("prompts", cfg.prompt_dataset_name), cfg.dataset_train_split,
                                                 cfg.skip_invalid_records)
        prompts = tokenize_prompts(prompt_ex, tokenizer, cfg.prompt_limit())
        report["prompt_records"], report["prompt_dropped_invalid"] = len(prompts), prompt_dropped
    report["train_pairs"], report["eval_pairs"] = len(train), len(evals)
    return RunData(tokenizer, train, evals, prompts, report)


def token_limits(cfg: TrainConfig) -> tuple:
    """tokenize_pairs' limits and truncation rule for cfg."""
    drop = (cfg.truncation_mode == "keep_start" and cfg.max_prompt_length is None
            and cfg.max_completion_length is None)
    return cfg.max_length, cfg.prompt_limit(), cfg.max_completion_length, cfg.truncation_mode, drop


def prepare_eval_pairs(cfg: TrainConfig, tokenizer, records) -> tuple[list[TokenizedPair], dict]:
    """Eval pairs from in-memory records (``data.records_from_object``), as prepare_data's."""
    examples, dropped = load_preferences(records, cfg.dataset_test_split or "test",
                                         cfg.skip_invalid_records)
    pairs, stats = tokenize_pairs(examples, tokenizer, *token_limits(cfg))
    return pairs, {"dropped_invalid": dropped, "tokenize": vars(stats)}


def make_optimizer(cfg: TrainConfig, params: list) -> torch.optim.Optimizer:
    """torch.optim.AdamW as cfg.optim says: for-each ('adamw_torch') or fused kernel."""
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                             fused=True if cfg.optim == "adamw_torch_fused" else None)


def make_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    """transformers' get_scheduler for cfg.lr_scheduler_type, with the warm-up of cfg."""
    from transformers import get_scheduler

    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    # 'constant' still honours the warm-up (transformers' "constant" ignores it).
    name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler_type, cfg.lr_scheduler_type)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=cfg.lr_scheduler_kwargs)


def make_accelerator(cfg: TrainConfig):
    """The Accelerator: --bf16 → mixed_precision "bf16" (float32 master weights, bf16 autocast);
    otherwise what the launcher set (ACCELERATE_MIXED_PRECISION), else none.

    accelerate keeps ONE state per process: a second Trainer in the same (single) process that
    wants another precision resets it, instead of silently inheriting the first one's autocast.
    """
    import os

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import InitProcessGroupKwargs

    wanted = "bf16" if cfg.bf16 else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if (AcceleratorState._shared_state and PartialState().num_processes == 1
            and AcceleratorState().mixed_precision != wanted):
        AcceleratorState._reset_state()
    gpu = torch.cuda.is_available()
    sharding.check_launch(gpu)
    # DeepSpeed without a GPU: its CPU accelerator on gloo (accelerate finds no backend by itself
    # there and would count one process); cpu=True would turn DeepSpeed off altogether.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = [InitProcessGroupKwargs(backend="gloo")] if deepspeed and not gpu else []
    if deepspeed and not gpu:
        sharding.skip_deepspeed_shm_build()
    # FSDP2: hypo shards the model itself (``sharding``); accelerate only runs the processes.
    with sharding.hidden_from_accelerate() if sharding.requested() else contextlib.nullcontext():
        return Accelerator(cpu=(cfg.use_cpu or not gpu) and not deepspeed, mixed_precision=wanted,
                           kwargs_handlers=handlers)


class Trainer:
    def __init__(self, cfg: TrainConfig, data: RunData | None = None, eval_hook=None, *,
                 model=None, ref_model=None, peft_config=None, processing_class=None,
                 datasets: dict | None = None, check_output: bool = True, callbacks=None,
                 compute_metrics=None):
        """eval_hook: optional callable(trainer) -> dict of extra eval metrics (logged as eval_*).
        model / ref_model / peft_config / processing_class / datasets: in-memory objects that
        replace loading by name (see build_policy, prepare_data; ``hypo.api`` passes them).
        check_output: False defers the output_dir check to train() (see ``preflight``).
        callbacks: transformers TrainerCallbacks (``hypo.callbacks``); compute_metrics: callable
        (EvalPrediction of the per-pair rewards) -> dict, called after every evaluation."""
        self.cfg = cfg.validate()
        fix_mmap_threshold()  # opt-in (HYPO_MMAP_THRESHOLD): lower peak RSS, slower steps (heap.py)
        preflight(cfg, model_given=model is not None, check_output=check_output)  # output_dir, model head, paths, LoRA targets: before any data or weights load
        self.eval_hook = eval_hook
        self.model_object = model
        self.data = data or prepare_data(cfg, processing_class, datasets)
        self.acc = make_accelerator(cfg)
        for message in precision_warnings(cfg, self.acc.device):
            warnings.warn(message, UserWarning, stacklevel=2)
        if self.acc.distributed_type == DistributedType.DEEPSPEED and cfg.gradient_accumulation_steps > 1:
            # DeepSpeed steps inside backward(); hypo's loop accumulates by itself.
            raise ConfigError("gradient_accumulation_steps > 1 is not supported under DeepSpeed yet: "
                              "set it to 1 and raise per_device_train_batch_size or the number of "
                              "processes instead.")
        torch.manual_seed(cfg.seed)
        self.hypo = cfg.algo == "hypo"
        self.kl_coef = cfg.kl_coef  # λ of the current step: scheduled or adapted (kl/coef)
        # A live reference (a frozen copy, for full fine-tuning) only when something needs it:
        # HyPO's samples, the eval KL (only if there is eval data), no cache, or an eval hook.
        need_ref = (self.hypo or (cfg.eval_online_prompts > 0 and bool(self.data.eval))
                    or not cfg.precompute_ref_log_probs or eval_hook is not None)
        with sharding.whole_model_loading(self.acc):  # ZeRO-3 partitions it in prepare()
            self.pair: PolicyPair = build_policy(cfg, need_reference=need_ref, model=model,
                                                 ref_model=ref_model, peft_config=peft_config)
        if self.pair.reference is not None:
            self.pair.reference.to(self.acc.device)
        tok = self.data.tokenizer
        self.pad = tok.pad_token_id
        # Each process draws its own stream (seeded apart); all streams are saved in checkpoints.
        self.sampler = make_sampler(cfg, tok, self._stop_ids(),
                                    seed=cfg.seed + 1 + 1009 * self.acc.process_index)
        if self.hypo and not self.sampler.unbiased:
            console.print("[yellow]warning:[/] temperature/top_k/top_p other than 1/0/1 sample from "
                          "a different policy: the online KL estimate and its gradient are biased.")
        digests = tensor_digests(self.pair.policy)  # every byte of the weights, read once
        if self.pair.is_peft:  # π_ref's weights: the base's, before any update
            self._ref_weights_fp = weights_fingerprint(self.pair.policy, base_only=True, digests=digests)
        self.fingerprints = {
            "weights": weights_fingerprint(self.pair.policy, digests=digests), "tokenizer": tokenizer_fingerprint(tok),
            "train": fingerprint_pairs(self.data.train), "eval": fingerprint_pairs(self.data.eval),
            "prompts": fingerprint(self.data.prompts or [])}
        if ref_model is not None:  # a separate reference: the cache is keyed by ITS weights
            self.fingerprints["reference"] = weights_fingerprint(ref_model)
        self._print_data_report()
        self.multi = self.acc.num_processes > 1  # every forward must then match across processes
        self.fast_head = self._check_target_only_head()  # before the reference cache: same path
        self.shared = self._check_prefix_sharing()  # likewise
        # HyPO's joint layout needs every response of a row in the same mode: not with LoRA dropout
        # (on for the pairs, off for the samples), the per-position estimators, or LD-DPO (its
        # reference log-probs are weighted ones, from the cache).
        self._joint = (self.shared and cfg.kl_estimator == "seq" and cfg.ld_alpha is None
                       and not has_lora_dropout(self.pair.policy))
        self.ref_train = self._pair_reference(self.data.train, "train")
        self.ref_eval = self._pair_reference(self.data.eval, "eval")
        # Evaluation sets by name ("" = the run's own eval data: metrics eval_*; others eval_<name>_*).
        self.eval_sets = {"": (self.data.eval, self.ref_eval)} if self.data.eval else {}
        self.compute_metrics = compute_metrics

        world = self.acc.num_processes
        self.global_batch = cfg.per_device_train_batch_size * world
        self.total_steps = self._steps_per_call()
        # DeepSpeed steps inside every backward(): HyPO's two-part backward becomes one there.
        self.single_backward = self.acc.distributed_type == DistributedType.DEEPSPEED
        self.sharded = self.multi and sharding.requested()  # FSDP2, applied by hypo (``sharding``)
        if self.sharded:  # after the reference cache and the checks above: they need plain modules
            sharding.shard_model(self.pair.policy, self.acc.device, sharding.reshard_after_forward())
            if self.pair.reference is not None:
                sharding.shard_model(self.pair.reference, self.acc.device, sharding.reshard_after_forward())
        trainable = [p for p in self.pair.policy.parameters() if p.requires_grad]
        if self.sharded:  # not wrapped by accelerate (it would add DDP around the shards)
            self.model, self.optimizer = self.pair.policy, self.acc.prepare(make_optimizer(cfg, trainable))
        else:
            self._deepspeed_batch(cfg)
            self.model, self.optimizer = self.acc.prepare(self.pair.policy, make_optimizer(cfg, trainable))
        self.scheduler = make_scheduler(cfg, self.optimizer, self.total_steps)
        self.pairs_stream = IndexStream(len(self.data.train),
                                        cfg.seed if cfg.data_seed is None else cfg.data_seed)
        self.prompt_stream = IndexStream(len(self.data.prompts), cfg.seed + 7) if self.data.prompts else None
        self.step, self.skipped, self.consecutive_skips = 0, 0, 0
        self._signal = None
        # Shown after a signal's checkpoint; the CLI sets the exact command line.
        self.resume_command = "trainer.train(resume_from_checkpoint=True) with the same settings"
        self.logger, self.runs = None, 0  # the metrics logger while train() runs; train() calls
        self.state = new_state(cfg, self.total_steps, self.global_batch, self.acc.is_main_process,
                               self.acc.is_local_main_process)
        self.control = TrainerControl()
        self.callback_handler = make_handler(callbacks, self.acc.unwrap_model(self.model), tok,
                                             self.optimizer, self.scheduler)
        self._event("on_init_end")

    # ---- set-up helpers -----------------------------------------------------------------------
    def autocast(self):
        """The autocast of EVERY forward (policy, reference copy or adapter-disabled view,
        reference cache, sampling): the prepared model's own wrapper misses the reference and the
        target-only head, and π and π_ref must see the same arithmetic (exactly 0 KL at step 0)."""
        return self.acc.autocast()

    def _print_data_report(self) -> None:
        if not self.acc.is_main_process or self.cfg.disable_progress_bar:
            return
        r = self.data.report
        tok = r.get("train_tokenize", {})
        line = (f"data: {r['train_pairs']} training pairs, {r['eval_pairs']} eval pairs; "
                f"prompts truncated {tok.get('truncated_prompts', 0)}, responses truncated "
                f"{tok.get('truncated_responses', 0)}, dropped identical after truncation "
                f"{tok.get('dropped_identical', 0)}")
        if r.get("dropped_invalid"):
            line += f"; dropped invalid records {r['dropped_invalid']}"
        if self.data.prompts is not None:
            line += f"; {len(self.data.prompts)} online prompts"
        console.print(line)

    def _deepspeed_batch(self, cfg: TrainConfig) -> None:
        """DeepSpeed takes its micro-batch size from a dataloader passed to ``prepare``; hypo's loop
        passes none, so the config gets it here (per process), and its clipping must be hypo's."""
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        if self.acc.distributed_type != DistributedType.DEEPSPEED or plugin is None:
            return
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
        if plugin.is_auto("gradient_clipping"):
            plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm
        elif float(plugin.get_value("gradient_clipping")) != cfg.max_grad_norm:
            raise ConfigError(f"DeepSpeed clips gradients at gradient_clipping "
                              f"{plugin.get_value('gradient_clipping')} (launch config) but hypo's "
                              f"max_grad_norm is {cfg.max_grad_norm}: make them equal.")

    def _stop_ids(self) -> list[int]:
        from transformers import GenerationConfig

        try:
            eos = (self.model_object.generation_config if self.model_object is not None else
                   GenerationConfig.from_pretrained(model_source(self.cfg))).eos_token_id
        except Exception:  # noqa: BLE001 - no generation_config.json: the tokenizer's eos is enough
            eos = None
        return [eos] if isinstance(eos, int) else list(eos or [])

    def _check_target_only_head(self) -> bool:
        """Use the LM head on response positions only if it reproduces this model's logits
        (single process: a DDP wrapper's forward must run for gradient synchronisation)."""
        if self.acc.num_processes > 1 or not self.data.train:
            return False
        pairs = self.data.train[:2]
        batch = pack_sequences([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs], self.pad)
        return supports_target_only_head(self.pair.policy.to(self.acc.device), batch.to(self.acc.device))

    def _check_prefix_sharing(self) -> bool:
        """Share each prompt across its responses (``hypo.prefix``) if asked and if this model's
        shared-prefix log-probs reproduce its plain ones on two training pairs; said once if not."""
        if not self.cfg.prefix_sharing or not self.data.train:
            self.data.report["prefix_sharing"] = "off"
            return False
        groups = [(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in self.data.train[:2]]
        ok, why = supports_prefix_sharing(self.pair.policy.to(self.acc.device), groups, self.pad)
        self.data.report["prefix_sharing"] = "on" if ok else f"off: {why}"
        if not ok and self.acc.is_main_process:
            from rich.markup import escape

            console.print(f"[yellow]prefix sharing off:[/] {escape(why)}; every response runs in a "
                          "row of its own (its prompt, then it).")
        return ok

    def _reference_weights_fp(self) -> str:
        """π_ref's weights: with LoRA the base model's only (the adapter's random init, rank and
        targets do not change π_ref, so the cache is shared across them)."""
        if "reference" in self.fingerprints:  # a reference model given by the caller (hypo.api)
            return self.fingerprints["reference"]
        if not self.pair.is_peft:
            return self.fingerprints["weights"]
        if not hasattr(self, "_ref_weights_fp"):  # computed before any update
            self._ref_weights_fp = weights_fingerprint(self.pair.policy, base_only=True)
        return self._ref_weights_fp

    def _precision(self) -> str:
        """The dtype and autocast mode of the reference forwards (part of the cache key)."""
        mode = "bf16" if self.cfg.bf16 else str(self.acc.mixed_precision)  # or the launcher's
        modes = [f"{mode}-autocast"] if mode != "no" else []
        head = ["head"] if self.fast_head else []  # LM head on response positions only
        return "+".join([self.cfg.dtype] + modes + head)

    def _reference_logps(self, pairs: list[TokenizedPair], name: str,
                         pairs_fp: str | None = None) -> torch.Tensor:
        if not pairs:
            return torch.empty(0, 2)
        cfg = self.cfg
        ref_module = self.pair.reference if "reference" in self.fingerprints else self.pair.policy
        key = cache_key(self._reference_weights_fp(), self.fingerprints["tokenizer"],
                        pairs_fp or self.fingerprints[name], self._precision(),
                        model_config_fingerprint(ref_module))
        cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else default_cache_dir()

        # Called before any update, so without a held reference the policy itself is π_ref.
        policy = self.pair.policy.to(self.acc.device)
        held = self.pair.reference is not None or self.pair.is_peft

        @torch.no_grad()
        def pair_logps(group: list[TokenizedPair]) -> torch.Tensor:
            with self.pair.reference_view() if held else contextlib.nullcontext(policy) as ref:
                return self._pair_logps(ref, group)

        def compute() -> torch.Tensor:
            with step_progress(f"reference log-probs ({name})", len(pairs),
                               cfg.disable_progress_bar or not self.acc.is_main_process) as advance:
                with self.autocast():
                    return compute_reference_logps(pairs, self._forward_layout(name, len(pairs)),
                                                   pair_logps, progress=lambda n: advance(n))

        if not cfg.precompute_ref_log_probs:
            return compute()
        with self.acc.main_process_first():
            logps, cached = load_or_compute(key, cache_dir, compute, rows=len(pairs))
        self.data.report[f"ref_cache_{name}"] = "reused" if cached else "computed"
        return logps

    def _forward_layout(self, name: str, n: int) -> list[list[int]]:
        """The pairs' indices grouped as the loop's forwards hold them: training micro-batches of
        the first pass over the data (the stream's first permutation, per_device_train_batch_size
        at a time, as every process takes them), or evaluation's consecutive eval batches. The
        reference cache runs these same groups, so at step 0 its values are the policy's, bit for
        bit. (Later epochs regroup the pairs: π ≠ π_ref by then, and a regrouped forward differs
        from the cached one only by float32 rounding.)"""
        if name == "train":
            seed = self.cfg.seed if self.cfg.data_seed is None else self.cfg.data_seed  # pairs_stream's
            order, size = IndexStream(n, seed).take(0, n), self.cfg.per_device_train_batch_size
        else:
            order, size = list(range(n)), self.cfg.per_device_eval_batch_size
        return [order[i: i + size] for i in range(0, n, size)]

    def _pair_logps(self, model, pairs: list[TokenizedPair]) -> torch.Tensor:
        """(b, 2) log-probs [chosen, rejected] of b pairs: one pass as a few length-bucketed
        forwards, each pair's prompt computed once when prefixes are shared. The policy's training
        forward and the reference cache both run through here, so equal weights give equal
        values, bit for bit."""
        groups = [(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs]
        return self._response_logps(model, groups).view(len(pairs), 2)

    # ---- one micro-batch ----------------------------------------------------------------------
    def _micro_step(self, indices: list[int], prompts: list[list[int]] | None, ref: torch.Tensor,
                    pairs: list[TokenizedPair], backward=None, presampled=None) -> tuple[torch.Tensor, dict]:
        """Loss value and metrics (sums over the micro-batch) for pairs[indices] and online prompts.

        Training (``backward`` given: callable(loss, last)) takes one of two layouts:
        - **joint** (HyPO's KL term on the pairs' own prompts, with shared prefixes; see
          ``_joint``): one forward over ``[prompt | chosen | rejected | s_1 … s_k]`` per pair and
          one backward of L_dpo + λ·L_kl. The pairs' reference log-probs come from the reference's
          forward over the same rows (the samples' reference forward, two responses longer), so at
          step 0 the rewards are exactly 0 here too. Taken when its rows hold no more tokens than
          the larger part of the plain split layout (``_joint_fits``): long prompts.
        - **split**: the pairs' forward and backward first (reference log-probs from the cache),
          then the online samples' forward and backward, so the activation peak is the larger of
          the two parts rather than their sum.
        The gradient is that of L_dpo + λ·L_kl either way.
        """
        cfg, device, train = self.cfg, self.acc.device, backward is not None
        batch_pairs = [pairs[i] for i in indices]
        b = len(batch_pairs)
        samples, groups = None, None
        kl_term = prompts is not None and self.hypo and self.kl_coef != 0
        joint = kl_term and self._joint and self.prompt_stream is None  # online prompts = the pairs'
        if prompts is not None:
            with gathered_for_generation(self.acc, self.model) as full_model, self.autocast():  # gather once
                samples = presampled or self.sampler.sample(full_model, prompts)
                groups = sample_groups(samples)
                fits = joint and self._joint_fits(batch_pairs, groups)
                if joint and self.multi:  # the layout decides the forwards and backwards: every process
                    votes = self.acc.reduce(torch.tensor([float(fits)], device=device), reduction="sum")
                    fits = int(votes) == self.acc.num_processes  # takes the same one
                joint = fits
                if joint:
                    groups = [(p.prompt_ids, [p.chosen_ids, p.rejected_ids, *resp])
                              for p, (_, resp) in zip(batch_pairs, groups)]
                with torch.no_grad(), self.pair.reference_view(full_model) as ref_model:
                    if cfg.kl_estimator == "seq":
                        ref_all = self._response_logps(ref_model, groups)
                    else:
                        ref_all, ref_positions = self._reference_positions(ref_model, groups)
            if train and self.cfg.log_online_samples:
                self._step_samples.extend(samples.response_ids)

        if joint:  # one forward and one backward over each pair's prompt, its pair and its samples
            with torch.set_grad_enabled(train), self.autocast():
                pol_all = self._response_logps(self.model, groups).view(b, -1)
            ref_all = ref_all.view(b, -1)
            logps, ref_pairs = pol_all[:, :2], ref_all[:, :2]
            pol_online, ref_online = pol_all[:, 2:], ref_all[:, 2:]
            out = self._preference_loss(batch_pairs, logps, ref_pairs, train)
            kl_loss = reverse_kl_loss(pol_online, ref_online)
            if train:
                backward(out.losses.mean() + self.kl_coef * kl_loss, True)
        else:  # the offline pairs first, as a few length-bucketed forwards over [chosen | rejected]
            with torch.set_grad_enabled(train), self.autocast(), lora_dropout_active(self.model, train):
                logps = self._pair_logps(self.model, batch_pairs)
            out = self._preference_loss(batch_pairs, logps, ref[indices].to(device), train)
            if train and not (kl_term and self.single_backward):
                with lora_dropout_active(self.model):  # checkpointed layers recompute in the same mode
                    backward(out.losses.mean(), not kl_term)
        stats = {"rewards/chosen": out.chosen_rewards.sum(), "rewards/rejected": out.rejected_rewards.sum(),
                 "rewards/margins": (out.chosen_rewards - out.rejected_rewards).sum(),
                 "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().sum(),
                 "logps/chosen": logps[:, 0].detach().sum(), "logps/rejected": logps[:, 1].detach().sum(),
                 "loss/dpo": out.losses.detach().sum()}
        stats = {k: float(v) for k, v in stats.items()}
        stats["pairs"] = b
        stats["tokens/pairs"] = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
                                    for p in batch_pairs)

        # Online samples (split layout): the KL term, its gradient only when λ > 0.
        kl_loss = kl_loss if joint else None
        if samples is not None:
            shape = (len(prompts), samples.k)
            if not joint:
                ref_online = ref_all
                with torch.set_grad_enabled(kl_term), self.autocast():
                    if cfg.kl_estimator == "seq":
                        pol_online = self._response_logps(self.model, groups)
                        kl_loss = reverse_kl_loss(pol_online.view(shape), ref_online.view(shape))
                    else:
                        pol_online, kl_loss = self._token_kl_loss(groups, shape, ref_positions)
                if train and kl_term:
                    backward(self.kl_coef * kl_loss + (out.losses.mean() if self.single_backward else 0), True)
            kl, _ = reverse_kl_estimate(pol_online.reshape(-1), ref_online.reshape(-1))
            # Logged: λ·(KL estimate), the KL term's share of the objective. (The surrogate L_kl's
            # value is not a KL; only its gradient is meaningful.)
            stats["tokens/online"] = sum(len(p) + len(r) for p, r in zip(samples.prompt_ids, samples.response_ids))
            stats.update({"loss/kl": self.kl_coef * kl if self.hypo else 0.0, "kl/online": kl,
                          "online/length": samples.mean_length,
                          "online/clipped_ratio": samples.clipped_ratio, "online_groups": 1})
        loss = hypo_loss(out.losses.detach(), kl_loss.detach() if kl_term else None, self.kl_coef)
        return loss, stats

    @staticmethod
    def _joint_fits(pairs: list[TokenizedPair], groups: list[Group]) -> bool:
        """Whether the joint rows ``[P | c | r | s_1 … s_k]`` hold no more tokens than the larger part
        of the unshared split layout (pairs ``[P | c]``, ``[P | r]``; samples ``[P | s_i]``).
        Activations grow with tokens, so the joint layout then never raises a step's peak memory
        above the plain path's: with k = 2 it needs P ≥ min(|c| + |r|, Σ|s_i|), which long prompts
        meet. Otherwise the split layout runs, each part still prefix-shared."""
        joint = pair_part = sample_part = 0
        for pair, (prompt, responses) in zip(pairs, groups):
            sampled = sum(map(len, responses))
            joint += len(prompt) + len(pair.chosen_ids) + len(pair.rejected_ids) + sampled
            pair_part += 2 * len(prompt) + len(pair.chosen_ids) + len(pair.rejected_ids)
            sample_part += len(responses) * len(prompt) + sampled
        return joint <= max(pair_part, sample_part)

    def _preference_loss(self, pairs: list[TokenizedPair], logps: torch.Tensor, ref: torch.Tensor,
                         train: bool = False):
        """``losses.preference_loss`` of b pairs from (b, 2) policy and reference log-probs, with the
        variants' extra inputs (LD-DPO, WPO: ``_variant_logps``) and the loss settings of cfg."""
        lengths = torch.tensor([[len(p.chosen_ids), len(p.rejected_ids)] for p in pairs],
                               device=logps.device)  # response tokens, for ipo's per-token mean
        variant = self._variant_logps(pairs, logps, train)
        weighted = variant.pop("logps", logps)
        out = preference_loss(weighted[:, 0], weighted[:, 1], ref[:, 0], ref[:, 1], self.cfg.beta,
                              chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1],
                              sft_chosen_logps=logps[:, 0], **variant, **self._loss_settings())
        self.last_rewards = (out.chosen_rewards, out.rejected_rewards)  # compute_metrics' input
        return out

    def _response_logps(self, model, groups: list[Group]) -> torch.Tensor:
        """(R,) log-probs of the groups' responses in group order: shared-prefix rows when on, as a
        few length-bucketed forwards (the same call for the policy and the reference)."""
        return response_logps(model, groups, self.pad, self.acc.device, self.cfg.length_buckets,
                              self.fast_head, self.multi, self.shared)

    def _reference_positions(self, ref_model, groups: list[Group]):
        """Reference forward of the samples for the token / analytic estimators: sequence log-probs
        (N,) and the ResponsePositions (hidden states or logits, per-token log-probs attached)."""
        positions = response_positions_of(ref_model, groups, self.pad, self.acc.device, self.fast_head,
                                          self.shared)
        positions.token_logps, _ = position_logps_and_kls(positions)
        n = sum(len(rs) for _, rs in groups)
        seq = torch.zeros(n, device=positions.row.device).index_add(0, positions.row, positions.token_logps)
        return seq, positions

    def _token_kl_loss(self, groups: list[Group], shape, ref_positions):
        """(policy sequence log-probs (N,), L_kl) of the 'token' or 'analytic' estimator
        (``losses.token_kl_loss`` / ``analytic_kl_loss``) from one forward of the samples."""
        positions = response_positions_of(self.model, groups, self.pad, self.acc.device, self.fast_head,
                                          self.shared)
        analytic = self.cfg.kl_estimator == "analytic"
        logps, kls = position_logps_and_kls(positions, ref_positions if analytic else None)
        n = shape[0] * shape[1]
        seq = torch.zeros(n, device=logps.device).index_add(0, positions.row, logps)
        lp, mask = positions.padded(logps, n)
        lp, mask = lp.view(*shape, -1), mask.view(*shape, -1)
        if analytic:
            return seq, analytic_kl_loss(lp, positions.padded(kls, n)[0].view(*shape, -1), mask)
        ref_lp = positions.padded(ref_positions.token_logps.to(logps.device), n)[0].view(*shape, -1)
        return seq, token_kl_loss(lp, ref_lp, mask)

    def _pair_reference(self, pairs: list[TokenizedPair], name: str, keep: bool = True) -> torch.Tensor:
        """(N, 2) reference log-probs of pairs (cached by content); LD-DPO-weighted with ld_alpha
        (the shared prefixes are a second cached set, ``variants.shared_prefix_pairs``). keep:
        record the pairs' fingerprint under ``name`` (checkpoints compare it on resume)."""
        def reference(part: list[TokenizedPair], key: str) -> torch.Tensor:
            fp = self.fingerprints.get(key) if key in ("train", "eval") else fingerprint_pairs(part)
            if keep:
                self.fingerprints.setdefault(key, fp)
            return self._reference_logps(part, key, fp)

        ref = reference(pairs, name)
        if self.cfg.ld_alpha is None or not pairs:
            return ref
        return ld_logps(ref, reference(shared_prefix_pairs(pairs), f"{name}/shared"), self.cfg.ld_alpha)

    def _variant_logps(self, pairs: list[TokenizedPair], logps: torch.Tensor, train: bool) -> dict:
        """preference_loss' extra inputs for LD-DPO (weighted (b, 2) log-probs, from a forward of the
        shared prefixes) and WPO (pair weights, from a no-grad forward): {} for plain DPO."""
        cfg, b, out = self.cfg, len(pairs), {}
        if cfg.ld_alpha is not None:
            with torch.set_grad_enabled(train), self.autocast(), lora_dropout_active(self.model, train):
                prefix = self._pair_logps(self.model, shared_prefix_pairs(pairs))
            out["logps"] = ld_logps(logps, prefix, cfg.ld_alpha)
        if cfg.use_weighting:
            with self.autocast():
                aligned = aligned_mean_logps(self.acc.unwrap_model(self.model),
                                             [p.prompt_ids for p in pairs] * 2,
                                             [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs],
                                             self.pad, self.acc.device)
            out["pair_weights"] = wpo_weights(aligned[:b], aligned[b:])
        return out

    def _loss_settings(self) -> dict:
        """preference_loss' keyword settings from cfg (rpo_alpha = one more 'sft' term)."""
        cfg = self.cfg
        types, weights = list(cfg.loss_type), list(cfg.loss_weights or [1.0] * len(cfg.loss_type))
        if cfg.rpo_alpha is not None:
            types, weights = types + ["sft"], weights + [cfg.rpo_alpha]
        return dict(loss_type=types, loss_weights=weights, label_smoothing=cfg.label_smoothing,
                    f_divergence_type=cfg.f_divergence_type,
                    f_alpha_divergence_coef=cfg.f_alpha_divergence_coef, discopop_tau=cfg.discopop_tau)

    def _update_kl_coef(self, metrics: dict) -> None:
        """λ for the next step: from the schedule, or by dual ascent on the KL budget kl_target
        (the mean online KL of the step against κ; docs/losses.md)."""
        cfg = self.cfg
        if cfg.kl_target > 0:
            self.kl_coef = dual_ascent_kl_coef(self.kl_coef, metrics.get("kl/online", float("nan")),
                                               cfg.kl_target, cfg.kl_target_rate)
        else:
            self.kl_coef = kl_coef_at(cfg.kl_coef, cfg.kl_coef_schedule,
                                      self.step / max(1, self.total_steps - 1), cfg.kl_coef_final)

    def _sample_step(self, prompts: list[list[list[int]] | None]) -> list:
        """Samples of every micro-batch of the step from ONE ``generate`` call (the weights do not
        change within a step, so each row is still an exact draw from the current π): more rows
        per decode step, the same weight reads. One entry per micro-batch, None where it samples
        by itself (vLLM keeps its own batching; single micro-batch steps are unchanged)."""
        if len(prompts) < 2 or any(p is None for p in prompts) or type(self.sampler) is not OnlineSampler:
            return [None] * len(prompts)
        with gathered_for_generation(self.acc, self.model) as full_model, self.autocast():
            samples = self.sampler.sample(full_model, [x for p in prompts for x in p])
        return samples.split([len(p) for p in prompts])

    def _online_prompts(self, micro: int, indices: list[int]) -> list[list[int]] | None:
        if not self.hypo:
            return None
        if self.prompt_stream is None:
            return [self.data.train[i].prompt_ids for i in indices]
        count = self.cfg.online_prompts_per_step or self.cfg.per_device_train_batch_size
        world, rank = self.acc.num_processes, self.acc.process_index
        start = (micro * world + rank) * count
        return [self.data.prompts[i] for i in self.prompt_stream.take(start, count)]

    # ---- the loop -----------------------------------------------------------------------------
    def train(self, continue_run: bool = False):
        """Train to total_steps; returns transformers' TrainOutput (global_step, training_loss,
        metrics: train_runtime, train_samples_per_second, train_steps_per_second, train_loss,
        epoch). continue_run: a further call on the same trainer (``start_segment`` ran): the run
        folder is this run's own, so it is neither checked nor cleared."""
        cfg, acc = self.cfg, self.acc
        out_dir = Path(cfg.output_dir)
        started_at = time.perf_counter()
        if not continue_run:
            check_output_dir(cfg)  # again here: resume_from_checkpoint may have been set since __init__
        acc.wait_for_everyone()  # every process checks before the main one writes anything
        if cfg.resume_from_checkpoint and not continue_run:
            if cfg.overwrite_output_dir:
                console.print("overwrite_output_dir is ignored: resume_from_checkpoint continues the run.")
            self._resume(cfg.resume_from_checkpoint)
        elif cfg.overwrite_output_dir and acc.is_main_process and not continue_run:
            self._clear_previous_run(out_dir)
        self._set_run_name(out_dir)
        if acc.is_main_process:  # every file of the run is listed in its hypo_files.json
            run = RunFolder(out_dir)
            if cfg.resume_from_checkpoint:
                adopt_legacy_run(out_dir)
            run.write_text("hypo_config.json", cfg.to_json())
            run.write_text("data_report.json", json.dumps(self.data.report, indent=2) + "\n")
        log_dir = Path(cfg.logging_dir) if cfg.logging_dir else out_dir / "runs" / cfg.run_name
        self.logger = MetricsLogger(out_dir, cfg.trackers(), cfg.to_dict(), enabled=acc.is_main_process,
                                    log_dir=log_dir, run_name=cfg.run_name)
        self.logger.truncate_after(self.step)
        samples_log = out_dir / "online_samples.jsonl"
        if cfg.log_online_samples and acc.is_main_process:
            truncate_jsonl(samples_log, self.step)
        self._install_signal_handlers()
        accum, b = cfg.gradient_accumulation_steps, cfg.per_device_train_batch_size
        first_step, done = self.step, {"eval": None, "save": None}  # steps last evaluated / saved
        loss_sum, self.runs = 0.0, self.runs + 1
        self.control._new_training()
        self._sync_state()
        self._event("on_train_begin")
        if cfg.eval_on_start and self.step == 0:
            self._evaluate_and_log()
        self._event("on_epoch_begin")
        try:
            with step_progress("training", self.total_steps, cfg.disable_progress_bar
                               or not acc.is_main_process, completed=self.step) as advance:
                while self.step < self.total_steps:
                    started = time.perf_counter()
                    totals: dict[str, float] = {}
                    losses = []
                    self._step_samples, self._step_records = [], []
                    self.control._new_step()
                    self._event("on_step_begin")
                    plan = []  # (indices, online prompts) of every micro-batch of the step
                    for micro in range(accum):
                        m = self.step * accum + micro  # global micro-batch counter (data cursor)
                        start = m * self.global_batch + acc.process_index * b
                        indices = self.pairs_stream.take(start, b)
                        plan.append((indices, self._online_prompts(m, indices)))
                    presampled = self._sample_step([p for _, p in plan])
                    for micro, ((indices, prompts), online) in enumerate(zip(plan, presampled)):
                        sync = micro == accum - 1

                        def backward(part, last, sync=sync):  # gradients sync on the step's last
                            with contextlib.nullcontext() if (sync and last) else acc.no_sync(self.model):
                                acc.backward(part / accum)

                        loss, stats = self._micro_step(indices, prompts, self.ref_train,
                                                       self.data.train, backward=backward,
                                                       presampled=online)
                        losses.append(float(loss.detach()))
                        for k, v in stats.items():
                            totals[k] = totals.get(k, 0.0) + v
                        self._step_records += [self.data.train[i].index for i in indices]
                        if not sync:
                            self._event("on_substep_end")
                    metrics = self._finish_step(totals, losses)
                    metrics["step_time"] = time.perf_counter() - started
                    if self.hypo:
                        metrics["kl/coef"] = self.kl_coef
                        if cfg.kl_target > 0:
                            metrics["kl/target"] = cfg.kl_target
                    self.step += 1
                    loss_sum += metrics["loss"]
                    if self.hypo:
                        self._update_kl_coef(metrics)
                    if cfg.sync_ref_model and self.step % cfg.ref_model_sync_steps == 0:
                        self._sync_reference()
                    self._sync_state()
                    self._event("on_step_end")
                    epoch_end = self._epoch_ends(self.step)
                    if epoch_end:
                        self._event("on_epoch_end")
                    if cfg.log_online_samples and acc.is_main_process:
                        append_jsonl(samples_log, {"step": self.step, "response_ids": self._step_samples})
                    logged = self.control.should_log  # on_log resets the flag (transformers)
                    if logged:
                        self._log(metrics)
                    advance(1, f"loss {metrics['loss']:.4f}" +
                            (f"  kl {metrics['kl/online']:.3f}" if "kl/online" in metrics else ""),
                            line=logged)
                    if self.control.should_evaluate and self.eval_sets:
                        self._evaluate_and_log()
                        done["eval"] = self.step
                    if self.control.should_save:
                        self._save_and_report()
                        done["save"] = self.step
                    if self._stop_requested():
                        if done["save"] != self.step:
                            self._save_and_report()
                        folder = self._print_resume_hint()
                        name = "SIGTERM" if self._signal == signal.SIGTERM else "SIGINT"
                        raise Interrupted(143 if self._signal == signal.SIGTERM else 130,
                                          f"stopped by {name} after step {self.step}: checkpoint "
                                          f"written to {folder}; resume with: {self.resume_command}")
                    if self.control.should_training_stop:
                        # Ends after this step; the final evaluation and save_model run as at a
                        # normal end (the LR schedule is not changed).
                        self.total_steps = min(self.total_steps, self.step)
                    elif epoch_end and self.step < self.total_steps:
                        self._event("on_epoch_begin")
            if self.eval_sets and cfg.eval_strategy != "no" and done["eval"] != self.step:
                self._evaluate_and_log()
            if self._final_checkpoint_due(first_step) and done["save"] != self.step:
                self._save_and_report()  # the final step too, so a finished run can be extended
            if cfg.load_best_model_at_end:
                self._load_best_model()
            self.save_model()
            output = self._train_output(started_at, loss_sum, self.step - first_step)
            self._event("on_train_end")
        finally:
            self.logger.close()
            self.logger = None
            self._restore_signal_handlers()
        return output

    def start_segment(self) -> None:
        """Prepare a further train() call on this trainer (transformers' repeated train()): the
        weights go on from where they are, with a new optimizer and learning-rate schedule over
        another max_steps / num_train_epochs worth of steps; step numbers, metrics.jsonl and
        log_history continue."""
        steps = self.total_steps if self.runs == 0 else self._steps_per_call()
        self.total_steps = self.step + steps
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self.acc.prepare_optimizer(make_optimizer(self.cfg, trainable))
        self.scheduler = make_scheduler(self.cfg, self.optimizer, steps)
        self.callback_handler.optimizer, self.callback_handler.lr_scheduler = self.optimizer, self.scheduler
        self.state.max_steps = self.total_steps

    def _steps_per_call(self) -> int:
        per_step = self.global_batch * self.cfg.gradient_accumulation_steps
        return self.cfg.max_steps if self.cfg.max_steps > 0 else max(
            1, math.ceil(self.cfg.num_train_epochs * len(self.data.train) / per_step))

    def _train_output(self, started_at: float, loss_sum: float, steps: int):
        """transformers' TrainOutput, logged as the last row of log_history (as Trainer.train)."""
        from transformers.trainer_utils import TrainOutput

        runtime = time.perf_counter() - started_at
        pairs = steps * self.global_batch * self.cfg.gradient_accumulation_steps
        metrics = {"train_runtime": round(runtime, 4),
                   "train_samples_per_second": round(pairs / runtime, 3) if runtime else 0.0,
                   "train_steps_per_second": round(steps / runtime, 3) if runtime else 0.0,
                   "train_loss": loss_sum / steps if steps else float("nan"),
                   "epoch": self.state.epoch}
        self._log(metrics, to_file=False)
        return TrainOutput(self.step, metrics["train_loss"], metrics)

    # ---- callbacks and logs (transformers' protocol, see hypo.callbacks) -----------------------
    def _event(self, name: str, **kwargs) -> None:
        """Fire a TrainerCallback event; the returned control is the loop's."""
        self.control = getattr(self.callback_handler, name)(self.cfg, self.state, self.control, **kwargs)

    def _sync_state(self) -> None:
        self.state.global_step, self.state.max_steps = self.step, self.total_steps
        per_step = self.global_batch * self.cfg.gradient_accumulation_steps
        self.state.epoch = self.step * per_step / len(self.data.train)

    def _log(self, metrics: dict, to_file: bool = True) -> None:
        """A row of log_history (with "step"), of metrics.jsonl while training, then on_log."""
        row = dict(metrics)
        row.setdefault("epoch", self.state.epoch)
        self.state.log_history.append({**row, "step": self.step})
        if to_file and self.logger is not None:
            self.logger.log(row, self.step)
        self._event("on_log", logs=row)

    def _epoch_ends(self, step: int) -> bool:
        """Whether optimizer step `step` completes a pass over the training pairs (its data cursor
        crosses a multiple of their number)."""
        per_step, n = self.global_batch * self.cfg.gradient_accumulation_steps, len(self.data.train)
        return step * per_step // n > (step - 1) * per_step // n

    def _final_checkpoint_due(self, first_step: int) -> bool:
        """Whether the last step still needs its checkpoint: not under save_strategy 'no' or
        save_steps 0, and not when no step ran."""
        strategy = self.cfg.save_strategy
        wanted = strategy == "epoch" or (strategy == "steps" and self.cfg.save_steps > 0)
        return wanted and self.step > first_step

    def _save_and_report(self) -> None:
        folder = self.save_checkpoint()
        if folder is not None and self.state.best_global_step == self.step:
            self.state.best_model_checkpoint = str(folder)
        self._event("on_save")

    def _evaluate_and_log(self, sets: dict | None = None, prefix: str = "eval") -> dict:
        """Evaluate every set (default: self.eval_sets), log one row per set, then on_evaluate
        with all of them; returns the merged metrics."""
        merged = {}
        for name, (pairs, ref) in (self.eval_sets if sets is None else sets).items():
            metrics = self.evaluate(pairs, ref, f"{prefix}_{name}" if name else prefix)
            metrics["epoch"] = self.state.epoch
            self._log(metrics)
            merged.update(metrics)
        self._event("on_evaluate", metrics=merged)
        if update_best(self.cfg, self.state, merged) and self.cfg.load_best_model_at_end:
            self._best_weights = {n: p.detach().to("cpu", copy=True) for n, p in self._trainable().items()}
        return merged

    def _load_best_model(self) -> None:
        """load_best_model_at_end: the trainable weights of the best evaluation (kept in memory, or
        read back from its checkpoint after a resume)."""
        best = getattr(self, "_best_weights", None)
        if best is None and self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint).is_dir():
            best = ckpt.load_checkpoint(Path(self.state.best_model_checkpoint))[1]
        if best is None or self.state.best_global_step == self.step:
            return
        with torch.no_grad():
            for name, p in self._trainable().items():
                p.copy_(best[name].to(p.device))
        console.print(f"load_best_model_at_end: weights of step {self.state.best_global_step} "
                      f"({self.cfg.metric_for_best_model} {self.state.best_metric:.6g})")

    def _sync_reference(self) -> None:
        """TR-DPO: π_ref ← α·π + (1 − α)·π_ref, then the pairs' reference log-probs again."""
        mix_into_reference(self.acc.unwrap_model(self.model), self.pair.reference,
                           self.cfg.ref_model_mixup_alpha)
        self.ref_train = self._pair_reference(self.data.train, "train")
        self.eval_sets = {name: (pairs, self._pair_reference(pairs, f"eval:{name}" if name else "eval"))
                          for name, (pairs, _) in self.eval_sets.items()}

    def _clear_previous_run(self, out_dir: Path) -> None:
        """overwrite_output_dir: remove the previous run's own files, say what went and what stayed."""
        removed, kept = clear_output_dir(out_dir)
        if removed or kept:
            console.print(f"overwrite_output_dir: removed the files the previous run in {out_dir} "
                          f"wrote ({', '.join(removed) or 'none'})" +
                          (f"; kept what it did not write: {', '.join(kept)}" if kept else ""),
                          markup=False, highlight=False)

    def _set_run_name(self, out_dir: Path) -> None:
        """run_name (TensorBoard / W&B): given, the resumed run's own, or start time and host."""
        if self.cfg.run_name:
            return
        saved = out_dir / "hypo_config.json"
        if self.cfg.resume_from_checkpoint and saved.is_file():
            try:
                name = json.loads(saved.read_text()).get("run_name")
                self.cfg.run_name = name if isinstance(name, str) and re.fullmatch(r"[\w@+-][\w.@+-]{0,199}", name) else None
            except (ValueError, AttributeError, RecursionError):  # a damaged file: a new name below
                pass
        if not self.cfg.run_name:
            import datetime
            import socket

            self.cfg.run_name = datetime.datetime.now().strftime("%b%d_%H-%M-%S_") + socket.gethostname()

    def _print_resume_hint(self) -> Path:
        folder = Path(self.cfg.output_dir) / f"{ckpt.PREFIX}{self.step}"
        if self.acc.is_main_process:
            # one unwrapped line without markup, so that the command can be copied as it is
            console.print(f"checkpoint written to {folder}; resume with: {self.resume_command}",
                          soft_wrap=True, markup=False, highlight=False)
        return folder

    def _finish_step(self, totals: dict, losses: list[float]) -> dict:
        """Clip, guard against non-finite values, apply the update; returns the step's metrics."""
        cfg, acc = self.cfg, self.acc
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        grad_norm = float(grad_norm)
        loss = sum(losses) / len(losses)
        lr = self.scheduler.get_last_lr()[0]
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if self.multi:  # one process's NaN stops (or skips) the step on every process
            flag = self.acc.reduce(torch.tensor([float(finite)], device=self.acc.device), reduction="sum")
            finite = int(flag) == self.acc.num_processes
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            records = sorted(set(self._step_records))
            if cfg.nonfinite_policy == "error":
                raise NonFiniteError(f"step {self.step + 1}: non-finite loss ({loss}) or gradient norm "
                                     f"({grad_norm}); the update was not applied. Records of this step "
                                     f"(indices in {cfg.dataset_name}): {records}. Lower learning_rate, "
                                     "check those records, or set nonfinite_policy=skip.")
            self.skipped += 1
            self.consecutive_skips += 1
            if self.consecutive_skips >= cfg.max_consecutive_nonfinite:
                raise NonFiniteError(f"step {self.step + 1}: {self.consecutive_skips} non-finite steps in "
                                     f"a row (records {records}); stopping.")
        else:
            self.consecutive_skips = 0
            self._event("on_pre_optimizer_step")
            self.optimizer.step()
            self._event("on_optimizer_step")
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        totals = self._reduce(totals)
        n = totals.pop("pairs")
        groups = totals.pop("online_groups", 0)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr}
        for k, v in totals.items():  # means per pair / per online group; token counts are totals
            metrics[k] = v if k.startswith("tokens/") else v / (groups if k in ONLINE_KEYS else n)
        # `loss` is the objective's value: mean ℓ_dpo + λ·KL estimate (exactly DPO's loss for DPO).
        metrics["loss"] = metrics["loss/dpo"] + metrics.get("loss/kl", 0.0)
        if "online/clipped_ratio" in metrics:  # 1 only if every sample was an exact draw from π
            metrics["online/unbiased"] = float(samples_unbiased(self.sampler.unbiased,
                                                                metrics["online/clipped_ratio"]))
        metrics["epoch"] = (self.step + 1) * cfg.gradient_accumulation_steps * self.global_batch / len(self.data.train)
        metrics["train/skipped_nonfinite"] = self.skipped
        return metrics

    def _reduce(self, totals: dict) -> dict:
        if self.acc.num_processes == 1:
            return totals
        keys = sorted(totals)
        t = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=self.acc.device)
        t = self.acc.reduce(t, reduction="sum")
        return dict(zip(keys, t.tolist()))

    @torch.no_grad()
    def evaluate(self, pairs: list[TokenizedPair] | None = None, ref: torch.Tensor | None = None,
                 prefix: str = "eval") -> dict:
        """DPO metrics on eval pairs (default: the run's eval data) and the online reverse-KL
        estimate on their prompts, named ``{prefix}_<metric>``; compute_metrics' and eval_hook's
        metrics too."""
        cfg = self.cfg
        if pairs is None:
            pairs, ref = self.data.eval, self.ref_eval
        totals: dict[str, float] = {}
        rewards = []
        bs = cfg.per_device_eval_batch_size
        for start in range(0, len(pairs), bs):
            idx = list(range(start, min(start + bs, len(pairs))))
            loss, stats = self._micro_step(idx, None, ref, pairs)
            stats["loss"] = stats["loss/dpo"]
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            if self.compute_metrics is not None:  # its only reader
                rewards.append(torch.stack(self.last_rewards, 1).float().cpu())
            self._event("on_prediction_step")
        n = totals.pop("pairs")
        metrics = {f"{prefix}_{k}": v / n for k, v in totals.items() if not k.startswith("tokens/")}
        # The eval KL needs π_ref live: none is held when no eval data was known at set-up
        # (evaluate() on a new dataset with cached reference log-probs); then it is left out.
        if cfg.eval_online_prompts > 0 and (self.pair.is_peft or self.pair.reference is not None):
            metrics.update(self.online_kl([p.prompt_ids for p in pairs[: cfg.eval_online_prompts]],
                                          prefix=f"{prefix}_"))
        if self.compute_metrics is not None:
            metrics.update(self._computed_metrics(torch.cat(rewards), prefix))
        if self.eval_hook is not None:
            metrics.update({f"{prefix}_{k}": v for k, v in self.eval_hook(self).items()})
        return metrics

    def _computed_metrics(self, rewards: torch.Tensor, prefix: str) -> dict:
        """compute_metrics(EvalPrediction): predictions (N, 2) = the implicit rewards β·ρ of
        [chosen, rejected] per pair (full logits are never built); label_ids (N,) = 0, the index
        of the preferred response, so argmax accuracy is the reward accuracy."""
        import numpy as np
        from transformers import EvalPrediction

        predictions = rewards.numpy()
        extra = self.compute_metrics(EvalPrediction(predictions=predictions,
                                                    label_ids=np.zeros(len(predictions), np.int64)))
        return {k if k.startswith(f"{prefix}_") else f"{prefix}_{k}": v for k, v in (extra or {}).items()}

    @torch.no_grad()
    def online_kl(self, prompts: list[list[int]], prefix: str = "") -> dict:
        """Reverse KL(π‖π_ref) estimated on fresh samples, with a generator seeded the same way at
        every call so successive evaluations are comparable."""
        cfg = self.cfg
        sampler = OnlineSampler(self.data.tokenizer, cfg.num_online_samples, cfg.max_new_tokens,
                                cfg.seed + 2, cfg.temperature, cfg.top_k, cfg.top_p, self.sampler.stop_token_ids,
                                share_prefill=cfg.prefix_sharing)
        with gathered_for_generation(self.acc, self.model) as model, self.autocast():
            samples = sampler.sample(model, prompts)
            groups = sample_groups(samples)
            policy = self._response_logps(model, groups)
            with self.pair.reference_view(model) as ref_model:
                reference = self._response_logps(ref_model, groups)
            kl, se = reverse_kl_estimate(policy, reference)
        return {f"{prefix}kl/online": kl, f"{prefix}kl/online_stderr": se,
                f"{prefix}online/length": samples.mean_length,
                f"{prefix}online/clipped_ratio": samples.clipped_ratio,
                f"{prefix}online/unbiased": float(samples_unbiased(sampler.unbiased, samples.clipped_ratio))}

    # ---- saving and resuming ------------------------------------------------------------------
    def _data_cursor(self, step: int) -> dict:
        """Where the data streams stand after `step` optimizer steps (pairs and online prompts)."""
        micro = step * self.cfg.gradient_accumulation_steps
        return {"pairs": micro * self.global_batch, "micro_batches": micro,
                "pairs_in_data": len(self.data.train)}

    def _sharding_name(self) -> str:
        """How the weights and optimizer state are split: 'fsdp2', 'deepspeed-zeroN' or 'none'."""
        if self.sharded:
            return "fsdp2"
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        if self.acc.distributed_type == DistributedType.DEEPSPEED and plugin is not None:
            return f"deepspeed-zero{plugin.zero_stage}"
        return "none"

    def _trainable(self) -> dict[str, torch.Tensor]:
        model = self.acc.unwrap_model(self.model)
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights, gathered across processes when sharded (collective call)."""
        if self.sharded:
            return sharding.full_state_dict(self.model)
        return self.acc.get_state_dict(self.model)

    def _optimizer_state(self) -> dict:
        """The optimizer state to save; under FSDP2 gathered whole, keyed by parameter names
        (collective call: every process, before the main one writes)."""
        if self.sharded:
            return sharding.full_optimizer_state(self.model, self.optimizer)
        if self._sharding_name().startswith("deepspeed"):
            return None  # each process holds its own partition (and DeepSpeed objects): not resumable
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> Path | None:
        from accelerate.utils import gather_object

        self.acc.wait_for_everyone()
        full = self._full_state_dict()
        optimizer = self._optimizer_state()
        samplers = gather_object([self.sampler.state_dict()])  # one stream per process
        if not self.acc.is_main_process:
            return None
        trainable = {n: full.get(n, p) for n, p in self._trainable().items()}
        state = {"step": self.step, "data_cursor": self._data_cursor(self.step),
                 "optimizer": optimizer, "sharding": self._sharding_name(),
                 "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(),
                 "sampler": samplers, "skipped": self.skipped,
                 "consecutive_skips": self.consecutive_skips, "config": self.cfg.to_dict(),
                 "kl_coef": self.kl_coef,
                 "best": {"metric": self.state.best_metric, "step": self.state.best_global_step,
                          "checkpoint": self.state.best_model_checkpoint}}
        return ckpt.save_checkpoint(self.cfg.output_dir, self.step, trainable, state,
                                    self.fingerprints,
                                    self.cfg.save_total_limit or 2**31)  # None: keep every one

    def _resume(self, spec: str) -> None:
        folder = ckpt.resolve_checkpoint(spec, self.cfg.output_dir)
        if folder is None:
            console.print(f"no checkpoint in {self.cfg.output_dir}: starting from step 0")
            return
        manifest, trainable, state = ckpt.load_checkpoint(folder)
        try:
            self._load_state(folder, manifest, trainable, state)
        except (ConfigError, ckpt.CheckpointError):
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
            # a state that passed its checksums but was not written by hypo for this run
            raise ckpt.CheckpointError(f"{folder}: its trainer state does not fit this run "
                                       f"({type(err).__name__}: {err}).") from None
        console.print(f"resumed from {folder} at step {self.step}")
        # log_history as TRL restores it: the rows logged up to the checkpoint's step.
        if (Path(self.cfg.output_dir) / "metrics.jsonl").exists():
            self.state.log_history = [r for r in read_metrics(self.cfg.output_dir)
                                      if r.get("step", 0) <= self.step]
        best = state.get("best") or {}
        self.state.best_metric, self.state.best_global_step = best.get("metric"), best.get("step")
        self.state.best_model_checkpoint = best.get("checkpoint")

    def _load_state(self, folder: Path, manifest: dict, trainable: dict, state: dict) -> None:
        """Check a loaded checkpoint against this run and restore weights, optimizer, schedule,
        sampler, RNGs and counters from it."""
        written = state.get("sharding", "none") if isinstance(state, dict) else "none"
        if written.startswith("deepspeed"):  # its optimizer state_dict is the main process's partition
            raise ckpt.CheckpointError(f"{folder} was written under DeepSpeed, whose checkpoints hold "
                                       "only the main process's optimizer partition: hypo cannot resume "
                                       "them. Start a new run from its weights, or train under FSDP2 / DDP.")
        if written != self._sharding_name():
            raise ckpt.CheckpointError(f"{folder} was written with sharding {written!r}; resume it "
                                       f"under the same launch config (now {self._sharding_name()!r}).")
        ckpt.check_state(folder, manifest, state, trainable, self._trainable(), self.optimizer)
        old, new = result_settings(state["config"]), result_settings(self.cfg.to_dict())
        changed = [f for f in RESULT_FIELDS if old[f] != new[f]]
        changed = self._check_new_length(changed, old, state["step"], folder)
        changed += [f"fingerprint:{k}" for k, v in manifest["fingerprints"].items()
                    if self.fingerprints.get(k) != v]
        if changed:
            raise ConfigError(f"cannot resume from {folder}: these settings differ from the run that "
                              f"wrote it: {', '.join(changed)}. Restore them or start a new output_dir.")
        if state["step"] > self.total_steps:
            raise ckpt.CheckpointError(f"{folder}: step: expected at most {self.total_steps} (this "
                                       f"run's length), found {state['step']}.")
        params = self._trainable()
        missing = set(params) ^ set(trainable)
        if missing:
            raise ckpt.CheckpointError(f"{folder}: parameter names differ: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, p in params.items():
                sharding.copy_full_(p, trainable[name])  # a shard keeps its slice
        if self.sharded:
            sharding.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        samplers = state["sampler"] if isinstance(state["sampler"], list) else [state["sampler"]]
        if len(samplers) != self.acc.num_processes:
            raise ckpt.CheckpointError(f"{folder} was written by {len(samplers)} process(es); resume "
                                       f"it with the same number (now {self.acc.num_processes}).")
        self.sampler.load_state_dict(samplers[self.acc.process_index])
        ckpt.set_rng_state(state["rng"])
        if state["data_cursor"] != self._data_cursor(state["step"]):
            raise ckpt.CheckpointError(f"{folder}: data cursor {state['data_cursor']} does not match "
                                       f"step {state['step']} under this batch layout.")
        self.step, self.skipped = state["step"], state["skipped"]
        self.consecutive_skips = state["consecutive_skips"]
        self.kl_coef = float(state.get("kl_coef", self.cfg.kl_coef))  # λ of the next step

    def _check_new_length(self, changed: list[str], old: dict, step: int, folder: Path) -> list[str]:
        """A different max_steps / num_train_epochs resumes only where the learning rate of every
        step does not depend on the total (constant schedule, warm-up in steps); the rest of
        ``changed`` is returned for the caller to refuse."""
        length = [f for f in changed if f in ("max_steps", "num_train_epochs")]
        if not length:
            return changed
        cfg = self.cfg
        what = ", ".join(f"{f} {old.get(f)} -> {getattr(cfg, f)}" for f in length)
        if self.total_steps < step:
            why = f"the checkpoint is at step {step}, beyond the new total of {self.total_steps} steps"
        elif cfg.lr_scheduler_type not in ("constant", "constant_with_warmup", "inverse_sqrt"):
            why = (f"lr_scheduler_type {cfg.lr_scheduler_type!r} sets every step's learning rate from "
                   "the total number of steps")
        elif cfg.kl_coef_schedule != "constant":
            why = f"kl_coef_schedule {cfg.kl_coef_schedule!r} sets every step's λ from the total number of steps"
        elif cfg.warmup_ratio > 0 and not cfg.warmup_steps:
            why = f"warmup_ratio {cfg.warmup_ratio} sets the warm-up length from the total number of steps"
        else:
            return [f for f in changed if f not in length]
        raise ConfigError(f"cannot resume from {folder} with {what}: {why}, so the steps already taken "
                          "would not be those of the new run. Keep the old length, or start a new run "
                          "(runs meant to be extended use lr_scheduler_type constant, with warmup_steps "
                          "rather than warmup_ratio).")

    def save_model(self) -> None:
        """Final model with save_pretrained (adapter, and merged on request) plus its tokenizer."""
        self.acc.wait_for_everyone()
        full = self._full_state_dict()  # gathered when sharded (FSDP / ZeRO-3)
        if not self.acc.is_main_process:
            return
        out = Path(self.cfg.output_dir)
        run = RunFolder(out)  # saved into a staging folder, then moved in: see RunFolder.place
        model = self.acc.unwrap_model(self.model)
        metrics = final_metrics(out)  # last logged training metrics + last eval, from metrics.jsonl
        with run.staging("model") as staging:
            model.save_pretrained(staging, state_dict=full)
            self.data.tokenizer.save_pretrained(staging)
            write_model_card(staging, self.cfg, metrics, self.data.report, shown_as=out)
            run.place(staging)
        if self.pair.is_peft and self.cfg.merge_adapter:
            import copy

            if self.sharded or self._sharding_name() == "deepspeed-zero3":  # weights partitioned
                with sharding.whole_model_loading(self.acc):
                    merged = sharding.plain_copy(model, full).merge_and_unload()
            else:
                merged = copy.deepcopy(model).merge_and_unload()
            with run.staging("merged") as staging:
                merged.save_pretrained(staging)
                self.data.tokenizer.save_pretrained(staging)
                write_model_card(staging, self.cfg, metrics, self.data.report, shown_as=out / "merged")
                run.place(staging, "merged")

    # ---- signals ------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        """Whether any process got SIGTERM/SIGINT; all processes agree, so all stop together."""
        if not self.multi:
            return self._signal is not None
        flag = torch.tensor([self._signal or 0], device=self.acc.device)
        flag = self.acc.reduce(flag, reduction="max")
        if self._signal is None and int(flag) != 0:
            self._signal = int(flag)
        return int(flag) != 0

    def _install_signal_handlers(self) -> None:
        self._old_handlers = {}

        def handler(signum, _frame):
            if self._signal is None:  # a second signal while saving changes nothing
                self._signal = signum
                console.print(f"[yellow]signal {signum}: finishing this step, then checkpointing[/]")

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)


ONLINE_KEYS = ("loss/kl", "kl/online", "online/length", "online/clipped_ratio")
