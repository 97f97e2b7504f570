"""Many copies of the demo's tiny Llama in one batched forward (`hypo demo --frontier`).

The frontier trains hundreds of runs of a 88k-parameter model; one at a time, each step is
Python and kernel-launch overhead. A ``Stack`` holds R independent copies with every weight
stacked on a leading run axis, so one ``torch.bmm`` runs a layer for all of them. It computes
what ``LlamaForCausalLM`` computes (RMSNorm, rotary attention, SiLU MLP; checked against it in
tests/demo/test_stack.py) for right-padded sequences that all start at position 0 — the demo's
prompts all have the same length, so no left padding or position shifts are needed.

Shapes: token ids (R, N, L) — R runs, N sequences per run, L positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class Shape:
    layers: int
    heads: int
    head_dim: int
    eps: float
    rope_theta: float


class Stack:
    """R copies of one Llama architecture; ``params`` maps a name to an (R, ...) tensor.

    Linear weights are stored transposed, (R, in, out), with q/k/v and gate/up fused, so a layer
    is x @ W for every run at once."""

    def __init__(self, params: dict[str, torch.Tensor], shape: Shape):
        self.params, self.shape = params, shape

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | Path, copies: int, trainable: bool = True) -> "Stack":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder)
        c = model.config
        shape = Shape(c.num_hidden_layers, c.num_attention_heads, c.hidden_size // c.num_attention_heads,
                      c.rms_norm_eps, float(getattr(c, "rope_theta", None)
                                           or c.rope_parameters["rope_theta"]))
        if c.num_key_value_heads != c.num_attention_heads or c.tie_word_embeddings:
            raise ValueError(f"{folder}: Stack supports untied Llama models without grouped-query "
                             "attention (the demo's π_ref); build the model with hypo.tiny.build_model.")
        sd = {k: v.detach().float() for k, v in model.state_dict().items()}
        one = {"embed": sd["model.embed_tokens.weight"], "norm": sd["model.norm.weight"],
               "head": sd["lm_head.weight"].T}
        for i in range(shape.layers):
            p = f"model.layers.{i}."
            a, m = p + "self_attn.", p + "mlp."
            one[f"{i}.ln1"] = sd[p + "input_layernorm.weight"]
            one[f"{i}.ln2"] = sd[p + "post_attention_layernorm.weight"]
            one[f"{i}.qkv"] = torch.cat([sd[a + f"{n}_proj.weight"] for n in "qkv"]).T
            one[f"{i}.o"] = sd[a + "o_proj.weight"].T
            one[f"{i}.gate_up"] = torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]]).T
            one[f"{i}.down"] = sd[m + "down_proj.weight"].T
        params = {k: v.unsqueeze(0).repeat(copies, *([1] * v.dim())).contiguous().requires_grad_(trainable)
                  for k, v in one.items()}
        return cls(params, shape)

    @property
    def runs(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def select(self, keep: torch.Tensor) -> "Stack":
        """The runs at indices `keep` (new leaf tensors, same trainability)."""
        return Stack({k: v.detach()[keep].clone().requires_grad_(v.requires_grad)
                      for k, v in self.params.items()}, self.shape)

    def repeat(self, copies: int) -> "Stack":
        """Each run repeated `copies` times in a row (a frozen model serving several runs)."""
        return Stack({k: v.detach().repeat_interleave(copies, 0) for k, v in self.params.items()},
                     self.shape)

    # ---- forward ----------------------------------------------------------------------------
    def _rope(self, start: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.shape.head_dim
        inv_freq = 1.0 / (self.shape.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64,
                                                                 device=device).float() / d))
        freqs = torch.arange(start, start + length, device=device).float()[:, None] * inv_freq[None]
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos(), emb.sin()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.shape.eps)
        return x * weight[:, None, :]

    def hidden(self, ids: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """Final-norm hidden states (R, N, L, H) of token ids (R, N, L). With ``cache`` (a list,
        empty on the first call), keys and values are kept there and ``ids`` continue the
        sequences of the previous calls (decoding)."""
        P, s = self.params, self.shape
        R, N, L = ids.shape
        runs = torch.arange(R, device=ids.device)[:, None]
        x = P["embed"][runs, ids.reshape(R, N * L)]  # (R, N·L, H)
        start = cache[0][0].shape[2] if cache else 0
        cos, sin = self._rope(start, L, ids.device)
        for i in range(s.layers):
            h = self._norm(x, P[f"{i}.ln1"])
            q, k, v = torch.bmm(h, P[f"{i}.qkv"]).view(R * N, L, 3, s.heads, s.head_dim).permute(2, 0, 3, 1, 4)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            if cache is not None:
                if len(cache) > i:
                    k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                    cache[i] = (k, v)
                else:
                    cache.append((k, v))
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and L > 1)
            x = x + torch.bmm(attn.transpose(1, 2).reshape(R, N * L, -1), P[f"{i}.o"])
            gate, up = torch.bmm(self._norm(x, P[f"{i}.ln2"]), P[f"{i}.gate_up"]).chunk(2, -1)
            x = x + torch.bmm(F.silu(gate) * up, P[f"{i}.down"])
        return self._norm(x, P["norm"]).view(R, N, L, -1)

    def logits(self, ids: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """(R, N, L, V) next-token logits."""
        R, N, L = ids.shape
        return torch.bmm(self.hidden(ids, cache).view(R, N * L, -1), self.params["head"]).view(R, N, L, -1)

    def grouped(self, prompts: torch.Tensor, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts computed once per group: prompts (R, G, P), responses (R, G, c, T) right-padded,
        c responses per prompt. Each response attends to its prompt and to itself (causally), at
        positions P… — the same values as the unshared forward of [prompt | response], up to
        rounding. Returns (hidden of each prompt's last token (R, G, H), response hiddens
        (R, G, c, T, H)), both after the final norm."""
        P_, s = self.params, self.shape
        R, G, P = prompts.shape
        c, T = responses.shape[2], responses.shape[3]
        n_p = G * P
        runs = torch.arange(R, device=prompts.device)[:, None]
        ids = torch.cat([prompts.reshape(R, n_p), responses.reshape(R, G * c * T)], 1)
        x = P_["embed"][runs, ids]  # (R, G·P + G·c·T, H)
        cos_p, sin_p = self._rope(0, P, prompts.device)
        cos_r, sin_r = self._rope(P, T, prompts.device)
        mask = torch.ones(T, P + T, dtype=torch.bool, device=prompts.device)
        mask[:, P:] = torch.ones(T, T, dtype=torch.bool, device=prompts.device).tril()
        for i in range(s.layers):
            qkv = torch.bmm(self._norm(x, P_[f"{i}.ln1"]), P_[f"{i}.qkv"])
            qp, kp, vp = qkv[:, :n_p].reshape(R * G, P, 3, s.heads, s.head_dim).permute(2, 0, 3, 1, 4)
            qr, kr, vr = qkv[:, n_p:].reshape(R * G * c, T, 3, s.heads, s.head_dim).permute(2, 0, 3, 1, 4)
            qp, kp = qp * cos_p + _rotate_half(qp) * sin_p, kp * cos_p + _rotate_half(kp) * sin_p
            qr, kr = qr * cos_r + _rotate_half(qr) * sin_r, kr * cos_r + _rotate_half(kr) * sin_r
            ap = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
            ar = F.scaled_dot_product_attention(
                qr, torch.cat([kp.repeat_interleave(c, 0), kr], 2),
                torch.cat([vp.repeat_interleave(c, 0), vr], 2), attn_mask=mask)
            attn = torch.cat([ap.transpose(1, 2).reshape(R, n_p, -1), ar.transpose(1, 2).reshape(R, G * c * T, -1)], 1)
            x = x + torch.bmm(attn, P_[f"{i}.o"])
            gate, up = torch.bmm(self._norm(x, P_[f"{i}.ln2"]), P_[f"{i}.gate_up"]).chunk(2, -1)
            x = x + torch.bmm(F.silu(gate) * up, P_[f"{i}.down"])
        x = self._norm(x, P_["norm"])
        return x[:, :n_p].view(R, G, P, -1)[:, :, -1], x[:, n_p:].view(R, G, c, T, -1)

    def grouped_logits(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(R, G, c, T, V): at [..., j, :] the logits that predict response token j."""
        last, hidden = self.grouped(prompts, responses)
        R, G, c, T, H = hidden.shape
        pred = torch.cat([last[:, :, None, None].expand(R, G, c, 1, H), hidden[:, :, :, :-1]], 3)
        return torch.bmm(pred.reshape(R, -1, H), self.params["head"]).view(R, G, c, T, -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


@dataclass
class Samples:
    """k responses per prompt from each run: ids (R, G, k, T) right-padded, lengths (R, G, k)
    counting the end-of-sequence token, and clipped (R, G, k): cut at the length limit."""

    ids: torch.Tensor
    lengths: torch.Tensor
    clipped: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return torch.arange(self.ids.shape[-1], device=self.ids.device) < self.lengths[..., None]


@torch.no_grad()
def sample(stack: Stack, prompts: torch.Tensor, k: int, max_new_tokens: int, eos: int, pad: int,
           generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> Samples:
    """Exact draws from each run's policy at temperature 1, untruncated, by inverse CDF (one
    uniform per token, as ``hypo.sampling``): prompts (R, G, P) → Samples. The uniforms come from
    `generator`, or from `uniforms` (G·k, max_new_tokens), the same for every run (common random
    numbers: runs, and one run at successive evaluations, are compared on the same draws)."""
    R, G, _ = prompts.shape
    cache: list = []
    logits = stack.logits(prompts, cache)[:, :, -1].repeat_interleave(k, 1)  # (R, G·k, V)
    for i, (key, value) in enumerate(cache):
        cache[i] = (key.repeat_interleave(k, 0), value.repeat_interleave(k, 0))
    done = torch.zeros(R, G * k, dtype=torch.bool, device=prompts.device)
    tokens = []
    for _ in range(max_new_tokens):
        u = (uniforms[:, len(tokens)].expand(R, G * k)[..., None].contiguous() if uniforms is not None
             else torch.rand(R, G * k, 1, generator=generator, dtype=torch.float64))
        cdf = logits.softmax(-1).cumsum(-1, dtype=torch.float64)
        tok = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        tokens.append(tok)
        done = done | (tok == eos)
        if bool(done.all()):
            break
        logits = stack.logits(tok[..., None], cache)[:, :, -1]
    ids = torch.stack(tokens, -1)
    lengths = torch.where(done, (ids == eos).int().argmax(-1) + 1, torch.full_like(done, ids.shape[-1], dtype=torch.int64))
    return Samples(ids.view(R, G, k, -1), lengths.view(R, G, k), (~done).view(R, G, k))


def response_logps(logits: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over response tokens of log π(y_t | x, y_<t): logits (..., T, V) from ``grouped_logits``,
    responses and mask (..., T). Returns (...)."""
    picked = logits.gather(-1, responses[..., None]).squeeze(-1) - logits.logsumexp(-1)
    return (picked * mask).sum(-1)


def clip_per_run(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip each run's gradient to norm `max_norm` over all its parameters, as
    ``torch.nn.utils.clip_grad_norm_`` does for one model; returns the norms before clipping (R,)."""
    params = [p for p in params if p.grad is not None]
    norms = torch.stack([p.grad.flatten(1).pow(2).sum(1) for p in params]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))
    return norms


class Trainable:
    """A Stack with its AdamW optimizer (the update is elementwise, so each run's slice moves as
    if it had an optimizer of its own); ``keep`` drops finished runs with their optimizer state."""

    def __init__(self, stack: Stack, learning_rate: float, extra: dict[str, torch.Tensor] | None = None):
        self.stack, self.lr = stack, learning_rate
        self.extra = extra or {}  # more trainable (R, ...) tensors, e.g. a reward head
        self.optimizer = torch.optim.AdamW(self.tensors, lr=learning_rate, weight_decay=0.0)

    @property
    def tensors(self) -> list[torch.Tensor]:
        return list(self.stack.params.values()) + list(self.extra.values())

    def step(self, loss: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        """One update from the sum over runs of their losses; returns the per-run gradient norms."""
        loss.backward()
        norms = clip_per_run(self.tensors, max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norms

    def keep(self, index: torch.Tensor) -> None:
        old = self.tensors
        self.stack = self.stack.select(index)
        self.extra = {k: v.detach()[index].clone().requires_grad_() for k, v in self.extra.items()}
        state = self.optimizer.state
        self.optimizer = torch.optim.AdamW(self.tensors, lr=self.lr, weight_decay=0.0)
        for before, after in zip(old, self.tensors):
            if before in state:
                self.optimizer.state[after] = {k: (v[index].clone() if v.dim() > 0 else v.clone())
                                               for k, v in state[before].items()}
