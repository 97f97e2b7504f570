"""`hypo demo --frontier`: its convergence rule, frontiers, verdicts, π*'s budget, and a miniature run."""

import json
import math
from dataclasses import asdict

import pytest
import torch

from hypo.demo.frontier import FrontierSettings, converged
from hypo.demo.frontier_report import envelope, frontier_at, summarize


def test_convergence_rule_asks_for_no_trend_not_no_noise():
    s = FrontierSettings(window=2, min_steps=50, eval_every=25, gold_tol=0.03, kl_tol_abs=0.05, kl_tol_rel=0.1)

    def rows(golds, kls):
        return [{"step": 25 * i, "gold_reward": g, "kl": k} for i, (g, k) in enumerate(zip(golds, kls))]

    flat_noisy = rows([0.4, 0.50, 0.58, 0.52, 0.56], [0, 1.0, 1.2, 1.1, 1.1])  # window means 0.55 vs 0.54
    assert converged(flat_noisy, s)
    assert not converged(rows([0.4, 0.50, 0.52, 0.56, 0.60], [0, 1.0, 1.0, 1.0, 1.0]), s)  # gold still rising
    assert not converged(rows([0.4, 0.5, 0.5, 0.5, 0.5], [0, 1.0, 1.0, 1.3, 1.3]), s)  # KL still rising
    assert not converged(flat_noisy[:4], s)  # two full windows after π_ref's row are needed
    assert not converged(flat_noisy, FrontierSettings(window=2, min_steps=150))  # not before min_steps


def test_envelope_is_the_concave_frontier_with_mixtures():
    pts = [(0.0, 0.4), (1.0, 0.7), (0.5, 0.45), (2.0, 0.9), (3.0, 0.5)]
    hull = envelope(pts)
    assert hull == [(0.0, 0.4), (1.0, 0.7), (2.0, 0.9)]  # (0.5, 0.45) is below a mixture; (3, 0.5) dominated
    assert frontier_at(hull, 0.5) == pytest.approx(0.55)  # halfway between π_ref and the KL-1 point
    assert envelope([(0.0, 0.4), (1.0, 0.6), (2.0, 0.9)]) == [(0.0, 0.4), (2.0, 0.9)]  # under the chord
    assert frontier_at(hull, 10.0) == 0.9  # flat beyond the last point


def _results(cells: dict, seeds=(0, 1, 2), regimes=("partial", "truly_global")) -> dict:
    """Runs from {(regime, method, value): (per-seed KL, per-seed gold, per-seed out-of-data)}."""
    runs = []
    for (regime, method, value), (kls, golds, oods) in cells.items():
        for i, seed in enumerate(seeds):
            runs.append({"regime": regime, "seed": seed, "method": method, "value": value, "kl": kls[i],
                         "gold_reward": golds[i], "win_rate": 0.5, "ood_share": 0.0,
                         "out_of_data_share": oods[i], "step": 100, "capped": False, "lambda": 0.0})
    ref = {"step": 0, "kl": 0.0, "gold_reward": 0.4, "win_rate": 0.5, "ood_share": 0.0, "out_of_data_share": 0.5}
    return {"settings": {"seeds": list(seeds), "regimes": list(regimes), "bootstrap": 400},
            "reference": {r: ref for r in regimes}, "coverage": {r: 0.5 for r in regimes}, "runs": runs,
            "timing": {"total": 1.0}}


def test_verdicts_follow_their_rules():
    same = ([0.5] * 3, [0.6] * 3, [0.5] * 3)
    cells = {
        # partial: DPO drifts to KL 3 at gold 0.3; HyPO's frontier reaches 0.7 by KL 1
        ("partial", "dpo", 0.1): ([3.0, 3.2, 2.8], [0.30, 0.25, 0.35], [0.9] * 3),
        ("partial", "dpo", 1.0): ([0.2, 0.2, 0.2], [0.40, 0.41, 0.40], [0.5] * 3),
        ("partial", "hypo", 0.5): ([0.5, 0.5, 0.5], [0.55, 0.56, 0.57], [0.5] * 3),
        ("partial", "hypo", 1.0): ([1.0, 1.0, 1.0], [0.70, 0.69, 0.71], [0.5] * 3),
        ("partial", "rlhf_unbounded", 0.5): ([0.5] * 3, [0.45, 0.44, 0.46], [0.8] * 3),
        ("partial", "rlhf_unbounded", 1.0): ([1.0] * 3, [0.50, 0.49, 0.51], [0.9] * 3),
        ("partial", "rlhf_bounded", 0.5): ([0.5] * 3, [0.54, 0.58, 0.56], [0.45, 0.55, 0.5]),
        ("partial", "rlhf_bounded", 1.0): ([1.4] * 3, [0.69, 0.72, 0.70], [0.49, 0.5, 0.51]),
        # truly global: DPO sits on HyPO's frontier up to seed noise
        ("truly_global", "dpo", 0.1): ([1.0] * 3, [0.58, 0.60, 0.62], [0.0] * 3),
        ("truly_global", "hypo", 1.0): ([1.0] * 3, [0.55, 0.60, 0.65], [0.0] * 3),
        ("truly_global", "hypo_fixed", 0.1): same,
    }
    summary = summarize(_results(cells))
    v = {x["id"]: x for x in summary["verdicts"]}
    assert v["partial:hypo_vs_dpo"]["holds"] is True
    gap = v["partial:hypo_vs_dpo"]["per_setting"]["β=0.1"]
    assert gap["gap"] == pytest.approx(0.70 - 0.30)  # HyPO's frontier is flat at 0.70 beyond KL 1
    assert v["truly_global:hypo_vs_dpo"]["holds"] is True
    assert v["partial:rlhf_unbounded"]["holds"] is True
    assert v["partial:rlhf_bounded"]["holds"] is True
    assert v["budgets"]["holds"] is False and "partial/rlhf_bounded/κ=1" in v["budgets"]["per_setting"]
    # turn each around
    cells[("partial", "dpo", 1.0)] = ([0.2] * 3, [0.60, 0.61, 0.62], [0.5] * 3)  # DPO above HyPO at low KL
    cells[("truly_global", "dpo", 0.1)] = ([1.0] * 3, [0.30, 0.31, 0.32], [0.0] * 3)  # far below: no meeting
    cells[("partial", "rlhf_unbounded", 1.0)] = ([1.0] * 3, [0.70, 0.71, 0.72], [0.5] * 3)  # no drift at κ = 1
    cells[("partial", "rlhf_bounded", 0.5)] = ([0.5] * 3, [0.30, 0.31, 0.32], [0.5] * 3)
    v = {x["id"]: x for x in summarize(_results(cells))["verdicts"]}
    assert not any(v[k]["holds"] for k in ("partial:hypo_vs_dpo", "truly_global:hypo_vs_dpo",
                                           "partial:rlhf_unbounded", "partial:rlhf_bounded"))
    # the JSON cells: median, bootstrap CI and per-seed values of every metric, and the stop step
    cell = summarize(_results(cells))["regimes"]["partial"]["methods"]["hypo"]["points"]["0.5"]
    for key in ("kl", "gold_reward", "win_rate", "ood_share", "out_of_data_share", "convergence_step"):
        assert set(cell[key]) == {"median", "ci95", "per_seed"} and len(cell[key]["per_seed"]) == 3
        assert cell[key]["ci95"][0] <= cell[key]["median"] <= cell[key]["ci95"][1]
    assert cell["capped"] == 0


def test_optimum_from_class_masses():
    from hypo.demo.optimum import grammar, optimum
    from hypo.demo.task import KIND_WORDS, Task

    task = Task(0)
    prompts = task.train_prompts[:2]
    masses = torch.tensor([[0.2, 0.3, 0.25, 0.2, 0.05], [0.25, 0.25, 0.25, 0.25, 0.0]], dtype=torch.float64)
    got = optimum(task, masses, prompts, beta=0.5, bt_scale=4.0)
    kls, golds = [], []
    for m, p in zip(masses.tolist(), prompts):  # π* ∝ π_ref·exp(r/β) over the five classes, by hand
        gold = task.quality[task.topic(p)] + [-1.0]
        w = [mc * math.exp(4.0 * g / 0.5) for mc, g in zip(m, gold)]
        star = [x / sum(w) for x in w]
        kls.append(sum(s * math.log(s / mc) for s, mc in zip(star, m) if s > 0))
        golds.append(sum(s * g for s, g in zip(star, gold)))
    assert got["kl"] == pytest.approx(sum(kls) / 2) and got["gold_reward"] == pytest.approx(sum(golds) / 2)
    cold = optimum(task, masses, prompts, beta=1e-3)  # all mass on each prompt's best kind
    best = [max(range(4), key=lambda k: task.quality[task.topic(p)][k]) for p in prompts]
    assert cold["gold_reward"] == pytest.approx(1.0)
    assert cold["kl"] == pytest.approx(-sum(math.log(masses[i, b]) for i, b in enumerate(best)) / 2)
    assert optimum(task, masses, prompts, beta=1e6)["kl"] == pytest.approx(0.0, abs=1e-5)  # π* → π_ref
    texts = grammar(2)
    assert len(texts) == 5 ** 2 + 5 ** 3 + 5 ** 4 and len(set(texts)) == len(texts)
    assert all(task.kind_of(t.split()) == 2 for t in texts) and set(KIND_WORDS[2]) <= set(" ".join(texts).split())


def test_miniature_frontier_through_the_cli(tmp_path, monkeypatch):
    """`hypo demo --frontier --quick --seeds …` writes frontier.json with every field, for the seeds given."""
    import hypo.demo.build as build
    import hypo.demo.frontier as frontier
    from hypo.cli import main

    monkeypatch.setattr(build, "SFT", {"examples": 256, "steps": 20, "batch_size": 32, "learning_rate": 3e-3})
    real_quick = frontier.quick_settings

    def tiny(seeds=None):
        s = real_quick(seeds)
        s.n_pairs, s.n_held_out_pairs, s.batch_size, s.max_steps, s.min_steps = 32, 16, 4, 4, 2
        s.eval_every, s.window, s.eval_samples_per_prompt, s.rm_steps, s.bootstrap = 2, 1, 2, 2, 50
        s.dpo_betas, s.budgets = (0.3,), (1.0,)  # one point per method: 30 runs, the test's cost
        return s

    monkeypatch.setattr(frontier, "quick_settings", tiny)
    assert main(["demo", "--frontier", "--quick", "--seeds", "3", "5", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "frontier.json").read_text())
    assert saved["settings"]["seeds"] == [3, 5] and list(saved["regimes"]) == ["partial", "global", "truly_global"]
    methods = {"dpo", "hypo", "hypo_fixed", "rlhf_unbounded", "rlhf_bounded"}
    for regime in saved["regimes"].values():
        assert set(regime["methods"]) == methods and 0 <= regime["coverage"] <= 1
        for m in regime["methods"].values():
            for point in m["points"].values():
                for key in ("kl", "gold_reward", "win_rate", "ood_share", "out_of_data_share", "convergence_step"):
                    assert len(point[key]["per_seed"]) == 2 and len(point[key]["ci95"]) == 2
                assert point["convergence_step"]["median"] <= 4
    ids = {v["id"] for v in saved["verdicts"]}
    assert {"partial:hypo_vs_dpo", "truly_global:hypo_vs_dpo", "partial:rlhf_unbounded", "budgets"} <= ids
    opt = saved["optimum"]  # the exact optimum frontier: KL and gold reward rise together along β ↓
    assert len(opt) > 10 and opt[0]["kl"] >= opt[-1]["kl"] and opt[0]["gold_reward"] >= opt[-1]["gold_reward"]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert "Verdicts" in (tmp_path / "frontier.md").read_text()


def test_merge_joins_disjoint_seeds_and_refuses_what_does_not_pair(tmp_path, capsys):
    from hypo.cli import main
    from hypo.demo.frontier_merge import merge_results

    cells = {("partial", "dpo", 0.1): ([3.0, 3.2, 2.8], [0.30, 0.25, 0.35], [0.9] * 3),
             ("partial", "hypo", 1.0): ([1.0] * 3, [0.70, 0.69, 0.71], [0.5] * 3)}
    a, b = _results(cells, seeds=(0, 1, 2)), _results(cells, seeds=(3, 4, 5))
    for part in (a, b):  # the full settings, which frontier.md prints
        part["settings"] = {**asdict(FrontierSettings()), **part["settings"]}
    for part, folder in ((a, "a"), (b, "b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "frontier-runs.json").write_text(json.dumps(part))
    assert main(["demo", "--frontier", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab")]) == 0
    saved = json.loads((tmp_path / "ab" / "frontier.json").read_text())
    assert saved["settings"]["seeds"] == [0, 1, 2, 3, 4, 5] and saved["settings"]["merged_from"] == [[0, 1, 2], [3, 4, 5]]
    dpo = saved["regimes"]["partial"]["methods"]["dpo"]["points"]["0.1"]["kl"]["per_seed"]
    assert dpo == [3.0, 3.2, 2.8, 3.0, 3.2, 2.8] and saved["timing"]["total"] == 2.0
    assert "Merged from runs on seeds" in (tmp_path / "ab" / "frontier.md").read_text()
    with pytest.raises(ValueError, match="repeat"):
        merge_results([a, a])
    other = {**b, "settings": {**b["settings"], "bootstrap": 10}}
    with pytest.raises(ValueError, match="'bootstrap'"):
        merge_results([a, other], ["a", "other"])
    moved = {**b, "reference": {r: {**v, "gold_reward": 0.41} for r, v in b["reference"].items()}}
    with pytest.raises(ValueError, match="π_ref"):
        merge_results([a, moved])
    # the inputs are never overwritten, and a missing folder is named
    assert main(["demo", "--frontier", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "a")]) == 2
    assert main(["demo", "--frontier", "--merge", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "one of the --merge folders" in err and "c/frontier-runs.json: not found" in err
    # a broken or foreign runs file is named; a merged folder merges again
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "frontier-runs.json").write_text("{not json")
    (tmp_path / "rx").mkdir()
    (tmp_path / "rx" / "frontier-runs.json").write_text(json.dumps({"settings": {}, "runs": {}}))
    for folder, says in (("bad", "bad/frontier-runs.json: not valid JSON"), ("rx", "rx/frontier-runs.json: no reference")):
        assert main(["demo", "--frontier", "--merge", str(tmp_path / "a"), str(tmp_path / folder),
                     "--out", str(tmp_path / "x")]) == 2
        assert says in capsys.readouterr().err
    c = _results(cells, seeds=(6,))
    c["settings"] = {**asdict(FrontierSettings()), **c["settings"]}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "frontier-runs.json").write_text(json.dumps(c))
    assert main(["demo", "--frontier", "--merge", str(tmp_path / "ab"), str(tmp_path / "c"), "--out", str(tmp_path / "abc")]) == 0
    assert json.loads((tmp_path / "abc" / "frontier.json").read_text())["settings"]["seeds"] == [0, 1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "a" / "frontier.json").exists()
