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


def tokenizer_kwargs(cfg: TrainConfig) -> dict:
    """from_pretrained options of the run's tokenizer: the model's revision applies only when the
    tokenizer comes from the model's own repository."""
    revision = None if cfg.tokenizer_name_or_path else cfg.model_revision
    return {"revision": revision, "trust_remote_code": cfg.trust_remote_code}


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """AutoTokenizer with a pad token (eos when the tokenizer has none)."""
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code, **({"revision": revision} if revision else {})}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        raise ConfigError(f"could not load the tokenizer {name!r}: {err}. Pass a local folder or a "
                          "hub id that is reachable (tokenizer_name_or_path).") from None
    return with_pad_token(tokenizer, repr(name))


def with_pad_token(tokenizer, name: str = "processing_class"):
    """The tokenizer, given the eos token as its pad token when it has none."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer {name} has neither a pad nor an eos token; add one.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, dtype: str = "float32", revision: str | None = None,
                   trust_remote_code: bool = False, attn_implementation: str | None = None):
    """AutoModelForCausalLM from a hub id or folder, in eval mode (dropout off)."""
    from transformers import AutoModelForCausalLM

    kwargs = {} if dtype == "auto" else {"dtype": DTYPE[dtype]}
    kwargs["trust_remote_code"] = trust_remote_code
    kwargs.update({k: v for k, v in (("revision", revision),
                                      ("attn_implementation", attn_implementation)) if v})
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


def model_source(cfg: TrainConfig) -> str:
    """The folder or hub id to load the model from: the cached standard conversion when
    ``gguf_file`` is set (converted on first use), else ``model_name_or_path``."""
    from .gguf import model_folder

    return model_folder(cfg.model_name_or_path, cfg.gguf_file)


def build_policy(cfg: TrainConfig, need_reference: bool, model=None, ref_model=None,
                 peft_config=None) -> PolicyPair:
    """Load the model named in cfg, add LoRA if asked, and set up the reference.

    In-memory objects (``hypo.api``): ``model`` replaces loading (a PeftModel keeps its adapter);
    ``peft_config`` replaces cfg's LoRA settings; ``ref_model`` is the frozen reference, not copied.
    """
    if model is not None and _is_peft(model):
        return PolicyPair(model.eval(), None, is_peft=True)
    if model is None:
        model = load_causal_lm(model_source(cfg), cfg.dtype, cfg.model_revision,
                               cfg.trust_remote_code, cfg.attn_implementation)
    else:
        model = model.eval()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.use_peft or peft_config is not None:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
        lora = peft_config or LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                         lora_dropout=cfg.lora_dropout, target_modules=targets,
                                         task_type="CAUSAL_LM")
        model = get_peft_model(model, lora).eval()
        return PolicyPair(model, None, is_peft=True)
    if ref_model is not None:  # given by the caller: frozen where it is, never copied
        return PolicyPair(model, ref_model.eval().requires_grad_(False), is_peft=False)
    reference = None
    if need_reference:
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    return PolicyPair(model, reference, is_peft=False)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def lora_dropout_active(model: torch.nn.Module, active: bool = True):
    """Switch on LoRA's dropout (peft's ``lora_dropout`` modules) for a block, leaving every other
    module, the base model's dropout included, in eval mode. No-op without LoRA dropout."""
    drops = [m for name, m in model.named_modules()
             if ".lora_dropout." in f".{name}." and isinstance(m, torch.nn.Dropout)] if active else []
    before = [m.training for m in drops]
    for m in drops:
        m.train()
    try:
        yield
    finally:
        for m, mode in zip(drops, before):
            m.train(mode)


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


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap, content-based fingerprint of a model's weights (shape, sums and a few values per
    tensor), independent of where the weights were loaded from."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
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
