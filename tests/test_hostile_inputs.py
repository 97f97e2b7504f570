"""Trust nothing that came from elsewhere (issue 22, findings 6-11): cache keys that cannot
collide, no remote code from a file, a private cache, inputs bounded by what a run can use
(checked under a memory limit in a subprocess), and one clear line for every damaged file."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hypo.checkpoint import CheckpointError
from hypo.cli import main
from hypo.config import ConfigError

from .test_run_folder import cli_args, fake_gguf, finished, snapshot  # noqa: F401 - fixtures

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def run_limited(code: str, *args: str, extra_mib: int = 768) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose address space is capped (resource.setrlimit) at
    what it has mapped after its imports plus `extra_mib`: what the old code took (GBs) fails there."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        def cap():
            with open("/proc/self/status") as fh:
                vm = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize"))
            resource.setrlimit(resource.RLIMIT_AS, (vm + ({extra_mib} << 20), resource.RLIM_INFINITY))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=300, env=ENV)


# ---- 6. the reference cache -------------------------------------------------------------------------

def _swap_rows(src: Path, dst: Path) -> None:
    """dst = the model in src with two lm_head rows swapped: the same sums, sums of squares and first
    16 values (what the old fingerprint hashed), a different model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        w = model.lm_head.weight
        w[[5, 9]] = w[[9, 5]].clone()
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)


def test_permuted_weights_never_reuse_another_models_reference_cache(base_config, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from hypo.modeling import weights_fingerprint
    from hypo.trainer import Trainer

    permuted = tmp_path / "permuted"
    _swap_rows(tiny["model"], permuted)
    a = AutoModelForCausalLM.from_pretrained(tiny["model"])
    b = AutoModelForCausalLM.from_pretrained(permuted)
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(a) == weights_fingerprint(AutoModelForCausalLM.from_pretrained(tiny["model"]))
    first = Trainer(base_config(algo="dpo", max_steps=1))
    assert first.data.report["ref_cache_train"] == "computed"
    second = Trainer(base_config(algo="dpo", max_steps=1, model_name_or_path=str(permuted),
                                 output_dir=str(tmp_path / "b")))
    assert second.data.report["ref_cache_train"] == "computed"  # its own entry, not the first's
    live = Trainer(base_config(algo="dpo", max_steps=1, model_name_or_path=str(permuted),
                               output_dir=str(tmp_path / "c"), precompute_ref_log_probs=False))
    # both computed by the same code on the same shapes: equal bit for bit
    assert torch.equal(second.ref_train, live.ref_train)
    assert not torch.equal(second.ref_train, first.ref_train)


@pytest.mark.parametrize("bad", [0.5, float("nan"), float("inf")])
def test_implausible_cache_entries_are_recomputed(bad, tmp_path):
    from safetensors.torch import save_file

    from hypo.refcache import load_or_compute

    forged = torch.tensor([[-3.0, bad], [-1.0, -2.0]])
    save_file({"logps": forged}, tmp_path / "ref-logps-k.safetensors", metadata={"key": "k"})
    fresh = torch.tensor([[-4.0, -5.0], [-6.0, -7.0]])
    logps, cached = load_or_compute("k", tmp_path, lambda: fresh, rows=2)
    assert not cached and torch.equal(logps, fresh)
    logps, cached = load_or_compute("k", tmp_path, lambda: None, rows=2)  # the rewritten entry
    assert cached and torch.equal(logps, fresh)


# ---- 7. remote code from a config file ----------------------------------------------------------------

def _remote_code_model(tiny, tmp_path: Path, marker: Path) -> Path:
    """A model folder whose config.json asks for custom code; importing that code creates `marker`."""
    import shutil

    folder = tmp_path / "remote-model"
    shutil.copytree(tiny["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).touch()
        from transformers import LlamaConfig, LlamaForCausalLM
        class EvilConfig(LlamaConfig):
            pass
        class EvilModel(LlamaForCausalLM):
            config_class = EvilConfig
    """))
    return folder


def test_trust_remote_code_in_a_yaml_file_runs_no_code(tiny, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    model = _remote_code_model(tiny, tmp_path, marker)
    config = tmp_path / "shared.yaml"
    config.write_text(f"model_name_or_path: {model}\ntrust_remote_code: true\n")
    args = ["train", "--config", str(config), "--dataset_name", str(tiny["data"]),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "trust_remote_code: true is refused in a config file" in err and "--trust_remote_code" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    # typed by the user on the command line, the same file is the user's choice
    from hypo.cli import build_config, make_parser

    cfg = build_config(make_parser().parse_args(args + ["--trust_remote_code"]))
    assert cfg.trust_remote_code is True and not marker.exists()


# ---- 8. a private cache ---------------------------------------------------------------------------

def test_cache_folders_are_private_whichever_command_creates_them(fake_gguf, tmp_path, monkeypatch):
    from hypo.gguf import convert_gguf

    cache = tmp_path / "cache-root" / "hypo"
    monkeypatch.setenv("HYPO_CACHE", str(cache))
    folder = convert_gguf(fake_gguf("m.gguf"))  # hypo gguf first, before any training run
    for path in (cache.parent, cache, cache / "models", folder):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


# ---- 9. YAML alias bombs --------------------------------------------------------------------------

def bomb() -> str:
    """A value whose anchors (&a) and aliases (*a) expand to 9^9 strings: a few hundred bytes."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefg", "bcdefgh")]
    return "[" + ", ".join(levels + [f"[{','.join(['*h'] * 9)}]"]) + "]"


@pytest.mark.parametrize("field", ["lora_target_modules", "beta"])
def test_a_yaml_alias_bomb_is_refused_within_a_memory_limit(field, tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(f"{field}: {bomb()}\n")
    assert config.stat().st_size < 600  # a few hundred bytes, 9^9 values once expanded
    result = run_limited("""
        from hypo.config import ConfigError, TrainConfig
        cap()
        try:
            TrainConfig.from_yaml(sys.argv[1])
            print("LOADED")
        except ConfigError as err:
            print("REFUSED", err)
    """, str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("REFUSED") and "aliases" in result.stdout


# ---- 10. records of any size ------------------------------------------------------------------------

def test_a_huge_record_costs_what_max_length_tokens_cost(tiny, tmp_path):
    data = tmp_path / "big.jsonl"
    with data.open("w") as fh:
        fh.write(json.dumps({"prompt": "tell me " * 2_000_000, "chosen": "yes " * 6_000_000,
                             "rejected": "no " * 2_000_000}) + "\n")
    assert data.stat().st_size > 45_000_000  # under the 64 MiB record limit: read, then cut
    result = run_limited("""
        from transformers import AutoTokenizer
        from hypo.data import load_preferences, tokenize_pairs
        tok = AutoTokenizer.from_pretrained(sys.argv[2])
        cap()
        pairs, stats = tokenize_pairs(load_preferences(sys.argv[1])[0], tok, 64, 32)
        p = pairs[0]
        print(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids), stats.truncated_prompts,
              stats.truncated_responses)
    """, str(data), str(tiny["model"]), extra_mib=1024)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["32", "32", "32", "1", "1"]


def test_character_cut_gives_the_tokens_of_the_whole_text(tiny):
    """Cutting at char_budget changes nothing in what is kept: the last prompt tokens and the first
    response tokens equal those of the whole text (standard and conversational records)."""
    import random

    from transformers import AutoTokenizer

    from hypo.data import PreferenceExample, char_budget, tokenize_pairs

    tok = AutoTokenizer.from_pretrained(tiny["model"])
    rng = random.Random(0)
    words = [w for w in tok.get_vocab() if w.isalpha()] + ["a", "the", "Ab!", "  ", "\n", "é"]
    text = lambda n: "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(n))  # noqa: E731
    examples = [PreferenceExample(text(3000), text(3000), text(2999), index=i) for i in range(4)]
    assert all(len(e.chosen) > char_budget(tok, 64) for e in examples)  # the cut is in effect
    cut, _ = tokenize_pairs(examples, tok, 64, 32)
    for ex, pair in zip(examples, cut):
        prompt = tok(ex.prompt)["input_ids"]
        chosen = tok(ex.chosen, add_special_tokens=False)["input_ids"]
        assert pair.prompt_ids == prompt[-32:] and pair.chosen_ids == chosen[:32]
    kept, _ = tokenize_pairs(examples, tok, 64, 32, truncation_mode="keep_start")  # TRL's other mode
    for ex, pair in zip(examples, kept):
        assert pair.prompt_ids == tok(ex.prompt)["input_ids"][:32]


def test_parquet_files_are_checked_before_they_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.parquet"  # 3M tiny records in a few KB
    n = 3_000_000
    pq.write_table(pa.table({"prompt": pa.array(["p"] * n), "chosen": pa.array(["a"] * n),
                             "rejected": pa.array(["b"] * n)}), rows, compression="zstd")
    huge = tmp_path / "huge.parquet"  # one 96 MB string in a few KB
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["a" * (96 << 20)], "rejected": ["b"]}),
                   huge, compression="zstd")
    assert rows.stat().st_size < 100_000 and huge.stat().st_size < 100_000
    for path, expected in ((rows, "holds 3000000 records, above the limit of 1000000"),
                           (huge, "record 0 is 1006633")):
        result = run_limited("""
            from hypo.data import DataError, load_preferences
            cap()
            try:
                load_preferences(sys.argv[1])
                print("LOADED")
            except DataError as err:
                print("REFUSED", err)
        """, str(path), extra_mib=1024)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith("REFUSED") and expected in result.stdout, result.stdout
        assert "above the limit" in result.stdout


def test_a_jsonl_line_beyond_the_record_limit_is_refused_unread(tmp_path, monkeypatch):
    from hypo.data import DataError, load_preferences

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a" * 5000, "rejected": "b"}) + "\n")
    monkeypatch.setenv("HYPO_MAX_RECORD_BYTES", "1000")
    with pytest.raises(DataError, match=r"d.jsonl: line 1 is 1001 bytes, above the limit of 1000 "
                                        r"\(HYPO_MAX_RECORD_BYTES\)"):
        load_preferences(str(path))


# ---- 11. one clear line for every damaged file --------------------------------------------------------

def _rehash(folder: Path, step: int | None = None) -> None:
    import hashlib

    manifest = json.loads((folder / "manifest.json").read_text())
    if step is not None:
        manifest["step"] = step
    manifest["files"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(folder.iterdir()) if p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit_state(folder: Path, edit) -> None:
    tree = json.loads((folder / "trainer_state.json").read_text())
    edit(tree)
    (folder / "trainer_state.json").write_text(json.dumps(tree))


def _edit_tensors(folder: Path, name: str, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / name)
    edit(tensors)
    save_file(tensors, folder / name)


def _moment_key(folder: Path) -> str:
    """The safetensors key of parameter 0's exp_avg in trainer_state.safetensors."""
    tree = json.loads((folder / "trainer_state.json").read_text())
    items = tree["optimizer"]["state"]["$items"]
    return items[0][1]["exp_avg"]["$tensor"]


def _first_weight(folder: Path) -> str:
    from safetensors import safe_open

    with safe_open(folder / "trainable.safetensors", "pt") as fh:
        return next(k for k in fh.keys() if fh.get_slice(k).get_shape()[0] > 1
                    and len(fh.get_slice(k).get_shape()) == 2)


def _step(step):
    """Set the step, and the data cursor and schedule that agree with it (a consistent forgery)."""
    def edit(tree):
        tree["step"] = step
        tree["scheduler"]["last_epoch"] = step
        tree["data_cursor"] = {"pairs": step * 4, "micro_batches": step, "pairs_in_data": 128}
    return edit


ODD_STATES = {
    "negative step": (lambda f: _edit_state(f, _step(-3)), r"step: expected an integer ≥ 0, found -3"),
    "fractional step": (lambda f: _edit_state(f, _step(2.5)), r"step: expected an integer ≥ 0, found 2.5"),
    "NaN lambda": (lambda f: _edit_state(f, lambda t: t.update(kl_coef=float("nan"))), r"kl_coef: expected a finite number"),
    "row for a matrix": (lambda f: _edit_tensors(f, "trainable.safetensors", lambda t: t.update(
        {_first_weight(f): t[_first_weight(f)][:1].clone()})), r"expected a torch.float32 tensor of shape \(\d+, \d+\), found torch.float32 \(1, \d+\)"),
    "float64 weights": (lambda f: _edit_tensors(f, "trainable.safetensors", lambda t: t.update(
        {k: v.double() for k, v in t.items()})), r"expected a torch.float32 tensor .* found torch.float64"),
    "Adam moment shape": (lambda f: _edit_tensors(f, "trainer_state.safetensors", lambda t: t.update(
        {_moment_key(f): torch.zeros(3)})), r"optimizer.state\[0\].exp_avg: expected a torch.float32 tensor"),
}


@pytest.mark.parametrize("case", list(ODD_STATES))
def test_odd_checkpoint_states_are_refused_in_one_line(case, finished, tiny, tmp_path, capsys):
    folder = finished / "checkpoint-2"
    damage, expected = ODD_STATES[case]
    damage(folder)
    _rehash(folder)  # the manifest agrees with the hostile bytes
    before = snapshot(finished)
    code = main(cli_args(tiny, finished, tmp_path / "cache", "--save_steps", "1",
                         "--resume_from_checkpoint", str(folder)))
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("hypo: error: ") and "checkpoint-2" in line and "Traceback" not in err
    assert __import__("re").search(expected, line), line
    assert snapshot(finished) == before


def test_a_step_beyond_the_run_is_refused(finished, tiny, tmp_path, capsys):
    huge = 10 ** 30
    folder = finished / f"checkpoint-{huge}"
    (finished / "checkpoint-2").rename(folder)

    _edit_state(folder, _step(huge))
    _rehash(folder, step=huge)
    code = main(cli_args(tiny, finished, tmp_path / "cache", "--save_steps", "1",
                         "--resume_from_checkpoint", "auto"))
    err = capsys.readouterr().err
    assert code == 2 and f"step: expected at most 2 (this run's length), found {huge}" in err


def test_malformed_gguf_files_are_one_clear_line(tmp_path):
    from hypo.gguf import convert_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match=r"bad.gguf is not a GGUF file \(expected the bytes 'GGUF'"):
        convert_gguf(bad, tmp_path / "out1")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 20)  # counts, then nothing
    with pytest.raises(ConfigError, match=r"truncated.gguf: not a GGUF model transformers can read"):
        convert_gguf(truncated, tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_hostile_metrics_lines_are_dropped_with_one_line_on_resume(finished, tiny, tmp_path, capsys):
    log = finished / "metrics.jsonl"
    good = log.read_text()
    hostile = ['[1, 2]', '"text"', '{"step": "3"}', "[" * 100_000 + "]" * 100_000, "{not json"]
    with log.open("a") as fh:
        fh.write("\n".join(hostile) + "\n")
    code = main(cli_args(tiny, finished, tmp_path / "cache", "--save_steps", "1", "--max_steps", "3",
                         "--resume_from_checkpoint", "auto"))
    err = capsys.readouterr().err.replace("\n", "")
    assert code == 0, err[-3000:]
    assert f"dropped {len(hostile)} line(s) that hypo did not write" in err and "line 3" in err
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [json.loads(x)["step"] for x in good.splitlines()] + [3]
