"""`hypo realexp`: DPO vs HyPO on a real chat model (SmolLM2-135M-Instruct), partial vs global coverage.

π_ref is the instruct model itself (it plays the SFT policy); the policy is a LoRA adapter on it, so
π_ref is the adapter-disabled model. Offline pairs are π_ref's own samples restricted to the covered
kinds, labelled by Bradley–Terry on the gold reward (``task``). Every run goes through hypo's own
Trainer with the same β, learning rate, batch and steps; HyPO adds only λ and k.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import ConfigError, TrainConfig
from ..demo.run import summarize
from ..progress import console
from ..tiny import write_jsonl
from ..tracking import read_metrics
from .build import reference_samples
from .evaluate import RealGoldEvaluator, coverage
from .task import COVERAGE_REGIMES, KIND_NAMES, bradley_terry_pairs, gold_reward, split_prompts

METRICS = {"gold_reward": "gold/reward", "win_rate": "gold/win_rate", "kl": "gold/kl",
           "ood_rate": "gold/ood_rate"}


EVAL_SEED = 2  # π_ref's eval samples and every policy's eval samples: the same draws
MAX_PROMPT_LENGTH = 128  # system turn + the SHOTS history + the question: 100-106 tokens


@dataclass
class RealExpSettings:
    model: str = ""  # the converted SmolLM2-135M-Instruct folder (see default_model)
    seeds: tuple[int, ...] = (0, 1)
    regimes: tuple[str, ...] = ("partial", "global")
    methods: tuple[str, ...] = ("dpo", "hypo")
    train_prompts: int = 128  # of the 257 train prompts: their π_ref samples make the offline pairs
    samples_per_train_prompt: int = 4  # → up to 2 pairs per prompt
    steps: int = 20
    batch_size: int = 4
    beta: float = 0.1
    learning_rate: float = 5e-4  # LoRA (r 8, alpha 16) on all linear layers, AdamW, constant (pilot: docs)
    lora_r: int = 8
    kl_coef: float = 0.1  # HyPO's λ = β, as in `hypo demo`
    num_online_samples: int = 2
    max_new_tokens: int = 32
    eval_every: int = 10
    eval_prompts: int = 16  # × 4 samples: one generate call of 64 rows
    eval_samples_per_prompt: int = 4
    eval_pairs: int = 16
    threads: int = 2
    # --frontier only (partial coverage): DPO over β, HyPO over KL budgets κ (realexp/frontier.py)
    dpo_betas: tuple[float, ...] = (0.1, 0.3, 1.0)
    kl_budgets: tuple[float, ...] = (0.25, 0.5, 1.0)


def default_model() -> Path:
    """The converted model folder: the repository's .hypo-cache (tests), else $HYPO_CACHE/models."""
    from ..gguf import convert_gguf, known_gguf

    repo_cache = Path(__file__).resolve().parents[3] / ".hypo-cache" / "models" / "smollm2-135m-instruct"
    if (repo_cache / "config.json").exists():
        return repo_cache
    return convert_gguf(known_gguf("smollm2-135m-instruct"))


def train_one(s: RealExpSettings, data: Path, eval_data: Path, method: str, seed: int, out: Path,
              evaluator: RealGoldEvaluator, **overrides) -> list[dict]:
    """One LoRA training run; returns its metric rows (training and eval rows, without step 0).
    ``overrides``: TrainConfig fields that differ from the shared settings (the frontier's knobs)."""
    from ..trainer import Trainer

    shared = dict(beta=s.beta, kl_coef=s.kl_coef)
    cfg = TrainConfig(
        model_name_or_path=s.model, dataset_name=str(data), eval_dataset_name=str(eval_data),
        overwrite_output_dir=True,  # the experiment owns its folders
        output_dir=str(out), ref_cache_dir=str(out.parent.parent / "cache" / "ref"), algo=method,
        use_peft=True, lora_r=s.lora_r, lora_alpha=2 * s.lora_r,
        learning_rate=s.learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=s.batch_size, max_steps=s.steps,
        num_online_samples=s.num_online_samples,
        max_new_tokens=s.max_new_tokens, max_prompt_length=MAX_PROMPT_LENGTH,
        max_length=MAX_PROMPT_LENGTH + s.max_new_tokens + 8,  # + end of turn: no pair is cut
        eval_steps=s.eval_every, eval_online_prompts=0, save_steps=0, save_strategy="no",
        report_to="none", seed=seed, disable_progress_bar=True, per_device_eval_batch_size=16,
        **{**shared, **overrides})
    trainer = Trainer(cfg, eval_hook=evaluator)
    trainer.train()
    return read_metrics(out)


def eval_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if any(k.startswith("eval_") for k in r)]


def step0_row(evaluator: RealGoldEvaluator, ref_eval_samples: list[dict]) -> dict:
    """Step 0 (π = π_ref: LoRA starts with B = 0): π_ref's own samples judged like any policy's."""
    rewards = [gold_reward(x["kind"]) for x in ref_eval_samples]
    n = len(rewards)
    row = {"step": 0, "eval_gold/reward": sum(rewards) / n, "eval_gold/win_rate": 0.5,
           "eval_gold/kl": 0.0, "eval_gold/kl_stderr": 0.0,
           "eval_gold/ood_rate": sum(x["kind"] not in evaluator.covered for x in ref_eval_samples) / n}
    row.update({f"eval_gold/kind_{k}": sum(x["kind"] == k for x in ref_eval_samples) / n for k in KIND_NAMES})
    return row


class Experiment:
    """What every run of the experiment shares: π_ref's samples (cached), the tokenizer, and per
    coverage regime its pairs, evaluator and step-0 row."""

    def __init__(self, out_dir: str | Path, s: RealExpSettings):
        import torch
        from transformers import AutoTokenizer

        torch.set_num_threads(s.threads)
        self.out, self.s = Path(out_dir), s
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        s.model = str(s.model or default_model())
        train_prompts, eval_prompts = split_prompts(seed=0)
        self.train_prompts, self.eval_prompts = train_prompts[: s.train_prompts], eval_prompts[: s.eval_prompts]
        console.print(f"sampling π_ref: {len(self.train_prompts)} train prompts × {s.samples_per_train_prompt}, "
                      f"{len(self.eval_prompts)} eval prompts × {s.eval_samples_per_prompt} (cached in {self.out}/cache)")
        self.train_samples = reference_samples(s.model, self.out / "cache", "train", self.train_prompts,
                                               s.samples_per_train_prompt, s.max_new_tokens, seed=1)
        self.ref_eval = reference_samples(s.model, self.out / "cache", "eval", self.eval_prompts,
                                          s.eval_samples_per_prompt, s.max_new_tokens, seed=EVAL_SEED)
        self.tokenizer = AutoTokenizer.from_pretrained(s.model)

    def reference(self) -> dict:
        ref, n, s = self.ref_eval, len(self.ref_eval), self.s
        return {"train_kinds": {k: sum(x["kind"] == k for x in self.train_samples) / len(self.train_samples)
                                for k in KIND_NAMES},
                "eval_kinds": {k: sum(x["kind"] == k for x in ref) / n for k in KIND_NAMES},
                "gold_reward": sum(gold_reward(x["kind"]) for x in ref) / n,
                "eval_clipped": sum(x["clipped"] for x in ref) / n,  # cut at max_new_tokens
                "samples": [{"prompt": x["prompt"], "text": x["text"], "kind": x["kind"]}
                            for x in ref[:: s.eval_samples_per_prompt][:8]]}

    def regime(self, regime: str) -> tuple[Path, Path, RealGoldEvaluator, dict, dict]:
        """(train data, eval data, evaluator, the regime's result header, step-0 row)."""
        s, kinds = self.s, COVERAGE_REGIMES[regime]
        pairs = bradley_terry_pairs(self.train_samples, kinds, seed=1)
        eval_pairs = bradley_terry_pairs(self.ref_eval, kinds, seed=2)[: s.eval_pairs]
        if not pairs or not eval_pairs:
            raise ConfigError(f"realexp: π_ref's samples gave {len(pairs)} training and {len(eval_pairs)} eval "
                              f"pairs of the kinds {', '.join(kinds)}; raise train_prompts / eval_prompts "
                              "or max_new_tokens (shorter limits cut more samples).")
        data = write_jsonl(pairs, self.out / "data" / f"{regime}.jsonl")
        eval_data = write_jsonl(eval_pairs, self.out / "data" / f"{regime}-eval.jsonl")
        evaluator = RealGoldEvaluator(self.tokenizer, self.eval_prompts, self.ref_eval, kinds,
                                      s.eval_samples_per_prompt, s.max_new_tokens, seed=EVAL_SEED)
        res = {"covered_kinds": list(kinds), "coverage": coverage(self.ref_eval, kinds), "n_pairs": len(pairs)}
        console.print(f"[bold]{regime} coverage[/] ({res['coverage']:.2f}; kinds {', '.join(kinds)}): "
                      f"{len(pairs)} pairs")
        return data, eval_data, evaluator, res, step0_row(evaluator, self.ref_eval)

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def print_last(last: dict) -> None:
    console.print(f"    gold reward {last['eval_gold/reward']:+.3f}  win rate "
                  f"{last['eval_gold/win_rate']:.3f}  KL {last['eval_gold/kl']:.3f} ± "
                  f"{last['eval_gold/kl_stderr']:.3f}  outside data kinds {last['eval_gold/ood_rate']:.3f}")


def run_realexp(out_dir: str | Path, s: RealExpSettings) -> dict:
    """Sample π_ref, build pairs per regime, train every (regime, method, seed), write results.json."""
    exp = Experiment(out_dir, s)
    out = exp.out
    results = {"settings": asdict(s), "reference": exp.reference(), "regimes": {}, "curves": {}, "samples": {}}
    total = len(s.regimes) * len(s.methods) * len(s.seeds)
    done = 0
    for regime in s.regimes:
        data, eval_data, evaluator, res, start_row = exp.regime(regime)
        for method in s.methods:
            finals = {name: [] for name in METRICS}
            for seed in s.seeds:
                done += 1
                console.print(f"[bold]run {done}/{total}[/]: {regime}, {method}, seed {seed}")
                rows = [start_row] + eval_rows(train_one(s, data, eval_data, method, seed,
                                                         out / "runs" / f"{regime}-{method}-seed{seed}", evaluator))
                results["curves"].setdefault(regime, {}).setdefault(method, []).append(rows)
                results["samples"].setdefault(regime, {}).setdefault(method, {})[str(seed)] = evaluator.last_texts
                for name, key in METRICS.items():
                    finals[name].append(rows[-1][f"eval_{key}"])
                print_last(rows[-1])
            res[method] = {name: summarize(v) for name, v in finals.items()}
            res[method]["kl_stderr"] = [rows[-1]["eval_gold/kl_stderr"]
                                        for rows in results["curves"][regime][method]]
        results["regimes"][regime] = res
    results["settings"]["wall_seconds"] = exp.elapsed()
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
