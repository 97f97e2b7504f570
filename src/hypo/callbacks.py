"""Callbacks: transformers' own ``TrainerCallback`` protocol, driven by hypo's loop.

Every event TRL's trainer fires reaches the callbacks with ``(args, state, control, **kwargs)``:
``args`` is the run's config (TRL's field names), ``state`` a ``transformers.TrainerState`` and
``control`` a ``transformers.TrainerControl``; kwargs are ``model`` (unwrapped), ``processing_class``,
``optimizer``, ``lr_scheduler``, ``train_dataloader`` / ``eval_dataloader`` (None: hypo builds its
batches itself), plus ``logs`` (on_log) and ``metrics`` (on_evaluate).

``FlowCallback`` plays the part of transformers' ``DefaultFlowCallback`` with hypo's rules (the
last step is always logged; ``eval_steps`` 0 evaluates at the end only): it runs first and sets
``should_log`` / ``should_evaluate`` / ``should_save``; later callbacks may change any flag, and the
loop acts on the flags. ``should_training_stop`` ends training after the current step (the final
evaluation and save_model run as at a normal end).
"""

from __future__ import annotations

from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback
from transformers.trainer_utils import TrainOutput

from .config import ConfigError

__all__ = ["FlowCallback", "TrainOutput", "TrainerCallback", "TrainerControl", "TrainerState",
           "make_handler"]


class FlowCallback(DefaultFlowCallback):
    """When to log, evaluate and save (logging_strategy, eval_strategy, save_strategy)."""

    def on_step_end(self, args, state, control, **kwargs):
        step, last = state.global_step, state.global_step >= state.max_steps
        if args.logging_strategy == "steps" and (step % args.logging_steps == 0 or last):
            control.should_log = True
        if step == 1 and args.logging_first_step and args.logging_strategy != "no":
            control.should_log = True
        every = eval_every(args)
        if args.eval_strategy == "steps" and every and step % every == 0 and step >= args.eval_delay:
            control.should_evaluate = True
        if args.save_strategy == "steps" and args.save_steps and step % args.save_steps == 0:
            control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch" and state.epoch >= args.eval_delay:
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control


def check_callbacks(callbacks) -> list:
    """TrainerCallback instances or classes; anything else is refused with the way to port it."""
    out = []
    for cb in callbacks or []:
        cls = cb if isinstance(cb, type) else type(cb)
        if not issubclass(cls, TrainerCallback):
            raise ConfigError(
                f"callback {cls.__name__} is not a transformers.TrainerCallback: hypo calls callbacks "
                "through transformers' protocol, e.g. on_step_end(self, args, state, control, "
                "**kwargs), on_log(..., logs=...), on_evaluate(..., metrics=...). Subclass "
                "transformers.TrainerCallback (hypo's former on_step_end(trainer, state, metrics) "
                "hooks map to on_log / on_evaluate / on_save; set control.should_training_stop "
                "= True to stop).")
        out.append(cb)
    return out


def make_handler(callbacks, model=None, processing_class=None, optimizer=None,
                 lr_scheduler=None) -> CallbackHandler:
    """transformers' CallbackHandler with FlowCallback first, then the user's callbacks in order."""
    return CallbackHandler([FlowCallback, *check_callbacks(callbacks)], model, processing_class,
                           optimizer, lr_scheduler)


def eval_every(cfg) -> int | None:
    """Steps between evaluations: eval_steps, unset = logging_steps (transformers' rule)."""
    return cfg.eval_steps if cfg.eval_steps is not None else cfg.logging_steps


def new_state(cfg, max_steps: int, train_batch_size: int, is_main: bool,
              is_local_main: bool) -> TrainerState:
    """A TrainerState for a run of ``max_steps`` optimizer steps (transformers' field names)."""
    every = eval_every(cfg)
    return TrainerState(max_steps=max_steps, logging_steps=cfg.logging_steps, eval_steps=every or 0,
                        save_steps=cfg.save_steps, train_batch_size=train_batch_size,
                        num_train_epochs=cfg.num_train_epochs, is_world_process_zero=is_main,
                        is_local_process_zero=is_local_main, log_history=[])


def update_best(cfg, state: TrainerState, metrics: dict) -> bool:
    """metric_for_best_model: record a new best evaluation in state.best_metric /
    best_global_step (transformers' rule: greater_is_better unset = False for '*loss'). Returns
    whether this evaluation is the new best."""
    name = cfg.metric_for_best_model
    if not name:
        return False
    key = name if name.startswith("eval_") else f"eval_{name}"
    if key not in metrics:
        return False
    greater = cfg.greater_is_better if cfg.greater_is_better is not None else not key.endswith("loss")
    value = float(metrics[key])
    best = state.best_metric
    if best is None or (value > best if greater else value < best):
        state.best_metric, state.best_global_step = value, state.global_step
        return True
    return False
