"""FSDP2 for hypo: torch's ``fully_shard`` applied per decoder layer and on the root, as torchtune's
``shard_model`` does, on CPUs (gloo) and GPUs (NCCL) alike.

Turned on by the launch config ``examples/accelerate/fsdp.yaml`` (``distributed_type: FSDP``,
``fsdp_version: 2``): ``accelerate launch`` exports ``ACCELERATE_USE_FSDP=true`` and
``FSDP_VERSION=2`` to every process (with ``torchrun``, export them yourself). hypo then shards the
model itself instead of handing it to ``accelerator.prepare``: accelerate only sets up the processes
(and ignores its FSDP plugin on CPU anyway), so the path the CPU tests run is the path GPUs run.

What each process holds: 1/N of every parameter, gradient and AdamW state (a DTensor shard). A
forward all-gathers one layer at a time (a collective: every process must run the same number of
forwards, which the trainer's exact bucket counts ensure); the backward reduce-scatters the
gradients. With full fine-tuning the frozen reference copy is sharded the same way. Sampling
gathers the whole policy once per round (``unsharded``) so that decoding is not a collective.
Checkpoints hold the full weights and the full optimizer state, gathered onto the main process.
"""

from __future__ import annotations

import contextlib
import os
import weakref

import torch

from .config import ConfigError

# reshard_after_forward given to each sharded module, restored after a gathered block
_RESHARD: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def _flag(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def requested() -> bool:
    """Whether the launch asks for FSDP version 2 (``ACCELERATE_USE_FSDP`` and ``FSDP_VERSION``)."""
    return _flag("ACCELERATE_USE_FSDP") and os.environ.get("FSDP_VERSION", "1").strip() == "2"


def check_launch(has_gpu: bool) -> None:
    """Refuse FSDP settings hypo would otherwise ignore silently (each error names the fix)."""
    if not _flag("ACCELERATE_USE_FSDP"):
        return
    version = os.environ.get("FSDP_VERSION", "1").strip()
    if version != "2" and not has_gpu:
        raise ConfigError(f"FSDP version {version} needs a GPU (torch's FSDP1 refuses CPUs) and "
                          "accelerate would silently run plain DDP instead: set fsdp_version: 2 in "
                          "the launch config (examples/accelerate/fsdp.yaml).")
    if version != "2":
        return
    if _flag("FSDP_OFFLOAD_PARAMS"):
        raise ConfigError("fsdp_offload_params is not supported by hypo's FSDP2 sharding: set it to "
                          "false in the launch config (or use DeepSpeed ZeRO-3 with offload).")
    if _flag("FSDP_ACTIVATION_CHECKPOINTING"):
        raise ConfigError("fsdp_activation_checkpointing is not applied by hypo's FSDP2 sharding: set "
                          "it to false in the launch config and pass --gradient_checkpointing instead.")


@contextlib.contextmanager
def hidden_from_accelerate():
    """Build the Accelerator inside this block: it sees no FSDP request, so it runs as plain
    multi-process data parallel (on GPUs it would otherwise shard the model a second way)."""
    saved = os.environ.get("ACCELERATE_USE_FSDP")
    os.environ["ACCELERATE_USE_FSDP"] = "false"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["ACCELERATE_USE_FSDP"]
        else:
            os.environ["ACCELERATE_USE_FSDP"] = saved


@contextlib.contextmanager
def whole_model_loading(accelerator):
    """Load models whole inside this block, under ZeRO-3 too.

    accelerate registers a ZeRO-3 config with transformers whatever its ``zero3_init_flag`` says,
    and ``from_pretrained`` then partitions every model it builds (``deepspeed.zero.Init``). hypo
    needs the plain module first (reference cache, checks, the frozen reference copy);
    ``accelerator.prepare`` partitions the policy afterwards."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    if plugin.zero3_init_flag:
        raise ConfigError("zero3_init_flag: true is not supported: hypo loads the model whole and lets "
                          "accelerate partition it (the reference log-probs are computed first). Set "
                          "zero3_init_flag: false in the launch config.")
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # accelerate's own registration, as it was


def skip_deepspeed_shm_build() -> None:
    """Keep DeepSpeed's CPU accelerator from compiling its shared-memory collectives when it sets
    up the processes (``deepspeed_shm_comm``: 33 s with g++ on this 2-core machine the first time,
    and a compiler needed): only its inference all-reduce uses them, training's collectives are
    gloo's. Marks the op incompatible in DeepSpeed's table of probed ops, a module-level dict
    that DeepSpeed keeps for such edits (``deepspeed/ops/__init__.py``); hypo pins deepspeed < 0.20."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def reshard_after_forward() -> bool:
    """The launch config's ``fsdp_reshard_after_forward`` (default true: ZeRO-3-like; false keeps
    each layer's gathered weights until the backward, ZeRO-2-like)."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    return value not in ("false", "0", "no", "shard_grad_op")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class the model lists in ``_no_split_modules``
    (transformers' own "never split this" list, which accelerate's TRANSFORMER_BASED_WRAP uses)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"FSDP2: {type(base).__name__} names no decoder layer class in "
                          "_no_split_modules, so hypo cannot shard it layer by layer; use DDP "
                          "(examples/accelerate/ddp.yaml) or DeepSpeed ZeRO-3 for this model.")
    return layers


def shard_model(model: torch.nn.Module, device: torch.device, reshard: bool = True) -> torch.nn.Module:
    """``fully_shard`` every decoder layer, then the root (embeddings, final norm, LM head and any
    LoRA weights outside the layers), over all processes; in place, returns ``model``.

    The root reshards after its forward too (torchtune does the same; FSDP2's own default keeps a
    root gathered until the backward, so after a no-grad forward — the reference, the KL term at
    λ = 0, evaluation — its weights would stay whole). Must run after anything that needs the plain
    module (reference cache, checks) and before the optimizer is built: sharding replaces the
    parameters by DTensor shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    model.to(device)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
        _RESHARD[layer] = reshard
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    _RESHARD[model] = reshard
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def unsharded(model: torch.nn.Module):
    """Gather every parameter of a sharded model once for the block, and free the copies after.

    For ``generate`` and no-grad forwards: without it each decoding step would all-gather every
    layer (a collective per token; processes whose samples end early would stop calling it and the
    others would hang). Inside, the modules hold plain full tensors and no forward reshards them;
    on exit each module is resharded (the full copies are freed) and gets back its own
    reshard_after_forward. Memory: the whole model on every process while the block runs."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.unshard()  # all-gather: every process enters together
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(_RESHARD.get(m, True), recurse=False)


@contextlib.contextmanager
def zero3_gathered(engine):
    """ZeRO-3's counterpart of ``unsharded``: every parameter gathered once for the block
    (``deepspeed.zero.GatheredParameters``, read-only) and its module hooks taken off meanwhile, as
    TRL's ``unwrap_model_for_generation`` does: otherwise the hook after each module's forward
    partitions some weights again (measured: the frozen ones under LoRA), and decoding goes back
    to one all-gather per layer and token, a collective that hangs when processes stop at
    different lengths. The hooks are registered again on exit."""
    import deepspeed

    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    with deepspeed.zero.GatheredParameters(list(engine.parameters()), modifier_rank=None):
        if offload is None:  # no ZeRO-3 hooks to take off
            yield
            return
        for param in offload.module.parameters():
            param.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            offload._register_deepspeed_module(offload.module)


def local_numel(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model) over the model's parameters:
    FSDP2 shards (DTensor), ZeRO-3 partitions (``ds_tensor``) or plain tensors."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3: p itself is an empty placeholder
            local, total = local + p.ds_tensor.numel(), total + p.ds_numel
        elif isinstance(p, DTensor):
            local, total = local + p.to_local().numel(), total + p.numel()
        else:
            local, total = local + p.numel(), total + p.numel()
    return local, total


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All weights as plain CPU tensors on the main process ({} elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer's whole state keyed by parameter names, on the main process ({} elsewhere);
    a collective. Loaded back by ``load_optimizer_state`` under any FSDP2 run of the same model."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return get_optimizer_state_dict(model, optimizer,
                                    options=_options(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Each process takes its shard of a full optimizer state (every process holds ``state``)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)
    set_optimizer_state_dict(model, optimizer, state, options=_options(full_state_dict=True))


def copy_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """param ← full, where param may be a shard (DTensor): each process keeps its own slice of
    ``full`` (which every process holds; no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        full = distribute_tensor(full.to(param.device, param.dtype), param.device_mesh,
                                 param.placements, src_data_rank=None)
    param.copy_(full)


def plain_copy(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An unsharded copy of a sharded model (FSDP2 or ZeRO-3) holding the gathered weights ``full``
    (main process): for what needs the plain module, e.g. merging a LoRA adapter. Built on the meta
    device and given ``full``'s tensors, so no second random initialisation is paid for."""
    from transformers import AutoModelForCausalLM

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(base.config, dtype=next(iter(full.values())).dtype)
        if hasattr(model, "peft_config"):
            from peft import get_peft_model

            copy = get_peft_model(copy, model.peft_config[model.active_adapter])
    copy.load_state_dict(full, assign=True, strict=True)
    for name, buffer in list(copy.named_buffers()):  # buffers not in a state dict (rotary tables)
        if buffer.is_meta:
            owner, attr = copy.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
            owner.register_buffer(attr, dict(model.named_buffers())[name].detach().cpu(), persistent=False)
    return copy
