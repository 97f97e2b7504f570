"""Tests for hypo.data: formats, loading, validation errors, chat templates, truncation."""

from __future__ import annotations

import json

import pytest

from hypo import data
from hypo.data import (DataError, PreferenceExample, PromptExample, encode_prompt, encode_response,
                       fingerprint, fingerprint_pairs, load_preferences, load_prompts, load_records,
                       parse_preferences, parse_prompts, split_eval, tokenize_pairs,
                       tokenize_prompts)
from hypo.tiny import WORDS, build_tokenizer, synthetic_preferences, write_jsonl

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731
GOOD = {"prompt": "Say red:", "chosen": " red", "rejected": " blue"}


@pytest.fixture(scope="module")
def tok():
    records = synthetic_preferences(64)
    corpus = [r["prompt"] + r["chosen"] for r in records] + [" ".join(WORDS)] * 4
    return build_tokenizer(corpus)


@pytest.fixture(scope="module")
def tok_no_bos(tok):
    """The same vocabulary, but no BOS token and no post-processor adding one."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>")
    fast.chat_template = tok.chat_template
    assert fast.bos_token is None and fast("red").input_ids[0] != tok.bos_token_id
    return fast


# ---- formats ------------------------------------------------------------------------------------

def test_standard_explicit():
    (ex,), dropped = parse_preferences([dict(GOOD, extra=1)], "s")
    assert (ex.prompt, ex.chosen, ex.rejected, ex.index) == ("Say red:", " red", " blue", 0)
    assert not ex.conversational and dropped == {}


def test_standard_implicit_cuts_back_to_whitespace():
    recs = [{"chosen": "Q: colour? A: blue sky", "rejected": "Q: colour? A: black cat"},
            {"chosen": "Q: hi\n\nyes", "rejected": "Q: hi\n\nno"},
            {"chosen": "Q: hello", "rejected": "Q: hello world"}]  # one is a prefix of the other
    exs, _ = parse_preferences(recs, "s")
    mixed = parse_preferences([recs[0], dict(recs[1], prompt=None), GOOD], "s")[0]
    assert [e.prompt for e in mixed] == ["Q: colour? A:", "Q: hi", "Say red:"]
    assert [(e.prompt, e.chosen, e.rejected) for e in exs] == [
        ("Q: colour? A:", " blue sky", " black cat"), ("Q: hi", "\n\nyes", "\n\nno"),
        ("Q:", " hello", " hello world")]
    for e, r in zip(exs, recs):
        assert e.prompt + e.chosen == r["chosen"] and e.prompt + e.rejected == r["rejected"]


def test_conversational_explicit():
    rec = {"prompt": [S("be kind"), U("hi"), A("hello"), U("colour?")],
           "chosen": [A("red")], "rejected": [{"role": "assistant", "content": "blue", "x": 1}]}
    (ex,), _ = parse_preferences([rec], "c")
    assert ex.conversational and ex.prompt == rec["prompt"] and ex.rejected == [A("blue")]


def test_conversational_implicit_multi_turn():
    shared = [S("sys"), U("hi"), A("hello"), U("colour?")]
    rec = {"chosen": shared + [A("red")], "rejected": shared + [A("blue")]}
    (ex,), _ = parse_preferences([rec], "c")
    assert (ex.prompt, ex.chosen, ex.rejected) == (shared, [A("red")], [A("blue")])


def test_synthetic_sets_parse():
    for conv in (False, True):
        exs, _ = parse_preferences(synthetic_preferences(20, conversational=conv), "syn")
        assert len(exs) == 20 and all(e.conversational == conv for e in exs)


# ---- errors -------------------------------------------------------------------------------------

CONV = {"prompt": [U("hi")], "chosen": [A("a")], "rejected": [A("b")]}
ERRORS = [  # (bad record, reason, field named in the message or None)
    ([1, 2], "not_a_mapping", None),
    ("text", "not_a_mapping", None),
    ({"prompt": "p", "rejected": "b"}, "missing_field", "chosen"),
    ({"prompt": "p", "chosen": "a"}, "missing_field", "rejected"),
    ({"prompt": "p", "chosen": 5, "rejected": "b"}, "wrong_type", "chosen"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "wrong_type", "prompt"),
    ({"prompt": "p", "chosen": "a", "rejected": None}, "wrong_type", "rejected"),
    ({"prompt": "p", "chosen": " \n", "rejected": "b"}, "empty_response", "chosen"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty_prompt", "prompt"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical_responses", "chosen"),
    ({"chosen": "same", "rejected": "same"}, "identical_responses", "chosen"),
    ({"chosen": "red", "rejected": "blue"}, "empty_prompt", "prompt"),
    (dict(CONV, prompt=["hi"]), "bad_message", "prompt[0]"),
    (dict(CONV, prompt=[{"content": "hi"}]), "bad_message", "prompt[0].role"),
    (dict(CONV, chosen=[{"role": "assistant"}]), "bad_message", "chosen[0].content"),
    (dict(CONV, chosen=[{"role": "assistant", "content": ["x"]}]), "bad_message",
     "chosen[0].content"),
    (dict(CONV, prompt=[{"role": "bot", "content": "hi"}]), "unknown_role", "prompt[0].role"),
    (dict(CONV, prompt=[U("hi"), A("yo")]), "bad_role_order", "prompt"),
    (dict(CONV, prompt=[U("hi"), U("again")]), "bad_role_order", "prompt"),
    (dict(CONV, prompt=[U("a"), S("late")]), "bad_role_order", "prompt"),
    (dict(CONV, prompt=[]), "empty_prompt", "prompt"),
    (dict(CONV, rejected=[A("ok"), U("more")]), "bad_role_order", "rejected[1].role"),
    (dict(CONV, chosen=[]), "empty_response", "chosen"),
    (dict(CONV, chosen=[A("  ")]), "empty_response", "chosen"),
    (dict(CONV, rejected=[A("a")]), "identical_responses", "chosen"),
    ({"chosen": [U("q"), A("a")], "rejected": [U("q"), A("a")]}, "identical_responses", "chosen"),
    (dict(CONV, prompt="hi"), "wrong_type", "prompt"),
    (dict(CONV, rejected="b"), "wrong_type", "rejected"),
    ({"chosen": [U("q"), A("a"), U("more"), A("x")], "rejected": [U("q"), A("b")]},
     "bad_role_order", "chosen[1].role"),
    ({"chosen": [A("x")], "rejected": [A("y")]}, "empty_prompt", "prompt"),
    ({"prompt": None, "chosen": "red", "rejected": "blue"}, "empty_prompt", "prompt"),
    ({"prompt": "p\ud800", "chosen": "a", "rejected": "b"}, "invalid_text", "prompt"),
    (CONV, "mixed_formats", "chosen"),  # conversational after standard records
]


@pytest.mark.parametrize("bad,reason,field", ERRORS)
def test_error_names_source_record_line_field(tmp_path, bad, reason, field):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as err:
        load_preferences(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: record 2 (line 4): "), msg
    assert err.value.reason == reason
    assert (f"field '{field}'" in msg) if field else "not a mapping" in msg
    assert msg.rstrip().endswith(".")


def test_mixed_formats_standard_after_conversational():
    with pytest.raises(DataError, match=r"src: record 1: field 'chosen': is standard .* record 0"):
        parse_preferences([CONV, GOOD], "src")


def test_lenient_drops_and_counts():
    recs = [GOOD, {"prompt": "p"}, {"prompt": "p", "chosen": "", "rejected": "b"},
            {"prompt": "p", "chosen": "x", "rejected": "x"}, 7, CONV,
            {"prompt": "p", "rejected": "b"},
            dict(GOOD, chosen=" other")]
    exs, dropped = parse_preferences(recs, "src", skip_invalid=True)
    assert [e.index for e in exs] == [0, 7]
    assert dropped == {"missing_field": 2, "empty_response": 1, "identical_responses": 1,
                       "not_a_mapping": 1, "mixed_formats": 1}
    with pytest.raises(DataError, match="src: no valid record among 2"):
        parse_preferences([{"prompt": "p"}, 3], "src", skip_invalid=True)
    with pytest.raises(DataError, match="src: no records"):
        parse_preferences([], "src", skip_invalid=True)


def test_prompts():
    recs = [{"prompt": "hello"}, {"prompt": [U("hi")]}, GOOD,
            {"chosen": "Q: a b", "rejected": "Q: a c"}]
    exs, _ = parse_prompts(recs[:1] + recs[2:], "p")
    assert [e.prompt for e in exs] == ["hello", "Say red:", "Q: a"]
    (ex,), _ = parse_prompts(recs[1:2], "p")
    assert ex.prompt == [U("hi")] and isinstance(ex, PromptExample)
    with pytest.raises(DataError, match=r"p: record 1: field 'prompt': is missing"):
        parse_prompts([{"prompt": "a"}, {"text": "b"}], "p")
    with pytest.raises(DataError, match=r"record 1: field 'prompt\[0\].role'"):
        parse_prompts([{"prompt": [U("a")]}, {"prompt": [{"role": "x", "content": "b"}]}], "p")
    exs, dropped = parse_prompts([{"prompt": "a"}, {"prompt": [U("b")]}, {}], "p",
                                 skip_invalid=True)
    assert len(exs) == 1 and dropped == {"mixed_formats": 1, "missing_field": 1}


# ---- loading ------------------------------------------------------------------------------------

def _check_loaded(name, n=6, conversational=False, split="train"):
    exs, dropped = load_preferences(str(name), split=split)
    assert len(exs) == n and dropped == {} and exs[0].conversational == conversational
    return exs


@pytest.mark.parametrize("conv", [False, True])
def test_load_jsonl_json_parquet(tmp_path, conv):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = synthetic_preferences(6, conversational=conv)
    expected = parse_preferences(recs, "x")[0]
    write_jsonl(recs, tmp_path / "a.jsonl")
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "b.json").write_text(json.dumps({"train": recs}))
    (tmp_path / "c.json").write_text("\n".join(json.dumps(r) for r in recs))  # JSONL named .json
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "b.json", "c.json", "a.parquet"):
        exs = _check_loaded(tmp_path / name, conversational=conv)
        assert [(e.prompt, e.chosen, e.rejected) for e in exs] == [
            (e.prompt, e.chosen, e.rejected) for e in expected], name
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a.jsonl").read_bytes())
    _check_loaded(tmp_path / "bom.jsonl", conversational=conv)
    records, source = load_records(str(tmp_path / "a.jsonl"))
    assert source == str(tmp_path / "a.jsonl") and records.lines == [1, 2, 3, 4, 5, 6]


def test_load_csv(tmp_path):
    import pandas as pd

    recs = synthetic_preferences(6)
    pd.DataFrame(recs).to_csv(tmp_path / "a.csv", index=False)
    exs = _check_loaded(tmp_path / "a.csv")
    assert exs[0].prompt == recs[0]["prompt"]
    (tmp_path / "b.csv").write_text('prompt,chosen,rejected\n"x","y",""\n')
    with pytest.raises(DataError, match=r"b.csv: record 0: field 'rejected': is empty"):
        load_preferences(str(tmp_path / "b.csv"))


def test_load_datasets_folders(tmp_path):
    import datasets

    recs = synthetic_preferences(6)
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "ds"))
    _check_loaded(tmp_path / "ds")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(recs),
                               "test": datasets.Dataset.from_list(recs[:2])})
    dd.save_to_disk(str(tmp_path / "dd"))
    _check_loaded(tmp_path / "dd")
    _check_loaded(tmp_path / "dd", n=2, split="test")
    with pytest.raises(DataError, match=r"dd: no split 'nope' \(has train, test\)"):
        load_preferences(str(tmp_path / "dd"), split="nope")
    write_jsonl(recs, tmp_path / "files" / "train.jsonl")  # a folder of data files
    _check_loaded(tmp_path / "files")
    exs, _ = load_prompts(str(tmp_path / "files"))
    assert exs[0].prompt == recs[0]["prompt"]


def test_load_file_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "x",\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2 \(record 1\): not valid JSON"):
        load_preferences(str(path))
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: not valid UTF-8"):
        load_preferences(str(path))
    (tmp_path / "bad.csv").write_bytes(b"prompt,chosen,rejected\na,b,c\n\xc3(,b,c\n")
    with pytest.raises(DataError, match=r"bad.csv: line 3: not valid UTF-8"):
        load_preferences(str(tmp_path / "bad.csv"))
    (tmp_path / "one.json").write_text(json.dumps(GOOD))
    with pytest.raises(DataError, match=r"one.json: expected a JSON array"):
        load_preferences(str(tmp_path / "one.json"))
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"x.parquet: could not read"):
        load_preferences(str(tmp_path / "x.parquet"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"x.txt: unsupported file type"):
        load_preferences(str(tmp_path / "x.txt"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no records found"):
        load_preferences(str(tmp_path / "empty.jsonl"))
    for missing in (tmp_path / "missing.jsonl", tmp_path / "sub" / "x"):
        with pytest.raises(DataError, match=r"file does not exist"):
            load_preferences(str(missing))


def test_hub_names_go_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake(name, split):
        calls.append((name, split))
        if name == "org/missing":
            raise FileNotFoundError("no such dataset")
        return datasets.Dataset.from_list(synthetic_preferences(3))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    exs, _ = load_preferences("org/prefs", split="train_prefs")
    assert len(exs) == 3 and exs[0].index == 0 and calls == [("org/prefs", "train_prefs")]
    with pytest.raises(DataError, match=r"org/missing: not a local file .* no such dataset"):
        load_preferences("org/missing")


# ---- encoding and chat templates ----------------------------------------------------------------

def test_chat_template_split_matches_full_conversation(tok):
    prompt = [S("be brief"), U("Say red blue:"), A("ok"), U("again")]
    response = [A("red blue")]
    p_ids, r_ids = encode_prompt(prompt, tok), encode_response(prompt, response, tok)
    prompt_text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tok.apply_chat_template(prompt + response, tokenize=False)
    assert full_text.startswith(prompt_text)
    assert p_ids == tok(prompt_text, add_special_tokens=False).input_ids
    assert r_ids == tok(full_text[len(prompt_text):], add_special_tokens=False).input_ids
    assert p_ids + r_ids == tok(full_text, add_special_tokens=False).input_ids
    assert r_ids[-1] == tok.eos_token_id and r_ids.count(tok.eos_token_id) == 1
    assert p_ids.count(tok.bos_token_id) == 0  # this template carries no BOS; none is added


def test_chat_response_ends_at_eos_like_an_online_sample(tok):
    """A ChatML-style template writes a newline after every end of turn; the response must stop at
    eos (where online samples stop), but a newline inside the response is kept."""
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = tok.chat_template.replace("+ eos_token }}", "+ eos_token + '\\n' }}")
    prompt = [U("Say red blue:")]
    r_ids = encode_response(prompt, [A("red\nblue")], t)
    assert r_ids[-1] == t.eos_token_id
    assert t.decode(r_ids) == "red\nblue</s>"


def test_chat_template_with_bos_is_not_doubled(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = "{{ bos_token }}" + tok.chat_template
    ids = encode_prompt([U("hi")], t)
    assert ids[0] == t.bos_token_id and ids.count(t.bos_token_id) == 1


def test_chat_template_errors(tok, tok_no_bos):
    import copy

    t = copy.deepcopy(tok_no_bos)
    t.chat_template = None
    with pytest.raises(DataError, match="needs a chat template"):
        encode_prompt([U("hi")], t)
    # A template that renders the last turn differently breaks the prompt/completion split.
    t.chat_template = ("{% for m in messages %}{% if loop.last %}LAST{% endif %}{{ m['content'] }}"
                       "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(DataError, match="cannot be split"):
        encode_response([U("hi")], [A("red")], t)
    t.chat_template = "{{ raise_exception('roles must alternate') }}"
    ex = PreferenceExample([U("hi")], [A("a")], [A("b")], index=5, source="my.jsonl")
    with pytest.raises(DataError, match=r"my.jsonl: record 5: the chat template rejected .*alter"):
        tokenize_pairs([ex], t, 64, 32)


def test_standard_text_bos_handling(tok, tok_no_bos):
    bos = tok.bos_token_id
    plain = encode_prompt("Say red:", tok)
    assert plain[0] == bos and plain.count(bos) == 1
    assert encode_prompt("<s>Say red:", tok) == plain  # no double BOS
    assert encode_prompt("", tok) == [bos]
    ids = encode_prompt("Say red:", tok_no_bos)
    assert ids == plain[1:]
    assert encode_prompt("", tok_no_bos) == [tok_no_bos.eos_token_id]
    resp = encode_response("Say red:", " red", tok_no_bos)
    assert resp == tok(" red", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert encode_response("p", " red</s>", tok).count(tok.eos_token_id) == 1
    assert encode_prompt([U("hi")], tok_no_bos) == encode_prompt([U("hi")], tok)


# ---- truncation ---------------------------------------------------------------------------------

def test_truncation_keeps_prompt_end_and_response_start(tok):
    long_prompt = "Say " + " ".join(WORDS) + ":"
    ex = PreferenceExample(long_prompt, " red blue green", " cat dog owl bee", index=3, source="s")
    full_p = encode_prompt(long_prompt, tok)
    full_c = encode_response(long_prompt, ex.chosen, tok)
    full_r = encode_response(long_prompt, ex.rejected, tok)
    (pair,), stats = tokenize_pairs([ex], tok, max_length=8 + 2, max_prompt_length=8)
    assert pair.prompt_ids == full_p[-8:] and pair.index == 3
    assert pair.chosen_ids == full_c[:2] and pair.rejected_ids == full_r[:2]
    assert stats == data.TokenizeStats(total=1, truncated_prompts=1, truncated_responses=1)
    (pair,), stats = tokenize_pairs([ex], tok, len(full_p) + 64, max_prompt_length=len(full_p))
    assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids) == (full_p, full_c, full_r)
    assert (stats.truncated_prompts, stats.truncated_responses) == (0, 0)
    assert tokenize_prompts([PromptExample(long_prompt, 0)], tok, 8) == [full_p[-8:]]
    with pytest.raises(ValueError):
        tokenize_pairs([ex], tok, max_length=8, max_prompt_length=8)


def test_identical_after_truncation_dropped(tok):
    same_start = PreferenceExample("Say:", " red blue green", " red blue gold", index=0)
    differ = PreferenceExample("Say:", " cat", " dog", index=1)
    c = encode_response("Say:", same_start.chosen, tok)
    r = encode_response("Say:", same_start.rejected, tok)
    shared = next(k for k in range(len(c)) if c[k] != r[k])
    assert shared >= 1
    p_len = len(encode_prompt("Say:", tok))
    pairs, stats = tokenize_pairs([same_start, differ], tok, p_len + shared, p_len)
    assert [p.index for p in pairs] == [1] and stats.dropped_identical == 1 and stats.total == 2
    with pytest.raises(DataError, match="identical after truncation"):
        tokenize_pairs([same_start], tok, max_length=p_len + shared, max_prompt_length=p_len)


def test_conversational_pairs_tokenize(tok):
    exs, _ = parse_preferences(synthetic_preferences(8, conversational=True), "c")
    pairs, stats = tokenize_pairs(exs, tok, 128, 64)
    assert len(pairs) == 8 and stats.truncated_prompts == 0
    assert all(p.chosen_ids[-1] == tok.eos_token_id for p in pairs)


# ---- fingerprints and splits --------------------------------------------------------------------

def test_fingerprints(tok):
    exs, _ = parse_preferences(synthetic_preferences(8), "s")
    pairs, _ = tokenize_pairs(exs, tok, 64, 32)
    again, _ = tokenize_pairs(parse_preferences(synthetic_preferences(8), "s")[0], tok, 64, 32)
    fp = fingerprint_pairs(pairs)
    assert len(fp) == 16 and fp == fingerprint_pairs(again)
    again[5].rejected_ids[-2] += 1
    assert fingerprint_pairs(again) != fp
    assert fingerprint({"a": [1, 2], "b": "x"}) == fingerprint({"b": "x", "a": [1, 2]})
    assert fingerprint([1, 2]) != fingerprint([2, 1])
    import torch
    assert fingerprint(torch.tensor([1, 2])) == fingerprint([1, 2])


def test_split_eval():
    items = list(range(20))
    train, ev = split_eval(items, 0.25, seed=1)
    assert len(ev) == 5 and sorted(train + ev) == items
    assert train == sorted(train) and ev == sorted(ev)
    assert split_eval(items, 0.25, seed=1) == (train, ev)
    assert split_eval(items, 0.25, seed=2) != (train, ev)
    assert split_eval(items, 0.0, seed=1) == (items, [])
    assert len(split_eval(items, 0.01, seed=1)[1]) == 1
    assert split_eval([1, 2], 0.9, seed=0)[0] != []
    assert split_eval([1], 0.5, seed=0) == ([1], [])
    with pytest.raises(ValueError):
        split_eval(items, 1.0, seed=0)


def test_module_does_not_import_models():
    import subprocess
    import sys

    code = ("import sys, hypo.data; heavy = {'torch', 'transformers', 'datasets'} & set(sys.modules);"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
