"""DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU processes (DeepSpeed's CPU accelerator, gloo), launched
with examples/accelerate/deepspeed-zero{2,3}.yaml as a user launches hypo: DPO ends within 1e-5 of
one process with the same global batch (full fine-tuning; LoRA under ZeRO-3); under ZeRO-3 each
process holds half the weights, and HyPO's samples, drawn from weights gathered once per round
(``deepspeed.zero.GatheredParameters``), and its KL term equal the unsharded model's."""

import pytest

from .common import (assert_dpo_matches_one_process, assert_half_per_process,
                     assert_hypo_matches_unsharded, assert_merged_is_peft_merge,
                     assert_unequal_decoding_completed, launched, three_runs)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero2(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("zero2")
    return launched("deepspeed-zero2", {"dpo": three_runs(tiny, root)["dpo"]})


@pytest.fixture(scope="module")
def zero3(tiny, tmp_path_factory):
    return launched("deepspeed-zero3", three_runs(tiny, tmp_path_factory.mktemp("zero3")))


def test_zero2_dpo_matches_one_process(zero2, tiny, f32):
    assert_dpo_matches_one_process(zero2["dpo"], tiny, f32)


@pytest.mark.parametrize("name", ["dpo", "lora"])
def test_zero3_dpo_matches_one_process(zero3, name, tiny, f32):
    assert_dpo_matches_one_process(zero3[name], tiny, f32)


def test_zero3_each_process_holds_half_the_weights(zero3):
    for name in zero3:
        assert_half_per_process(zero3[name][0])


def test_zero3_hypo_samples_and_kl_match_the_unsharded_model(zero3, tiny, f32):
    out, values = zero3["hypo"]
    assert_hypo_matches_unsharded(out, tiny, f32, values, step=3)
    assert_unequal_decoding_completed(out)


def test_zero3_merged_lora_model(zero3, tiny):
    assert_merged_is_peft_merge(zero3["lora"][0], tiny)
