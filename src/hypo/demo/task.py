"""A synthetic preference task with a known gold reward and a coverage knob.

Prompts ask about a topic ("tell me about cats plainly :"). The response generator (a tiny grammar)
answers with one *kind* of response: 2-4 words drawn from that kind's own vocabulary, then ".".
Everything the grammar can say is *in support*; any other token sequence is out of support.

Gold reward r*(x, y):
- in support: q[topic][kind] ∈ {1.0, 0.6, 0.3, 0.0} (a seeded ranking of the kinds per topic);
- out of support: −1, below every grammatical answer, so mass that leaves the data shows in r*.

Coverage: offline pairs are drawn from a behaviour policy (the generator) restricted to the kinds
in ``covered_kinds``. Global coverage = all kinds; partial = a slice of them. ``OUT`` in
``covered_kinds`` also covers what lies outside the grammar: a share of the pairs then sets a
grammatical response against an ungrammatical one (``Task.ungrammatical``), so the data says
something about every response, not only the grammar's (the "truly global" regime).
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
OUT = None  # the "kind" of every response outside the grammar (as returned by Task.kind_of)
OUT_PAIR_SHARE = 0.25  # share of pairs with an ungrammatical second response when OUT is covered


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

    def ungrammatical(self, rng: random.Random) -> str:
        """One response outside the grammar: a grammatical one broken in one of the ways a drifting
        policy can break it (a word of another kind, too long, too short, no full stop, a word from
        the prompt's side of the vocabulary, a stray full stop)."""
        while True:
            text, kind = self.generate(rng)
            words, stop = text.split()[:-1], ["."]
            how = rng.randrange(6)
            if how == 0:
                other = rng.choice([k for k in range(len(KIND_WORDS)) if k != kind])
                words[rng.randrange(len(words))] = rng.choice(KIND_WORDS[other])
            elif how == 1:
                words += [rng.choice(KIND_WORDS[kind]) for _ in range(rng.randint(1, 3))]
            elif how == 2:
                words = words[:rng.randint(0, 1)]
            elif how == 3:
                stop = []
            elif how == 4:
                words[rng.randrange(len(words))] = rng.choice(["tell", "me", "about", ":"] + TOPICS + MOODS)
            else:
                words.insert(rng.randrange(len(words) + 1), ".")
            if self.kind_of(words + stop) is OUT:
                return " " + " ".join(words + stop)

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
        Bradley–Terry on r*: P(y1 ≻ y2) = σ(bt_scale·(r*(y1) − r*(y2))). With OUT covered, the
        second response of a share OUT_PAIR_SHARE of the pairs is ungrammatical."""
        import math

        rng = random.Random(seed)
        prompts = prompts or self.train_prompts
        kinds = tuple(k for k in covered_kinds if k is not OUT)
        records = []
        while len(records) < n:
            prompt = rng.choice(prompts)
            y1 = self.generate(rng, kinds)[0]
            out = OUT in covered_kinds and rng.random() < OUT_PAIR_SHARE
            y2 = self.ungrammatical(rng) if out else self.generate(rng, kinds)[0]
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
    # global over the grammar and beyond it: pairs also rank ungrammatical responses (below)
    "truly_global": (0, 1, 2, 3, OUT),
}
# `hypo demo --sweep`: coverage from one kind (≈ 0.2 of π_ref's mass) to truly global
SWEEP_REGIMES = {"one_kind": (0,), "partial": (0, 1), "three_kinds": (0, 1, 2), "global": (0, 1, 2, 3),
                 "truly_global": (0, 1, 2, 3, OUT)}
