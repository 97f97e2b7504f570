"""Pre-flight checks: refuse what cannot work before any data or weights load.

Everything here is cheap (file-system checks, ``AutoConfig``, a weightless model skeleton on the
meta device) and raises ConfigError with one paragraph saying what is wrong, where, and the fix.

- ``check_output_dir``: never start a fresh run on top of another run's outputs or a user's files;
  an output_dir that is a file, sits under a file, is not writable, nests in a run or with the
  model folder, or holds a link where the run writes (see ``runfolder``).
- ``check_model_source``: a local-looking path that does not exist; a checkpoint without a
  causal-LM head (e.g. ``LlamaForSequenceClassification``).
- ``check_lora_targets``: LoRA target modules that match no linear layer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .config import ConfigError

from .runfolder import (CARD, CARD_BESIDE, MANIFEST, RunFolder, RunFolderError, _link_text,
                        resolve_paths)

# Names a run writes at the top of output_dir. One of them there that the run did not write (not in
# its hypo_files.json) blocks the run: hypo overwrites and deletes only what it wrote itself.
RUN_FILES = (
    "hypo_config.json", "data_report.json", "metrics.jsonl", "online_samples.jsonl", MANIFEST,
    # the saved model (save_pretrained, full or adapter) and its tokenizer
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_config.json",
    "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
    "chat_template.jinja", "chat_template.json",
)
RUN_FOLDERS = ("merged", "runs", "wandb")  # merged model, TensorBoard and W&B logs
RUN_PATTERNS = (r"checkpoint-\d+", r"model-\d+-of-\d+\.safetensors", r"pytorch_model-\d+-of-\d+\.bin")
# Written only by hypo: a folder with one of these (or hypo_files.json) holds a hypo run.
RUN_MARKERS = ("hypo_config.json", "metrics.jsonl")
SAVED_MODEL = ("config.json", "adapter_config.json", "model.safetensors", "adapter_model.safetensors")
CARD_MARK = "arxiv:2406.01462"  # hypo's model card (adopted from runs without a manifest)


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name))


def _hypo_name(name: str) -> bool:
    """A name hypo writes or deletes at the top of a run folder."""
    return (name in RUN_FILES or name in RUN_FOLDERS or name in (CARD, CARD_BESIDE)
            or any(re.fullmatch(p, name) for p in RUN_PATTERNS))


def is_run_root(folder: Path) -> bool:
    """Whether ``folder`` itself is a hypo run (or one of its checkpoints)."""
    if (folder / MANIFEST).is_file() or (folder / "hypo_config.json").is_file():
        return True
    return bool(re.fullmatch(r"checkpoint-\d+", folder.name)) and (folder / "manifest.json").is_file()


def holds_run(out: Path) -> bool:
    """Whether output_dir holds (part of) a hypo run: its manifest, its config or log, a checkpoint."""
    return out.is_dir() and (is_run_root(out) or any((out / n).is_file() for n in RUN_MARKERS)
                             or bool(_checkpoints(out)))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_place(cfg, out: Path) -> None:
    """output_dir must be a writable folder that nests in no run and holds no source of this run."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a folder. Choose another --output_dir "
                          "(or move the file away).")
    existing = _nearest_existing(out)
    if existing != out and not existing.is_dir():
        raise ConfigError(f"output_dir {out} cannot be created: {existing} is a file. Choose another "
                          "--output_dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {out} is not writable ({existing} does not allow writing for "
                          "this user). Choose another --output_dir or fix its permissions.")
    for parent in out.parents:
        if is_run_root(parent):
            raise RunFolderError(f"output_dir {out} lies inside the hypo run {parent}: a run never nests "
                                 "in another (overwriting or pruning that run could remove it). "
                                 "Choose an output_dir outside it.")
    for what in ("model_name_or_path", "tokenizer_name_or_path"):
        name = getattr(cfg, what, None)
        source = Path(str(name)).expanduser() if name else None
        if source is None or not source.exists():
            continue
        source = source.resolve()
        if source == out:
            raise ConfigError(f"output_dir {out} is the model folder ({what}): the run would "
                              "overwrite the files it starts from. Choose another --output_dir.")
        if out in source.parents or source in out.parents:
            inside = (f"{what} {source} lies inside output_dir {out}" if out in source.parents else
                      f"output_dir {out} lies inside the {what} folder {source}")
            raise ConfigError(f"{inside}: a run never nests with its own source (saving or "
                              "overwriting the run could replace it). Choose an output_dir beside it.")


def _conflicts(cfg, out: Path, run: RunFolder) -> list[str]:
    """Entries the run would write that exist in output_dir and are not the run's own. (A resumed
    run may meet a checkpoint it did not write: it loads only intact ones, never replaces or
    prunes one it did not write, and refuses an old-format one with its own reason.)"""
    names = set(RUN_FILES) | ({p.name for p in _checkpoints(out)} if not cfg.resume_from_checkpoint else set())
    if cfg.use_peft and cfg.merge_adapter:
        names.add("merged")
    if getattr(cfg, "run_name", None) and not getattr(cfg, "logging_dir", None):
        names.add(f"runs/{cfg.run_name}")
    foreign_readme = (out / CARD).exists() and not run.owns(CARD)
    if foreign_readme:
        names.add(CARD_BESIDE)
    return sorted(n for n in names if (out / n).exists() and n != MANIFEST and not run.owns(n))


def _refuse_conflicts(out: Path, found: list[str], legacy: bool) -> None:
    if not found:
        return
    why = (" It holds a run written before hypo kept hypo_files.json (the list of the files a run "
           "wrote), so hypo cannot tell its files from yours: remove that run's files yourself."
           if legacy else "")
    raise RunFolderError(f"output_dir {out} holds {', '.join(found)}, which this run would write "
                         "but did not write itself (they are not in its hypo_files.json). hypo "
                         "never overwrites or deletes a file it did not write, even with "
                         f"--overwrite_output_dir.{why} Move them away or choose another "
                         "--output_dir.")


def check_output_dir(cfg) -> None:
    """Refuse an output_dir that cannot be written, nests in a run, holds a link where the run
    writes, holds a run this one would destroy, or holds files that are not a run's.

    Resolves cfg.output_dir (``~``, symlinks) first: see ``runfolder.resolve_paths``.
    A fresh run needs an empty or new folder; a folder that holds a run needs
    --resume_from_checkpoint (continue it) or --overwrite_output_dir (remove the files that run
    wrote, listed in hypo_files.json). --resume_from_checkpoint auto refuses a folder whose
    checkpoints are all damaged, or that holds a finished model and no checkpoint.
    """
    out = resolve_paths(cfg)
    _check_place(cfg, out)
    if not out.is_dir():
        return
    links = [p for p in sorted(out.iterdir()) if p.is_symlink() and _hypo_name(p.name)]
    if links:
        raise RunFolderError(f"output_dir {out}: {'; '.join(_link_text(p) for p in links)}. hypo "
                             "never writes or deletes through a link it did not create. Remove the "
                             "link(s) (the files they point to are untouched) or choose another "
                             "--output_dir.")
    run = RunFolder(out)
    run.entries()  # a malformed manifest is refused here
    if not any(out.iterdir()):
        return
    resume, legacy = cfg.resume_from_checkpoint, not run.exists()
    if not holds_run(out):
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:8])
        if resume or not cfg.overwrite_output_dir:
            raise RunFolderError(
                f"output_dir {out} is not empty and holds no hypo run ({shown}"
                f"{', ...' if len(list(out.iterdir())) > 8 else ''}). A run goes into a new or empty "
                "folder, or one a hypo run wrote. Choose another --output_dir, or add "
                "--overwrite_output_dir to write the run beside these files (none of them is "
                "overwritten or removed).")
        _refuse_conflicts(out, _conflicts(cfg, out, run), legacy=False)
        return
    if resume == "auto":
        _check_auto(out)
        if not legacy:
            _refuse_conflicts(out, _conflicts(cfg, out, run), legacy=False)
        return
    if resume:
        folder = Path(resume).expanduser()
        if folder.resolve().parent != out:
            raise ConfigError(
                f"output_dir {out} holds another run, and the checkpoint {folder} is not one of its "
                "checkpoints: resuming it here would mix the two runs. Use an empty --output_dir, or "
                f"resume a checkpoint of {out} (--resume_from_checkpoint auto).")
        if not legacy:
            _refuse_conflicts(out, _conflicts(cfg, out, run), legacy=False)
        return
    if not cfg.overwrite_output_dir:
        raise ConfigError(
            f"output_dir {out} already holds a run (hypo_files.json, hypo_config.json, metrics.jsonl "
            "or checkpoint-N); a new run would overwrite it. To continue that run from its newest "
            "checkpoint add --resume_from_checkpoint auto; to discard it and start over add "
            "--overwrite_output_dir (removes only the files that run wrote); or choose another "
            "--output_dir.")
    _refuse_conflicts(out, _conflicts(cfg, out, run), legacy)


def _check_auto(out: Path) -> None:
    """--resume_from_checkpoint auto: some checkpoint must be intact, and a finished run without
    checkpoints is never restarted (that would replace its model)."""
    from .checkpoint import refuse_if_none_intact

    if _checkpoints(out):
        refuse_if_none_intact(out)
    elif any((out / n).exists() for n in SAVED_MODEL):
        raise ConfigError(
            f"output_dir {out} holds a finished run (a saved model) but no checkpoint to resume "
            "from (it was trained with save_steps 0, or its checkpoints were removed), so "
            "--resume_from_checkpoint auto cannot continue it. Start a new run in another "
            "--output_dir, or pass --overwrite_output_dir (without --resume_from_checkpoint) to "
            "remove the old run and start over.")


def adopt_legacy_run(out: Path) -> list[str]:
    """Resuming a run written before hypo kept hypo_files.json: list its own files (the run-file
    names, checkpoints that verify, a README.md that is hypo's model card) as the run's."""
    from .checkpoint import read_manifest

    run = RunFolder(out)
    if run.exists() or not out.is_dir():
        return []
    files = [n for n in RUN_FILES if (out / n).is_file() and not (out / n).is_symlink()]
    readme = out / CARD
    if readme.is_file() and not readme.is_symlink() and CARD_MARK in readme.read_text(errors="replace"):
        files.append(CARD)
    for folder in _checkpoints(out):
        manifest = read_manifest(folder)
        if manifest is not None and not folder.is_symlink():
            files += [f"{folder.name}/{name}" for name in [*manifest["files"], "manifest.json"]]
            run.record(dirs=[folder.name])
    logs = ("metrics.jsonl", "online_samples.jsonl")
    run.record(written=[f for f in files if f not in logs], appended=[f for f in files if f in logs])
    return files


def clear_output_dir(out: str | Path) -> tuple[list[str], list[str]]:
    """Remove the files the previous run wrote (its hypo_files.json), nothing else.

    Returns (removed top-level names, names left in place). Called by a run with
    overwrite_output_dir; ``check_output_dir`` has refused anything else it would overwrite.
    """
    out = Path(out)
    if not out.is_dir():
        return [], []
    removed = sorted({p.split("/")[0] for p in RunFolder(out).remove()})
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
    resolve_paths(cfg)  # output_dir resolved once, before anything looks at it
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
