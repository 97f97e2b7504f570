"""Runs hypo trainings inside one multi-process launch (``accelerate launch --config_file
examples/accelerate/<config>.yaml``), for the tests of this package.

argv[1]: JSON {name: {"config": TrainConfig fields, "resume": name of an earlier run (optional),
"env": {variable: value} (optional)}}.
A run with "env" runs with those environment variables changed (``launch_settings``).
A run with "resume" starts from that run's checkpoint-2 (copied into its own output_dir, as a run
stopped after step 2 leaves it). Every process writes ``<output_dir>/rank<r>.json``: its share of
the parameters, each sampling round (step, prompts, responses, and how many parameter elements
were whole tensors while it ran), its share after every step and, for HyPO runs, how many
tokens it decoded from the gathered weights when asked for 2 + 6·rank. The main process writes
``final_state.pt``: the full weights gathered at the end.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from hypo import sharding  # noqa: E402
from hypo.config import TrainConfig  # noqa: E402
from hypo.trainer import Trainer  # noqa: E402


def whole_numel(model: torch.nn.Module) -> int:
    """Elements of the parameters that are plain whole tensors (not FSDP2 shards, not ZeRO-3
    placeholders): all of them while gathered for sampling, none of a sharded model's otherwise."""
    from torch.distributed.tensor import DTensor

    return sum(p.numel() for p in model.parameters() if not isinstance(p, DTensor) and p.numel() > 0)


def stopped_after_step_2(source: Path, out: Path) -> None:
    """What a run stopped after step 2 leaves: its checkpoint and its metrics up to there. The main
    process copies; the others wait for the copy to be complete."""
    if int(os.environ.get("RANK", "0")) == 0:
        staging = out.with_name(out.name + ".copying")
        staging.mkdir(parents=True)
        shutil.copytree(source / "checkpoint-2", staging / "checkpoint-2")
        lines = (source / "metrics.jsonl").read_text().splitlines()
        (staging / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["step"] <= 2))
        staging.rename(out)
    deadline = time.time() + 120
    while not out.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{out} was not copied")
        time.sleep(0.1)


CHANGED: dict[str, str | None] = {}  # variable → its launch value (None: unset)


def decode_unequal_lengths(trainer, tokens: int) -> int:
    """Decode ``tokens`` new tokens (a different number on each process) from the weights gathered
    for generation; returns how many came out. Were decoding a collective per token (weights
    gathered layer by layer), the process that stops first would leave the others waiting
    forever."""
    from hypo.modeling import gathered_for_generation

    ids = torch.tensor([[trainer.data.tokenizer.bos_token_id]], device=trainer.acc.device)
    with gathered_for_generation(trainer.acc, trainer.model) as model, torch.no_grad():
        # synced_gpus=False, as hypo's sampler: transformers would otherwise keep every process
        # stepping under ZeRO-3 until all are done, which hides a decoding that is a collective
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             synced_gpus=False, max_new_tokens=tokens, min_new_tokens=tokens,
                             pad_token_id=trainer.pad)
    return out.shape[1] - ids.shape[1]


def launch_settings(variables: dict[str, str]) -> None:
    """The accelerate settings of the next run: the launch's own environment with ``variables``
    changed, read afresh by the next Accelerator (the process group stays), as if that run had
    been launched with them. Lets one launch check another launch config that differs from its
    own only in those variables (one start-up instead of two)."""
    from accelerate.state import AcceleratorState

    for key, value in CHANGED.items():  # the previous run's changes undone
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    CHANGED.clear()
    CHANGED.update({key: os.environ.get(key) for key in variables})
    os.environ.update(variables)
    AcceleratorState._reset_state()


def run(name: str, spec: dict, outputs: dict) -> None:
    values = spec["config"]
    out = Path(values["output_dir"])
    launch_settings(spec.get("env", {}))
    if "resume" in spec:
        stopped_after_step_2(outputs[spec["resume"]], out)
    from transformers import TrainerCallback

    record = {"rounds": [], "after_step": []}

    class ShardSizes(TrainerCallback):  # the local shard's size after every optimizer step
        def on_step_end(self, args, state, control, **kwargs):
            record["after_step"].append(sharding.local_numel(trainer.model)[0])

    trainer = Trainer(TrainConfig(**values), callbacks=[ShardSizes()])
    record["shards"] = sharding.local_numel(trainer.model)
    sample = trainer.sampler.sample

    def recording(model, prompts):
        samples = sample(model, prompts)
        record["rounds"].append({"step": trainer.step + 1, "prompts": prompts,
                                 "responses": samples.response_ids, "whole": whole_numel(model)})
        return samples

    trainer.sampler.sample = recording
    trainer.train()
    full = trainer._full_state_dict()  # a collective: every process
    rank = trainer.acc.process_index
    if trainer.hypo:
        record["decoded"] = decode_unequal_lengths(trainer, 2 + 6 * rank)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if trainer.acc.is_main_process:
        torch.save({k: v.detach().cpu() for k, v in full.items()}, out / "final_state.pt")
        print("RUN", name, trainer.acc.num_processes, trainer._sharding_name(), flush=True)
    outputs[name] = out


if __name__ == "__main__":
    outputs: dict = {}
    for name, spec in json.loads(sys.argv[1]).items():
        run(name, spec, outputs)
