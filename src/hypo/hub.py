"""Pushing a trained model to the Hugging Face Hub (``push_to_hub`` / ``hub_model_id``).

Everything goes through ``HfApi`` (huggingface_hub's client; tests put a local stand-in here).
When the Hub cannot be reached (``HF_HUB_OFFLINE``, no network, no login) the push is refused with
one line that says why and where the model is, so nothing is lost.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from .config import ConfigError

# Files of a run folder that are not the model: never uploaded.
NOT_UPLOADED = ["checkpoint-*", "checkpoint-*/**", ".checkpoint-*", "runs/**", "wandb/**",
                "metrics.tmp", "online_samples.jsonl", "*.tmp"]


class HubError(ConfigError):
    """The Hub could not be reached or refused the push; the message is one line."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def _fail(action: str, repo_id: str, why: str, folder: str | None) -> HubError:
    where = f"; the model stays in {folder} (push it later with `hf upload {repo_id} {folder}`)" \
        if folder else ""
    return HubError(f"push_to_hub: cannot {action} {repo_id} on the Hugging Face Hub ({why}){where}."
                    .replace("\n", " "))


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def create_repo(repo_id: str, private: bool | None = None, token: str | None = None,
                folder: str | None = None) -> str:
    """Create (or find) the model repository; returns its URL."""
    if _offline():
        raise _fail("create", repo_id, "HF_HUB_OFFLINE is set", folder)
    try:
        return str(HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True,
                                                  repo_type="model"))
    except Exception as err:  # noqa: BLE001 - network, auth, HTTP: one line
        raise _fail("create", repo_id, _reason(err), folder) from None


def push_folder(folder: str | Path, repo_id: str, commit_message: str = "End of training",
                revision: str | None = None, token: str | None = None,
                private: bool | None = None) -> str:
    """Upload a saved model folder (model, tokenizer, model card; not checkpoints or logs)."""
    create_repo(repo_id, private, token, str(folder))
    try:
        info = HfApi(token=token).upload_folder(folder_path=str(folder), repo_id=repo_id,
                                                repo_type="model", commit_message=commit_message,
                                                revision=revision, ignore_patterns=NOT_UPLOADED)
    except Exception as err:  # noqa: BLE001
        raise _fail("push to", repo_id, _reason(err), str(folder)) from None
    return str(getattr(info, "commit_url", info))
