"""`hypo demo --frontier`: gold reward against reverse KL, method against method, at matched KL.

At each coverage level and seed, from the same π_ref and the same pairs (paired seeds):

- DPO over several β;
- HyPO in its constrained form (KL budget κ, λ by dual ascent) and with a fixed λ;
- online RLHF: a Bradley–Terry reward model fitted on the same pairs (unbounded, or squashed
  into its training range), then RLOO on the policy's own samples under the same KL budgets.

Every run trains until the convergence rule holds or the step cap is hit (``converged``). Runs of
one family share a ``Stack`` (one batched forward for all of them) and leave it when they stop.
Writes nothing itself: ``frontier_report`` turns the returned records into frontier.json/md/png.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..batching import IndexStream
from ..losses import dual_ascent_kl_coef, leave_one_out_advantages, preference_loss
from ..progress import console
from .build import MODEL_SHAPE, SFT, build_tokenizer, reference_model
from .gold import GoldJudge
from .pairs import PairSets, build_pair_sets, reference_logps
from .reward_model import RewardModels, fit_reward_models
from .stack import Stack, Trainable, response_logps, sample
from .task import COVERAGE_REGIMES, Task

# method -> family (runs of one family share a Stack and a step function)
FAMILIES = {"dpo": "dpo", "hypo": "hypo", "hypo_fixed": "hypo", "rlhf_unbounded": "rlhf", "rlhf_bounded": "rlhf"}
SETTING = {"dpo": "β", "hypo": "κ", "hypo_fixed": "λ", "rlhf_unbounded": "κ", "rlhf_bounded": "κ"}
METRICS = ("kl", "gold_reward", "win_rate", "ood_share", "out_of_data_share")


@dataclass
class FrontierSettings:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    task_seed: int = 0
    regimes: tuple[str, ...] = ("partial", "global", "truly_global")
    dpo_betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    budgets: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # κ, nats per response: HyPO and RLHF
    fixed_coefs: tuple[float, ...] = (0.02, 0.1)  # HyPO's fixed λ
    reward_models: tuple[str, ...] = ("unbounded", "bounded")
    hypo_beta: float = 0.1  # β of HyPO's DPO term (the demo's)
    n_pairs: int = 1024
    n_held_out_pairs: int = 256  # reward-model accuracy
    batch_size: int = 16  # pairs per step; online prompts are the pairs' prompts
    num_online_samples: int = 2  # k, HyPO and RLOO alike
    max_new_tokens: int = 8
    learning_rate: float = 5e-4
    max_grad_norm: float = 1.0
    # λ under a KL budget: dual ascent λ ← max(0, λ + η·(KL̂ − κ)) from λ = kl_start·u, with
    # η = kl_rate·u/κ: u is the objective's reward unit (β for HyPO's DPO term, whose implicit
    # reward is β·log-ratio; the reward model's half-range on its training responses for RLHF),
    # and dividing by κ makes a given RELATIVE excess move λ alike at every budget. Still linear
    # in KL̂, so the mean KL settles at κ.
    kl_rate: float = 0.1
    kl_start: float = 1.0
    # convergence (``converged``): evaluate every `eval_every` steps; stop when the means of the
    # last `window` evaluations and of the window before differ by ≤ gold_tol (gold reward) and
    # ≤ kl_tol_abs + kl_tol_rel·KL (reverse KL), or at max_steps (the cap, reported)
    eval_every: int = 25
    eval_samples_per_prompt: int = 32
    window: int = 3
    gold_tol: float = 0.03
    kl_tol_abs: float = 0.05
    kl_tol_rel: float = 0.1
    min_steps: int = 150
    max_steps: int = 400
    rm_steps: int = 150
    rm_batch_size: int = 32
    rm_learning_rate: float = 1e-3
    bootstrap: int = 2000
    extra: dict = field(default_factory=dict)

    def runs(self) -> list["Run"]:
        values = {"dpo": self.dpo_betas, "hypo": self.budgets, "hypo_fixed": self.fixed_coefs,
                  **{f"rlhf_{v}": self.budgets for v in self.reward_models}}
        return [Run(regime, seed, method, value) for regime in self.regimes for seed in self.seeds
                for method, vs in values.items() for value in vs]


def quick_settings(seeds: tuple[int, ...] | None = None) -> FrontierSettings:
    """`--quick`: fewer seeds, points and steps; the same methods, rules and JSON shape."""
    return FrontierSettings(seeds=seeds or (0, 1), dpo_betas=(0.03, 0.3, 3.0), budgets=(0.5, 2.0),
                            fixed_coefs=(0.1,), max_steps=150, min_steps=90, eval_every=15, window=3,
                            eval_samples_per_prompt=16, rm_steps=100)


@dataclass(frozen=True)
class Run:
    regime: str
    seed: int
    method: str
    value: float  # β (dpo), κ (hypo, rlhf_*), λ (hypo_fixed)


def converged(history: list[dict], s: FrontierSettings) -> bool:
    """The convergence rule (docs/demo.md, frontier.md; fixed before the runs): after at least
    `min_steps`, the means of the last `window` evaluations and of the `window` before them differ
    by ≤ gold_tol in gold reward and by ≤ kl_tol_abs + kl_tol_rel·(recent mean) in reverse KL. A
    window of means, not a range: a run that has settled still jitters (noisy gradients, a
    dual-ascent λ), and the rule asks for the absence of a trend, not of noise."""
    w = s.window
    if len(history) < 2 * w + 1 or history[-1]["step"] < s.min_steps:  # +1: step 0 is π_ref
        return False
    recent, before = history[-w:], history[-2 * w:-w]

    def mean(rows, key):
        return sum(r[key] for r in rows) / w

    kl = mean(recent, "kl")
    return (abs(mean(recent, "gold_reward") - mean(before, "gold_reward")) <= s.gold_tol
            and abs(kl - mean(before, "kl")) <= s.kl_tol_abs + s.kl_tol_rel * kl)


class Family:
    """The active runs of one family, their Stack and per-run settings (β, λ, κ, data set)."""

    def __init__(self, name: str, runs: list[Run], model: Trainable, sets: list[int], s: FrontierSettings,
                 units: list[float]):
        self.name, self.runs, self.model, self.s = name, runs, model, s
        self.sets = torch.tensor(sets)
        self.beta = torch.tensor([r.value if r.method == "dpo" else s.hypo_beta for r in runs])
        self.kappa = torch.tensor([r.value if SETTING[r.method] == "κ" else math.nan for r in runs])
        self.lam = torch.tensor([r.value if r.method == "hypo_fixed" else s.kl_start * u if SETTING[r.method] == "κ"
                                 else 0.0 for r, u in zip(runs, units)])
        self.rate = torch.tensor([s.kl_rate * u / r.value if SETTING[r.method] == "κ" else 0.0
                                  for r, u in zip(runs, units)])
        self.bounded = torch.tensor([r.method == "rlhf_bounded" for r in runs])
        self.histories: list[list[dict]] = [[] for _ in runs]
        self.rewards: RewardModels | None = None
        self.seconds = 0.0

    def keep(self, index: list[int]) -> None:
        i = torch.tensor(index, dtype=torch.long)
        self.runs = [self.runs[j] for j in index]
        self.histories = [self.histories[j] for j in index]
        for name in ("sets", "beta", "kappa", "lam", "rate", "bounded"):
            setattr(self, name, getattr(self, name)[i])
        self.model.keep(i)
        if self.rewards is not None:
            self.rewards = self.rewards.for_runs(i)

    def update_lambda(self, kl: torch.Tensor) -> None:
        for j in range(len(self.runs)):
            if not math.isnan(self.kappa[j]):
                self.lam[j] = dual_ascent_kl_coef(float(self.lam[j]), float(kl[j]), float(self.kappa[j]),
                                                  float(self.rate[j]))


class Engine:
    """Shared pieces of one frontier: data sets, π_ref, the gold judge, the reward models."""

    def __init__(self, out: Path, s: FrontierSettings, progress: bool = True):
        self.s = s
        self.task = Task(seed=s.task_seed)
        self.tok = build_tokenizer()
        self.ref_dir = reference_model(out / "cache", self.task, disable_progress_bar=not progress)
        self.reference = Stack.from_pretrained(self.ref_dir, 1, trainable=False)
        self.keys = [(regime, seed) for regime in s.regimes for seed in s.seeds]  # one data set each
        self.covered = [COVERAGE_REGIMES[r] for r, _ in self.keys]
        self.data: PairSets = build_pair_sets(self.task, self.tok, self.reference, self.covered, s.n_pairs,
                                              [1 + 100 * seed for _, seed in self.keys])
        self.judge = GoldJudge(self.task, self.tok, self.reference, self.task.eval_prompts,
                               s.eval_samples_per_prompt, s.max_new_tokens)
        self.streams = {seed: IndexStream(s.n_pairs, seed) for seed in s.seeds}
        self.rewards: RewardModels | None = None
        self.gen = torch.Generator().manual_seed(12345 + sum(s.seeds))
        self.eos, self.pad = self.tok.eos_token_id, self.tok.pad_token_id

    def fit_reward_models(self) -> None:
        s = self.s
        held_out = build_pair_sets(self.task, self.tok, self.reference, self.covered, s.n_held_out_pairs,
                                   [2 + 100 * seed for _, seed in self.keys], prompts=self.task.eval_prompts)
        self.rewards = fit_reward_models(self.ref_dir, self.data, held_out, s.rm_steps, s.rm_batch_size,
                                         s.rm_learning_rate, seed=sum(s.seeds))

    def family(self, name: str, runs: list[Run]) -> Family:
        sets = [self.keys.index((r.regime, r.seed)) for r in runs]
        if name == "rlhf":
            units = [float(self.rewards.squash[d, 1]) for d in sets]  # the reward model's half-range
        else:
            units = [self.s.hypo_beta] * len(runs)
        fam = Family(name, runs, Trainable(Stack.from_pretrained(self.ref_dir, len(runs)), self.s.learning_rate),
                     sets, self.s, units)
        if name == "rlhf":
            fam.rewards = self.rewards.for_runs(fam.sets)
        return fam

    # ---- one optimizer step of every run of a family --------------------------------------------
    def step(self, fam: Family, step: int) -> None:
        s = self.s
        idx = torch.tensor([self.streams[r.seed].take(step * s.batch_size, s.batch_size) for r in fam.runs])
        prompts, pairs, mask, ref = self.data.batch(fam.sets, idx)
        policy = fam.model.stack
        if fam.name == "dpo":
            logps = _logps(policy, prompts, pairs, mask)
            loss = preference_loss(logps[..., 0], logps[..., 1], ref[..., 0], ref[..., 1], fam.beta[:, None]).losses.mean(1)
            fam.model.step(loss.sum(), s.max_grad_norm)
            return
        samples = sample(policy, prompts, s.num_online_samples, s.max_new_tokens, self.eos, self.pad, self.gen)
        R, B = prompts.shape[:2]
        ref_s = reference_logps(self.reference, prompts.flatten(0, 1), samples.ids.flatten(0, 1),
                                samples.mask.flatten(0, 1)).view(R, B, -1)
        if fam.name == "hypo":  # [chosen, rejected, samples…] under one shared prompt
            width = max(pairs.shape[-1], samples.ids.shape[-1])
            responses = torch.cat([_pad(pairs, width, self.pad), _pad(samples.ids, width, self.pad)], 2)
            masks = torch.cat([_pad(mask, width, False), _pad(samples.mask, width, False)], 2)
            logps = _logps(policy, prompts, responses, masks)
            dpo = preference_loss(logps[..., 0], logps[..., 1], ref[..., 0], ref[..., 1], fam.beta[:, None]).losses.mean(1)
            online = logps[..., 2:]
            ratio = online.detach() - ref_s
            kl_term = (leave_one_out_advantages(ratio) * online).mean((1, 2))  # losses.reverse_kl_loss per run
            loss = dpo + fam.lam * kl_term
        else:  # RLOO on r − λ·log-ratio, with the run's reward model
            online = _logps(policy, prompts, samples.ids, samples.mask)
            ratio = online.detach() - ref_s
            reward = fam.rewards(prompts, samples.ids, samples.lengths, fam.bounded)
            loss = -(leave_one_out_advantages(reward - fam.lam.view(-1, 1, 1) * ratio) * online).mean((1, 2))
        fam.model.step(loss.sum(), s.max_grad_norm)
        fam.update_lambda(ratio.mean((1, 2)))

    # ---- evaluation and stopping --------------------------------------------------------------
    def evaluate(self, fam: Family, step: int) -> list[dict]:
        """Evaluate every run; return the records of the runs that stop here (and drop them)."""
        covered = [COVERAGE_REGIMES[r.regime] for r in fam.runs]
        metrics = self.judge(fam.model.stack, covered)
        done, keep = [], []
        for j, run in enumerate(fam.runs):
            row = {"step": step, **{k: float(v[j]) for k, v in metrics.items()}, "lambda": float(fam.lam[j])}
            fam.histories[j].append(row)
            settled, hit_cap = converged(fam.histories[j], self.s), step >= self.s.max_steps
            if settled or hit_cap:
                done.append(final_record(run, fam.histories[j], self.s, capped=not settled))
            else:
                keep.append(j)
        if done:
            fam.keep(keep)
        return done


def final_record(run: Run, history: list[dict], s: FrontierSettings, capped: bool) -> dict:
    """A run's result: its metrics averaged over the last `window` evaluations (the settled
    values), the step it stopped at, and whether the cap stopped it before the rule held."""
    last = history[-s.window:]
    return {**asdict(run), "step": history[-1]["step"], "capped": capped,
            **{k: sum(r[k] for r in last) / len(last) for k in METRICS + ("lambda",)}, "history": history}


def _pad(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1]), value=value)


def _logps(policy: Stack, prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return response_logps(policy.grouped_logits(prompts, responses), responses, mask)


def optimum_frontier(engine: Engine) -> list[dict]:
    """The exact best frontier on the held-out prompts: π*_β ∝ π_ref·exp(4r*/β) over β (the
    KL-regularised optima maximise the gold reward at their KL), from π_ref's class masses."""
    from .optimum import class_masses, optimum

    prompts = engine.task.eval_prompts
    masses = class_masses(engine.reference, engine.tok, prompts)
    return [{k: round(v, 4) for k, v in optimum(engine.task, masses, prompts, beta).items()
             if k in ("beta", "kl", "gold_reward")} for beta in torch.logspace(-2, 2, 33).tolist()]


def run_frontier(out_dir: str | Path, s: FrontierSettings, progress: bool = True) -> dict:
    """Train every run of the frontier; returns {"settings", "reference", "coverage", "runs",
    "reward_models", "timing"} (see frontier_report for the files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(sum(s.seeds))
    engine = Engine(out, s, progress)
    runs = s.runs()
    timing = {"setup": time.perf_counter() - started}
    if any(FAMILIES[r.method] == "rlhf" for r in runs):
        t = time.perf_counter()
        engine.fit_reward_models()
        timing["reward_models"] = time.perf_counter() - t
    families = [engine.family(name, [r for r in runs if FAMILIES[r.method] == name])
                for name in ("dpo", "hypo", "rlhf") if any(FAMILIES[r.method] == name for r in runs)]
    ref_metrics = engine.judge(engine.reference.repeat(len(s.regimes)), [COVERAGE_REGIMES[r] for r in s.regimes])
    reference = {regime: {"step": 0, **{k: float(v[i]) for k, v in ref_metrics.items()}}
                 for i, regime in enumerate(s.regimes)}
    for fam in families:  # every run starts at π_ref: its step-0 evaluation is π_ref's
        fam.histories = [[{**reference[r.regime], "lambda": float(fam.lam[j])}] for j, r in enumerate(fam.runs)]
    records = []
    total = len(runs)
    for step in range(1, s.max_steps + 1):
        for fam in families:
            if fam.runs:
                t = time.perf_counter()
                engine.step(fam, step - 1)
                fam.seconds += time.perf_counter() - t
        if step % s.eval_every == 0 or step == s.max_steps:
            for fam in families:
                if fam.runs:
                    t = time.perf_counter()
                    records += engine.evaluate(fam, step)
                    fam.seconds += time.perf_counter() - t
            if progress:
                console.print(f"step {step}: {len(records)}/{total} runs finished "
                              f"({time.perf_counter() - started:.0f} s)")
        if not any(fam.runs for fam in families):
            break
    timing.update({f"train_{fam.name}": fam.seconds for fam in families})
    timing["total"] = time.perf_counter() - started
    return {"settings": {**asdict(s), "model_shape": MODEL_SHAPE, "reference_sft": SFT},
            "reference": reference, "optimum": optimum_frontier(engine),
            "coverage": {regime: engine.judge.coverage(COVERAGE_REGIMES[regime]) for regime in s.regimes},
            "reward_models": ({f"{r}/seed{sd}": acc for (r, sd), acc in zip(engine.keys, engine.rewards.accuracy)}
                              if engine.rewards else {}),
            "runs": records, "timing": {k: round(v, 1) for k, v in timing.items()}}
