"""`hypo bench` in a miniature setting: the JSON's form (keys, positive numbers), never speeds."""

import json

import pytest

pytest.importorskip("trl")

from hypo.bench.flops import ModelShape, dpo_step_flops, hypo_step_flops  # noqa: E402
from hypo.cli import main  # noqa: E402


def positive(stat):
    return stat and stat["median"] > 0 and 0 < stat["min"] <= stat["median"] <= stat["max"]


def test_bench_quick_writes_bench_json(tmp_path):
    out = tmp_path / "bench"
    code = main(["bench", "--quick", "--steps", "2", "--n_records", "48", "--out", str(out),
                 "--modes", "hypo-dpo", "hypo-hypo", "trl-dpo"])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["threads"] == 2 and result["versions"]["torch"] and result["versions"]["trl"]
    assert result["settings"]["sizes"] == ["tiny"] and result["settings"]["batch_size"] == 8
    assert positive(result["matmul_peak_flops_per_s"])
    block = result["sizes"]["tiny"]
    assert 0.3e6 < block["workload"]["num_params"] < 0.5e6
    modes = block["modes"]
    assert set(modes) == {"hypo-dpo", "hypo-hypo", "trl-dpo"}
    for name, m in modes.items():
        assert not m["failed"], (name, m["failed"])
        assert m["step_time"]["n"] == 2 and positive(m["step_time"]), name
        assert positive(m["cpu_time"]) and positive(m["peak_rss_mb"]) and m["baseline_rss_mb"]["median"] > 0
    for name in ("hypo-dpo", "trl-dpo"):
        assert positive(modes[name]["tokens_per_s"])
    for name in ("hypo-dpo", "hypo-hypo"):
        assert positive(modes[name]["flops"]) and positive(modes[name]["mfu"])
    assert positive(modes["hypo-hypo"]["samples_per_s"])
    comps = block["comparisons"]
    for key in ("dpo_tokens_per_s_vs_trl", "hypo_step_time_vs_dpo", "hypo_flops_vs_dpo",
                "hypo_time_ratio_over_flops_ratio", "hypo_peak_rss_vs_dpo", "hypo-dpo_mfu"):
        assert comps[key]["median"] > 0, key
    assert comps["hypo_flops_vs_dpo"]["median"] > 1  # HyPO does DPO's work plus the online part
    keys = {t["key"] for t in block["targets"]}
    assert "dpo_tokens_per_s_vs_trl_precompute" in keys and len(keys) == 6
    assert result["targets_size"] == "tiny"
    # The decode roofline: bandwidth measured in the same run, HyPO's generate calls timed.
    assert positive(result["bandwidth_bytes_per_s"])
    sampling = modes["hypo-hypo"]["sampling"]
    assert sampling["rows"] == 16 and sampling["calls_per_step"] == 1
    for key in ("decode_ms_per_step", "decode_tokens_per_s", "decode_roofline", "prefill_ms",
                "prefill_tokens_per_s", "prefill_roofline"):
        assert positive(sampling[key]), key
    assert 0 < comps["hypo_decode_roofline"]["median"] < 1


def test_flop_counts_follow_the_formula():
    shape = ModelShape.from_config(dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                        intermediate_size=1024, vocab_size=2048))
    assert shape.num_params == 5_245_184  # the ~5.2M size of issue 6
    n = shape.matmul_params
    assert n == 4 * (4 * 256 * 256 + 3 * 256 * 1024) + 256 * 2048
    assert shape.forward(10) == 2 * n * 10 + 4 * 4 * 4 * 64 * 55
    assert dpo_step_flops(shape, [10, 20]) == 3 * (shape.forward(10) + shape.forward(20))
    parts = hypo_step_flops(shape, [10, 20], [4], k=2, mean_new_tokens=6)
    assert parts["train_samples"] == 2 * shape.train(10) and parts["reference_samples"] == 2 * shape.forward(10)
    assert parts["total"] == sum(v for key, v in parts.items() if key != "total")
    # generation: prefill without the LM head on all but the last prompt position, then 6 tokens
    assert parts["generate"] > 2 * 6 * 2 * n


def test_sweep_plot_and_table(tmp_path):
    from hypo.bench.sweep import AXES, plot_sweep, print_sweep

    def st(v):
        return {"median": v, "min": v, "max": v, "n": 1}

    settings = {"sizes": ["small"], "max_length": 128, "batch_size": 8, "num_online_samples": 2, "threads": 2}
    base = {"max_length": 128, "batch_size": 8, "num_online_samples": 2, "size": "small"}
    points = []
    for factor, values in AXES.items():
        for i, value in enumerate(values):
            for mode in ("hypo-dpo", "hypo-hypo"):
                points.append({"mode": mode, **base, factor: value, "params": 5e6 * (i + 1),
                               "step_time": st(0.1 * (i + 1)), "peak_rss_mb": st(500.0 + i),
                               "peak_above_baseline_mb": st(50.0 + i), "tokens_per_step": 1000})
    result = {"settings": settings, "axes": {k: list(v) for k, v in AXES.items()}, "points": points}
    path = plot_sweep(result, tmp_path / "sweep.png")
    assert path.stat().st_size > 10_000
    print_sweep(result)


def test_online_part_comparison_with_rloo():
    from hypo.bench.runner import compare

    def mode(step, samples=None):
        m = {"step_time": {"median": step}, "per_round_median": []}
        if samples is not None:
            m["samples_per_s"] = {"median": samples}
        return m

    # HyPO: 16 samples in a 0.8 s step of which 0.3 s is the DPO part -> 32 samples/s online;
    # RLOO: 20 samples/s.
    out = compare({"hypo-hypo": mode(0.8, 20.0), "hypo-dpo": mode(0.3), "trl-rloo": mode(0.7, 20.0)})
    assert abs(out["hypo_samples_per_s_vs_rloo"]["median"] - 1.0) < 1e-12
    assert abs(out["hypo_online_part_samples_per_s_vs_rloo"]["median"] - 1.6) < 1e-12


def test_decode_and_prefill_roofline_bounds():
    from hypo.bench.flops import decode_bound_s, prefill_bound_s

    shape = ModelShape.from_config(dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                        intermediate_size=1024, vocab_size=2048))
    n, peak, bw = shape.matmul_params, 1e11, 1e10
    kv = lambda ctx: 2 * 4 * 4 * 64 * ctx  # noqa: E731 - K and V, 4 layers, 4 KV heads of 64
    # Two rows (prompts 3 and 5), two decode steps: each step reads the weights once and each
    # row's KV cache; here the bytes side binds (small batch).
    want = sum(max((4 * n + 4 * (kv(3 + t) + kv(5 + t))) / bw,
                   (2 * (2 * n) + 4 * 4 * 4 * 64 * (3 + t + 5 + t)) / peak) for t in (1, 2))
    assert abs(decode_bound_s(shape, [3, 5], 2, peak, bw) - want) < 1e-15
    assert want == sum((4 * n + 4 * (kv(3 + t) + kv(5 + t))) / bw for t in (1, 2))
    # Prefill: compute-bound once prompts are long; the LM head runs at the last position only.
    flops = shape.forward(100) - 2 * 256 * 2048 * 99
    assert abs(prefill_bound_s(shape, [100], peak, bw) - max(flops / peak, 4 * (n + kv(100)) / bw)) < 1e-15


def test_sampling_figures_from_timed_generate_calls():
    from hypo.bench.flops import decode_bound_s
    from hypo.bench.runner import sampling_figures

    shape = ModelShape.from_config(dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=256, vocab_size=2048))
    call = {"rows": 4, "prompt_lens": [3, 3, 5, 5], "prefill_s": 0.02, "decode_s": 0.5, "decode_steps": 10}
    figs = sampling_figures([call], shape, peak=1e11, bandwidth=1e10)
    assert figs["decode_ms_per_step"] == [50.0] and figs["decode_tokens_per_s"] == [80.0]
    assert figs["prefill_ms"] == [20.0] and figs["prefill_tokens_per_s"] == [16 / 0.02]
    bound = decode_bound_s(shape, [3, 3, 5, 5], 10, 1e11, 1e10)
    assert figs["decode_roofline"] == [bound / 0.5] and figs["decode_bound_ms_per_step"] == [100 * bound]
    assert "decode_roofline" not in sampling_figures([call], shape, peak=None, bandwidth=None)


def test_ratio_of_medians_outside_the_per_round_range_is_marked_and_explained():
    from rich.console import Console

    from hypo.bench.report import OUTSIDE_NOTE, comparison_table, markdown_tables
    from hypo.bench.runner import compare, targets

    def mode(pooled_median, round_medians):
        return {"tokens_per_s": {"median": pooled_median, "min": 0.5, "max": 9.0, "n": 6},
                "per_round_median": [{"tokens_per_s": v} for v in round_medians]}

    # Per-round ratios 2/1 = 2.0 and 4/2 = 2.0; the pooled medians come from different rounds.
    inside = compare({"hypo-dpo": mode(4.0, [2.0, 4.0]), "trl-dpo": mode(2.0, [1.0, 2.0])})
    assert inside["dpo_tokens_per_s_vs_trl"]["median"] == 2.0
    assert comparison_table("small", {"comparisons": inside, "targets": targets(inside)}).caption is None
    # Per-round ratios 3.0 and 2.5, but the ratio of the pooled medians is 2.0: outside.
    comps = compare({"hypo-dpo": mode(4.0, [3.0, 5.0]), "trl-dpo": mode(2.0, [1.0, 2.0])})
    c = comps["dpo_tokens_per_s_vs_trl"]
    assert (c["median"], c["min"], c["max"]) == (2.0, 2.5, 3.0)
    block = {"comparisons": comps, "targets": targets(comps), "workload": {"num_params": 1e6}, "modes": {}}
    table = comparison_table("small", block)
    assert table.caption == OUTSIDE_NOTE
    console = Console(width=200, record=True)
    console.print(table)
    assert "2.00 (2.50–3.00) †" in console.export_text()
    assert OUTSIDE_NOTE in markdown_tables({"sizes": {"small": block}})


def test_real_sizes_use_the_given_model_folder(tmp_path, tiny):
    from hypo.bench.runner import BenchSettings
    from hypo.bench.workload import prepare

    wl = prepare(tmp_path, "real-lora", 64, 8, model=str(tiny["model"]))
    assert wl.lora and wl.model_dir == str(tiny["model"]) and wl.shape["vocab_size"] > 0
    assert len(open(wl.data).read().splitlines()) == 8
    assert not prepare(tmp_path, "real", 64, 8, model=str(tiny["model"])).lora
    BenchSettings(sizes=("small", "real", "real-lora")).validate()
    with pytest.raises(ValueError, match="no config.json"):
        prepare(tmp_path, "real", 64, 8, model=str(tmp_path / "nowhere"))


def test_long_prompt_workload_has_tldr_shape_and_its_defaults(tmp_path, tiny):
    """--workload long-prompt: prompts ≈ 8× each response (≈ 384 + 48 tokens), nothing truncated,
    and max_length / max_new_tokens / batch size follow the workload unless given."""
    import argparse

    from transformers import AutoTokenizer

    from hypo.bench.cli import add_arguments, settings_from_args
    from hypo.bench.workload import prepare

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    s = settings_from_args(parser.parse_args(["--workload", "long-prompt"]))
    assert (s.workload, s.max_length, s.max_new_tokens, s.batch_size) == ("long-prompt", 448, 48, 4)
    s = settings_from_args(parser.parse_args(["--workload", "long-prompt", "--max_length", "512",
                                              "--batch_size", "2"]))
    assert (s.max_length, s.batch_size) == (512, 2)
    assert settings_from_args(parser.parse_args([])).max_length == 128  # standard is unchanged

    wl = prepare(tmp_path, "real-lora", 448, 16, model=str(tiny["model"]), workload="long-prompt")
    assert "long-prompt" in wl.data and wl.workload == "long-prompt"
    tok = AutoTokenizer.from_pretrained(tiny["model"])
    for line in open(wl.data).read().splitlines():
        rec = json.loads(line)
        p = len(tok(rec["prompt"], add_special_tokens=False)["input_ids"])
        c, r = (len(tok(rec[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
        # pseudo-words fill each budget up to one word's tokens short
        assert 0.8 * 384 <= p <= 384 + 2 and 0.5 * 48 <= min(c, r) and max(c, r) <= 48 + 2
        assert p + max(c, r) + 3 <= 448


def test_prefix_sharing_ratios_and_targets():
    from hypo.bench.runner import compare, targets

    def mode(tokens=None, samples=None, rss=None):
        m = {"per_round_median": [], "step_time": {"median": 1.0}}
        if tokens:
            m["tokens_per_s"] = {"median": tokens}
        if samples:
            m["samples_per_s"] = {"median": samples}
        if rss:
            m["peak_rss_mb"] = m["peak_above_baseline_mb"] = {"median": rss}
        return m

    out = compare({"hypo-dpo": mode(300, None, 900), "hypo-dpo-unshared": mode(150, None, 1800),
                   "hypo-hypo": mode(None, 10, 1000), "hypo-hypo-unshared": mode(None, 4, 2500),
                   "trl-dpo": mode(100)})
    assert out["dpo_shared_vs_unshared"]["median"] == 2.0 and out["hypo_shared_vs_unshared"]["median"] == 2.5
    assert out["dpo_shared_vs_unshared_peak_rss"]["median"] == 0.5
    rows = {t["key"]: t for t in targets(out, real=True, workload="long-prompt")}
    assert rows["dpo_shared_vs_unshared"]["met"] and rows["hypo_shared_vs_unshared"]["met"]
    assert rows["dpo_tokens_per_s_vs_trl"]["met"] and rows["dpo_tokens_per_s_vs_trl"]["target"] == ">= 3.0"
    standard = {t["key"] for t in targets(out, real=True)}
    assert "hypo_shared_vs_unshared_peak_rss" in standard  # "no slowdown, no more memory" there
    assert "dpo_shared_vs_unshared" not in {t["key"] for t in targets({}, real=True)}  # not run: not listed
