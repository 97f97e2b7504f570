"""Pre-flight checks: refuse what cannot work before any data or weights load.

Everything here is cheap (file-system checks, ``AutoConfig``, a weightless model skeleton on the
meta device) and raises ConfigError with one paragraph saying what is wrong, where, and the fix.

- ``check_output_dir``: never start a fresh run on top of another run's outputs; an output_dir that
  is a file, sits under a file, is not writable, or is the model folder itself.
- ``check_model_source``: a local-looking path that does not exist; a checkpoint without a
  causal-LM head (e.g. ``LlamaForSequenceClassification``).
- ``check_lora_targets``: LoRA target modules that match no linear layer.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .config import ConfigError

# Files and folders a hypo run writes into output_dir (and nothing else is ever removed).
RUN_FILES = (
    "hypo_config.json", "data_report.json", "metrics.jsonl", "online_samples.jsonl",
    # the saved model (save_pretrained, full or adapter) and its tokenizer
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_config.json",
    "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
    "chat_template.jinja", "chat_template.json",
)
RUN_FOLDERS = ("merged", "runs", "wandb")  # merged model, TensorBoard and W&B logs
RUN_PATTERNS = (r"checkpoint-\d+", r"\.checkpoint-\d+\.(staging|old)", r"model-\d+-of-\d+\.safetensors",
                r"pytorch_model-\d+-of-\d+\.bin", r"metrics\.tmp", r"online_samples\.tmp")
# Any of these means "output_dir holds a run".
RUN_MARKERS = ("metrics.jsonl", "hypo_config.json", "config.json", "adapter_config.json",
               "model.safetensors")
SAVED_MODEL = ("config.json", "adapter_config.json", "model.safetensors", "adapter_model.safetensors")
CARD_MARK = "arxiv:2406.01462"  # only a README.md that is hypo's model card is hypo's


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name))


def holds_run(out: Path) -> bool:
    """Whether output_dir holds (part of) a hypo run or a saved model."""
    return out.is_dir() and (any((out / n).exists() for n in RUN_MARKERS) or bool(_checkpoints(out)))


def run_entries(out: Path) -> list[Path]:
    """The entries of output_dir that a hypo run wrote (see RUN_FILES / RUN_FOLDERS / RUN_PATTERNS)."""
    found = []
    for entry in sorted(out.iterdir()):
        name = entry.name
        if (name in RUN_FILES or (name in RUN_FOLDERS and entry.is_dir())
                or any(re.fullmatch(p, name) for p in RUN_PATTERNS)):
            found.append(entry)
        elif name == "README.md" and CARD_MARK in entry.read_text(errors="replace"):
            found.append(entry)
    return found


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(cfg) -> None:
    """Refuse an output_dir that cannot be written, or that holds a run this one would destroy.

    A fresh run into a folder that holds a run (metrics.jsonl, hypo_config.json, checkpoint-N, a
    saved model) needs --resume_from_checkpoint (continue it) or --overwrite_output_dir (remove it,
    see ``clear_output_dir``). With --resume_from_checkpoint auto and no checkpoint to resume from,
    a folder holding a finished model is refused too (restarting would replace it); a run that was
    interrupted before its first checkpoint simply restarts from step 0.
    """
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a folder. Choose another --output_dir "
                          "(or move the file away).")
    existing = _nearest_existing(out.absolute())
    if existing != out.absolute() and not existing.is_dir():
        raise ConfigError(f"output_dir {out} cannot be created: {existing} is a file. Choose another "
                          "--output_dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {out} is not writable ({existing} does not allow writing for "
                          "this user). Choose another --output_dir or fix its permissions.")
    model = Path(str(cfg.model_name_or_path)).expanduser()
    if out.is_dir() and model.is_dir() and out.resolve() == model.resolve():
        raise ConfigError(f"output_dir {out} is the model folder (model_name_or_path): the run would "
                          "overwrite the weights it starts from. Choose another --output_dir.")
    if not holds_run(out):
        return
    resume = cfg.resume_from_checkpoint
    if resume == "auto":
        if not _checkpoints(out) and any((out / n).exists() for n in SAVED_MODEL):
            raise ConfigError(
                f"output_dir {out} holds a finished run (a saved model) but no checkpoint to resume "
                "from (it was trained with save_steps 0, or its checkpoints were removed), so "
                "--resume_from_checkpoint auto cannot continue it. Start a new run in another "
                "--output_dir, or pass --overwrite_output_dir (without --resume_from_checkpoint) to "
                "remove the old run and start over.")
        return
    if resume:
        folder = Path(resume).expanduser()
        if folder.resolve().parent != out.resolve():
            raise ConfigError(
                f"output_dir {out} holds another run, and the checkpoint {folder} is not one of its "
                "checkpoints: resuming it here would mix the two runs. Use an empty --output_dir, or "
                f"resume a checkpoint of {out} (--resume_from_checkpoint auto).")
        return
    if cfg.overwrite_output_dir:
        return
    raise ConfigError(
        f"output_dir {out} already holds a run (metrics.jsonl, hypo_config.json, checkpoint-N or a "
        "saved model); a new run would overwrite it. To continue that run from its newest checkpoint "
        "add --resume_from_checkpoint auto; to discard it and start over add --overwrite_output_dir "
        "(removes only hypo's own files there); or choose another --output_dir.")


def clear_output_dir(out: str | Path) -> tuple[list[str], list[str]]:
    """Remove the previous run's files (``run_entries``) from output_dir, nothing else.

    Returns (removed names, names left in place). Called by a run with overwrite_output_dir.
    """
    out = Path(out)
    if not out.is_dir():
        return [], []
    removed = []
    for entry in run_entries(out):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    kept = sorted(p.name for p in out.iterdir())
    return removed, kept


# ---- the model ------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_local(name: str) -> bool:
    """A path rather than a hub id: starts with / ./ ../ ~, has more than one '/', a Windows
    separator, or its first component exists here (a typo inside a local folder)."""
    if name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", ".."):
        return True
    if (os.sep != "/" and os.sep in name) or not _HUB_ID.match(name):
        return True
    return "/" in name and Path(name.split("/")[0]).exists()


def check_model_source(name: str, what: str = "model_name_or_path", flag: str | None = None,
                       trust_remote_code: bool = False):
    """Check that a model exists (local-looking paths) and has a causal-LM head; returns its
    AutoConfig. Only config.json is read (no weights)."""
    flag = flag or f"--{what}"
    path = Path(name).expanduser()
    if looks_local(name) and not path.exists():
        raise ConfigError(f"{what} {name!r}: no such folder (looked for {path.absolute()}). Pass "
                          f"an existing model folder or a hub id ({flag}).")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {name!r} is a file; a model is a folder with config.json (or a "
                          f"hub id) ({flag}).")
    if path.is_dir() and not (path / "config.json").exists() and (path / "adapter_config.json").exists():
        return None  # a LoRA adapter folder: its base is checked where it is loaded
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        where = "the folder has no usable config.json" if path.is_dir() else (
            "it is not a local folder and could not be fetched from the Hugging Face hub")
        raise ConfigError(f"{what} {name!r}: {where} ({str(err).splitlines()[0][:300]}). Pass a "
                          f"model folder or a reachable hub id ({flag}).") from None
    return config


def check_causal_lm(config, name: str, what: str = "model_name_or_path") -> None:
    """Refuse a config whose checkpoint has no causal-LM head (AutoModelForCausalLM would attach a
    freshly initialised one and train it silently)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    heads = set(CAUSAL.values())
    archs = list(getattr(config, "architectures", None) or [])
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    known = config.model_type in CAUSAL or remote
    causal_arch = [a for a in archs if a in heads or a.endswith(("ForCausalLM", "LMHeadModel"))]
    if known and (not archs or causal_arch):
        return
    saved = f"its checkpoint is a {', '.join(archs)}" if archs else f"model type {config.model_type!r}"
    raise ConfigError(f"{what} {name!r} is not a causal language model: {saved}, which has no "
                      "causal-LM head (loading it as AutoModelForCausalLM would train a randomly "
                      "initialised head). Pass a *ForCausalLM checkpoint, e.g. the SFT model the "
                      "preference tuning should start from.")


# ---- LoRA -----------------------------------------------------------------------------------------

def linear_module_names(model) -> list[str]:
    """Leaf names (the last name component) of the model's nn.Linear / Conv1D layers, LM head aside."""
    import torch

    names = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(full.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return sorted(names)


def check_lora_targets(model, targets: str, name: str = "") -> None:
    """Each name in a comma-separated lora_target_modules must match a linear layer of the model
    (as peft matches: the module's full name or its last components)."""
    if targets == "all-linear":
        return
    full_names = [n for n, _ in model.named_modules()]
    missing = [t.strip() for t in targets.split(",") if t.strip() and not any(
        n == t.strip() or n.endswith("." + t.strip()) for n in full_names)]
    if missing:
        raise ConfigError(f"lora_target_modules: {', '.join(map(repr, missing))} match(es) no module "
                          f"of {name or 'the model'}. Its linear layers are: "
                          f"{', '.join(linear_module_names(model))}. Pass some of these "
                          "(comma-separated) or 'all-linear'.")


def _skeleton(config, trust_remote_code: bool = False):
    """The model's module tree without weights (meta device), or None if it cannot be built."""
    try:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - build_policy checks again on the loaded model
        return None


def preflight(cfg, model_given: bool = False, check_output: bool = True) -> None:
    """All checks of a training config that need no weights: output_dir, model, tokenizer, LoRA.

    model_given: the model is an in-memory object (``hypo.api``), so there is no model path to
    check; a GGUF model (``gguf_file``) is checked by ``hypo.gguf`` when it is converted.
    check_output: False defers the output_dir check to ``Trainer.train`` (the Python API, where
    ``train(resume_from_checkpoint=...)`` says only then whether the run continues)."""
    if check_output:
        check_output_dir(cfg)
    trust = bool(getattr(cfg, "trust_remote_code", False))
    skip_model = model_given or bool(getattr(cfg, "gguf_file", None))
    config = None if skip_model else check_model_source(cfg.model_name_or_path, trust_remote_code=trust)
    if config is not None:
        check_causal_lm(config, cfg.model_name_or_path)
    tok = cfg.tokenizer_name_or_path
    if tok and looks_local(tok) and not Path(tok).expanduser().exists():
        raise ConfigError(f"tokenizer_name_or_path {tok!r}: no such folder (looked for "
                          f"{Path(tok).expanduser().absolute()}). Pass an existing tokenizer folder "
                          "or a hub id.")
    if cfg.use_peft and config is not None and cfg.lora_target_modules != "all-linear":
        skeleton = _skeleton(config, trust)
        if skeleton is not None:
            check_lora_targets(skeleton, cfg.lora_target_modules, cfg.model_name_or_path)
