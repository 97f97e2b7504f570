"""Per-sequence response log-probabilities from one forward over concatenated sequences.

Sequences are packed right-padded, ``[prompt tokens | response tokens | padding]``, so positions
and attention of real tokens do not depend on how much padding a batch carries. Only response
tokens count: ``logp(y|x) = Σ_t log π(y_t | x, y_<t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    """N sequences packed right-padded to length T.

    input_ids (N, T) long; attention_mask (N, T) long; response_mask (N, T) bool, True where the
    token at that position is a response token (its log-prob counts).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             self.response_mask.to(device))

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens (prompt + response)."""
        return int(self.attention_mask.sum())


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], pad_token_id: int,
                   pad_to: int | None = None) -> SequenceBatch:
    """Concatenate each prompt with its response and right-pad to the longest (or ``pad_to``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths + [pad_to or 0])
    n = len(prompts)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = list(p) + list(r)
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
        response_mask[i, len(p): len(seq)] = True
    return SequenceBatch(input_ids, attention_mask, response_mask)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] without materialising the full log-softmax.

    Args: logits (M, V), targets (M,). Returns (M,) float32.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


CHUNK_LOGITS = 2**22  # logits values (16 MB in float32) per chunk of the LM head


def head_token_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                     chunk_values: int = CHUNK_LOGITS) -> torch.Tensor:
    """log softmax(head(hidden))[target]: (M, H), (M,) -> (M,) float32.

    When the (M, V) logits are larger than one chunk, a plain ``nn.Linear`` head runs chunk by
    chunk of rows and its logits are recomputed in backward (``_ChunkedHeadLogps``): with a
    49k vocabulary they would be hundreds of MB, held for backward with their gradient. Other
    heads (LoRA-wrapped, scaled) and autocast keep the direct path."""
    rows = max(1, chunk_values // max(head.weight.shape[0], 1)) if hasattr(head, "weight") else 0
    if (type(head) is not torch.nn.Linear or hidden.shape[0] <= rows
            or torch.is_autocast_enabled(hidden.device.type)):
        return token_logps(head(hidden), targets)
    return _ChunkedHeadLogps.apply(hidden, head.weight, head.bias, targets, rows)


class _ChunkedHeadLogps(torch.autograd.Function):
    """logits_c = h_c·Wᵀ + b per chunk c of rows; out = logits[target] − logsumexp(logits).
    Backward recomputes logits_c: d out / d logits = onehot(target) − softmax(logits), so
    dh_c = g_c·W, dW += g_cᵀ·h_c, db += Σ g_c with g_c = grad_c·(onehot − softmax)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], rows):
            out[s: s + rows] = token_logps(torch.nn.functional.linear(hidden[s: s + rows], weight, bias),
                                           targets[s: s + rows])
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.empty_like(hidden) if need_h else None
        gw = torch.zeros_like(weight) if need_w else None
        gb = torch.zeros_like(bias) if (need_b and bias is not None) else None
        for s in range(0, hidden.shape[0], ctx.rows):
            h, t, g_out = hidden[s: s + ctx.rows], targets[s: s + ctx.rows], grad[s: s + ctx.rows]
            g = torch.nn.functional.linear(h, weight, bias).float().softmax(-1).mul_(-g_out[:, None])
            g[torch.arange(len(t), device=g.device), t] += g_out
            g = g.to(weight.dtype)
            if need_h:
                gh[s: s + ctx.rows] = g @ weight
            if need_w:
                gw.addmm_(g.t(), h)
            if gb is not None:
                gb += g.sum(0)
        return gh, gw, gb, None, None


def response_hidden_states(model: torch.nn.Module, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (M, H) at the positions that predict response tokens, targets (M,))."""
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 use_cache=False).last_hidden_state
    mask = batch.response_mask[:, 1:]
    return hidden[:, :-1][mask], batch.input_ids[:, 1:][mask]


def sequence_logps(model: torch.nn.Module, batch: SequenceBatch, target_only_head: bool = False) -> torch.Tensor:
    """Sum of response-token log-probs per sequence: (N,) float32, differentiable w.r.t. the model.

    The logit at position t predicts token t+1, so the target mask is ``response_mask[:, 1:]``;
    log-softmax is only evaluated at those positions. With ``target_only_head`` the LM head itself
    runs only there (decoder → hidden states at response positions → head): the (N, T, V) logits,
    their gradient and the head's work on prompt and padding positions disappear. Only valid for
    models whose logits are exactly ``head(decoder(x))`` (see ``supports_target_only_head``).
    """
    mask = batch.response_mask[:, 1:]
    if target_only_head:
        hidden, targets = response_hidden_states(model, batch)
        per_token = head_token_logps(model.get_output_embeddings(), hidden, targets)
    else:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        per_token = token_logps(out.logits[:, :-1][mask], batch.input_ids[:, 1:][mask])
    row = torch.nonzero(mask, as_tuple=True)[0]
    result = torch.zeros(batch.input_ids.shape[0], dtype=per_token.dtype, device=per_token.device)
    return result.index_add(0, row, per_token)


@torch.no_grad()
def supports_target_only_head(model: torch.nn.Module, batch: SequenceBatch, tol: float = 1e-4) -> bool:
    """Whether the decoder + head shortcut reproduces the model's own logits on `batch`.

    Checked on real data rather than by architecture name: models that scale or soft-cap their
    logits (Gemma 2, Cohere, Granite, ...) or wrap the forward (DDP: its forward must run for
    gradient synchronisation) fail the check or are excluded, and keep the full forward.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return False
    try:
        if model.get_decoder() is None or model.get_output_embeddings() is None:
            return False
        fast = sequence_logps(model, batch, target_only_head=True)
    except Exception:  # noqa: BLE001 - any architecture that does not fit keeps the full forward
        return False
    full = sequence_logps(model, batch)
    return bool(torch.allclose(fast, full, atol=tol, rtol=tol))


@torch.no_grad()
def batched_logps(fn, prompts: list[list[int]], responses: list[list[int]], pad_token_id: int,
                  batch_size: int, device, progress=None) -> torch.Tensor:
    """(N,) float32 CPU log-probs: ``fn(SequenceBatch) -> (n,)`` applied ``batch_size`` rows at a
    time (no gradient). progress: optional callable(rows done)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = pack_sequences(prompts[start: start + batch_size],
                               responses[start: start + batch_size], pad_token_id).to(device)
        out.append(fn(batch).float().cpu())
        if progress:
            progress(len(out[-1]))
    return torch.cat(out) if out else torch.empty(0)


def bucket_rows(lengths: list[int], max_buckets: int = 4, overhead_tokens: int = 256,
                exact: bool = False) -> list[list[int]]:
    """Split rows into ≤ max_buckets groups of similar length, minimising padded token slots.

    Rows are sorted by length and cut into contiguous groups by dynamic programming over
    cost = Σ_groups |group|·max_len(group) + overhead_tokens·#groups (the overhead stands for the
    fixed cost of one more forward). With ``exact``, always min(max_buckets, n) groups: under
    DDP / FSDP / ZeRO every process must run the same number of forwards (each is a collective),
    and n is the same on every process while the lengths are not. Returns lists of row indices,
    longest group first.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    inf = float("inf")
    # best[g][j]: min cost of splitting the first j sorted rows into g groups
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0
    for g in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):  # group = sorted rows i..j-1; its width is lengths[order[i]]
                cost = best[g - 1][i] + (j - i) * lengths[order[i]] + overhead_tokens
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    g = min(max_buckets, n) if exact else min(range(1, max_buckets + 1), key=lambda k: best[k][n])
    groups, j = [], n
    while g > 0:
        i = cut[g][j]
        groups.append(order[i:j])
        j, g = i, g - 1
    return groups[::-1]


def bucketed_logps(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]],
                   pad_token_id: int, device, max_buckets: int = 4, target_only_head: bool = False,
                   exact_buckets: bool = False) -> tuple[torch.Tensor, int]:
    """Response log-probs (N,) of all rows, run as a few length-bucketed forwards.

    Every bucket is padded only to its own longest row, so short rows (e.g. online samples next to
    long offline pairs) stop paying for the long ones. Results are returned in input order; one
    backward through them covers all buckets. Also returns the number of padded token slots.
    """
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    parts, index, slots = [], [], 0
    for rows in bucket_rows(lengths, max_buckets, exact=exact_buckets):
        batch = pack_sequences([prompts[i] for i in rows], [responses[i] for i in rows], pad_token_id)
        parts.append(sequence_logps(model, batch.to(device), target_only_head))
        index += rows
        slots += batch.input_ids.numel()
    logps = torch.cat(parts)
    inverse = torch.empty(len(index), dtype=torch.long)
    inverse[torch.tensor(index)] = torch.arange(len(index))
    return logps[inverse.to(logps.device)], slots


# ---- per-position quantities for the token / analytic KL estimators ------------------------------
@dataclass
class ResponsePositions:
    """Features at the M positions that predict response tokens, and where those tokens sit.

    features (M, H) decoder hidden states (``head`` applies the LM head) or (M, V) logits (``head``
    None); targets (M,) the response tokens; row (M,) their sequence; col (M,) their index in the
    response (0 = first response token).
    """

    features: torch.Tensor
    targets: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    head: torch.nn.Module | None
    token_logps: torch.Tensor | None = None  # (M,) log-probs of the targets, once computed

    def padded(self, values: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, W) tensor of per-position ``values`` (M,), zeros past each response, and its
        bool mask; W = the longest response. Differentiable w.r.t. ``values``."""
        width = int(self.col.max()) + 1 if self.col.numel() else 0
        out = torch.zeros(rows, width, dtype=values.dtype, device=values.device)
        mask = torch.zeros(rows, width, dtype=torch.bool, device=values.device)
        mask[self.row, self.col] = True
        return out.index_put((self.row, self.col), values), mask


def response_positions(model: torch.nn.Module, batch: SequenceBatch,
                       target_only_head: bool = False) -> ResponsePositions:
    """One forward; hidden states (with ``target_only_head``) or logits at response positions.

    Hidden states keep the (M, V) logits out of memory until ``position_logps_and_kls`` applies
    the head chunk by chunk; without the shortcut the model's own logits are taken as they are."""
    mask = batch.response_mask[:, 1:]
    if target_only_head:
        features, targets = response_hidden_states(model, batch)
        head = model.get_output_embeddings()
        head = getattr(head, "base_layer", head) if _adapter_disabled(model) else head
    else:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        features, targets, head = out.logits[:, :-1][mask], batch.input_ids[:, 1:][mask], None
    row, pos = torch.nonzero(mask, as_tuple=True)
    start = mask.int().argmax(dim=1)  # first position predicting a response token, per row
    return ResponsePositions(features, targets, row, pos - start[row], head)


def _adapter_disabled(model: torch.nn.Module) -> bool:
    """Inside peft's disable_adapter(): a LoRA-wrapped head must then act as its base layer,
    also when it is applied later, outside that context (the analytic estimator does so)."""
    return any(getattr(m, "disable_adapters", False) for m in model.modules() if hasattr(m, "base_layer"))


def position_logps_and_kls(policy: ResponsePositions, reference: ResponsePositions | None = None,
                           chunk_elements: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-position log π(y_t|s_t) (M,) and, given the reference's positions of the same batch,
    the full-vocabulary KL_t = Σ_v π(v|s_t)·(log π(v|s_t) − log π_ref(v|s_t)) (M,), float32.

    The LM heads run on chunks of about ``chunk_elements / V`` positions; under autograd each chunk
    is checkpointed, so only one chunk's (rows, V) logits exist at a time, in the backward too.
    """
    def chunk(features, ref_features, targets):
        logits = policy.head(features) if policy.head is not None else features
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if ref_features is None:
            return picked, None
        with torch.no_grad():
            ref_logits = reference.head(ref_features) if reference.head is not None else ref_features
            ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
        return picked, (logp.exp() * (logp - ref_logp)).sum(-1)

    feats = policy.features
    m = feats.shape[0]
    vocab = policy.head.out_features if policy.head is not None else feats.shape[-1]
    step = max(1, chunk_elements // max(1, vocab))
    logps, kls = [], []
    for i in range(0, m, step):
        args = (feats[i:i + step], None if reference is None else reference.features[i:i + step],
                policy.targets[i:i + step])
        if feats.requires_grad:
            from torch.utils.checkpoint import checkpoint

            picked, kl = checkpoint(chunk, *args, use_reentrant=False)
        else:
            picked, kl = chunk(*args)
        logps.append(picked)
        kls.append(kl)
    empty = feats.new_zeros(0, dtype=torch.float32)
    logp = torch.cat(logps) if logps else empty
    return logp, (None if reference is None else torch.cat(kls) if kls else empty)
