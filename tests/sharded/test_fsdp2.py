"""FSDP2 with 2 CPU processes (gloo), launched with examples/accelerate/fsdp.yaml as a user launches
hypo: each process holds half the weights; DPO ends within 1e-5 of one process with the same global
batch (full fine-tuning and LoRA); HyPO's samples, drawn from weights gathered once per round, and
its KL term equal the unsharded model's; a run resumed from a checkpoint equals the uninterrupted
one bit for bit."""

import json

import pytest
import torch

from .common import (assert_dpo_matches_one_process, assert_half_per_process,
                     assert_hypo_matches_unsharded, assert_merged_is_peft_merge,
                     assert_unequal_decoding_completed, launched, ranks, three_runs)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """One launch: DPO (full), LoRA, HyPO with a checkpoint at step 2, and HyPO resumed from it."""
    root = tmp_path_factory.mktemp("fsdp2")
    values = three_runs(tiny, root)
    values["resumed"] = {**values["hypo"], "output_dir": str(root / "resumed"),
                         "resume_from_checkpoint": "auto"}
    return launched("fsdp", values, resume={"resumed": "hypo"})


def test_each_process_holds_half_the_weights(runs):
    for name in ("dpo", "lora", "hypo"):
        assert_half_per_process(runs[name][0])


@pytest.mark.parametrize("name", ["dpo", "lora"])
def test_dpo_matches_one_process(runs, name, tiny, f32):
    assert_dpo_matches_one_process(runs[name], tiny, f32)


def test_hypo_samples_and_kl_match_the_unsharded_model(runs, tiny, f32):
    out, values = runs["hypo"]
    assert_hypo_matches_unsharded(out, tiny, f32, values, step=3)
    assert_unequal_decoding_completed(out)


def test_resumed_run_equals_the_uninterrupted_one(runs):
    """Same launch config, same shapes and kernels after the resume: bit for bit (the checkpoint
    holds the full weights and the full AdamW state, gathered, and each process's sampler)."""
    straight, resumed = runs["hypo"][0], runs["resumed"][0]
    # it did resume: it sampled step 3 only (a run from step 0 with the same seed would also match)
    assert [[r["step"] for r in rank["rounds"]] for rank in ranks(resumed)] == [[3], [3]]
    a, b = torch.load(straight / "final_state.pt"), torch.load(resumed / "final_state.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = [[json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            for out in (straight, resumed)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3]
    assert [(r["loss"], r["kl/online"]) for r in rows[0]] == [(r["loss"], r["kl/online"]) for r in rows[1]]


def test_merged_lora_model_is_the_adapter_merged_into_the_base(runs, tiny):
    assert_merged_is_peft_merge(runs["lora"][0], tiny)
