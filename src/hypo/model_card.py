"""Model card: a README.md written next to every saved model (Hugging Face card format).

It records the base model, the data, the algorithm, the hyper-parameters that change results, the
final metrics and the citation of HyPO (Song, Swamy, Singh, Bagnell, Sun, arXiv 2406.01462).
"""

from __future__ import annotations

import math
from pathlib import Path

from .tracking import read_jsonl

CITATION = """@inproceedings{song2024importance,
  title     = {The Importance of Online Data: Understanding Preference Fine-tuning via Coverage},
  author    = {Song, Yuda and Swamy, Gokul and Singh, Aarti and Bagnell, J. Andrew and Sun, Wen},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024},
  eprint    = {2406.01462},
  archivePrefix = {arXiv}
}"""

HYPERPARAMETERS = (
    "algo", "beta", "kl_coef", "loss_type", "label_smoothing", "num_online_samples",
    "online_prompts_per_step", "max_new_tokens", "temperature", "top_k", "top_p",
    "generation_backend", "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio",
    "weight_decay", "max_grad_norm", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_steps", "num_train_epochs", "max_length", "max_prompt_length", "max_completion_length", "dtype", "use_peft",
    "lora_r", "lora_alpha", "lora_target_modules", "seed",
)


def final_metrics(output_dir: str | Path) -> dict:
    """The last logged training metrics and the last eval metrics from ``metrics.jsonl``."""
    path = Path(output_dir) / "metrics.jsonl"
    train, evals = {}, {}
    if not path.exists():
        return {}
    for row in read_jsonl(path):
        if any(k.startswith("eval_") for k in row):
            evals = row
        elif "loss" in row:
            train = row
    return {**train, **{k: v for k, v in evals.items() if k != "step"}}


def _is_hub_id(name) -> bool:
    """A hub id (``org/name`` or ``name``) rather than a local path."""
    from .preflight import looks_local

    return bool(name) and not looks_local(str(name)) and not Path(str(name)).exists()


def _base_model(cfg) -> str:
    """The model the run started from, as the user named it (a GGUF file when gguf_file is set)."""
    if not cfg.gguf_file:
        return str(cfg.model_name_or_path)
    inside = f" in {cfg.model_name_or_path}" if cfg.model_name_or_path else ""
    return f"{cfg.gguf_file}{inside}"


def _eval_data(cfg, data_report: dict) -> str:
    """Which pairs the evaluation metrics come from."""
    if not data_report.get("eval_pairs"):
        return "- evaluation: none (no evaluation pairs)"
    if cfg.eval_dataset_name:
        return f"- evaluation pairs from `{cfg.eval_dataset_name}` (split `{cfg.dataset_test_split or cfg.dataset_train_split}`)"
    return (f"- evaluation pairs: a random {cfg.eval_split_size:g} share of `{cfg.dataset_name}` held "
            f"out from training (seed {cfg.seed})")


def _value(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return f"`{v}`" if isinstance(v, str) else str(v)


def _algorithm(cfg) -> str:
    if cfg.algo == "hypo":
        return (f"**HyPO** (Hybrid Preference Optimization, arXiv 2406.01462): DPO's loss on the "
                f"offline pairs (β = {cfg.beta}, loss `{cfg.loss_type}`) plus λ = {cfg.kl_coef} times "
                f"the reverse KL(π‖π_ref) estimated on k = {cfg.num_online_samples} fresh, unlabeled "
                f"samples of the current policy per prompt (leave-one-out baseline; samples up to "
                f"{cfg.max_new_tokens} new tokens, temperature {cfg.temperature}).")
    return (f"**DPO** (Rafailov et al. 2023), offline only: β = {cfg.beta}, loss `{cfg.loss_type}`"
            + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else "") + ".")


def _sampling_line(cfg, metrics: dict) -> str:
    """Whether the online samples were exact draws from π (unbiased KL), with the clipped share."""
    settings = cfg.temperature == 1.0 and cfg.top_k == 0 and cfg.top_p == 1.0
    clipped = metrics.get("online/clipped_ratio")
    unbiased = settings and clipped == 0
    why = [] if settings else ["temperature/top_k/top_p other than 1/0/1"]
    if clipped is None:
        why.append("share of samples cut at max_new_tokens not logged")
    elif clipped > 0:
        why.append(f"{clipped:.1%} of the last step's samples cut at max_new_tokens")
    return (f"Online samples unbiased: {'yes' if unbiased else 'no'} (clipped share "
            f"{'n/a' if clipped is None else f'{clipped:.4g}'}"
            + (f"; {', '.join(why)}" if why else "") + ").")


def write_model_card(folder: str | Path, cfg, metrics: dict, data_report: dict,
                     shown_as: str | Path | None = None, extra_tags: list[str] | None = None,
                     title: str | None = None, dataset: str | None = None) -> Path:
    """Write ``folder/README.md`` for a model trained with ``cfg`` (a TrainConfig).

    metrics: final metrics (name -> number); data_report: the run's data_report.json contents;
    shown_as: the folder the model ends up in, when ``folder`` is a staging folder; extra_tags
    (e.g. the model's tags), title and dataset (a hub dataset name): TRL's create_model_card
    arguments. Returns the path written. Overwrites a README.md that save_pretrained (peft) may
    have left.
    """
    folder = Path(folder)
    shown = Path(shown_as) if shown_as is not None else folder
    merged = shown.name == "merged"
    adapter = cfg.use_peft and not merged
    name = "HyPO" if cfg.algo == "hypo" else "DPO"
    tags = ["hypo", "dpo"] if cfg.algo == "dpo" else ["hypo"]
    tags += ["preference-optimization", "arxiv:2406.01462"]
    tags += [t for t in dict.fromkeys(extra_tags or []) if t not in tags]
    # base_model is a hub reference: a local folder means nothing on the hub, so it is left out.
    hub = _is_hub_id(cfg.model_name_or_path) and not cfg.gguf_file
    front = ["---"] + ([f"base_model: {cfg.model_name_or_path}"] if hub else [])
    front += [f"library_name: {'peft' if adapter else 'transformers'}", "tags:"]
    front += [f"- {t}" for t in tags]
    dataset = dataset or cfg.dataset_name
    if dataset and not Path(dataset).exists() and not dataset.startswith("<"):
        front += ["datasets:", f"- {dataset}"]
    front += ["---", ""]
    kind = "a LoRA adapter" if adapter else ("the LoRA adapter merged into the base weights" if merged
                                             else "a fully fine-tuned model")
    lines = [f"# {title or (shown.resolve().name if not merged else shown.resolve().parent.name + ' (merged)')}",
             "", f"This is {kind}, trained from `{_base_model(cfg)}` with "
             f"[hypo](https://arxiv.org/abs/2406.01462) ({name}).", "",
             "## Base model", "", f"`{_base_model(cfg)}`"
             + (" (a GGUF file, converted by `hypo gguf`)" if cfg.gguf_file else
                "" if hub else " (a local folder, not a hub model)")
             + (f" (tokenizer `{cfg.tokenizer_name_or_path}`)" if cfg.tokenizer_name_or_path else ""),
             "", "## Data", "",
             f"- preference pairs: `{cfg.dataset_name}` (split `{cfg.dataset_train_split}`)"]
    for key, label in (("train_pairs", "training pairs"), ("eval_pairs", "evaluation pairs"),
                       ("dropped_invalid", "invalid records dropped"),
                       ("prompt_records", "online prompts")):
        value = data_report.get(key)
        if isinstance(value, dict):  # drops per reason
            value = f"{sum(value.values())}" + (f" ({value})" if value else "")
        if value is not None:
            lines.append(f"- {label}: {value}")
    if cfg.prompt_dataset_name:
        lines.append(f"- online prompts from `{cfg.prompt_dataset_name}`")
    lines.append(_eval_data(cfg, data_report))
    lines += ["", "## Algorithm", "", _algorithm(cfg), "", "## Hyper-parameters", "",
              "| setting | value |", "|---|---|"]
    limits = {"max_prompt_length": cfg.prompt_limit()}  # the limit in force, also when derived
    lines += [f"| {name} | {_value(limits.get(name, getattr(cfg, name)))} |" for name in HYPERPARAMETERS
              if hasattr(cfg, name)]
    if cfg.algo == "hypo":
        lines += ["", _sampling_line(cfg, metrics)]
    lines += ["", "## Final metrics", ""]
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
    evaluated = any(k.startswith("eval_") for k in shown)
    if shown:
        step = metrics.get("step")
        what = "last logged training metrics and last evaluation" if evaluated else (
            "last logged training metrics; no evaluation ran")
        lines += ([f"After step {step} ({what})."] if step is not None else []) + [
            "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_value(v)} |" for k, v in sorted(shown.items())]
    else:
        lines.append("No metrics were logged.")
    load = ("from peft import AutoPeftModelForCausalLM\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained(\"{shown}\")") if adapter else (
            "from transformers import AutoModelForCausalLM\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{shown}\")")
    lines += ["", "## Use", "", "```python", load, "```", "",
              "Evaluate it against its reference with `hypo eval` (reverse KL, reward model, win "
              "rate) and inspect coverage with `hypo coverage`.", "",
              "## Citation", "", "```bibtex", CITATION, "```", ""]
    path = folder / "README.md"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(front + lines))
    return path
