"""Run `hypo train` in a subprocess on the tiny model, and read back what a run left on disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def train_args(tiny, out: Path, cache: Path, algo: str, steps: int, **extra) -> list[str]:
    args = {"model_name_or_path": tiny["model"], "dataset_name": tiny["data"], "output_dir": out,
            "ref_cache_dir": cache, "algo": algo, "max_steps": steps, "learning_rate": 3e-3,
            "per_device_train_batch_size": 4, "max_new_tokens": 6, "max_length": 64,
            "max_prompt_length": 32, "save_steps": 1, "save_total_limit": 50, "report_to": "none",
            "eval_online_prompts": 0, "seed": 3, "log_online_samples": "true",
            "disable_progress_bar": "true", **extra}
    return [sys.executable, "-m", "hypo.cli", "train"] + [x for k, v in args.items()
                                                        for x in (f"--{k}", str(v))]


def run(args: list[str], env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env={**ENV, **(env_extra or {})}, capture_output=True, text=True,
                          timeout=timeout)


def start(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, env={**ENV, **(env_extra or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def final_state(out: Path, step: int) -> dict:
    """Everything that must be bitwise equal between an interrupted and a straight run."""
    from safetensors.torch import load_file

    from hypo.checkpoint import load_checkpoint

    folder = out / f"checkpoint-{step}"
    _, _, state = load_checkpoint(folder)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    samples_path = out / "online_samples.jsonl"
    return {
        "params": load_file(folder / "trainable.safetensors"),
        "model": load_file(out / "model.safetensors"),
        "optimizer": state["optimizer"]["state"],
        "lr": state["scheduler"]["_last_lr"],
        "losses": [(m["step"], m["loss"], m["rewards/margins"]) for m in metrics if "loss" in m],
        "samples": samples_path.read_text().splitlines() if samples_path.exists() else [],
    }


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for idx, moments in a["optimizer"].items():
        for key, value in moments.items():
            assert torch.equal(value, b["optimizer"][idx][key]), (idx, key)
    assert a["lr"] == b["lr"]
    assert a["losses"] == b["losses"]
    assert a["samples"] == b["samples"]
