"""The vLLM backend with vLLM faked: weight sync before each round, output conversion, seeds, the
missing-extra error. (The real engine is GPU-only and not checked here; see docs/scale-out.md.)"""

import copy
import sys
import types

import pytest
import torch

from hypo.config import ConfigError, TrainConfig
from hypo.sampling import OnlineSampler
from hypo.vllm_backend import (MISSING_EXTRA, VLLMSampler, make_sampler, policy_weights,
                               to_online_samples)


class Completion:
    def __init__(self, token_ids, finish_reason, stop_reason=None):
        self.token_ids, self.finish_reason, self.stop_reason = token_ids, finish_reason, stop_reason


class Request:
    def __init__(self, outputs):
        self.outputs = outputs


def fake_vllm(events: list, script=None):
    """A stand-in `vllm` module: LLM records its construction, weight loads and generate calls."""

    class FakeModel:
        def load_weights(self, weights):
            events.append(("sync", {k: v.detach().clone() for k, v in weights}))

    class LLM:
        def __init__(self, **kwargs):
            events.append(("init", kwargs))
            runner = types.SimpleNamespace(model=FakeModel())
            worker = types.SimpleNamespace(model_runner=runner)
            self.llm_engine = types.SimpleNamespace(
                model_executor=types.SimpleNamespace(driver_worker=worker))

        def reset_prefix_cache(self):
            events.append(("reset", None))

        def generate(self, prompts, sampling_params, use_tqdm=False):
            events.append(("generate", [p.seed for p in sampling_params]))
            outs = []
            for p, params in zip(prompts, sampling_params):
                assert "prompt_token_ids" in p
                if script:
                    outs.append(Request([Completion(*c) for c in script]))
                else:  # n completions of 3 tokens that end with the first stop token
                    stop = params.stop_token_ids[0]
                    outs.append(Request([Completion([5, 6, stop], "stop", stop)] * params.n))
            return outs

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, __name__="vllm")


@pytest.fixture
def tok_model(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(tiny["model"]),
            AutoModelForCausalLM.from_pretrained(tiny["model"]).eval())


def make(tok, **kw):
    return VLLMSampler(tok, kw.pop("k", 2), 8, seed=kw.pop("seed", 3), stop_token_ids=[tok.eos_token_id],
                       model_name="m", dtype="float32", **kw)


def test_default_backend_is_transformers(tok_model):
    cfg = TrainConfig(model_name_or_path="m", dataset_name="d")
    assert cfg.generation_backend == "transformers"
    sampler = make_sampler(cfg, tok_model[0], [])
    assert type(sampler) is OnlineSampler


def test_missing_vllm_names_the_extra(monkeypatch, tok_model, base_config):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'hypo\[vllm\]'"):
        make(tok_model[0])
    from hypo.trainer import Trainer

    with pytest.raises(ConfigError, match=r"hypo\[vllm\]"):
        Trainer(base_config(generation_backend="vllm"))
    assert "generation_backend" in MISSING_EXTRA
    with pytest.raises(ConfigError, match="generation_backend"):
        TrainConfig(model_name_or_path="m", dataset_name="d", generation_backend="sglang").validate()


def test_weights_synced_before_each_round(monkeypatch, tok_model):
    tok, model = tok_model
    events = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(events))
    sampler = make(tok)
    prompts = [[1, 7, 8], [1, 9]]
    sampler.sample(model, prompts)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # an "optimizer step"
    samples = sampler.sample(model, prompts)
    kinds = [e[0] for e in events]
    assert kinds == ["init", "sync", "reset", "generate", "sync", "reset", "generate"]
    first, second = events[1][1], events[4][1]
    assert set(first) == set(model.state_dict())
    assert torch.equal(second["lm_head.weight"], model.lm_head.weight)
    assert torch.equal(second["lm_head.weight"], first["lm_head.weight"] + 1.0)
    init = events[0][1]
    assert init["model"] == "m" and init["enable_prefix_caching"] is False
    assert samples.k == 2 and len(samples.response_ids) == 4
    assert samples.prompt_ids == [prompts[0]] * 2 + [prompts[1]] * 2


def test_lora_weights_are_merged_out_of_place(tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny["model"])
    names = set(base.state_dict())
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            init_lora_weights=False)).eval()
    ids = torch.tensor([[1, 5, 9, 12]])
    before = model(input_ids=ids).logits
    weights = dict(policy_weights(model))
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(weights) == names == set(merged)
    diffs = [float((weights[k] - merged[k]).abs().max()) for k in names]
    assert max(diffs) < 1e-6
    assert any(float((weights[k] - base_w).abs().max()) > 1e-4
               for k, base_w in AutoModelForCausalLM.from_pretrained(tiny["model"]).state_dict().items())
    assert torch.equal(model(input_ids=ids).logits, before)  # the training model is untouched


def test_outputs_become_online_samples_with_clipping():
    eos, other = 2, 4
    outputs = [Request([Completion([5, eos, 9, 9], "stop", eos),  # stop token kept, tail dropped
                        Completion([5, 6, 7], "length")]),  # no stop token: clipped
               Request([Completion([8], "stop", other),  # stop token stripped by vLLM: re-added
                        Completion([other], "stop", other)])]
    s = to_online_samples([[1, 3], [1]], outputs, 2, [eos, other])
    assert s.response_ids == [[5, eos], [5, 6, 7], [8, other], [other]]
    assert s.clipped == [False, True, False, False]
    assert s.clipped_ratio == 0.25 and s.k == 2
    assert s.prompt_ids == [[1, 3], [1, 3], [1], [1]]
    with pytest.raises(RuntimeError, match="completions"):
        to_online_samples([[1]], [Request([Completion([eos], "stop")])], 2, [eos])


def test_seeds_come_from_the_generator(monkeypatch, tok_model):
    tok, model = tok_model
    events = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(events))
    sampler = make(tok, seed=11)
    state = sampler.state_dict()
    prompts = [[1, 2], [1, 3], [1, 4]]
    sampler.sample(model, prompts)
    sampler.sample(model, prompts)
    seeds = [e[1] for e in events if e[0] == "generate"]
    expected = torch.Generator().manual_seed(11)
    assert seeds[0] == torch.randint(2**31 - 1, (3,), generator=expected).tolist()
    assert seeds[1] == torch.randint(2**31 - 1, (3,), generator=expected).tolist()
    assert len(set(seeds[0])) == 3 and seeds[0] != seeds[1]  # prompts and rounds differ
    sampler.load_state_dict(state)  # resume: the same seeds again
    sampler.sample(model, prompts)
    assert [e[1] for e in events if e[0] == "generate"][-1] == seeds[0]
    assert sampler.unbiased and sampler.stop_token_ids == [tok.eos_token_id]


def test_trainer_samples_through_vllm(monkeypatch, base_config):
    events = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(events))
    from hypo.trainer import Trainer

    trainer = Trainer(base_config(algo="hypo", generation_backend="vllm", max_steps=2,
                                  per_device_train_batch_size=4, gradient_accumulation_steps=2))
    assert isinstance(trainer.sampler, VLLMSampler)
    result = trainer.train()
    assert result.global_step == 2
    kinds = [e[0] for e in events]
    assert kinds.count("sync") == kinds.count("generate") == 4  # one per micro-batch
    assert all(kinds[i - 2] == "sync" for i, k in enumerate(kinds) if k == "generate")
