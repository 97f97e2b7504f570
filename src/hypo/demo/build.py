"""Build the demo's tokenizer and reference policy π_ref (cached on disk, deterministic).

π_ref is a tiny Llama-style causal LM trained by maximum likelihood (``hypo.sft``) on the task
generator's samples, so it says grammatical answers of every kind and rarely anything else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..data import fingerprint
from .task import Task

MODEL_SHAPE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4}
SFT = {"examples": 6000, "steps": 300, "batch_size": 64, "learning_rate": 3e-3}


def build_tokenizer():
    """A word-level tokenizer over the task's vocabulary (each word is one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + Task.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def reference_model(cache_dir: Path, task: Task, disable_progress_bar: bool = False) -> Path:
    """Folder of the trained π_ref (with tokenizer); trained once per (task, shape, SFT) setting."""
    import torch

    from ..sft import sft
    from ..tiny import build_model

    key = fingerprint({"task_seed": task.seed, "shape": MODEL_SHAPE, "sft": SFT, "v": 1})
    folder = Path(cache_dir) / f"demo-ref-{key}"
    if (folder / "done.json").exists():
        return folder
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=task.seed, **MODEL_SHAPE)
    examples = task.sft_examples(SFT["examples"], seed=task.seed)
    prompts = [tokenizer(p)["input_ids"] for p, _ in examples]
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for _, r in examples]
    torch.manual_seed(task.seed)
    history = sft(model, prompts, responses, tokenizer.pad_token_id, SFT["steps"], SFT["batch_size"],
                  SFT["learning_rate"], seed=task.seed, disable_progress_bar=disable_progress_bar,
                  description="training π_ref (MLE)")
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "done.json").write_text(json.dumps({"final_nll": history[-1]}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder
