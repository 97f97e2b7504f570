"""Preference and prompt data: loading, validation, chat templates, truncation, fingerprints.

Bad input is rejected here, at the edge, with the source, record, field and a fix named::

    prefs.jsonl: record 3 (line 4): field 'chosen': is empty or whitespace only. Give every
    response text.

Formats follow TRL (standard/conversational × explicit/implicit prompt); see docs/data.md.
This module never loads a model.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_EXTRAS = ("tool_calls", "name", "tool_call_id")  # kept for the chat template


class DataError(ValueError):
    """Bad input data. ``reason`` is a short key ("missing_field", "empty_response", ...)."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


class Records(list):
    """Raw records; ``lines[i]`` is record i's 1-based line in a JSONL file (else no ``lines``).
    In-memory data (``records_from_object``) carries its label in ``source``."""

    lines: list[int] | None = None
    source: str | None = None


@dataclass
class PreferenceExample:
    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]
    index: int
    source: str = ""  # for error messages raised later (tokenization)
    # apply_chat_template's extra arguments: the record's tools and chat_template_kwargs (TRL's)
    template_kwargs: dict | None = None

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class PromptExample:
    prompt: str | list[dict]
    index: int
    source: str = ""


# ---- loading ------------------------------------------------------------------------------------

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _decode(data: bytes, source: str, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise DataError(f"{source}: line {line}: not valid UTF-8 (byte {e.start} of the line"
                        f"{'' if first_line > 1 else ' or file'}). Re-save the file as UTF-8.",
                        "invalid_utf8") from None


def _limit(name: str, default: int) -> int:
    import os

    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise DataError(f"{name}={value!r} is not a whole number.", "file") from None


# What one source may hold (environment variables raise them): a record beyond these is more than
# any run can use, and a small compressed file must not be able to exhaust memory.
MAX_RECORDS = 1_000_000  # HYPO_MAX_RECORDS: records per source
MAX_RECORD_BYTES = 64 << 20  # HYPO_MAX_RECORD_BYTES: one record (a JSONL line, CSV row, table row)
MAX_DATA_BYTES = 4 << 30  # HYPO_MAX_DATA_BYTES: one source, uncompressed
MAX_JSON_BYTES = 512 << 20  # a .json document is parsed whole; JSONL / Parquet are read by record


def limits() -> tuple[int, int, int]:
    """(records, bytes per record, bytes per source) in force."""
    return (_limit("HYPO_MAX_RECORDS", MAX_RECORDS), _limit("HYPO_MAX_RECORD_BYTES", MAX_RECORD_BYTES),
            _limit("HYPO_MAX_DATA_BYTES", MAX_DATA_BYTES))


def _too_many(source: str, found: str, limit: int) -> DataError:
    return DataError(f"{source}: holds {found} records, above the limit of {limit} per source "
                     "(HYPO_MAX_RECORDS; each record costs memory up front). Use a subset, or raise "
                     "HYPO_MAX_RECORDS if the machine has the memory.", "too_large")


def _too_big(source: str, where: str, size: int, limit: int, env: str) -> DataError:
    return DataError(f"{source}: {where} is {size} bytes, above the limit of {limit} ({env}): more "
                     "than any run can use (records are cut to max_length tokens). Remove or "
                     f"shorten it, or raise {env}.", "too_large")


def _check_size(path: Path, source: str, limit: int, env: str = "HYPO_MAX_DATA_BYTES") -> None:
    size = path.stat().st_size
    if size > limit:
        raise _too_big(source, "the file", size, limit, env)


def bounded_lines(fh, limit: int):
    """(line number, bytes) of a binary file, a line at a time; a line longer than ``limit`` comes
    as its first limit + 1 bytes (the rest is skipped unread into memory)."""
    n = 0
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        n += 1
        if len(raw) > limit:
            rest = raw
            while rest and not rest.endswith(b"\n"):
                rest = fh.readline(limit)
        yield n, raw


def _read_jsonl(path: Path, source: str) -> Records:
    """JSON Lines, read line by line (a line longer than the record limit is refused unread)."""
    max_records, max_record, max_data = limits()
    _check_size(path, source, max_data)
    records, lines = Records(), []
    with path.open("rb") as fh:
        for n, raw in bounded_lines(fh, max_record):
            if len(raw) > max_record:
                raise _too_big(source, f"line {n}", len(raw), max_record, "HYPO_MAX_RECORD_BYTES")
            text = _decode(raw, source, first_line=n).strip()
            if not text:
                continue  # blank lines (and a trailing newline) are not records
            if len(records) >= max_records:
                raise _too_many(source, f"more than {max_records}", max_records)
            try:
                records.append(json.loads(text))
            except (ValueError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
                raise DataError(f"{source}: line {n} (record {len(records)}): not valid JSON ({e}). "
                                "Each line must hold one JSON object.", "invalid_json") from None
            lines.append(n)
    records.lines = lines
    return records


def _read_parquet(path: Path, source: str) -> list:
    """Parquet, checked from its metadata (rows, uncompressed bytes) before any data is read, then
    read a batch at a time with each row's size checked."""
    import pyarrow.parquet as pq

    max_records, max_record, max_data = limits()
    meta = pq.ParquetFile(path).metadata
    if meta.num_rows > max_records:
        raise _too_many(source, str(meta.num_rows), max_records)
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size > max_data:
        raise _too_big(source, "the table (uncompressed)", size, max_data, "HYPO_MAX_DATA_BYTES")
    records = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            size = _record_bytes(row)
            if size > max_record:
                raise _too_big(source, f"record {len(records)}", size, max_record, "HYPO_MAX_RECORD_BYTES")
            records.append(row)
    return records


def _record_bytes(value: Any) -> int:
    """The text a record holds (about its size in memory, without serialising it)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_record_bytes(k) + _record_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_record_bytes(v) for v in value)
    return 8


def _read_csv(path: Path, source: str) -> list:
    """CSV, read row by row (a field longer than the record limit is refused)."""
    max_records, max_record, max_data = limits()
    _check_size(path, source, max_data)
    csv.field_size_limit(max_record)
    records = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                if len(records) >= max_records:
                    raise _too_many(source, f"more than {max_records}", max_records)
                records.append(row)
    except csv.Error as e:
        raise DataError(f"{source}: record {len(records)}: not valid CSV ({e}); a field may hold at "
                        f"most {max_record} bytes (HYPO_MAX_RECORD_BYTES).", "too_large") from None
    except UnicodeDecodeError:
        _decode(path.read_bytes(), source)  # raises with the line number
        raise
    return records


def _read_file(path: Path, split: str, source: str, require_split: bool = False) -> list:
    suffix = path.suffix.lower()
    if require_split and suffix != ".json":
        raise _no_split(source, split, "a single-table file has no splits")
    if suffix == ".parquet":
        return _read_parquet(path, source)
    if suffix == ".jsonl":
        return _read_jsonl(path, source)
    if suffix == ".csv":
        return _read_csv(path, source)
    if suffix == ".json":
        _check_size(path, source, min(MAX_JSON_BYTES, limits()[2]), "HYPO_MAX_DATA_BYTES; use JSONL "
                    "or Parquet for larger data, they are read a record at a time")
        data = path.read_bytes()
        text = _decode(data, source)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # several documents: JSON Lines saved as .json
                return _read_jsonl(path, source)
            raise DataError(f"{source}: line {e.lineno}: not valid JSON ({e.msg}). "
                            "Fix the file or save it as JSON Lines.", "invalid_json") from None
        except (ValueError, RecursionError) as e:
            raise DataError(f"{source}: not valid JSON ({e}).", "invalid_json") from None
        if isinstance(obj, dict) and require_split and split not in obj:
            raise _no_split(source, split, f"the JSON object has no '{split}' key")
        if isinstance(obj, dict):
            obj = obj.get(split, obj.get("data", obj))
        elif require_split:
            raise _no_split(source, split, "a JSON array has no splits")
        if not isinstance(obj, list):
            raise DataError(f"{source}: expected a JSON array of records (or an object with a "
                            f"'{split}' or 'data' array). Wrap the records in [...].",
                            "invalid_json")
        if len(obj) > limits()[0]:
            raise _too_many(source, str(len(obj)), limits()[0])
        return obj
    raise DataError(f"{source}: unsupported file type '{suffix}'. Use one of "
                    f"{', '.join(_SUFFIXES)}, a datasets folder or a hub dataset name.", "file")


def _no_split(source: str, split: str, why: str) -> DataError:
    return DataError(f"{source}: no split '{split}' to evaluate on ({why}). Give the eval pairs as "
                     "eval_dataset_name, or hold some out with eval_split_size.", "file")


def _from_datasets(name: str, split: str, path: Path | None, config: str | None = None,
                   require_split: bool = False) -> list:
    import datasets
    if path is not None and any((path / f).exists() for f in
                                ("dataset_dict.json", "state.json", "dataset_info.json")):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{name}: no split '{split}' (has {', '.join(ds)}). "
                                "Pass one of those as the split.", "file")
            ds = ds[split]
        elif require_split:
            raise _no_split(name, split, "a saved Dataset has no splits")
    else:
        config_kw = {"name": config} if config else {}  # load_dataset's name = the configuration
        ds = datasets.load_dataset(name, split=split, **config_kw)
    max_records, _, max_data = limits()
    if ds.num_rows > max_records:
        raise _too_many(name, str(ds.num_rows), max_records)
    if ds.data.nbytes > max_data:
        raise _too_big(name, "the dataset", ds.data.nbytes, max_data, "HYPO_MAX_DATA_BYTES")
    return ds.to_list()


def load_records(name: str, split: str = "train", config: str | None = None,
                 require_split: bool = False) -> tuple[list, str]:
    """Raw records and a source label from a file, a datasets folder or a hub dataset name.

    JSONL is parsed line by line (the returned list's ``lines`` maps records to lines). ``config``
    is a hub dataset's configuration. ``require_split``: the source must really hold ``split``
    (a single-table file would otherwise give all its records for any split name).
    """
    if isinstance(name, Records) and name.source:  # in-memory data, already read
        return name, name.source
    if not isinstance(name, str) or not name:
        raise DataError(f"{name!r}: no data source given. Pass a file, folder or hub dataset name.",
                        "file")
    local = True
    try:
        path = Path(name)
        if path.is_file():
            return _read_file(path, split, name, require_split), name
        if path.is_dir():
            return _from_datasets(name, split, path, require_split=require_split), name
        if path.suffix.lower() in _SUFFIXES or not _HUB_NAME.match(name):
            raise DataError(f"{name}: file does not exist. Check the path (relative paths start "
                            f"from {Path.cwd()}).", "file")
        local = False
        return _from_datasets(name, split, None, config), name
    except DataError:
        raise
    except Exception as e:  # any loader failure becomes a DataError naming the source
        what = ("could not read" if local else
                "not a local file or folder, and loading it as a hub dataset failed")
        raise DataError(f"{name}: {what} ({type(e).__name__}: {e}). Check that it is a valid "
                        "JSONL/JSON/Parquet/CSV file, datasets folder or hub dataset name.",
                        "file") from e


def records_from_object(obj: Any, split: str = "train", source: str = "<train_dataset>",
                        limit: int | None = None) -> Records:
    """Raw records of in-memory data: a ``datasets.Dataset``, a ``DatasetDict`` (its ``split``),
    an ``IterableDataset`` (its first ``limit`` records; None: all), a pandas DataFrame, or a
    list/tuple of dicts. ``source`` names the data in every later error (validation then goes
    through the same ``parse_*`` path as files)."""
    kind = type(obj).__name__
    if kind in ("DatasetDict", "IterableDatasetDict"):
        if split not in obj:
            raise DataError(f"{source}: the DatasetDict has no split '{split}' (has "
                            f"{', '.join(obj)}). Pass one split, e.g. dataset['{next(iter(obj), split)}'].",
                            "file")
        obj, kind = obj[split], type(obj[split]).__name__
    if kind == "IterableDataset":  # streaming: read as far as training can use (limit)
        import itertools

        records = [dict(r) for r in itertools.islice(obj, limit)]
    elif kind == "Dataset" and hasattr(obj, "to_list"):
        records = obj.to_list()
    elif kind == "DataFrame" and hasattr(obj, "to_dict"):
        records = obj.to_dict("records")
    elif isinstance(obj, (list, tuple)):
        records = list(obj)
    else:
        raise DataError(f"{source}: a {kind} is not supported. Pass a datasets.Dataset, a "
                        "DatasetDict, a pandas DataFrame, a list of dicts, or a file path.", "file")
    out = Records(records)
    out.source = source
    return out


# ---- validation ---------------------------------------------------------------------------------

class _Bad(Exception):
    """One record's problem; turned into a DataError with its location by the caller."""

    def __init__(self, reason: str, field: str | None, what: str, fix: str):
        self.reason, self.field, self.what, self.fix = reason, field, what, fix


def _text(value: Any, field: str, response: bool) -> str:
    if not isinstance(value, str):
        raise _Bad("wrong_type", field, f"expected a string, got {type(value).__name__}",
                   "Use text here (or lists of messages in every field, conversational format).")
    if not value.strip():
        kind = "response" if response else "prompt"
        raise _Bad(f"empty_{kind}", field, "is empty or whitespace only",
                   f"Give every {kind} text.")
    return _unicode(value, field)


def _unicode(value: str, field: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON "\ud800" escapes crash tokenizers later
        raise _Bad("invalid_text", field, "contains invalid Unicode (a lone surrogate)",
                   "Remove the broken character.") from None
    return value


def _messages(value: Any, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise _Bad("wrong_type", field, f"expected a list of messages, got {type(value).__name__}",
                   "Use [{\"role\": ..., \"content\": ...}, ...] (or strings in every field).")
    out = []
    for j, m in enumerate(value):
        where = f"{field}[{j}]"
        if not isinstance(m, dict):
            raise _Bad("bad_message", where, f"message is a {type(m).__name__}, not a mapping",
                       "Each message must be {\"role\": ..., \"content\": ...}.")
        for key in ("role", "content"):
            if key not in m:
                raise _Bad("bad_message", f"{where}.{key}", "is missing",
                           "Each message needs 'role' and 'content'.")
        if m["role"] not in ROLES:
            raise _Bad("unknown_role", f"{where}.role", f"unknown role {str(m['role'])[:40]!r}",
                       f"Use one of {', '.join(ROLES)}.")
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list)):
            raise _Bad("bad_message", f"{where}.tool_calls", "must be a list, on an assistant message",
                       "Give tool calls as [{\"type\": \"function\", \"function\": {...}}, ...].")
        content = "" if m["content"] is None and calls else m["content"]
        if not isinstance(content, str):
            raise _Bad("bad_message", f"{where}.content",
                       f"expected a string, got {type(m['content']).__name__}",
                       "Message content must be text (content parts are not supported).")
        msg = {"role": m["role"], "content": _unicode(content, f"{where}.content")}
        msg.update({k: m[k] for k in MESSAGE_EXTRAS if m.get(k) is not None})
        out.append(msg)
    return out


def _template_kwargs(record: dict) -> dict | None:
    """apply_chat_template's extra arguments of a record: its ``tools`` (a list, or JSON text) and
    ``chat_template_kwargs`` (a mapping), as TRL renders them."""
    out = {}
    tools = record.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise _Bad("bad_tools", "tools", "is not valid JSON", "Give tools as a list of JSON "
                       "schemas (or its JSON text).") from None
    if tools is not None:
        if not isinstance(tools, list):
            raise _Bad("bad_tools", "tools", f"expected a list, got {type(tools).__name__}",
                       "Give tools as a list of JSON schemas.")
        out["tools"] = tools
    extra = record.get("chat_template_kwargs")
    if extra is not None:
        if not isinstance(extra, dict):
            raise _Bad("bad_message", "chat_template_kwargs", f"expected a mapping, got "
                       f"{type(extra).__name__}", "Give the template's arguments as a mapping.")
        out.update(extra)
    return out or None


def _roles_in_order(body: list[dict]) -> bool:
    """user first; an assistant answers a user or tool turn; tool results follow an assistant's
    tool calls (or each other); the prompt ends on a user or tool turn."""
    if not body or body[0]["role"] != "user" or body[-1]["role"] not in ("user", "tool"):
        return False
    for prev, m in zip(body, body[1:]):
        role = m["role"]
        if role == "user" and prev["role"] not in ("assistant", "tool"):
            return False
        if role == "assistant" and prev["role"] not in ("user", "tool"):
            return False
        if role == "tool" and not (prev["role"] == "tool" or prev.get("tool_calls")):
            return False
        if role == "system":
            return False
    return True


def _check_prompt_msgs(msgs: list[dict], field: str) -> None:
    if not msgs:
        raise _Bad("empty_prompt", field, "has no messages", "Give the prompt a user message.")
    roles = [m["role"] for m in msgs]
    if not _roles_in_order(msgs[1:] if roles[0] == "system" else msgs):
        raise _Bad("bad_role_order", field, f"roles {roles} are out of order",
                   "A prompt is an optional system message, then user/assistant turns "
                   "alternating from user (tool results after an assistant's tool_calls), ending "
                   "with a user or tool message.")
    if not any(m["content"].strip() for m in msgs):
        raise _Bad("empty_prompt", field, "all messages are empty", "Give the prompt some text.")


def _check_response_msgs(msgs: list[dict], field: str) -> None:
    if not msgs:
        raise _Bad("empty_response", field, "has no messages",
                   "Give each response an assistant message.")
    for j, m in enumerate(msgs):
        if m["role"] not in ("assistant", "tool") or (j == 0 and m["role"] != "assistant"):
            raise _Bad("bad_role_order", f"{field}[{j}].role", f"is '{m['role']}' in a response",
                       "Responses hold assistant messages (and tool results after their tool "
                       "calls); move other turns into the prompt.")
    if not any(m["content"].strip() or m.get("tool_calls") for m in msgs):
        raise _Bad("empty_response", field, "is empty or whitespace only",
                   "Give every response text.")


def _common_prefix(a: list | str, b: list | str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _preference(record: Any) -> tuple[Any, Any, Any]:
    """Validate one record; returns normalised (prompt, chosen, rejected)."""
    if not isinstance(record, dict):
        raise _Bad("not_a_mapping", None, f"is a {type(record).__name__}, not a mapping",
                   "Each record must be an object with 'prompt', 'chosen' and 'rejected'.")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise _Bad("missing_field", key, "is missing",
                       "Each record needs 'chosen' and 'rejected' (and usually 'prompt').")
    conv = isinstance(record["chosen"], list)
    parse = _messages if conv else (lambda v, f: _text(v, f, True))
    chosen, rejected = parse(record["chosen"], "chosen"), parse(record["rejected"], "rejected")
    if chosen == rejected:
        raise _Bad("identical_responses", "chosen", "is identical to 'rejected'",
                   "A preference pair needs two different responses; drop or fix the record.")
    # A null prompt counts as absent: datasets/Parquet fill a column missing from a row with null.
    if record.get("prompt") is not None:  # explicit prompt
        prompt = record["prompt"]
        prompt = _messages(prompt, "prompt") if conv else _text(prompt, "prompt", False)
    elif conv:  # implicit: the shared leading messages are the prompt
        n = _common_prefix(chosen, rejected)
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:  # implicit text: cut the common prefix back to a whitespace boundary (see docs)
        n = _common_prefix(chosen, rejected)
        cut = max((k for k in range(n) if chosen[k].isspace()), default=0)
        while cut > 0 and chosen[cut - 1].isspace():  # start of the whitespace run
            cut -= 1
        n = cut if chosen[:cut].strip() else n
        if not chosen[:n].strip():
            raise _Bad("empty_prompt", "prompt", "no 'prompt' field and 'chosen'/'rejected' share "
                       "no prefix", "Add a 'prompt' field.")
        prompt = chosen[:n]
        chosen, rejected = _text(chosen[n:], "chosen", True), _text(rejected[n:], "rejected", True)
    if conv:
        _check_prompt_msgs(prompt, "prompt")
        _check_response_msgs(chosen, "chosen")
        _check_response_msgs(rejected, "rejected")
    return prompt, chosen, rejected, _template_kwargs(record) if conv else None


def _prompt_only(record: Any) -> tuple[Any]:
    if not isinstance(record, dict):
        raise _Bad("not_a_mapping", None, f"is a {type(record).__name__}, not a mapping",
                   "Each record must be an object with a 'prompt' field.")
    if record.get("prompt") is None:
        if "chosen" in record or "rejected" in record:
            return _preference(record)[:1]  # implicit preference record: its shared prefix
        raise _Bad("missing_field", "prompt", "is missing", "Each record needs a 'prompt'.")
    value = record["prompt"]
    if isinstance(value, list):
        msgs = _messages(value, "prompt")
        _check_prompt_msgs(msgs, "prompt")
        return (msgs,)
    return (_text(value, "prompt", False),)


def _parse(records: list, source: str, skip_invalid: bool, validate) -> tuple[list, dict[str, int]]:
    if not records:
        raise DataError(f"{source}: no records found. Check the file, split and format.",
                        "no_records")
    lines = getattr(records, "lines", None)
    out, dropped, kind, first = [], {}, None, None
    for i, record in enumerate(records):
        try:
            values = validate(record)
            conv = isinstance(values[0], list)
            if kind is None:
                kind, first = conv, i
            elif conv != kind:
                name = lambda c: "conversational (message lists)" if c else "standard (strings)"
                raise _Bad("mixed_formats", "chosen", f"is {name(conv)} but record {first} is "
                           f"{name(kind)}", "Use one format for every record in a source.")
            out.append((i, values))
        except _Bad as bad:
            if skip_invalid:
                dropped[bad.reason] = dropped.get(bad.reason, 0) + 1
                continue
            where = f"record {i}" + (f" (line {lines[i]})" if lines and i < len(lines) else "")
            field = f"field '{bad.field}': " if bad.field else ""
            msg = f"{source}: {where}: {field}{bad.what}. {bad.fix}"
            raise DataError(msg, bad.reason) from None
    if not out:
        raise DataError(f"{source}: no valid record among {len(records)} (dropped: {dropped}). "
                        "Run without skip_invalid to see the first error.", "no_records")
    return out, dropped


def parse_preferences(records: list, source: str, skip_invalid: bool = False
                      ) -> tuple[list[PreferenceExample], dict[str, int]]:
    """Validate and normalise preference records; returns (examples, drops per reason)."""
    out, dropped = _parse(records, source, skip_invalid, _preference)
    return [PreferenceExample(*v[:3], index=i, source=source, template_kwargs=v[3])
            for i, v in out], dropped


def parse_prompts(records: list, source: str, skip_invalid: bool = False
                  ) -> tuple[list[PromptExample], dict[str, int]]:
    """Prompt-only records ({"prompt": text or messages}); preference records give their prompt."""
    out, dropped = _parse(records, source, skip_invalid, _prompt_only)
    return [PromptExample(v[0], index=i, source=source) for i, v in out], dropped


def load_preferences(name: str, split: str = "train", skip_invalid: bool = False,
                     config: str | None = None, require_split: bool = False
                     ) -> tuple[list[PreferenceExample], dict[str, int]]:
    records, source = load_records(name, split, config, require_split)
    return parse_preferences(records, source, skip_invalid=skip_invalid)


def load_prompts(name: str, split: str = "train", skip_invalid: bool = False
                 ) -> tuple[list[PromptExample], dict[str, int]]:
    return parse_prompts(*load_records(name, split), skip_invalid=skip_invalid)


# ---- tokenization -------------------------------------------------------------------------------

def _template(tokenizer, messages: list[dict], generation_prompt: bool, kwargs: dict | None = None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("conversational data needs a chat template, but the tokenizer has none. "
                        "Use a chat/instruct model's tokenizer or set tokenizer.chat_template.",
                        "no_chat_template")
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                             tokenize=False, **(kwargs or {}))
    except Exception as e:  # templates raise on role orders they do not support
        raise DataError(f"the chat template rejected the messages ({type(e).__name__}: {e}). "
                        "Check the roles this model's template accepts.", "chat_template") from e


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_prompt(prompt: str | list[dict], tokenizer, kwargs: dict | None = None) -> list[int]:
    """Prompt -> token ids: the one code path shared by offline pairs and online sampling.
    kwargs: the chat template's extra arguments (tools, chat_template_kwargs)."""
    if isinstance(prompt, list):  # the template carries its own specials (BOS included, if any)
        ids = _ids(tokenizer, _template(tokenizer, prompt, True, kwargs), special=False)
    else:  # text already starting with BOS must not get a second one
        bos = tokenizer.bos_token
        ids = _ids(tokenizer, prompt, special=not (bos and prompt.startswith(bos)))
    if not ids:  # every sequence needs a first token to condition on
        first = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id)
                      if t is not None), None)
        if first is None:
            raise DataError("the prompt encodes to no tokens and the tokenizer has neither BOS nor "
                            "EOS. Give prompts text or set tokenizer.bos_token.", "empty_prompt")
        ids = [first]
    return ids


def encode_response(prompt: str | list[dict], response: str | list[dict], tokenizer,
                    kwargs: dict | None = None) -> list[int]:
    """Response -> token ids that follow ``encode_prompt(prompt, kwargs)``."""
    if not isinstance(response, list):
        ids = _ids(tokenizer, response, special=False)
        eos = tokenizer.eos_token_id
        return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids
    prompt_text = _template(tokenizer, prompt, True, kwargs)
    full = _template(tokenizer, prompt + response, False, kwargs)
    if not full.startswith(prompt_text):
        raise DataError("the chat template renders the prompt differently alone and inside the "
                        "full conversation, so prompt and response cannot be split "
                        f"(prompt ends {prompt_text[-60:]!r}). Use a template whose generation "
                        "prompt is a prefix of the rendered conversation.", "chat_template")
    return _end_at_eos(_ids(tokenizer, full[len(prompt_text):], special=False), tokenizer)


def _end_at_eos(ids: list[int], tokenizer) -> list[int]:
    """Drop what a chat template writes after the response's final end-of-turn token when it is only
    whitespace (ChatML's ``<|im_end|>\\n``): the model's turn ends at eos, and online samples stop
    there, so offline responses must too; otherwise every pair's log-prob carries a template newline
    that no sample has."""
    eos = tokenizer.eos_token_id
    if eos is None or eos not in ids:
        return ids
    last = len(ids) - 1 - ids[::-1].index(eos)
    tail = ids[last + 1:]
    if tail and not tokenizer.decode(tail).strip():
        return ids[: last + 1]
    return ids


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int


@dataclass
class TokenizeStats:
    total: int = 0
    truncated_prompts: int = 0
    truncated_responses: int = 0  # pairs where chosen or rejected was cut
    dropped_identical: int = 0  # pairs whose chosen == rejected after truncation (dropped)
    dropped_long_prompts: int = 0  # truncation_mode keep_start: the prompt alone fills max_length


def _located(ex, exc: DataError) -> DataError:
    return DataError(f"{ex.source or '<data>'}: record {ex.index}: {exc}", exc.reason)


def longest_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token covers: the longest vocabulary entry as stored
    (byte-level BPE stores one character per byte, so this bounds the decoded text too)."""
    cached = getattr(tokenizer, "_hypo_longest_token", None)
    if cached is None:
        vocab = list(tokenizer.get_vocab())
        cached = max([len(t) for t in vocab] + [1])
        try:
            tokenizer._hypo_longest_token = cached
        except AttributeError:  # a tokenizer object that takes no new attributes
            pass
    return cached


def char_budget(tokenizer, tokens: int) -> int:
    """Characters that surely hold more than ``tokens`` tokens: every token covers at most
    ``longest_token_chars`` characters, so this many characters give at least 2·(tokens + 1)
    tokens. Text cut to it tokenizes, where it is kept, as the whole text does; the factor 2 leaves
    room for merges across the cut and for normalisers that drop characters."""
    return 2 * (tokens + 1) * longest_token_chars(tokenizer)


def _cut_text(value, chars: int, keep_end: bool):
    """A string or a list of messages with every text cut to ``chars`` characters (its end for
    prompts, which keep their last tokens; its start for responses)."""
    if isinstance(value, str):
        if len(value) <= chars:
            return value
        return value[-chars:] if keep_end else value[:chars]
    def long(m: dict) -> bool:  # a tool-call message may carry no text (content None)
        return isinstance(m.get("content"), str) and len(m["content"]) > chars

    if not any(long(m) for m in value):
        return value
    return [{**m, "content": _cut_text(m["content"], chars, keep_end)} if long(m) else m for m in value]


def _bounded(ex, tokenizer, prompt_tokens: int, response_tokens: int, keep_start: bool = False):
    """The example with its texts cut at the character level before tokenizing: a record of any
    size costs what ``max_length`` tokens cost (tokenizers hold several copies of their input).
    keep_start: the prompt keeps its start (truncation_mode 'keep_start'), not its end."""
    prompt = _cut_text(ex.prompt, char_budget(tokenizer, prompt_tokens), keep_end=not keep_start)
    if not hasattr(ex, "chosen"):
        return dataclasses.replace(ex, prompt=prompt)
    cut = char_budget(tokenizer, response_tokens)
    return dataclasses.replace(ex, prompt=prompt, chosen=_cut_text(ex.chosen, cut, False),
                               rejected=_cut_text(ex.rejected, cut, False))


def _cut_prompt(ids: list[int], max_prompt_length: int) -> list[int]:
    # Keep the end: the latest turn and the generation prompt matter most.
    return ids[-max_prompt_length:] if len(ids) > max_prompt_length else ids


def tokenize_pairs(examples: list[PreferenceExample], tokenizer, max_length: int,
                   max_prompt_length: int, max_completion_length: int | None = None,
                   truncation_mode: str = "keep_end", drop_long_prompts: bool = False
                   ) -> tuple[list[TokenizedPair], TokenizeStats]:
    """Tokenize and truncate pairs: prompts keep their last ``max_prompt_length`` tokens (their
    first with truncation_mode 'keep_start'; with ``drop_long_prompts`` a longer prompt drops its
    pair instead, as TRL 1.16), responses their first
    ``min(max_completion_length, max_length − len(prompt))``."""
    if not 1 <= max_prompt_length < max_length:
        raise ValueError(f"need 1 <= max_prompt_length ({max_prompt_length}) < max_length "
                         f"({max_length}) to leave room for a response")
    pairs, stats = [], TokenizeStats(total=len(examples))
    for ex in examples:
        ex = _bounded(ex, tokenizer, max_prompt_length, max_length, truncation_mode == "keep_start")
        try:
            kwargs = ex.template_kwargs
            prompt = encode_prompt(ex.prompt, tokenizer, kwargs)
            chosen = encode_response(ex.prompt, ex.chosen, tokenizer, kwargs)
            rejected = encode_response(ex.prompt, ex.rejected, tokenizer, kwargs)
        except DataError as e:
            raise _located(ex, e) from None
        if len(prompt) > max_prompt_length:
            if drop_long_prompts:
                stats.dropped_long_prompts += 1
                continue
            prompt = (prompt[:max_prompt_length] if truncation_mode == "keep_start"
                      else _cut_prompt(prompt, max_prompt_length))
            stats.truncated_prompts += 1
        room = max_length - len(prompt)
        if max_completion_length is not None:
            room = min(room, max_completion_length)
        if len(chosen) > room or len(rejected) > room:
            chosen, rejected = chosen[:room], rejected[:room]
            stats.truncated_responses += 1
        if chosen == rejected:
            stats.dropped_identical += 1
            continue
        pairs.append(TokenizedPair(prompt, chosen, rejected, ex.index))
    if examples and not pairs and not stats.dropped_long_prompts:
        raise DataError(f"{examples[0].source or '<data>'}: all {len(examples)} pairs are "
                        f"identical after truncation to max_length={max_length}, "
                        f"max_completion_length={max_completion_length}. Raise them.",
                        "identical_responses")
    return pairs, stats


def tokenize_prompts(prompts: list[PromptExample], tokenizer,
                     max_prompt_length: int) -> list[list[int]]:
    """Prompt ids for online sampling, cut to their last ``max_prompt_length`` tokens."""
    out = []
    for ex in prompts:
        ex = _bounded(ex, tokenizer, max_prompt_length, max_prompt_length)
        try:
            out.append(_cut_prompt(encode_prompt(ex.prompt, tokenizer), max_prompt_length))
        except DataError as e:
            raise _located(ex, e) from None
    return out


# ---- fingerprints and splits --------------------------------------------------------------------

def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays/scalars and torch tensors
        return obj.tolist()
    raise TypeError(f"cannot fingerprint a {type(obj).__name__}; pass JSON-able data")


def fingerprint(obj: Any) -> str:
    """Stable short sha256 (16 hex chars) of JSON-able data (arrays/tensors as lists)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_plain)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def fingerprint_pairs(pairs: list[TokenizedPair]) -> str:
    """Fingerprint of all token ids, in order."""
    return fingerprint([[p.prompt_ids, p.chosen_ids, p.rejected_ids] for p in pairs])


def split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): hold out round(fraction*n) seeded picks (≥ 1 if fraction > 0 and n ≥ 2,
    always leaving ≥ 1 for training); order within each part is preserved."""
    if not 0 <= fraction < 1:
        raise ValueError(f"eval fraction must be in [0, 1), got {fraction}")
    n = len(examples)
    k = min(max(round(fraction * n), 1 if fraction > 0 else 0), max(n - 1, 0))
    held = set(random.Random(seed).sample(range(n), k))
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])
