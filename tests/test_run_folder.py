"""The run folder is the run's own (issue 22, findings 1-5): hypo writes only inside output_dir
(resolved once: ~, symlinks), never through a link it did not create, deletes only what its
hypo_files.json lists, never replaces a damaged run silently, and never nests runs."""

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from hypo.cli import main

LINKED = ("hypo_config.json", "data_report.json", "README.md", "config.json", "tokenizer.json",
          "generation_config.json")


def cli_args(tiny, out, cache, *extra):
    base = ["train", "--model_name_or_path", str(tiny["model"]), "--dataset_name", str(tiny["data"]),
            "--ref_cache_dir", str(cache), "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--max_new_tokens", "4", "--max_length", "64", "--max_prompt_length", "32",
            "--report_to", "none", "--eval_online_prompts", "0", "--disable_progress_bar",
            "--algo", "dpo", "--lr_scheduler_type", "constant"]
    return base + (["--output_dir", str(out)] if out is not None else []) + list(extra)


def snapshot(folder: Path) -> dict:
    """Every file below folder (links included, not followed) -> its bytes' SHA-256 or link target."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "-> " + str(p.readlink())
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def finished(tiny, tmp_path, capsys):
    """A finished 2-step run with checkpoint-1 and checkpoint-2 (constant schedule: extendable)."""
    out = tmp_path / "run"
    assert main(cli_args(tiny, out, tmp_path / "cache", "--save_steps", "1")) == 0
    capsys.readouterr()
    return out


# ---- 1. links in a run folder ---------------------------------------------------------------------

def test_links_in_a_run_folder_are_never_written_through(finished, tiny, tmp_path, capsys):
    victims = tmp_path / "victims"
    victims.mkdir()
    for name in LINKED:
        (victims / name).write_text(f"the victim's own {name}")
        (finished / name).unlink()
        (finished / name).symlink_to(victims / name)
    before, run_before = snapshot(victims), snapshot(finished)
    code = main(cli_args(tiny, finished, tmp_path / "cache", "--save_steps", "1", "--max_steps", "3",
                         "--resume_from_checkpoint", "auto"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "symbolic link" in err and all(name in err for name in LINKED)
    assert snapshot(victims) == before  # nothing written through any link
    assert snapshot(finished) == run_before  # and nothing else changed: refused before writing


def test_a_planted_staging_link_neither_breaks_the_save_nor_is_followed(finished, tiny, tmp_path):
    victim = tmp_path / "victim-folder"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (finished / ".checkpoint-3.staging").symlink_to(victim, target_is_directory=True)
    assert main(cli_args(tiny, finished, tmp_path / "cache", "--save_steps", "1", "--max_steps", "3",
                         "--resume_from_checkpoint", "auto")) == 0
    from hypo.checkpoint import complete_checkpoints

    assert [s for s, _ in complete_checkpoints(finished)] == [2, 3]  # the step was saved
    assert [p.name for p in victim.iterdir()] == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (finished / ".checkpoint-3.staging").is_symlink()  # not ours: neither followed nor removed


def test_run_folder_writes_replace_links_and_appends_refuse_them(tmp_path):
    from hypo.runfolder import RunFolder, RunFolderError

    victim = tmp_path / "victim.txt"
    victim.write_text("victim")
    run = RunFolder(tmp_path / "run")
    run.write_text("metrics.jsonl", "")
    (tmp_path / "run" / "metrics.jsonl").unlink()
    (tmp_path / "run" / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(RunFolderError, match="symbolic link"):
        run.append("metrics.jsonl", "x\n")
    with pytest.raises(RunFolderError, match="symbolic link"):
        run.write_text("metrics.jsonl", "x\n")
    assert victim.read_text() == "victim"
    # a folder on the way that became a link is refused, not followed
    (tmp_path / "run" / "sub").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(RunFolderError, match="symbolic link"):
        run.write_text("sub/victim.txt", "x")
    assert victim.read_text() == "victim"


# ---- 2. damaged finished runs under auto ----------------------------------------------------------

def test_a_finished_run_whose_checkpoints_are_all_damaged_is_refused(finished, tiny, tmp_path, capsys):
    for folder in sorted(finished.glob("checkpoint-*")):
        path = folder / "trainable.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
    before = snapshot(finished)
    code = main(cli_args(tiny, finished, tmp_path / "cache", "--save_steps", "1",
                         "--resume_from_checkpoint", "auto", "--seed", "99"))
    err = capsys.readouterr().err.replace("\n", "")
    assert code == 2
    assert "none is intact" in err and "Nothing was changed" in err
    for name in ("checkpoint-1", "checkpoint-2"):  # each named, with why
        assert f"{name}: " in err
    assert err.count("does not match the SHA-256") == 2
    assert "--overwrite_output_dir" in err  # the explicit way to start over
    assert snapshot(finished) == before  # the saved model and config stay


# ---- 3. ~ in output_dir ---------------------------------------------------------------------------

def test_tilde_in_output_dir_is_the_home_folder_for_checks_and_writes(tiny, tmp_path, monkeypatch, capsys):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: ~/hx\n")
    assert main(cli_args(tiny, None, tmp_path / "cache", "--config", str(config))) == 0
    assert (home / "hx" / "hypo_config.json").is_file() and (home / "hx" / "model.safetensors").is_file()
    assert not (work / "~").exists()
    assert json.loads((home / "hx" / "hypo_config.json").read_text())["output_dir"] == str(home / "hx")
    before = snapshot(home / "hx")
    capsys.readouterr()
    assert main(cli_args(tiny, None, tmp_path / "cache", "--config", str(config))) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert snapshot(home / "hx") == before


# ---- 4. files hypo did not write --------------------------------------------------------------------

def test_a_users_config_and_readme_are_never_removed_or_called_a_run(tiny, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "README.md").write_text("Notes on arxiv:2406.01462 (HyPO)")
    before = snapshot(out)
    assert main(cli_args(tiny, out, tmp_path / "cache")) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "holds no hypo run" in err  # a config.json alone is not a run
    assert main(cli_args(tiny, out, tmp_path / "cache", "--overwrite_output_dir")) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "config.json" in err and "never overwrites or deletes a file it did not write" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["tokenizer folder", "home"])
def test_a_fresh_run_into_a_folder_of_other_files_is_refused(where, tiny, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    if where == "tokenizer folder":
        for p in Path(tiny["model"]).glob("tokenizer*"):
            shutil.copy(p, folder / p.name)
        out = str(folder)
    else:
        monkeypatch.setenv("HOME", str(folder))
        out = "~"
    (folder / "README.md").write_text("my notes")
    before = snapshot(folder)
    assert main(cli_args(tiny, out, tmp_path / "cache")) == 2
    assert "not empty and holds no hypo run" in capsys.readouterr().err.replace("\n", "")
    assert snapshot(folder) == before


def test_a_run_never_overwrites_the_model_it_starts_from(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cli_args(tiny, out, tmp_path / "cache", "--use_peft", "--lora_r", "4",
                         "--merge_adapter", "--max_steps", "1", "--save_steps", "0")) == 0
    merged = snapshot(out / "merged")
    assert "model.safetensors" in merged
    capsys.readouterr()
    args = cli_args(tiny, out, tmp_path / "cache", "--overwrite_output_dir", "--max_steps", "1")
    args[args.index("--model_name_or_path") + 1] = str(out / "merged")
    assert main(args) == 2
    assert "lies inside output_dir" in capsys.readouterr().err.replace("\n", "")
    assert snapshot(out / "merged") == merged


# ---- 5. nesting, and hypo gguf --overwrite ---------------------------------------------------------

def test_a_run_inside_another_runs_checkpoint_is_refused(finished, tiny, tmp_path, capsys):
    inner = finished / "checkpoint-2" / "inner"
    assert main(cli_args(tiny, inner, tmp_path / "cache")) == 2
    assert "lies inside the hypo run" in capsys.readouterr().err.replace("\n", "")
    assert not inner.exists()


@pytest.fixture
def fake_gguf(tiny, tmp_path, monkeypatch):
    """A file with a GGUF header whose "dequantisation" (transformers' GGUF loader, patched) gives
    the tiny model: the conversion then runs in full without a real GGUF model."""
    import transformers

    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, gguf_file=None, **k: real_model(str(tiny["model"]), **k))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, gguf_file=None, **k: real_tok(str(tiny["model"]), **k))

    def make(name: str, salt: bytes = b"") -> Path:
        path = tmp_path / "ggufs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64) + salt)
        return path

    return make


def test_gguf_overwrite_replaces_only_its_own_conversion(fake_gguf, tmp_path):
    from hypo.config import ConfigError
    from hypo.gguf import convert_gguf

    unrelated = tmp_path / "unrelated"
    (unrelated / "sub").mkdir(parents=True)
    (unrelated / "sub" / "data.txt").write_text("keep")
    (unrelated / "a.txt").write_text("keep")
    before = snapshot(unrelated)
    with pytest.raises(ConfigError, match="holds no conversion by hypo"):
        convert_gguf(fake_gguf("m.gguf"), unrelated, overwrite=True)
    assert snapshot(unrelated) == before

    out = tmp_path / "conv"
    convert_gguf(fake_gguf("m.gguf"), out)
    (out / "notes.txt").write_text("mine")
    convert_gguf(fake_gguf("m.gguf", salt=b"other"), out, overwrite=True)  # another source
    assert (out / "notes.txt").read_text() == "mine"  # not part of the conversion: kept
    marker = json.loads((out / "hypo_gguf_source.json").read_text())
    assert marker["source"]["size"] == 72 + 5 and "model.safetensors" in marker["files"]
    assert (out / "model.safetensors").is_file()


def test_gguf_overwrite_refused_by_a_foreign_file_removes_nothing(fake_gguf, tmp_path):
    """A new conversion's file name taken by a file the earlier conversion did not write: refused
    before the earlier conversion's files are removed, so the folder stays as it was."""
    from hypo.config import ConfigError
    from hypo.gguf import convert_gguf

    out = tmp_path / "conv"
    convert_gguf(fake_gguf("m.gguf"), out)
    marker = out / "hypo_gguf_source.json"
    listed = json.loads(marker.read_text())
    listed["files"].remove("config.json")  # config.json is now somebody else's
    marker.write_text(json.dumps(listed))
    before = snapshot(out)
    with pytest.raises(ConfigError, match="config.json: not part of the earlier conversion"):
        convert_gguf(fake_gguf("m.gguf", salt=b"other"), out, overwrite=True)
    assert snapshot(out) == before
