"""Two-process DDP (gloo, CPU) through torchrun: DPO gives the same weights as one process with the
same global batch; HyPO completes with finite metrics. (FSDP2 and DeepSpeed: tests/sharded/.)"""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from hypo.config import TrainConfig
from hypo.tracking import read_metrics
from hypo.trainer import Trainer

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from hypo.config import TrainConfig
    from hypo.trainer import Trainer

    for name, values in json.loads(sys.argv[1]).items():
        if name == "hypo-fits-differ":  # the joint layout fits on one process only: all must agree
            Trainer._joint_fits = staticmethod(lambda pairs, groups: os.environ["RANK"] == "0")
        trainer = Trainer(TrainConfig(**values))
        trainer.train()
        if trainer.acc.is_main_process:
            model = trainer.acc.unwrap_model(trainer.model)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                       os.path.join(values["output_dir"], "final_state.pt"))
            print("RUN", name, trainer.acc.num_processes, trainer.acc.distributed_type, flush=True)
""")


def settings(tiny, tmp_path, **overrides):
    values = dict(model_name_or_path=str(tiny["model"]), dataset_name=str(tiny["data"]),
                  ref_cache_dir=str(tmp_path / "cache"), learning_rate=1e-3, max_steps=3,
                  max_new_tokens=6, max_length=64, max_prompt_length=32, save_steps=0,
                  report_to="none", disable_progress_bar=True, eval_online_prompts=0, seed=0,
                  per_device_train_batch_size=4)
    values.update(overrides)
    return values


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny, tmp_path):
    runs = {"dpo": settings(tiny, tmp_path, algo="dpo", output_dir=str(tmp_path / "dpo2")),
            "hypo": settings(tiny, tmp_path, algo="hypo", kl_coef=0.1,
                             output_dir=str(tmp_path / "hypo2")),
            "hypo-fits-differ": settings(tiny, tmp_path, algo="hypo", kl_coef=0.1,
                                         output_dir=str(tmp_path / "hypo-differ"))}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), json.dumps(runs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RUN dpo 2 DistributedType.MULTI_CPU" in proc.stdout, proc.stdout
    assert "RUN hypo 2 DistributedType.MULTI_CPU" in proc.stdout, proc.stdout
    assert "RUN hypo-fits-differ 2" in proc.stdout, proc.stdout  # no hang, no mismatched collectives

    # One process, the same global batch (2 × 4 = 8 pairs per step).
    single = Trainer(TrainConfig(**settings(tiny, tmp_path, algo="dpo", per_device_train_batch_size=8,
                                            output_dir=str(tmp_path / "dpo1"))))
    single.train()
    one = single.acc.unwrap_model(single.model).state_dict()
    two = torch.load(tmp_path / "dpo2" / "final_state.pt")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=0), name
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny["model"]).state_dict()
    moved = max(float((one[k] - initial[k]).abs().max()) for k in one)
    assert moved > 1e-4  # the comparison is not vacuous: training changed the weights
    rows_one, rows_two = read_metrics(tmp_path / "dpo1"), read_metrics(tmp_path / "dpo2")
    for a, b in zip(rows_one, rows_two):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)

    hypo_rows = read_metrics(tmp_path / "hypo2")
    assert len(hypo_rows) == 3
    for row in hypo_rows:
        for key in ("loss", "kl/online", "loss/kl", "online/length", "grad_norm"):
            assert math.isfinite(row[key]), (key, row)
    assert (tmp_path / "hypo2" / "model.safetensors").exists()


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_shipped_accelerate_configs_load(name):
    """accelerate's own config loader accepts every launch config under examples/accelerate/."""
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    path = Path(__file__).parent.parent / "examples" / "accelerate" / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(path)
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")
    assert str(config.distributed_type).endswith(expected)
    if expected == "DEEPSPEED":
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
