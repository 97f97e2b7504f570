"""Loading the policy and giving a no-grad view of the reference policy π_ref.

With LoRA the reference is the base model with the adapter disabled (no second copy of the
weights); with full fine-tuning it is a frozen copy, made only when something needs it live.
Dropout stays off in both (as TRL's ``disable_dropout``), so π = π_ref exactly at step 0.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import dataclass

import torch

from .config import ConfigError, TrainConfig
from .logprobs import SequenceBatch, sequence_logps

DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(name: str):
    """AutoTokenizer with a pad token (eos when the tokenizer has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        raise ConfigError(f"could not load the tokenizer {name!r}: {err}. Pass a local folder or a "
                          "hub id that is reachable (tokenizer_name_or_path).") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer {name!r} has neither a pad nor an eos token; add one.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, dtype: str = "float32"):
    """AutoModelForCausalLM from a hub id or folder, in eval mode (dropout off)."""
    from transformers import AutoModelForCausalLM

    kwargs = {} if dtype == "auto" else {"dtype": DTYPE[dtype]}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"could not load the model {name!r}: {err}. model_name_or_path must be a "
                          "causal LM folder or a reachable hub id.") from None
    return model.eval()


@dataclass
class PolicyPair:
    """The trainable policy and access to its frozen reference."""

    policy: torch.nn.Module
    reference: torch.nn.Module | None  # frozen copy (full fine-tuning) or None (LoRA / not needed)
    is_peft: bool

    @contextlib.contextmanager
    def reference_view(self, model: torch.nn.Module | None = None):
        """Yield a module computing π_ref: the adapter-disabled policy (LoRA) or the frozen copy."""
        if self.is_peft:
            model = model if model is not None else self.policy
            with model.disable_adapter():
                yield model
        elif self.reference is not None:
            yield self.reference
        else:
            raise RuntimeError("no reference model is held; build PolicyPair with need_reference=True")

    @torch.no_grad()
    def reference_logps(self, batch: SequenceBatch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(N,) response log-probs under π_ref, no gradient."""
        with self.reference_view(model) as ref:
            return sequence_logps(ref, batch)


def build_policy(cfg: TrainConfig, need_reference: bool) -> PolicyPair:
    """Load the model named in cfg, add LoRA if asked, and set up the reference."""
    model = load_causal_lm(cfg.model_name_or_path, cfg.dtype)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora).eval()
        return PolicyPair(model, None, is_peft=True)
    reference = None
    if need_reference:
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    return PolicyPair(model, reference, is_peft=False)


@contextlib.contextmanager
def gathered_for_generation(accelerator, model: torch.nn.Module):
    """Yield the plain module with its FULL weights present, for `generate` and no-grad forwards.

    DDP, ZeRO-1/2 and single devices hold full weights already: the unwrapped module. ZeRO-3
    gathers every parameter once for the whole block (``deepspeed.zero.GatheredParameters``), so
    decoding is not a collective per token (processes finishing at different lengths would hang).
    FSDP summons the full parameters (``summon_full_params``, no write-back). Memory: the full model
    on every device while the block runs. The sharded branches are checked with fakes only (no GPU).
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if kind == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield accelerator.unwrap_model(model)
    elif kind == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False, recurse=True):
            yield accelerator.unwrap_model(model)
    else:
        yield accelerator.unwrap_model(model)


def _base_weight_name(name: str) -> str:
    """A PEFT-wrapped base weight's name as in the plain model ('base_model.model.' prefix and
    '.base_layer' removed), so LoRA and full fine-tuning runs of one model share a fingerprint."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def weights_fingerprint(model: torch.nn.Module, base_only: bool = False) -> str:
    """A cheap, content-based fingerprint of a model's weights (shape, sums and a few values per
    tensor), independent of where the weights were loaded from.

    base_only: skip LoRA adapter weights (names containing 'lora_') and key base weights by their
    plain names: the fingerprint of π_ref, which does not depend on the adapter's random init.
    """
    state = model.state_dict()
    if base_only:
        state = {_base_weight_name(n): t for n, t in state.items() if "lora_" not in n}
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(state.items()):
            flat = tensor.detach().reshape(-1)
            if flat.is_floating_point():
                stats = torch.stack([flat.double().sum(), flat.double().square().sum()])
            else:
                stats = flat.double().sum().reshape(1)
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
            h.update(stats.cpu().numpy().tobytes())
            h.update(flat[:16].double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """Vocabulary, special tokens and chat template of a tokenizer."""
    h = hashlib.sha256()
    h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()[:16]


# Config entries that do not change a forward's values (or are keyed separately: dtype).
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
                        "_attn_implementation_autoset", "_commit_hash")


def model_config_fingerprint(model: torch.nn.Module) -> str:
    """The model config (e.g. rope_theta, rms_norm_eps) and attention implementation: what,
    besides the weights, decides the reference log-probs. Paths and versions are left out."""
    from .data import fingerprint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    for key in VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return fingerprint({"config": config, "attn": getattr(base.config, "_attn_implementation", None)})
