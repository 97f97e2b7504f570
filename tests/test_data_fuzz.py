"""Property tests: hostile records and files either load or raise a DataError that says where.

About 700 generated record lists (~2.5k records) and 400 generated files per run; parse, load and
tokenization must never raise anything but DataError.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hypo.data import (DataError, load_preferences, load_prompts, parse_preferences, parse_prompts,
                       tokenize_pairs, tokenize_prompts)
from hypo.tiny import WORDS, build_tokenizer

# No example database: runs stay independent and leave no .hypothesis folder behind.
FAST = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
FILE_LEVEL = ("no records found", "no valid record", "not valid JSON", "not valid UTF-8",
              "expected a JSON array", "could not read", "does not exist")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([" ".join(WORDS)] * 4)


def check_error(err: DataError, source: str) -> None:
    """Every DataError names the source, then a record/line and field, or a file-level problem."""
    event(f"error: {err.reason}")
    msg = str(err)
    assert msg.startswith(f"{source}: "), msg
    file_level = any(p in msg for p in FILE_LEVEL)
    assert file_level or re.search(r"(record|line) \d+", msg), msg
    if not file_level:
        assert re.search(r"record \d+", msg), msg
        assert "field '" in msg or "not a mapping" in msg, msg
    assert err.reason and " " not in err.reason


# ---- strategies ---------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.sampled_from(["red", "blue", " red", "", " ", "\n\t", "<s>", "</s>", "<|user|>", "\x00",
                     "\ud800x", "é🙂", "a" * 20_000]),
    st.text(max_size=30),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text)
role = st.sampled_from(["system", "user", "assistant", "user", "assistant", "bot", "USER"]) | scalar
message = st.one_of(
    st.fixed_dictionaries({"role": role, "content": hostile_text}),
    st.fixed_dictionaries({}, optional={"role": role,
                                        "content": scalar | st.lists(scalar, max_size=2),
                                        "name": scalar}),
    scalar,
)
good_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                      "content": st.sampled_from(["hi", "red", "blue", " "])})
messages = st.lists(message, max_size=4) | st.lists(good_message, min_size=1, max_size=5)
value = st.one_of(hostile_text, messages, scalar)
word = st.sampled_from(["red", "blue", " red", "red blue", "Say red: red"])
valid = st.one_of(  # plausible records, so that success, identical pairs and mixing all occur
    st.fixed_dictionaries({"prompt": word, "chosen": word, "rejected": word}),
    st.fixed_dictionaries({"chosen": word, "rejected": word}),
    st.fixed_dictionaries({"prompt": st.just([{"role": "user", "content": "hi"}]),
                           "chosen": word.map(lambda w: [{"role": "assistant", "content": w}]),
                           "rejected": word.map(lambda w: [{"role": "assistant", "content": w}])}),
)
record = st.one_of(
    valid, valid,
    st.fixed_dictionaries({}, optional={"prompt": value, "chosen": value, "rejected": value,
                                        "extra": scalar}),
    st.fixed_dictionaries({"prompt": hostile_text, "chosen": hostile_text,
                           "rejected": hostile_text}),
    st.fixed_dictionaries({"chosen": hostile_text, "rejected": hostile_text}),
    st.fixed_dictionaries({"prompt": messages, "chosen": messages, "rejected": messages}),
    st.fixed_dictionaries({"chosen": messages, "rejected": messages}),
    scalar, st.lists(scalar, max_size=3),
)


def _jsonable(rec) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass")


broken_line = st.sampled_from([b'{"prompt": ', b"\xff\xfe", b"\xc3(", b"[1, 2", b"nul\x00l", b"",
                               b'{"a": 1}{"b": 2}', b"[" * 3000, b"1" * 5000, b"NaN",
                               b'{"chosen": "a", "rejected": "b", "prompt": "\\ud800"}', b'"x"'])
line = st.one_of(record.map(_jsonable), broken_line)
file_bytes = st.one_of(
    st.lists(line, max_size=6).map(b"\n".join),
    st.lists(record, max_size=6).map(_jsonable),
    st.binary(max_size=200),
    st.lists(st.lists(hostile_text.map(lambda t: t.replace('"', '""')), min_size=1, max_size=4)
             .map(lambda cells: ",".join(f'"{c}"' for c in cells)), max_size=5)
    .map(lambda rows: "prompt,chosen,rejected\n" + "\n".join(rows))
    .map(lambda text: text.encode("utf-8", "surrogatepass")),
)


# ---- properties ---------------------------------------------------------------------------------

@settings(FAST, max_examples=700)
@given(records=st.lists(record, min_size=1, max_size=6), skip=st.booleans())
def test_hostile_records_parse_or_raise_data_error(tok, records, skip):
    try:
        examples, dropped = parse_preferences(records, "fuzz.jsonl", skip_invalid=skip)
    except DataError as err:
        check_error(err, "fuzz.jsonl")
    else:
        event(f"parsed (dropped {sum(dropped.values())})")
        assert len(examples) + sum(dropped.values()) == len(records)
        assert len({e.conversational for e in examples}) == 1
        for e in examples:
            assert 0 <= e.index < len(records) and e.chosen != e.rejected
        try:
            tokenize_pairs(examples, tok, max_length=64, max_prompt_length=32)
        except DataError as err:
            check_error(err, "fuzz.jsonl")
    try:
        prompts, dropped = parse_prompts(records, "fuzz.jsonl", skip_invalid=skip)
    except DataError as err:
        check_error(err, "fuzz.jsonl")
    else:
        assert len(prompts) + sum(dropped.values()) == len(records)
        assert len(tokenize_prompts(prompts, tok, 16)) == len(prompts)


@settings(FAST, max_examples=400)
@given(content=file_bytes, suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]),
       skip=st.booleans(), prompts=st.booleans())
def test_hostile_files_load_or_raise_data_error(tmp_path_factory, content, suffix, skip, prompts):
    path = tmp_path_factory.getbasetemp() / f"fuzz{suffix}"
    path.write_bytes(content)
    load = load_prompts if prompts else load_preferences
    try:
        examples, dropped = load(str(path), skip_invalid=skip)
    except DataError as err:
        check_error(err, str(path))
    else:
        event("loaded")
        assert examples and all(isinstance(e.index, int) for e in examples)


@settings(FAST, max_examples=200)
@given(kinds=st.lists(st.booleans(), min_size=1, max_size=8), skip=st.booleans())
def test_mixed_formats_in_one_file(tmp_path_factory, kinds, skip):
    std = {"prompt": "Say red:", "chosen": " red", "rejected": " blue"}
    conv = {"prompt": [{"role": "user", "content": "Say red:"}],
            "chosen": [{"role": "assistant", "content": "red"}],
            "rejected": [{"role": "assistant", "content": "blue"}]}
    path = tmp_path_factory.getbasetemp() / "mixed.jsonl"
    path.write_bytes(b"\n".join(_jsonable(conv if k else std) for k in kinds))
    try:
        examples, dropped = load_preferences(str(path), skip_invalid=skip)
    except DataError as err:  # reported at the first record of the other kind
        check_error(err, str(path))
        first = kinds.index(not kinds[0])
        assert err.reason == "mixed_formats" and not skip
        assert f"record {first} (line {first + 1})" in str(err)
    else:
        assert [e.conversational for e in examples] == [k for k in kinds if k == kinds[0]]
        n_other = len(kinds) - len(examples)
        assert dropped == ({"mixed_formats": n_other} if n_other else {})
