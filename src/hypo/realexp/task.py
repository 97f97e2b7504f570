"""The realistic coverage task: one-word descriptions, answered by a real chat model.

Prompts ask for ONE word that describes a topic ("Describe rain in one word."). π_ref is
SmolLM2-135M-Instruct. Alone it almost never answers with one word (2% of samples at temperature
1, and half run past 32 tokens), so every prompt comes after the same short chat history
(``SHOTS``): three earlier "describe … in one word" exchanges answered with a phrase, a sentence
and a word. π_ref then answers in all three forms (measured on the 64 held-out samples of the full
run: word 0.38, short 0.31, long 0.17, broken 0.14, cut at 32 tokens 0.03): the best kind is
present but not dominant.
Every response gets a *kind* (a partition of all token sequences):

- ``word``: exactly one known English word (SmolLM2's tokenizer has " word" as one whole-word
  token: its ~21k most common lower-case words), at least 3 letters, not a stop word; optional
  surrounding quotes, asterisks and final punctuation;
- ``short``: 2-6 words; ``long``: 7 words or more (both finished with the end-of-turn token);
- ``broken``: cut at the length limit, empty, a single string that is not a known word, a word of
  3+ letters repeated 3+ times, or under 60% known words (gibberish).

Gold reward r*(x, y) by kind: word 1.0, short 0.5, long 0.0, broken −1.0 — it scores following
the instruction with real words. Degenerate text cannot reach the optimum: gibberish, repetition
and unfinished text are ``broken`` (−1, below every finished answer). It does not score meaning
(any real word is a perfect answer), which is its stated limitation.
"""

from __future__ import annotations

import math
import random
import re

KIND_NAMES = ("word", "short", "long", "broken")
GOLD = {"word": 1.0, "short": 0.5, "long": 0.0, "broken": -1.0}
COVERAGE_REGIMES = {
    # partial: the data never shows the best kind (one-word answers) nor broken text
    "partial": ("short", "long"),
    # global: every finished kind π_ref says; unfinished (clipped) text cannot be a data response
    "global": ("word", "short", "long"),
}
TEMPLATES = (
    "Describe {t} in one word.",
    "Which single word best describes {t}?",
    "Sum up {t} in a single word.",
    "Give me one word for {t}.",
    "What one word comes to mind for {t}?",
    "Answer with one word: what is {t} like?",
)
TOPICS = (
    "cats", "dogs", "rain", "snow", "winter", "summer", "bread", "coffee", "tea",
    "music", "a bicycle", "a train", "the moon", "the sun", "a forest", "a river", "a mountain",
    "a city", "a library", "chocolate", "fire", "thunder", "a garden", "an old castle",
    "the night sky", "a storm", "autumn", "spring", "a violin", "a clock", "a candle", "a bridge",
    "the ocean floor", "a volcano", "an island", "a market", "a school", "a hospital", "friendship",
    "a birthday", "a wedding", "a lighthouse", "a cave", "ice cream", "a rose", "honey",
    "an owl", "a wolf", "a whale", "a robot", "a computer", "the internet", "a painting", "a poem",
    "a dance", "a marathon", "a storm cloud",
)
STOP_WORDS = frozenset("the and for you yes not but are was this that with one word its his her "
                       "our their what which who how why all any".split())
WORD_RE = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
MAX_SHORT_WORDS = 6


def all_prompts() -> list[str]:
    """Every template × topic (the SHOTS' own topics are not among the topics)."""
    return [tpl.format(t=t) for t in TOPICS for tpl in TEMPLATES]


def split_prompts(seed: int = 0, eval_share: float = 0.25) -> tuple[list[str], list[str]]:
    """(train, eval) prompts; the held-out quarter is drawn by topic-template pair, seeded."""
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    n_eval = int(len(prompts) * eval_share)
    return sorted(prompts[n_eval:]), sorted(prompts[:n_eval])


def known_words(tokenizer) -> frozenset[str]:
    """Lower-case alphabetic whole-word tokens (byte-level BPE 'Ġword') of a tokenizer."""
    return frozenset(t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha()
                     and t[1:].islower())


def kind_of(text: str, clipped: bool, known: frozenset[str]) -> str:
    """The kind (see the module docstring) of a decoded response (special tokens removed)."""
    words = WORD_RE.findall(text)
    if clipped or not words:
        return "broken"
    lower = [w.lower() for w in words]
    if len(words) == 1:
        bare = text.strip().strip("\"'*`“”‘’").rstrip(".!").strip("\"'*`“”‘’")
        ok = bare == words[0] and len(bare) >= 3 and lower[0] in known and lower[0] not in STOP_WORDS
        return "word" if ok else "broken"
    if any(lower.count(w) >= 3 for w in set(lower) if len(w) >= 3):
        return "broken"
    if sum(w in known for w in lower) < 0.6 * len(lower):
        return "broken"
    return "short" if len(words) <= MAX_SHORT_WORDS else "long"


def gold_reward(kind: str) -> float:
    return GOLD[kind]


def bradley_terry_pairs(samples: list[dict], covered: tuple[str, ...], seed: int,
                        bt_scale: float = 4.0) -> list[dict]:
    """Offline pairs from π_ref's samples restricted to the covered kinds (the behaviour policy is
    π_ref conditioned on them), labelled by Bradley–Terry on r*: P(y1 ≻ y2) = σ(s·(r*1 − r*2)).

    samples: dicts with prompt, text, kind (several per prompt). Per prompt, consecutive covered
    samples with different texts form pairs. Returns chat-format records (TRL's explicit prompt)."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = {}
    for s in samples:
        if s["kind"] in covered:
            by_prompt.setdefault(s["prompt"], []).append(s)
    records = []
    for prompt, group in by_prompt.items():
        for a, b in zip(group[0::2], group[1::2]):
            if a["text"].strip() == b["text"].strip():
                continue
            r1, r2 = gold_reward(a["kind"]), gold_reward(b["kind"])
            p1 = 1 / (1 + math.exp(-bt_scale * (r1 - r2)))
            chosen, rejected = (a, b) if rng.random() < p1 else (b, a)
            records.append({"prompt": chat_prompt(prompt),
                            "chosen": [{"role": "assistant", "content": chosen["text"].strip()}],
                            "rejected": [{"role": "assistant", "content": rejected["text"].strip()}]})
    return records


SYSTEM = "Be brief."  # short system turn: SmolLM2's template would otherwise add a 20-token default
# The chat history before every prompt: the same instruction answered as a phrase (short), a
# sentence (long) and a word, so that π_ref answers in every finished kind (the word shot last:
# with it first π_ref says one word less often, 0.15 of samples, and rambles more).
SHOTS = (("Describe a kitten in one word.", "Small, soft and playful."),
         ("Describe a desert in one word.", "A desert is a dry, hot and empty place where little grows."),
         ("Describe the sea in one word.", "Vast."))


def chat_prompt(prompt: str) -> list[dict]:
    """The prompt as chat messages: system turn, the SHOTS history, then the user's question."""
    history = [{"role": role, "content": text} for shot in SHOTS
               for role, text in zip(("user", "assistant"), shot)]
    return [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": prompt}]
