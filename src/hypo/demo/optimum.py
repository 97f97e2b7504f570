"""The KL-regularised optimum π* of the demo's task, computed exactly.

DPO and HyPO aim at π*(y|x) ∝ π_ref(y|x)·exp(r(x, y)/β), r the Bradley–Terry reward the labels
are drawn from (r = bt_scale·r*, up to a per-prompt constant). r is constant on each class of
responses (one of the four kinds, or "out of the grammar"), so π* reweights whole classes and
keeps π_ref's shape inside each:

    π*(c|x) = M_c(x)·exp(r_c(x)/β) / Σ_c' M_c'(x)·exp(r_c'(x)/β),
    KL(π*‖π_ref)(x) = Σ_c π*(c|x)·log(π*(c|x) / M_c(x)),

with M_c(x) = π_ref's mass on class c. The grammar is finite (4 kinds × 5 words × 2–4 words), so
M_kind is a sum over every grammatical response, each scored exactly by π_ref; the out-of-grammar
mass is the rest, 1 − Σ_kinds M_kind.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch

from .pairs import encode_prompts, encode_responses, reference_logps
from .stack import Stack
from .task import KIND_WORDS, MAX_WORDS, MIN_WORDS, OOD_REWARD, Task


def grammar(kind: int) -> list[str]:
    """Every grammatical response of one kind, as text (" w1 … wn .")."""
    return [" " + " ".join(words) + " ." for n in range(MIN_WORDS, MAX_WORDS + 1)
            for words in itertools.product(KIND_WORDS[kind], repeat=n)]


@torch.no_grad()
def class_masses(reference: Stack, tokenizer, prompts: list[str]) -> torch.Tensor:
    """(G, kinds + 1): π_ref's exact mass on each kind, and on everything else, per prompt."""
    p = encode_prompts(tokenizer, prompts)
    masses = []
    for kind in range(len(KIND_WORDS)):
        ids, lengths = encode_responses(tokenizer, grammar(kind))
        mask = torch.arange(ids.shape[1]) < lengths[:, None]
        logps = torch.cat([reference_logps(reference, p[i:i + 4], ids.expand(len(p[i:i + 4]), -1, -1),
                                           mask.expand(len(p[i:i + 4]), -1, -1)) for i in range(0, len(p), 4)])
        masses.append(logps.double().exp().sum(1))
    kinds = torch.stack(masses, 1)
    return torch.cat([kinds, (1 - kinds.sum(1, keepdim=True)).clamp(min=0)], 1)


def optimum(task: Task, masses: torch.Tensor, prompts: list[str], beta: float, bt_scale: float = 4.0) -> dict:
    """Mean over prompts of KL(π*‖π_ref), π*'s gold reward and π_ref's, from the class masses."""
    kls, golds, refs = [], [], []
    for m, prompt in zip(masses.tolist(), prompts):
        gold = task.quality[task.topic(prompt)] + [OOD_REWARD]
        logits = [math.log(mc) + bt_scale * g / beta if mc > 0 else -math.inf for mc, g in zip(m, gold)]
        top = max(logits)
        z = sum(math.exp(x - top) for x in logits)
        star = [math.exp(x - top) / z for x in logits]
        kls.append(sum(ps * math.log(ps / mc) for ps, mc in zip(star, m) if ps > 0))
        golds.append(sum(ps * g for ps, g in zip(star, gold)))
        refs.append(sum(mc * g for mc, g in zip(m, gold)))
    n = len(prompts)
    return {"kl": sum(kls) / n, "gold_reward": sum(golds) / n, "reference_gold_reward": sum(refs) / n,
            "beta": beta, "bt_scale": bt_scale, "prompts": n}


def optimal_budget(ref_dir: Path, task: Task, tokenizer, beta: float) -> dict:
    """π*'s KL and gold reward on the training prompts (cached next to π_ref: computed once)."""
    path = Path(ref_dir) / f"optimum-beta{beta:g}.json"
    if path.exists():
        return json.loads(path.read_text())
    reference = Stack.from_pretrained(ref_dir, 1, trainable=False)
    result = optimum(task, class_masses(reference, tokenizer, task.train_prompts), task.train_prompts, beta)
    path.write_text(json.dumps(result) + "\n")
    return result
