"""A synthetic preference task with a known gold reward and a coverage knob.

Prompts ask about a topic ("tell me about cats plainly :"). The response generator (a tiny grammar)
answers with one *kind* of response: 2-4 words drawn from that kind's own vocabulary, then ".".
Everything the grammar can say is *in support*; any other token sequence is out of support.

Gold reward r*(x, y):
- in support: q[topic][kind] ∈ {1.0, 0.6, 0.3, 0.0} (a seeded ranking of the kinds per topic);
- out of support: −1, below every grammatical answer, so mass that leaves the data shows in r*.

Coverage: offline pairs are drawn from a behaviour policy (the generator) restricted to the kinds
in ``covered_kinds``. Global coverage = all kinds; partial = a slice of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

TOPICS = "cats dogs birds fish trees rivers stars cars".split()
MOODS = "briefly kindly plainly warmly simply boldly".split()
KIND_WORDS = (
    "big small old new red".split(),
    "happy sad calm wild shy".split(),
    "run swim fly grow shine".split(),
    "home sea sky field city".split(),
)
KIND_NAMES = ("looks", "feelings", "actions", "places")
OOD_REWARD = -1.0
QUALITY_LEVELS = (1.0, 0.6, 0.3, 0.0)
MIN_WORDS, MAX_WORDS = 2, 4


@dataclass
class Task:
    """Prompts, grammar and gold reward, all fixed by ``seed``."""

    seed: int = 0
    quality: dict = field(init=False)  # topic -> [q for each kind]
    train_prompts: list[str] = field(init=False)
    eval_prompts: list[str] = field(init=False)

    def __post_init__(self):
        rng = random.Random(self.seed)
        self.quality = {}
        for topic in TOPICS:
            levels = list(QUALITY_LEVELS)
            rng.shuffle(levels)
            self.quality[topic] = levels
        prompts = [f"tell me about {t} {m} :" for t in TOPICS for m in MOODS]
        rng.shuffle(prompts)
        n_eval = len(prompts) // 4
        self.eval_prompts, self.train_prompts = sorted(prompts[:n_eval]), sorted(prompts[n_eval:])

    # ---- grammar ------------------------------------------------------------------------------
    @staticmethod
    def topic(prompt: str) -> str:
        return prompt.split()[3]

    @staticmethod
    def vocabulary() -> list[str]:
        words = ["tell", "me", "about", ":", "."] + TOPICS + MOODS
        return words + [w for kind in KIND_WORDS for w in kind]

    def generate(self, rng: random.Random, kinds: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[str, int]:
        """One grammatical response of a kind drawn uniformly from `kinds`: (text, kind)."""
        kind = rng.choice(kinds)
        n = rng.randint(MIN_WORDS, MAX_WORDS)
        return " " + " ".join(rng.choice(KIND_WORDS[kind]) for _ in range(n)) + " .", kind

    @staticmethod
    def kind_of(words: list[str]) -> int | None:
        """The kind of a response given as words (without eos), or None if out of support."""
        if not words or words[-1] != "." or not MIN_WORDS <= len(words) - 1 <= MAX_WORDS:
            return None
        body = words[:-1]
        for kind, vocab in enumerate(KIND_WORDS):
            if all(w in vocab for w in body):
                return kind
        return None

    def reward(self, prompt: str, words: list[str]) -> float:
        kind = self.kind_of(words)
        return OOD_REWARD if kind is None else self.quality[self.topic(prompt)][kind]

    def best_kind(self, prompt: str) -> int:
        return max(range(len(KIND_WORDS)), key=lambda k: self.quality[self.topic(prompt)][k])

    # ---- data ---------------------------------------------------------------------------------
    def sft_examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        """(prompt, response) pairs from the generator (all kinds) to train π_ref by MLE."""
        rng = random.Random(seed)
        return [(p, self.generate(rng)[0]) for p in (rng.choice(self.train_prompts) for _ in range(n))]

    def preference_pairs(self, n: int, covered_kinds: tuple[int, ...], seed: int,
                         prompts: list[str] | None = None, bt_scale: float = 4.0) -> list[dict]:
        """Offline pairs from the behaviour policy restricted to `covered_kinds`, labelled by
        Bradley–Terry on r*: P(y1 ≻ y2) = σ(bt_scale·(r*(y1) − r*(y2)))."""
        import math

        rng = random.Random(seed)
        prompts = prompts or self.train_prompts
        records = []
        while len(records) < n:
            prompt = rng.choice(prompts)
            (y1, _), (y2, _) = self.generate(rng, covered_kinds), self.generate(rng, covered_kinds)
            if y1 == y2:
                continue
            r1, r2 = self.reward(prompt, y1.split()), self.reward(prompt, y2.split())
            p1 = 1 / (1 + math.exp(-bt_scale * (r1 - r2)))
            chosen, rejected = (y1, y2) if rng.random() < p1 else (y2, y1)
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return records


COVERAGE_REGIMES = {
    # kinds that carry data; partial leaves out the kinds that π_ref also says half of the time
    "partial": (0, 1),
    "global": (0, 1, 2, 3),
}
