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
