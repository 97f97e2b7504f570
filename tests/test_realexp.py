"""The realistic coverage experiment (`hypo realexp`): gold reward, kinds, pair building, coverage,
and one tiny end-to-end run on the toy model (the real model runs in `hypo realexp` itself)."""

import contextlib
import json
import math

import pytest

from hypo.realexp import task
from hypo.realexp.evaluate import coverage, win_rate

KNOWN = frozenset("cats are soft and warm fluffy calm the sea is very big blue".split())


@pytest.mark.parametrize("text, clipped, kind", [
    ("Fluffy.", False, "word"),
    ('"Calm"', False, "word"),
    ("**Serene!**", False, "broken"),          # one string, but not a known word
    ("catx", False, "broken"),                 # gibberish single token
    ("The.", False, "broken"),                 # a stop word is no description
    ("Is", False, "broken"),                   # under 3 letters
    ("Fluffy and warm.", False, "short"),
    ("Cats are soft and warm and very fluffy.", False, "long"),
    ("Cats are soft and warm.", True, "broken"),   # cut at the length limit
    ("", False, "broken"),
    ("warm warm warm cats", False, "broken"),  # repetition
    ("Xqz blorf cats vrrt.", False, "broken"),  # under 60% known words
])
def test_kinds(text, clipped, kind):
    assert task.kind_of(text, clipped, KNOWN) == kind


def test_gold_reward_orders_the_kinds_and_broken_text_is_worst():
    g = [task.gold_reward(k) for k in ("word", "short", "long", "broken")]
    assert g == sorted(g, reverse=True) and g[-1] < min(g[:-1])
    # degenerate attempts at the optimum land at the bottom, not the top
    for text in ("fluffy fluffy fluffy", "Zzzzx.", "the", "Fluffy"):
        kind = task.kind_of(text, text == "Fluffy", KNOWN)
        assert task.gold_reward(kind) == -1.0


def test_known_words_from_a_byte_level_vocabulary():
    class Tok:
        def get_vocab(self):
            return {"Ġcats": 0, "Ġfluffy": 1, "cats": 2, "ĠThe": 3, "Ġ123": 4, "Ġca": 5}

    assert task.known_words(Tok()) == {"cats", "fluffy", "ca"}


def test_prompts_are_several_hundred_with_a_disjoint_held_out_split():
    train, ev = task.split_prompts(seed=0)
    assert len(train) + len(ev) == len(task.all_prompts()) >= 300
    assert not set(train) & set(ev) and len(ev) == len(task.all_prompts()) // 4
    assert task.split_prompts(seed=0) == (train, ev)
    # no prompt repeats a question of the chat history
    assert not {q for q, _ in task.SHOTS} & set(task.all_prompts())
    assert not any(t in q for q, _ in task.SHOTS for t in task.TOPICS)


def test_chat_history_shows_every_finished_kind_before_the_question():
    """The SHOTS history is what makes π_ref answer in every finished kind: its answers are one
    short, one long and one word (the word last), and every prompt ends with the user's question."""
    msgs = task.chat_prompt("Describe rain in one word.")
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": "Describe rain in one word."}
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    known = frozenset(w.lower() for a in answers for w in task.WORD_RE.findall(a))
    assert [task.kind_of(a, False, known) for a in answers] == ["short", "long", "word"]
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant"] * len(task.SHOTS)


def _samples():
    rows = []
    for p, kinds in (("p1", ["word", "short", "long", "broken"]), ("p2", ["short", "long", "short", "long"])):
        rows += [{"prompt": p, "text": f"{p} answer {i}", "kind": k} for i, k in enumerate(kinds)]
    return rows


def test_pairs_only_show_the_covered_kinds_in_chat_format():
    pairs = task.bradley_terry_pairs(_samples(), ("short", "long"), seed=0)
    texts = {r[k][0]["content"] for r in pairs for k in ("chosen", "rejected")}
    # p1 keeps its short and long sample (word and broken are not covered); p2 gives two pairs
    assert len(pairs) == 3 and texts == {"p1 answer 1", "p1 answer 2", "p2 answer 0", "p2 answer 1",
                                         "p2 answer 2", "p2 answer 3"}
    assert pairs[0]["prompt"][-1] == {"role": "user", "content": "p1"}
    assert pairs[0]["chosen"][0]["role"] == "assistant"
    assert task.bradley_terry_pairs(_samples(), ("short", "long"), seed=0) == pairs


def test_bradley_terry_labels_follow_the_gold_reward():
    rows = [{"prompt": f"p{i}", "text": t, "kind": k} for i in range(400)
            for t, k in (("a", "word"), ("b", "long"))]
    pairs = task.bradley_terry_pairs(rows, ("word", "long"), seed=0)
    share = sum(r["chosen"][0]["content"] == "a" for r in pairs) / len(pairs)
    assert abs(share - 1 / (1 + math.exp(-4.0))) < 0.03  # σ(4·(1 − 0)) ≈ 0.982


def test_coverage_is_pi_ref_mass_on_covered_kinds_and_win_rate_counts_ties_half():
    ref = [{"kind": k} for k in ("word", "short", "long", "broken")]
    assert coverage(ref, task.COVERAGE_REGIMES["partial"]) == 0.5
    assert coverage(ref, task.COVERAGE_REGIMES["global"]) == 0.75
    assert win_rate([1.0, 0.5, -1.0], [0.5, 0.5, 0.0]) == pytest.approx(0.5)


def test_evaluator_at_pi_ref_redraws_pi_ref_samples(tiny, monkeypatch):
    """Common random numbers: the evaluator draws with π_ref's seed and batching, so the policy
    π = π_ref gets exactly π_ref's samples back: win rate ½, the same gold reward, KL 0."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypo.logprobs import sequence_logps
    from hypo.realexp import build
    from hypo.realexp.evaluate import RealGoldEvaluator

    monkeypatch.setattr(build, "kind_of",
                        lambda text, clipped, known: ("word", "short", "long", "broken")[len(text) % 4])
    tok = AutoTokenizer.from_pretrained(tiny["model"])
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32).eval()
    prompts = ["Describe rain in one word.", "Describe snow in one word.", "Describe tea in one word."]
    ref = build.sample_texts(model, tok, prompts, m=3, max_new_tokens=5, seed=7, batch_prompts=2)
    assert len({x["text"] for x in ref}) > 1  # the draws differ: the test below can fail
    ev = RealGoldEvaluator(tok, prompts, ref, ("short", "long"), samples_per_prompt=3, max_new_tokens=5, seed=7)
    ev.batch_prompts = 2
    from hypo.prefix import response_logps

    trainer = SimpleNamespace(model=model, acc=SimpleNamespace(unwrap_model=lambda m: m, device="cpu"),
                              cfg=SimpleNamespace(per_device_eval_batch_size=4),  # 9 rows: 3 chunks of 3
                              _response_logps=lambda m, groups: response_logps(m, groups, tok.pad_token_id, "cpu"),
                              pair=SimpleNamespace(reference_view=contextlib.nullcontext))
    out = ev(trainer)
    assert out["gold/win_rate"] == 0.5 and out["gold/kl"] == pytest.approx(0.0, abs=1e-6)
    assert out["gold/reward"] == pytest.approx(sum(task.gold_reward(x["kind"]) for x in ref) / len(ref))

    # The chunked, prefix-shared log-probs (3 chunks of one prompt and its 3 responses) are those of
    # one unshared batch of all 9 rows, in order (to rounding: 1e-5 ≫ the reordering bound here).
    from hypo.logprobs import pack_sequences

    drawn = build.sample_texts(model, tok, prompts, m=3, max_new_tokens=5, seed=7, batch_prompts=2, keep_ids=True)
    policy, reference = ev._logps(trainer, model, drawn)
    whole = sequence_logps(model, pack_sequences([x["prompt_ids"] for x in drawn],
                                                 [x["response_ids"] for x in drawn], tok.pad_token_id))
    assert policy.shape == (9,) and torch.allclose(policy, whole, atol=1e-5) and torch.allclose(reference, whole, atol=1e-5)


def test_tiny_end_to_end_run(tiny, tmp_path, monkeypatch):
    """The whole pipeline on the toy model: π_ref sampling, pairs, DPO and HyPO runs with LoRA, eval
    rows at step 0 and after, results.json and report. The toy's samples are not English, so their
    kind is assigned by a stand-in (by length) to exercise every branch."""
    from hypo.realexp import build
    from hypo.realexp.report import write_report
    from hypo.realexp.run import RealExpSettings, run_realexp

    def fake_kind(text, clipped, known):
        return ("word", "short", "long", "broken")[len(text) % 4]  # the toy never stops: ignore clipping

    monkeypatch.setattr(build, "kind_of", fake_kind)
    s = RealExpSettings(model=str(tiny["model"]), seeds=(0,), regimes=("partial",), train_prompts=24,
                        samples_per_train_prompt=4, steps=2, batch_size=2, eval_every=1, eval_prompts=2,
                        eval_samples_per_prompt=2, eval_pairs=2, max_new_tokens=6, threads=1)
    results = run_realexp(tmp_path / "rx", s)
    res = results["regimes"]["partial"]
    assert res["n_pairs"] > 0 and 0 <= res["coverage"] <= 1
    for method in ("dpo", "hypo"):
        rows = results["curves"]["partial"][method][0]
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert rows[0]["eval_gold/kl"] == 0.0 and rows[0]["eval_gold/win_rate"] == 0.5
        assert all(0 <= r["eval_gold/ood_rate"] <= 1 for r in rows)
        assert results["samples"]["partial"][method]["0"]
    saved = json.loads((tmp_path / "rx" / "results.json").read_text())
    assert saved["regimes"]["partial"]["hypo"]["kl"]["per_seed"] == res["hypo"]["kl"]["per_seed"]
    report = write_report(saved, tmp_path / "rx").read_text()
    assert "| partial (" in report and "Samples" in report


def test_tiny_frontier_run_dual_ascent_verdict_and_resume(tiny, tmp_path, monkeypatch):
    """`hypo realexp --frontier` on the toy model: DPO over β and HyPO over κ on the same pairs and
    seed; HyPO's λ follows the dual-ascent rule step by step; the verdict is the envelope gap; a rerun
    with the same settings trains nothing."""
    from hypo.demo.frontier_report import envelope, frontier_at
    from hypo.realexp import build, frontier
    from hypo.realexp.report import write_frontier_report
    from hypo.realexp.run import RealExpSettings

    monkeypatch.setattr(build, "kind_of", lambda text, clipped, known: ("word", "short", "long", "broken")[len(text) % 4])
    s = RealExpSettings(model=str(tiny["model"]), seeds=(0,), train_prompts=24, samples_per_train_prompt=4,
                        steps=3, batch_size=2, eval_every=1, eval_prompts=2, eval_samples_per_prompt=2,
                        eval_pairs=2, max_new_tokens=6, threads=1, learning_rate=5e-2,
                        dpo_betas=(0.05, 1.0), kl_budgets=(0.01, 1.0))
    results = frontier.run_frontier(tmp_path / "fx", s)
    assert set(results["points"]) == {"dpo", "hypo"}
    assert set(results["points"]["dpo"]) == {"0.05", "1"} and set(results["points"]["hypo"]) == {"0.01", "1"}
    runs = json.loads((tmp_path / "fx" / "frontier-runs.json").read_text())["runs"]
    # the β reaches the run: same seed and data, different β, different policy
    kl = {b: runs[f"dpo β={b} seed 0"]["evals"][-1]["eval_gold/kl"] for b in ("0.05", "1")}
    assert kl["0.05"] != kl["1"]
    for k in (0.01, 1.0):
        r = runs[f"hypo κ={k:g} seed 0"]
        assert len(r["lambda"]) == s.steps and r["lambda"][0] == s.beta
        for t in range(s.steps - 1):
            assert r["lambda"][t + 1] == pytest.approx(
                max(0.0, r["lambda"][t] + 0.1 * s.beta / k * (r["kl_online"][t] - k)), rel=1e-12)
    assert runs["hypo κ=0.01 seed 0"]["lambda"] != runs["hypo κ=1 seed 0"]["lambda"]  # the rule can fail
    # the verdict is the gap to HyPO's envelope (with π_ref at KL 0), recomputed here
    start = runs["dpo β=1 seed 0"]["evals"][0]
    hull = envelope([(0.0, start["eval_gold/reward"])] + [
        (runs[f"hypo κ={k} seed 0"]["evals"][-1]["eval_gold/kl"], runs[f"hypo κ={k} seed 0"]["evals"][-1]["eval_gold/reward"])
        for k in ("0.01", "1")])
    for b in ("0.05", "1"):
        d = runs[f"dpo β={b} seed 0"]["evals"][-1]
        gap = results["verdict"]["per_setting"][f"β={b}"]["0"]["gap"]
        assert gap == pytest.approx(frontier_at(hull, d["eval_gold/kl"]) - d["eval_gold/reward"])
    assert results["verdict"]["pi_ref_is_the_frontier_at_seeds"] == ([0] if hull == [(0.0, start["eval_gold/reward"])] else [])
    assert results["verdict"]["holds"] == all(
        g["gap"] > 0 for per in results["verdict"]["per_setting"].values() for g in per.values())
    report = write_frontier_report(results, tmp_path / "fx").read_text()
    assert "| DPO | β = 0.05 |" in report and "| HyPO | κ = 1 |" in report
    assert (tmp_path / "fx" / "frontier.png").stat().st_size > 0

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(frontier, "train_one", no_training)
    again = frontier.run_frontier(tmp_path / "fx", s)
    assert again["points"] == results["points"]

    # other shared settings: refused, naming the file and the setting, and the finished runs stay
    from dataclasses import replace

    from hypo.config import ConfigError

    runs_file = tmp_path / "fx" / "frontier-runs.json"
    before = runs_file.read_bytes()
    with pytest.raises(ConfigError, match=r"frontier-runs\.json holds 4 runs.*learning_rate: 0\.05 there, 0\.01 now"):
        frontier.run_frontier(tmp_path / "fx", replace(s, learning_rate=1e-2))
    assert runs_file.read_bytes() == before
    runs_file.write_text("{not json")
    with pytest.raises(ConfigError, match=r"frontier-runs\.json is not a frontier-runs file"):
        frontier.run_frontier(tmp_path / "fx", s)


def test_cli_frontier_passes_its_grid_and_quick_settings(tmp_path, monkeypatch):
    """`hypo realexp --frontier`: --quick takes the frontier's quick grid, --dpo_betas / --kl_budgets /
    --seeds reach the settings."""
    from hypo import cli
    from hypo.realexp import frontier, report

    seen = []

    class Stop(Exception):
        pass

    def fake_run(out, s):
        seen.append(s)
        raise Stop  # the CLI's wiring is under test, not the training

    monkeypatch.setattr(frontier, "run_frontier", fake_run)
    for argv, betas, budgets, seeds, steps in (
            (["--quick"], report.FRONTIER_QUICK["dpo_betas"], report.FRONTIER_QUICK["kl_budgets"], (0,), 8),
            (["--dpo_betas", "0.2", "2", "--kl_budgets", "3", "--seeds", "4", "5"], (0.2, 2.0), (3.0,), (4, 5), 20)):
        with pytest.raises(Stop):
            cli.main(["realexp", "--frontier", "--model", "m", "--out", str(tmp_path)] + argv)
        s = seen[-1]
        assert (s.dpo_betas, s.kl_budgets, s.seeds, s.steps, s.model) == (betas, budgets, seeds, steps, "m")


def test_cli_refuses_frontier_options_without_frontier(capsys):
    from hypo import cli

    assert cli.main(["realexp", "--dpo_betas", "0.1", "--model", "m"]) == 2
    assert "--dpo_betas and --kl_budgets set the grid of --frontier" in capsys.readouterr().err
    assert cli.main(["demo", "--merge", "a", "b"]) == 2
    assert "use it with --frontier" in capsys.readouterr().err


def test_frontier_verdict_on_hand_set_points():
    """The rule on numbers worked out by hand: HyPO's frontier through π_ref (0, 0.4), κ points
    (0.5, 0.6) and (1.0, 0.7) is 0.65 at KL 0.75 and 0.7 beyond KL 1 (flat)."""
    from hypo.realexp.frontier import verdict
    from hypo.realexp.run import RealExpSettings

    def run(kl, gold):
        return {"evals": [{"eval_gold/kl": kl, "eval_gold/reward": gold}]}

    s = RealExpSettings(seeds=(0,), dpo_betas=(0.1, 1.0), kl_budgets=(0.5, 1.0))
    hypo = {"hypo κ=0.5 seed 0": run(0.5, 0.6), "hypo κ=1 seed 0": run(1.0, 0.7)}
    start = {"eval_gold/reward": 0.4}
    v = verdict(s, start, {**hypo, "dpo β=0.1 seed 0": run(3.0, 0.2), "dpo β=1 seed 0": run(0.75, 0.5)})
    assert v["holds"] and v["pi_ref_is_the_frontier_at_seeds"] == []
    assert v["per_setting"]["β=1"]["0"]["gap"] == pytest.approx(0.15)
    assert v["per_setting"]["β=0.1"]["0"]["gap"] == pytest.approx(0.5)
    v = verdict(s, start, {**hypo, "dpo β=0.1 seed 0": run(3.0, 0.2), "dpo β=1 seed 0": run(0.75, 0.66)})
    assert not v["holds"] and v["per_setting"]["β=1"]["0"]["gap"] == pytest.approx(-0.01)
    low = {"hypo κ=0.5 seed 0": run(0.5, 0.3), "hypo κ=1 seed 0": run(1.0, 0.35)}  # none beats π_ref
    v = verdict(s, start, {**low, "dpo β=0.1 seed 0": run(3.0, 0.2), "dpo β=1 seed 0": run(0.75, 0.3)})
    assert v["pi_ref_is_the_frontier_at_seeds"] == [0] and v["per_setting"]["β=1"]["0"]["gap"] == pytest.approx(0.1)
