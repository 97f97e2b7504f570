"""Loading the policy and giving a no-grad view of the reference policy π_ref.

With LoRA the reference is the base model with the adapter disabled (no second copy of the
weights); with full fine-tuning it is a frozen copy, made only when something needs it live.
The policy trains in training mode (activation checkpointing only runs there) with every dropout
disabled explicitly (as TRL's ``disable_dropout``), so sampling, the loss and the reference all
see the same deterministic network and π = π_ref exactly at step 0.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

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
                   trust_remote_code: bool = False, attn_implementation: str | None = None,
                   extra: dict | None = None):
    """AutoModelForCausalLM from a hub id or folder, in eval mode (dropout off). ``extra``: more
    from_pretrained options (model_init_kwargs)."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(extra or {})
    kwargs.update({} if dtype == "auto" else {"dtype": DTYPE[dtype]})
    kwargs["trust_remote_code"] = trust_remote_code
    kwargs.update({k: v for k, v in (("revision", revision),
                                      ("attn_implementation", attn_implementation)) if v})
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as err:  # noqa: BLE001
        if "custom code" in str(err) and not trust_remote_code:
            raise ConfigError(f"the model {name!r} ships custom code, which runs only with "
                              "trust_remote_code set to True (--trust_remote_code): pass it if you trust "
                              "that code.") from None
        raise ConfigError(f"could not load the model {name!r}: {err}. model_name_or_path must be a "
                          "causal LM folder or a reachable hub id.") from None
    return model.eval()


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout of ``model`` to 0, in place (TRL's ``disable_dropout_in_model``, extended).

    ``nn.Dropout`` modules get p = 0. Attention implementations read a plain float instead (e.g.
    Llama's ``self.attention_dropout``, copied from the config at construction), so numeric module
    attributes and config fields named ``*dropout*`` / ``*pdrop*`` are zeroed as well.
    """
    def zero(obj) -> None:
        for name, value in list(vars(obj).items()):
            if (("dropout" in name or "pdrop" in name) and isinstance(value, (int, float))
                    and not isinstance(value, bool)):
                setattr(obj, name, 0.0)

    for name, module in model.named_modules():
        if _is_lora_dropout(name, module):  # switched on and off by lora_dropout_active
            continue
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        zero(module)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "__dict__"):
            zero(config)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module, kwargs: dict | None = None) -> None:
    """Activation checkpointing of every decoder layer (default non-reentrant: no input-grad hook
    needed under LoRA). transformers checkpoints only in training mode with gradients on."""
    kwargs = dict(kwargs) if kwargs else {"use_reentrant": False}
    if kwargs.get("use_reentrant") and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # reentrant checkpoints need an input with grad
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run a block with every module in eval mode, then restore each module's own flag.

    For generation: with dropout disabled the outputs are the same as in training mode, and eval
    mode keeps transformers from turning the KV cache off under activation checkpointing.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX); best effort (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_warnings(cfg: TrainConfig, device: torch.device) -> list[str]:
    """Settings that train badly or very slowly, each with its fix (empty when all is well)."""
    out = []
    if cfg.dtype in ("bfloat16", "float16") and not cfg.use_peft:
        out.append(f"full fine-tuning with dtype {cfg.dtype} keeps {cfg.dtype} weights under AdamW: "
                   "most small updates round away and the model barely trains. Use --bf16 with "
                   "--dtype float32 (float32 master weights, bf16 autocast) instead.")
    if cfg.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        out.append("--bf16 on a CPU without native bf16 kernels (no AVX512-BF16/AMX): bf16 matmuls "
                   "run up to hundreds of times slower than float32. Drop --bf16 on this machine.")
    return out


@contextlib.contextmanager
def quiet_peft():
    """peft (0.21) calls `is_gradient_checkpointing`, deprecated in transformers 5: not hypo's call,
    and nothing a user can act on, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


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
    def reference_logps(self, batch: SequenceBatch, model: torch.nn.Module | None = None,
                        target_only_head: bool = False) -> torch.Tensor:
        """(N,) response log-probs under π_ref, no gradient (the caller's autocast applies)."""
        with self.reference_view(model) as ref:
            return sequence_logps(ref, batch, target_only_head)


def model_source(cfg: TrainConfig) -> str:
    """The folder or hub id to load the model from: the cached standard conversion when
    ``gguf_file`` is set (converted on first use), else ``model_name_or_path``."""
    from .gguf import model_folder

    return model_folder(cfg.model_name_or_path, cfg.gguf_file)


def build_policy(cfg: TrainConfig, need_reference: bool, model=None, ref_model=None,
                 peft_config=None) -> PolicyPair:
    """Load the model named in cfg, add LoRA if asked, and set up the reference.

    The policy is returned in training mode with its dropout disabled (LoRA's own dropout stays
    off too, except inside ``lora_dropout_active``); the reference (frozen copy) in eval mode.
    In-memory objects (``hypo.api``): ``model`` replaces loading (a PeftModel keeps its adapter);
    ``peft_config`` replaces cfg's LoRA settings; ``ref_model`` is the frozen reference, not copied.
    Warnings: see ``precision_warnings``.
    """
    if model is not None and _is_peft(model):
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model.get_base_model(), cfg.gradient_checkpointing_kwargs)
        return PolicyPair(_lora_dropout_off(disable_dropout(model).train()), None, is_peft=True)
    if model is None:
        model = load_causal_lm(model_source(cfg), cfg.dtype, cfg.model_revision,
                               cfg.trust_remote_code, cfg.attn_implementation, cfg.model_init_kwargs)
    model = disable_dropout(model).train()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.gradient_checkpointing_kwargs)
    if cfg.use_peft or peft_config is not None:
        from peft import LoraConfig, get_peft_model

        from .preflight import check_lora_targets

        targets = cfg.lora_target_modules
        if peft_config is None:  # peft's own error lists no candidates
            check_lora_targets(model, targets, cfg.model_name_or_path)
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
        lora = peft_config or LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                         lora_dropout=cfg.lora_dropout, target_modules=targets,
                                         task_type="CAUSAL_LM")
        with quiet_peft():
            model = _lora_dropout_off(get_peft_model(model, lora).train())
        return PolicyPair(model, None, is_peft=True)
    if ref_model is not None:  # given by the caller: frozen where it is, never copied
        return PolicyPair(model, ref_model.eval().requires_grad_(False), is_peft=False)
    reference = None
    if need_reference:
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    return PolicyPair(model, reference, is_peft=False)


def _is_lora_dropout(name: str, module: torch.nn.Module) -> bool:
    return ".lora_dropout." in f".{name}." and isinstance(module, torch.nn.Dropout)


def _lora_dropout_off(model: torch.nn.Module) -> torch.nn.Module:
    """Put LoRA's dropout modules in eval mode (identity) inside a model in training mode."""
    for name, module in model.named_modules():
        if _is_lora_dropout(name, module):
            module.eval()
    return model


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def has_lora_dropout(model: torch.nn.Module) -> bool:
    """Whether the model has peft LoRA dropout modules with p > 0."""
    return any(m.p > 0 for name, m in model.named_modules() if _is_lora_dropout(name, m))


@contextlib.contextmanager
def lora_dropout_active(model: torch.nn.Module, active: bool = True):
    """Switch on LoRA's dropout (peft's ``lora_dropout`` modules) for a block; everywhere else
    (sampling, the KL term, the reference, evaluation) they stay in eval mode, so every forward but
    the offline pairs' training forward is deterministic. No-op without LoRA dropout."""
    drops = [m for name, m in model.named_modules() if _is_lora_dropout(name, m)] if active else []
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

    DDP, ZeRO-1/2 and single devices hold full weights already: the unwrapped module. FSDP2
    (hypo's ``sharding``) and ZeRO-3 gather every parameter once for the whole block
    (``sharding.unsharded``, ``sharding.zero3_gathered``) and free the copies after, so
    decoding is not a collective per token (processes finishing at different lengths would hang).
    FSDP1 summons the full parameters (``summon_full_params``, no write-back). Memory: the full
    model on every device while the block runs. FSDP2 and ZeRO-3 run in tests (2 CPU processes,
    ``tests/sharded/``); the FSDP1 branch is checked with fakes only (it needs a GPU).
    """
    from accelerate.utils import DistributedType

    from . import sharding

    kind = accelerator.distributed_type
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if sharding.is_sharded(model):
        with sharding.unsharded(model):
            yield model
    elif kind == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3:
        with sharding.zero3_gathered(model):
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


def tensor_digests(model: torch.nn.Module) -> dict[str, str]:
    """name -> SHA-256 of the tensor's dtype, shape and every byte of its data, for every entry of
    the state dict. Tensors that share memory (tied embeddings) are read once."""
    out: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            where = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                     tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
            if where not in seen:
                h = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                data = tensor.detach().reshape(-1).cpu().contiguous()
                h.update(data.view(torch.uint8).numpy().data)  # the raw bytes, no conversion
                seen[where] = h.hexdigest()
            out[name] = seen[where]
    return out


def weights_fingerprint(model: torch.nn.Module, base_only: bool = False,
                        digests: dict[str, str] | None = None) -> str:
    """A content fingerprint of a model's weights that covers every byte of every tensor (a hash
    of their bytes in name order; sums or samples of values collide: a permutation keeps them),
    independent of where the weights were loaded from.

    base_only: skip LoRA adapter weights (names containing 'lora_') and key base weights by their
    plain names: the fingerprint of π_ref, which does not depend on the adapter's random init.
    digests: ``tensor_digests(model)`` when already computed (the weights are read once per load).
    """
    digests = tensor_digests(model) if digests is None else digests
    if base_only:
        digests = {_base_weight_name(n): d for n, d in digests.items() if "lora_" not in n}
    h = hashlib.sha256()
    for name, digest in sorted(digests.items()):
        h.update(f"{name}\t{digest}\n".encode())
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
