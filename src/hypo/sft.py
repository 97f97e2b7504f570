"""Supervised fine-tuning by maximum likelihood on (prompt, response) token ids.

Used to build reference policies (e.g. the demo's π_ref) with the same log-prob code as
preference training: the loss is −Σ logp(y|x) / (number of response tokens).
"""

from __future__ import annotations

import torch

from .batching import IndexStream
from .logprobs import pack_sequences, sequence_logps
from .progress import step_progress


def sft(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_token_id: int,
        steps: int, batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0,
        disable_progress_bar: bool = False, description: str = "supervised fine-tuning") -> list[float]:
    """Train `model` in place with AdamW and a linear decay; returns the per-step token NLL."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    stream = IndexStream(len(prompts), seed)
    history = []
    with step_progress(description, steps, disable_progress_bar) as advance:
        for step in range(steps):
            idx = stream.take(step * batch_size, batch_size)
            batch = pack_sequences([prompts[i] for i in idx], [responses[i] for i in idx], pad_token_id)
            loss = -sequence_logps(model, batch).sum() / batch.response_mask.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(float(loss.detach()))
            advance(1, f"nll {history[-1]:.3f}")
    return history
