"""Shared-prefix forwards: each prompt computed once for all the responses that follow it.

A prompt group ``(x, [y_1, …, y_m])`` (a pair's chosen and rejected, HyPO's k samples, or both) is
packed as ONE row ``[x | y_1 | … | y_m | padding]`` under a block mask: the prompt is causal, each
response sees the whole prompt and its own earlier tokens only, and position ids restart after the
prompt for every response (Wang & Hegde, "Accelerating Direct Preference Optimization with Prefix
Sharing", arXiv 2410.20305, for pairs; here also for online samples). Each response's tokens are
then predicted from exactly the context they have in their own sequence ``[x | y_j]``, so its
log-prob is the unshared one up to float32 rounding (the attention sums run over masked rows of
another length). The first token of every response is predicted by the prompt's last position.

The mask is a dense 4D tensor that transformers passes through unchanged (boolean for SDPA,
additive for eager attention); a model whose forward does not honour it (other attention
implementations, positions it ignores) is detected on real data by ``supports_prefix_sharing`` and
keeps the unshared path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .logprobs import (ResponsePositions, bucket_rows, head_token_logps, pack_sequences,
                       sequence_logps, token_logps)

Group = tuple[list[int], list[list[int]]]  # (prompt ids, [response ids, ...])
MASK_IMPLEMENTATIONS = ("sdpa", "eager")  # attention implementations that take a dense 4D mask


@dataclass
class GroupBatch:
    """G prompt groups, one per row, right-padded to width T.

    input_ids (G, T) long; position_ids (G, T) long (prompt 0..P−1, each response P..P+L−1);
    segments (G, T) long: 0 prompt, j+1 response j of the row, −1 padding;
    predictors (M,) flat indices into (G·T) of the positions whose output predicts each response
    token; targets (M,) those tokens; response (M,) the response each belongs to (0..R−1, in
    group order); col (M,) the token's index within its response.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    predictors: torch.Tensor
    targets: torch.Tensor
    response: torch.Tensor
    col: torch.Tensor
    num_responses: int

    def to(self, device) -> "GroupBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return GroupBatch(**moved)

    def attention_mask(self, implementation: str | None, dtype: torch.dtype) -> torch.Tensor:
        """(G, 1, T, T): query t may see key s iff s ≤ t and s is in the prompt or in t's own
        response. A padding query sees the prompt and itself (its output is never used, but a row
        with nothing to see would give NaN, and NaN would reach the gradients through the
        attention's backward)."""
        seg = self.segments
        width = seg.shape[1]
        idx = torch.arange(width, device=seg.device)
        causal = idx[None, :] <= idx[:, None]  # (T query, T key)
        seg_q, seg_k = seg[:, :, None], seg[:, None, :]
        mask = causal[None] & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))
        mask |= torch.eye(width, dtype=torch.bool, device=seg.device)[None] & (seg_q < 0)
        mask = mask[:, None]
        if implementation == "eager":  # added to the attention scores
            return torch.zeros(mask.shape, dtype=dtype, device=seg.device).masked_fill_(
                ~mask, torch.finfo(dtype).min)
        return mask


def pack_groups(groups: list[Group], pad_token_id: int, pad_to: int | None = None) -> GroupBatch:
    """One row per group: ``[prompt | responses… | padding]`` (see ``GroupBatch``)."""
    widths = [len(p) + sum(map(len, rs)) for p, rs in groups]
    width = max(widths + [pad_to or 0])
    g = len(groups)
    input_ids = torch.full((g, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((g, width), dtype=torch.long)
    segments = torch.full((g, width), -1, dtype=torch.long)
    predictors, targets, response, col = [], [], [], []
    r = 0
    for row, (prompt, responses) in enumerate(groups):
        if not prompt:
            raise ValueError("prefix sharing needs a non-empty prompt: its last token predicts "
                             "each response's first token")
        p = len(prompt)
        input_ids[row, :p] = torch.tensor(prompt, dtype=torch.long)
        position_ids[row, :p] = torch.arange(p)
        segments[row, :p] = 0
        start = p
        for j, resp in enumerate(responses):
            n = len(resp)
            if n:
                input_ids[row, start:start + n] = torch.tensor(resp, dtype=torch.long)
                position_ids[row, start:start + n] = torch.arange(p, p + n)
                segments[row, start:start + n] = j + 1
                # token 0 is predicted by the prompt's last position, token t by response token t−1
                pred = [p - 1] + list(range(start, start + n - 1))
                predictors += [row * width + q for q in pred]
                targets += resp
                response += [r] * n
                col += range(n)
            start += n
            r += 1
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return GroupBatch(input_ids, position_ids, segments, as_long(predictors), as_long(targets),
                      as_long(response), as_long(col), r)


def _decoder_or_model_outputs(model: torch.nn.Module, batch: GroupBatch, target_only_head: bool):
    """(features at the predicting positions: hidden (M, H) or logits (M, V), head or None)."""
    implementation = _attn_implementation(model)
    dtype = next(model.parameters()).dtype
    kwargs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                  attention_mask=batch.attention_mask(implementation, dtype))
    if target_only_head:
        hidden = model.get_decoder()(**kwargs).last_hidden_state
        return hidden.flatten(0, 1)[batch.predictors], model.get_output_embeddings()
    logits = model(**kwargs).logits
    return logits.flatten(0, 1)[batch.predictors], None


def _attn_implementation(model: torch.nn.Module) -> str | None:
    """The attention implementation of a model, seen through DDP and peft wrappers."""
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return getattr(getattr(base, "config", None), "_attn_implementation", None)


def group_logps(model: torch.nn.Module, batch: GroupBatch, target_only_head: bool = False) -> torch.Tensor:
    """Sum of response-token log-probs per response: (R,) float32, differentiable."""
    features, head = _decoder_or_model_outputs(model, batch, target_only_head)
    per_token = head_token_logps(head, features, batch.targets) if head is not None else token_logps(
        features, batch.targets)
    out = torch.zeros(batch.num_responses, dtype=per_token.dtype, device=per_token.device)
    return out.index_add(0, batch.response, per_token)


def group_positions(model: torch.nn.Module, batch: GroupBatch,
                    target_only_head: bool = False) -> ResponsePositions:
    """Per-position features of every response (for the token / analytic KL estimators); row =
    the response's index (0..R−1)."""
    from .logprobs import _adapter_disabled

    features, head = _decoder_or_model_outputs(model, batch, target_only_head)
    if head is not None and _adapter_disabled(model):
        head = getattr(head, "base_layer", head)
    return ResponsePositions(features, batch.targets, batch.response, batch.col, head)


def _bucketed(run, groups: list[Group], pad_token_id: int, device, max_buckets: int, exact: bool):
    """Apply ``run(GroupBatch) -> per-response result`` to a few length-bucketed batches of groups;
    returns [(result, global response indices of the bucket)] and the padded token slots."""
    widths = [len(p) + sum(map(len, rs)) for p, rs in groups]
    first = [0]
    for _, rs in groups:
        first.append(first[-1] + len(rs))
    parts, slots = [], 0
    for rows in bucket_rows(widths, max_buckets, exact=exact):
        batch = pack_groups([groups[i] for i in rows], pad_token_id)
        index = [r for i in rows for r in range(first[i], first[i + 1])]
        parts.append((run(batch.to(device)), index))
        slots += batch.input_ids.numel()
    return parts, slots


def response_logps(model: torch.nn.Module, groups: list[Group], pad_token_id: int, device,
                   max_buckets: int = 4, target_only_head: bool = False, exact_buckets: bool = False,
                   shared: bool = True) -> torch.Tensor:
    """(R,) log-probs of every group's responses, in group order (responses of group 0 first).

    shared: one row per group under the block mask (``pack_groups``); otherwise one
    ``[prompt | response]`` row per response (the unshared forward). Both run as a few
    length-bucketed forwards; one backward through the result covers them all.
    """
    if not shared:
        from .logprobs import bucketed_logps

        prompts = [p for p, rs in groups for _ in rs]
        responses = [r for _, rs in groups for r in rs]
        logps, _ = bucketed_logps(model, prompts, responses, pad_token_id, device, max_buckets,
                                  target_only_head, exact_buckets)
        return logps
    parts, _ = _bucketed(lambda b: group_logps(model, b, target_only_head), groups, pad_token_id,
                         device, max_buckets, exact_buckets)
    return _in_order([p for p, _ in parts], [i for _, i in parts])


def response_positions_of(model: torch.nn.Module, groups: list[Group], pad_token_id: int, device,
                          target_only_head: bool = False, shared: bool = True) -> ResponsePositions:
    """Per-position features of every group's responses (one forward), row = response index in
    group order."""
    if not shared:
        from .logprobs import response_positions

        prompts = [p for p, rs in groups for _ in rs]
        responses = [r for _, rs in groups for r in rs]
        return response_positions(model, pack_sequences(prompts, responses, pad_token_id).to(device),
                                  target_only_head)
    return group_positions(model, pack_groups(groups, pad_token_id).to(device), target_only_head)


def _in_order(values: list[torch.Tensor], index: list[list[int]]) -> torch.Tensor:
    flat = [i for part in index for i in part]
    out = torch.cat(values)
    inverse = torch.empty(len(flat), dtype=torch.long)
    inverse[torch.tensor(flat, dtype=torch.long)] = torch.arange(len(flat))
    return out[inverse.to(out.device)]


@torch.no_grad()
def supports_prefix_sharing(model: torch.nn.Module, groups: list[Group], pad_token_id: int,
                            tol: float = 1e-4) -> tuple[bool, str]:
    """Whether shared-prefix rows reproduce this model's unshared log-probs on ``groups`` (real
    data), and if not, why. Checked on values rather than by architecture name: attention
    implementations without a dense mask, models that ignore position ids or add their own
    position biases fail here and keep the unshared path."""
    implementation = _attn_implementation(model)
    if implementation not in MASK_IMPLEMENTATIONS:
        return False, f"attention implementation {implementation!r} takes no dense mask (sdpa and eager do)"
    device = next(model.parameters()).device
    try:
        shared = group_logps(model, pack_groups(groups, pad_token_id).to(device))
    except Exception as err:  # noqa: BLE001 - an architecture that rejects the mask keeps the plain path
        return False, f"its forward rejects a 4D attention mask ({type(err).__name__}: {err})"
    prompts = [p for p, rs in groups for _ in rs]
    responses = [r for _, rs in groups for r in rs]
    plain = sequence_logps(model, pack_sequences(prompts, responses, pad_token_id).to(device))
    if not torch.allclose(shared.float(), plain.float(), atol=tol, rtol=tol):
        worst = float((shared.float() - plain.float()).abs().max())
        return False, f"shared-prefix log-probs differ from the plain forward's by {worst:.3g}"
    return True, ""


@torch.no_grad()
def batched_response_logps(model: torch.nn.Module, groups: list[Group], pad_token_id: int, device,
                           groups_per_batch: int, shared: bool) -> torch.Tensor:
    """(R,) float32 CPU log-probs of every group's responses, ``groups_per_batch`` groups per
    forward, no gradient (evaluation: the policy and the reference run the same batches, so a
    model against itself gives exactly 0 KL)."""
    out = [response_logps(model, groups[i: i + groups_per_batch], pad_token_id, device, 1,
                          shared=shared).float().cpu()
           for i in range(0, len(groups), groups_per_batch)]
    return torch.cat(out) if out else torch.empty(0)
