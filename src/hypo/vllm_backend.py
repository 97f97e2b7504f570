"""vLLM backend for HyPO's online samples (GPU only; ``pip install 'hypo[vllm]'``).

``VLLMSampler`` has the interface of ``sampling.OnlineSampler``: ``sample(model, prompts) ->
OnlineSamples``, ``state_dict`` / ``load_state_dict``, ``stop_token_ids``, ``unbiased``. Before
every sampling round it copies the policy's CURRENT weights into an in-process ``vllm.LLM`` that
was started from the base model:

- LoRA policies: each adapted Linear's weight is sent as W + ΔW (``get_delta_weight``), computed
  out of place, so the training model is never merged/unmerged (no drift in bf16);
- full fine-tuning: the state dict as is.

The names are the base model's Hugging Face names, which vLLM's ``model.load_weights`` accepts.
Then the prefix cache is reset (cached KV of the old weights would be stale) and each prompt gets
its own sampling seed drawn from the sampler's ``torch.Generator`` (saved in checkpoints), so runs
are reproducible and prompts are sampled independently.

Status: the code path is unit-tested with ``vllm`` faked (tests/test_vllm_backend.py); it has NOT
been checked on a GPU by the project. Under FSDP / ZeRO-3 the weights would need gathering first
(see docs/scale-out.md): not supported yet.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from .config import ConfigError
from .sampling import OnlineSampler, OnlineSamples

MISSING_EXTRA = ("generation_backend='vllm' needs vLLM, which is not installed. Install the extra "
                 "on a GPU machine: pip install 'hypo[vllm]' — or set generation_backend: "
                 "transformers (the default).")


def make_sampler(cfg, tokenizer, stop_ids: list[int], seed: int | None = None):
    """The online sampler that cfg.generation_backend names (transformers by default).
    seed: the sampler's own generator seed (default cfg.seed + 1; each process passes its own)."""
    seed = cfg.seed + 1 if seed is None else seed
    if getattr(cfg, "generation_backend", "transformers") == "vllm":
        from .modeling import model_source

        return VLLMSampler(tokenizer, cfg.num_online_samples, cfg.max_new_tokens, seed,
                           cfg.temperature, cfg.top_k, cfg.top_p, stop_ids,
                           model_name=model_source(cfg), dtype=cfg.dtype,
                           gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                           max_model_len=cfg.prompt_limit() + cfg.max_new_tokens)
    return OnlineSampler(tokenizer, cfg.num_online_samples, cfg.max_new_tokens, seed,
                         cfg.temperature, cfg.top_k, cfg.top_p, stop_ids,
                         share_prefill=getattr(cfg, "prefix_sharing", True))


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return vllm


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the policy's current weights in the base model's naming.

    For a peft LoRA model every adapted layer yields W + ΔW of its active adapters (out of place);
    LoRA matrices themselves are skipped. For a plain model: its state dict.
    """
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency; be lenient anyway
        PeftModel = LoraLayer = ()  # noqa: N806
    if not isinstance(model, PeftModel):
        yield from model.state_dict().items()
        return
    deltas = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and hasattr(module, "get_delta_weight"):
                active = [a for a in module.active_adapters if a in module.lora_A]
                if active and not getattr(module, "merged", False):
                    deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in active)
        for name, tensor in model.state_dict().items():
            if "lora_" in name or ".original_module." in name:
                continue
            if name in deltas:
                tensor = tensor + deltas[name].to(tensor.dtype)
            clean = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            yield clean.replace(".modules_to_save.default.", "."), tensor


def _load_weights(llm, weights) -> None:
    """model.load_weights on the in-process vLLM model (V1 engine without multiprocessing, or V0)."""
    executor = llm.llm_engine.model_executor
    worker = executor.driver_worker
    runner = getattr(getattr(worker, "worker", worker), "model_runner", None)
    if runner is None:
        raise RuntimeError("could not reach the vLLM model to sync weights (this vLLM version keeps "
                           "it in another process). Set VLLM_ENABLE_V1_MULTIPROCESSING=0.")
    runner.model.load_weights(weights)


def to_online_samples(prompts: list[list[int]], outputs, k: int, stop_ids: list[int]) -> OnlineSamples:
    """Convert vLLM RequestOutputs (one per prompt, k completions each) into OnlineSamples.

    As with transformers: a response ends at (and includes) its first stop token; one without any
    is clipped (it hit max_tokens). vLLM versions that drop a stop token from ``token_ids`` are
    handled through ``finish_reason == 'stop'`` and ``stop_reason``.
    """
    responses, clipped = [], []
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    for out in outputs:
        if len(out.outputs) != k:
            raise RuntimeError(f"vLLM returned {len(out.outputs)} completions, expected {k}")
        for comp in out.outputs:
            tokens = list(comp.token_ids)
            cut = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
            if cut is not None:
                responses.append(tokens[: cut + 1])
                clipped.append(False)
            elif comp.finish_reason == "stop":
                stop = comp.stop_reason if isinstance(comp.stop_reason, int) else stop_ids[0]
                responses.append(tokens + [stop])
                clipped.append(False)
            else:
                responses.append(tokens)
                clipped.append(True)
    repeated = [p for p in prompts for _ in range(k)]
    return OnlineSamples(repeated, responses, clipped, k)


class VLLMSampler(OnlineSampler):
    """OnlineSampler drop-in that generates with vLLM after syncing the policy's weights."""

    def __init__(self, tokenizer, k: int, max_new_tokens: int, seed: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, stop_token_ids: list[int] | None = None, *,
                 model_name: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None):
        self.vllm = import_vllm()  # fail at construction, naming the extra
        super().__init__(tokenizer, k, max_new_tokens, seed, temperature, top_k, top_p, stop_token_ids)
        self.model_name, self.dtype = model_name, dtype
        self.gpu_memory_utilization, self.max_model_len = gpu_memory_utilization, max_model_len
        self.llm = None
        self.syncs = 0

    def _engine(self):
        if self.llm is None:
            # Keep the engine in this process so weights can be loaded into it directly.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            self.llm = self.vllm.LLM(
                model=self.model_name, tokenizer=getattr(self.tokenizer, "name_or_path", None) or None,
                dtype="auto" if self.dtype == "auto" else self.dtype,
                gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                enable_prefix_caching=False)
        return self.llm

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        llm = self._engine()
        _load_weights(llm, policy_weights(model))
        if hasattr(llm, "reset_prefix_cache"):
            llm.reset_prefix_cache()
        self.syncs += 1

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: list[list[int]]) -> OnlineSamples:
        """Sync the policy's current weights into vLLM, then draw k samples per prompt."""
        self.sync_weights(model)
        seeds = torch.randint(2**31 - 1, (len(prompts),), generator=self.generator).tolist()
        params = [self.vllm.SamplingParams(
            n=self.k, temperature=self.temperature, top_k=self.top_k if self.top_k > 0 else -1,
            top_p=self.top_p, max_tokens=self.max_new_tokens, seed=int(seed),
            stop_token_ids=list(self.stop_token_ids), ignore_eos=False, detokenize=False)
            for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts],
                                    sampling_params=params, use_tqdm=False)
        return to_online_samples(prompts, outputs, self.k, self.stop_token_ids)
