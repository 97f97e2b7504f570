"""DeepSpeed ZeRO-3 and ZeRO-2 with 2 CPU processes (DeepSpeed's CPU accelerator, gloo), launched
with examples/accelerate/deepspeed-zero3.yaml as a user launches hypo: DPO ends within 1e-5 of one
process with the same global batch (full fine-tuning and LoRA under ZeRO-3, full under ZeRO-2);
under ZeRO-3 each process holds half the weights, and HyPO's samples, drawn from weights gathered
once per round (``deepspeed.zero.GatheredParameters``), and its KL term equal the unsharded
model's. The ZeRO-2 run shares the launch (one start-up, not two: tests/sharded costs CI time),
with the variable that deepspeed-zero2.yaml sets differently."""

from pathlib import Path

import pytest

from .common import (assert_dpo_matches_one_process, assert_half_per_process,
                     assert_hypo_matches_unsharded, assert_merged_is_peft_merge,
                     assert_unequal_decoding_completed, launched, three_runs)

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "accelerate"
ZERO2 = {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}  # what deepspeed-zero2.yaml launches, given zero3's


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("zero")
    values = three_runs(tiny, root)  # ZeRO-3 first: as launched, in a fresh process
    values["zero2"] = {**values["dpo"], "output_dir": str(root / "zero2")}
    return launched("deepspeed-zero3", values, env={"zero2": ZERO2})


def test_zero2_config_differs_from_zero3_only_in_the_stage():
    """So the ZeRO-2 run of the zero3 launch (``ZERO2``) is what deepspeed-zero2.yaml launches
    (``zero3_save_16bit_model`` only applies to stage 3)."""
    from accelerate.commands.config.config_args import ClusterConfig

    zero2, zero3 = (ClusterConfig.from_yaml_file(CONFIGS / f"deepspeed-zero{n}.yaml") for n in (2, 3))
    assert {k: v for k, v in zero2.to_dict().items() if k != "deepspeed_config"} == \
        {k: v for k, v in zero3.to_dict().items() if k != "deepspeed_config"}
    assert {**zero3.deepspeed_config, "zero_stage": 2, "zero3_save_16bit_model": None} == \
        {**zero2.deepspeed_config, "zero3_save_16bit_model": None}


@pytest.mark.parametrize("name", ["dpo", "lora", "zero2"])
def test_dpo_matches_one_process(runs, name, tiny, f32):
    assert_dpo_matches_one_process(runs[name], tiny, f32)


def test_zero3_each_process_holds_half_the_weights(runs):
    for name in ("dpo", "lora", "hypo"):
        assert_half_per_process(runs[name][0])


def test_zero3_hypo_samples_and_kl_match_the_unsharded_model(runs, tiny, f32):
    out, values = runs["hypo"]
    assert_hypo_matches_unsharded(out, tiny, f32, values, step=3)
    assert_unequal_decoding_completed(out)


def test_zero3_merged_lora_model(runs, tiny):
    assert_merged_is_peft_merge(runs["lora"][0], tiny)
