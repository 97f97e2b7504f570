"""Preference and prompt data: loading, validation, chat templates, truncation, fingerprints.

Bad input is rejected here, at the edge, with the source, record, field and a fix named::

    prefs.jsonl: record 3 (line 4): field 'chosen': is empty or whitespace only. Give every
    response text.

Formats follow TRL (standard/conversational × explicit/implicit prompt); see docs/data.md.
This module never loads a model.
"""

from __future__ import annotations

import csv
import hashlib
import io
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


def _read_jsonl(data: bytes, source: str) -> Records:
    records, lines = Records(), []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        text = _decode(raw, source, first_line=n).strip()
        if not text:
            continue  # blank lines (and a trailing newline) are not records
        try:
            records.append(json.loads(text))
        except (ValueError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
            raise DataError(f"{source}: line {n} (record {len(records)}): not valid JSON ({e}). "
                            "Each line must hold one JSON object.", "invalid_json") from None
        lines.append(n)
    records.lines = lines
    return records


def _read_file(path: Path, split: str, source: str, require_split: bool = False) -> list:
    suffix = path.suffix.lower()
    if require_split and suffix != ".json":
        raise _no_split(source, split, "a single-table file has no splits")
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    data = path.read_bytes()
    if suffix == ".jsonl":
        return _read_jsonl(data, source)
    if suffix == ".json":
        text = _decode(data, source)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # several documents: JSON Lines saved as .json
                return _read_jsonl(data, source)
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
        return obj
    if suffix == ".csv":
        text = _decode(data, source)
        # Long responses are legitimate; the csv default caps a field at 128 KiB.
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
        return list(csv.DictReader(io.StringIO(text, newline="")))
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
