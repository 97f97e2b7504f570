"""The demo task: determinism, support, gold reward, coverage; a miniature end-to-end run."""

import json
import random

import pytest

from hypo.demo.task import COVERAGE_REGIMES, KIND_WORDS, OOD_REWARD, QUALITY_LEVELS, Task


def test_task_is_deterministic_and_seeded():
    a, b, c = Task(0), Task(0), Task(1)
    assert a.quality == b.quality and a.train_prompts == b.train_prompts
    assert a.quality != c.quality
    assert not set(a.train_prompts) & set(a.eval_prompts)
    assert len(a.eval_prompts) == len(a.train_prompts + a.eval_prompts) // 4
    for levels in a.quality.values():
        assert sorted(levels) == sorted(QUALITY_LEVELS)
    assert a.preference_pairs(50, (0, 1), seed=3) == b.preference_pairs(50, (0, 1), seed=3)


def test_generator_support_and_gold_reward():
    task, rng = Task(0), random.Random(0)
    prompt = task.train_prompts[0]
    for _ in range(200):
        text, kind = task.generate(rng)
        words = text.split()
        assert task.kind_of(words) == kind
        assert task.reward(prompt, words) == task.quality[task.topic(prompt)][kind]
    # Out of support: mixed kinds, too long, too short, no full stop, unknown words.
    k0, k1 = KIND_WORDS[0], KIND_WORDS[1]
    for words in ([k0[0], k1[0], "."], [k0[0]] * 5 + ["."], [k0[0], "."], [k0[0], k0[1]],
                  ["cats", "dogs", "."], []):
        assert task.kind_of(words) is None
        assert task.reward(prompt, words) == OOD_REWARD < min(QUALITY_LEVELS)
    assert task.best_kind(prompt) == max(range(4), key=lambda k: task.quality[task.topic(prompt)][k])


def test_pairs_cover_only_their_kinds_and_follow_the_gold_reward():
    task = Task(0)
    for regime, kinds in COVERAGE_REGIMES.items():
        pairs = task.preference_pairs(400, kinds, seed=1)
        seen = {task.kind_of(p[r].split()) for p in pairs for r in ("chosen", "rejected")}
        assert seen == set(kinds), regime
        better = [task.reward(p["prompt"], p["chosen"].split()) > task.reward(p["prompt"], p["rejected"].split())
                  for p in pairs
                  if task.reward(p["prompt"], p["chosen"].split()) != task.reward(p["prompt"], p["rejected"].split())]
        assert sum(better) / len(better) > 0.75  # Bradley–Terry with scale 4 on gaps ≥ 0.3


def test_coverage_measure():
    from hypo.demo.evaluate import GoldEvaluator

    ev = GoldEvaluator.__new__(GoldEvaluator)
    ev.ref_kinds = [0, 1, 2, 3, None, 0, 1, 3]
    assert ev.coverage((0, 1)) == 4 / 8
    assert ev.coverage((0, 1, 2, 3)) == 7 / 8


def test_miniature_demo_end_to_end(tmp_path, monkeypatch):
    import hypo.demo.build as build
    from hypo.demo.report import write_report
    from hypo.demo.run import DemoSettings, run_demo

    monkeypatch.setattr(build, "SFT", {"examples": 256, "steps": 20, "batch_size": 32,
                                       "learning_rate": 3e-3})
    settings = DemoSettings(seeds=(0, 1), steps=4, n_pairs=48, n_eval_pairs=8, eval_every=2, batch_size=8,
                            eval_samples_per_prompt=2)
    results = run_demo(tmp_path, settings, disable_progress_bar=True)
    write_report(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["regimes"]) == {"partial", "global", "truly_global"}
    assert saved["settings"]["steps"] == 4
    for regime in saved["regimes"].values():
        assert 0 <= regime["coverage"] <= 1
        for method in ("dpo", "hypo"):
            for metric in ("gold_reward", "win_rate", "kl", "ood_rate"):
                summary = regime[method][metric]
                assert set(summary) == {"median", "min", "max", "per_seed"}
                assert len(summary["per_seed"]) == 2
                assert summary["min"] <= summary["median"] <= summary["max"]
    # partial covers a subset of the kinds, so never more of π_ref's mass (equal when the miniature
    # π_ref, trained for 20 steps, says nothing grammatical yet)
    assert saved["regimes"]["partial"]["coverage"] <= saved["regimes"]["global"]["coverage"]
    assert saved["regimes"]["truly_global"]["coverage"] == 1.0  # out-of-grammar samples count as covered
    curves = saved["curves"]["partial"]["hypo"][0]
    assert [row["step"] for row in curves] == [0, 2, 4]
    assert curves[0]["eval_gold/kl"] == 0.0  # policy == π_ref before training
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "HyPO" in (tmp_path / "report.md").read_text()
    # HyPO runs under π*'s KL budget (exact, optimum.py), logged every step by the trainer
    star = saved["settings"]["optimum"]
    assert saved["settings"]["kl_budget"] == star["kl"] > 0 and star["reference_gold_reward"] <= star["gold_reward"]
    run = tmp_path / "runs" / "partial-hypo-seed0"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl/target"] == star["kl"] for r in rows if "kl/coef" in r)
    assert "κ* =" in (tmp_path / "report.md").read_text()


def test_demo_verdicts_are_stated_at_matched_kl():
    from hypo.demo.report import verdicts

    def summ(v):
        return {"median": sorted(v)[len(v) // 2], "min": min(v), "max": max(v), "per_seed": v}

    cell = {k: summ([0.5, 0.5, 0.5]) for k in ("gold_reward", "win_rate", "kl", "ood_rate")}
    part = {"dpo": {**cell, "kl": summ([3.0, 2.5, 4.0]), "win_rate": summ([0.4, 0.45, 0.5])},
            "hypo": {**cell, "kl": summ([1.3, 1.4, 1.45]), "win_rate": summ([0.6, 0.6, 0.6])}}
    res = {"settings": {"kl_budget": 1.38}, "regimes": {"partial": part}}
    lines = verdicts(res)
    assert "κ* = 1.38" in lines[0] and "holds" in lines[0] and "NOT" not in lines[0]
    part["hypo"]["kl"] = summ([1.6, 1.6, 1.6])  # HyPO over its budget: the KL check fails
    assert "does NOT hold" in verdicts(res)[0]
    res["settings"]["kl_budget"] = None  # a fixed λ: the check as first written (DPO ≥ 2× HyPO)
    assert "far beyond" in verdicts(res)[0]
