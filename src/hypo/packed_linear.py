"""Sampling's linear layers on oneDNN with prepacked weights (CPU, float32 only).

Decoding multiplies a few rows (prompts × k) by every weight matrix once per new token. At such row
counts the sgemm behind ``nn.Linear`` reads the weights slowly; oneDNN with the weight reordered once
into its blocked layout does the same product about 2× faster per layer and 3–4× faster for a 49k
LM head (SmolLM2-135M, 16 rows: decode step 111–133 ms → 67–72 ms, ``benchmarks/LOG.md``).
Weights do not change during a ``generate`` call, so ``packed_linears`` packs each layer once on
entry and restores the modules on exit; the model's own parameters are never written.

A peft LoRA layer is packed with its active adapters merged, W + Σ s·B·A, computed into the packed
copy: one product per token instead of three, and peft's adapter branch is skipped. A layer whose
adapters are disabled packs its base weight alone, as its own forward would compute.

Outputs equal ``nn.Linear``'s up to float32 summation order (tested to 1e-5 relative), so samples
are still exact draws from π as computed in float32 (``tests/test_sampling.py``). Anything else —
another dtype, autocast, an accelerator, sharded (ZeRO-3/FSDP) or non-Linear layers, DoRA and other
LoRA variants, a torch without these oneDNN ops — keeps its own forward.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def available() -> bool:
    """Whether this torch has oneDNN's prepacked-linear ops (a CPU build with mkldnn)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._reorder_linear_weight is not None
                    and torch.ops.mkldnn._linear_pointwise is not None)
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows: int, enabled: bool = True):
    """Within the block, every eligible linear layer of ``model`` runs on a packed copy of its weight.

    rows: the number of rows each decode step multiplies (oneDNN picks its blocking for it; other
    row counts, e.g. the prompt forward, still work). Yields the number of layers packed.
    """
    patched: list[nn.Module] = []
    try:
        if enabled and not torch.is_autocast_enabled("cpu") and available():
            with torch.no_grad():
                for module in model.modules():
                    weight_and_bias = _effective_weight(module)
                    if weight_and_bias is None:
                        continue
                    weight, bias = weight_and_bias
                    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
                    module.forward = _packed_forward(packed, bias)  # instance attribute: shadows the class's
                    patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return forward


def _plain_weight(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a plain float32 CPU ``nn.Linear`` holding its whole weight, else None."""
    if type(linear) is not nn.Linear:
        return None
    weight, bias = linear.weight, linear.bias
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2
            or weight.shape != (linear.out_features, linear.in_features)  # sharded: ZeRO-3, FSDP
            or (bias is not None and (bias.dtype != torch.float32 or bias.numel() != linear.out_features))):
        return None
    return weight.detach(), None if bias is None else bias.detach()


def _effective_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The (weight, bias) that ``module``'s forward applies, when it is a plain linear map we can pack."""
    plain = _plain_weight(module)
    if plain is not None:
        return plain
    if not _is_peft_lora_linear(module):
        return None
    base = _plain_weight(module.base_layer)
    if base is None:
        return None
    weight, bias = base
    if module.disable_adapters or module.merged:  # its forward is base_layer(x)
        return weight, bias
    if module.training:  # LoRA dropout would be live: not a fixed linear map
        return None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if any(name in module.lora_variant or module.lora_bias.get(name, False) for name in active):
        return None  # DoRA and other variants, LoRA biases: not a single weight matrix
    merged = weight
    for name in active:  # W + s·B·A in one pass per adapter (peft's get_delta_weight makes three)
        a, b = module.lora_A[name].weight, module.lora_B[name].weight
        if module.fan_in_fan_out or a.dtype != torch.float32 or b.dtype != torch.float32:
            merged = merged + module.get_delta_weight(name).to(merged.dtype)
        else:
            merged = torch.addmm(merged, b, a, alpha=module.scaling[name])
    return merged, bias


def _is_peft_lora_linear(module: nn.Module) -> bool:
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return False
    return type(module) is LoraLinear
