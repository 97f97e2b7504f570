"""Arithmetic of a DPO / HyPO step, counted from the model shape and the step's token counts.

Counting rules (dense decoder, fp32 or bf16 alike; FLOPs = 2 × multiply-adds):

* ``N`` = parameters that take part in matrix multiplies per token: the attention projections
  (q, k, v, o), the MLP (gate, up, down) of every layer, and the LM head (d × V). The input
  embedding is a lookup and the RMSNorm weights are elementwise, so neither counts.
* Forward over one sequence of ``n`` real (non-padding) tokens:
  ``F(n) = 2·N·n + 4·L·h·d_h·n(n+1)/2`` — the second term is causal attention (QKᵀ and AV, each
  2·d_h FLOPs per head per query-key pair; ``L`` layers, ``h`` heads of size ``d_h``).
* Forward + backward (trained tokens): ``3·F(n)`` (backward = 2 × forward), i.e. ≈ 6·N·n.
* No-grad forward (reference over online samples): ``F(n)`` ≈ 2·N·n.
* Generation with a KV cache, prompt ``p`` then ``m`` new tokens: the prefill is ``F(p)`` without
  the LM head on all but the last prompt position; new token ``t`` (1-based) costs
  ``2·N + 4·L·h·d_h·(p + t)``.

Only real tokens count: padding, full-rectangle attention over padded batches and rows that keep
decoding after their stop token are *waste*, not work, so utilisation figures built on these
counts show how much of the machine the useful arithmetic gets. Optimizer updates, norms,
softmax and log-softmax are elementwise (memory-bound) and not counted.

DPO step (reference log-probs of the pairs cached):  Σ_pairs 3·[F(chosen seq) + F(rejected seq)].
HyPO step: the DPO step + generation of k samples per prompt + 3·F(sample seq) (policy, trained) +
F(sample seq) (reference, no grad) for each sample.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelShape:
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_params: int  # all parameters (embedding included), for display

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        d, layers = config["hidden_size"], config["num_hidden_layers"]
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads") or heads
        hd = config.get("head_dim") or d // heads
        ff, vocab = config["intermediate_size"], config["vocab_size"]
        tied = config.get("tie_word_embeddings", False)
        per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * ff + 2 * d
        total = layers * per_layer + vocab * d * (1 if tied else 2) + d
        return cls(layers, d, ff, vocab, heads, kv, hd, total)

    @property
    def matmul_params(self) -> int:
        """N: parameters used in matrix multiplies per token (layers + LM head)."""
        d, hd = self.hidden_size, self.head_dim
        per_layer = (d * self.num_heads * hd + 2 * d * self.num_kv_heads * hd + self.num_heads * hd * d
                     + 3 * d * self.intermediate_size)
        return self.num_layers * per_layer + d * self.vocab_size

    @property
    def _attn(self) -> int:  # FLOPs per query-key pair, all layers and heads (QKᵀ + AV)
        return 4 * self.num_layers * self.num_heads * self.head_dim

    def forward(self, n: int) -> float:
        """F(n): forward FLOPs over one sequence of n real tokens (causal)."""
        return 2.0 * self.matmul_params * n + self._attn * n * (n + 1) / 2

    def train(self, n: int) -> float:
        """Forward + backward over one trained sequence: 3·F(n)."""
        return 3.0 * self.forward(n)

    def generate(self, prompt_len: int, new_tokens: int) -> float:
        """KV-cached generation of new_tokens after a prompt of prompt_len tokens."""
        head = 2.0 * self.hidden_size * self.vocab_size
        prefill = self.forward(prompt_len) - head * max(prompt_len - 1, 0)
        decode = sum(2.0 * self.matmul_params + self._attn * (prompt_len + t)
                     for t in range(1, int(new_tokens) + 1))
        return prefill + decode


def dpo_step_flops(shape: ModelShape, seq_lens: list[int]) -> float:
    """Forward + backward over every [prompt|chosen] and [prompt|rejected] sequence of the step."""
    return sum(shape.train(n) for n in seq_lens)


def hypo_step_flops(shape: ModelShape, pair_seq_lens: list[int], prompt_lens: list[int], k: int,
                    mean_new_tokens: float) -> dict[str, float]:
    """FLOPs of one HyPO step, by part. prompt_lens: the step's online prompts (each sampled k
    times); mean_new_tokens: the mean sampled response length (every sample is counted at that
    length, exact for the matmul part)."""
    m = mean_new_tokens
    gen = sum(k * shape.generate(p, round(m)) for p in prompt_lens)
    sample_lens = [p + m for p in prompt_lens for _ in range(k)]
    train_samples = sum(shape.train(int(round(n))) for n in sample_lens)
    ref_samples = sum(shape.forward(int(round(n))) for n in sample_lens)
    dpo = dpo_step_flops(shape, pair_seq_lens)
    return {"dpo": dpo, "generate": gen, "train_samples": train_samples, "reference_samples": ref_samples,
            "total": dpo + gen + train_samples + ref_samples}


# ---- decode roofline ---------------------------------------------------------------------------
#
# A step of KV-cached sampling over R rows reads every weight matrix once (N·bytes, the LM head
# included; the input embedding is a lookup of R rows) and each row's KV cache
# (2·L·h_kv·d_h·context values), and does R·(2·N + attention) FLOPs. Its time cannot be below
# max(bytes / bandwidth, FLOPs / peak): the roofline bound, with bandwidth (a large copy) and the
# matmul peak measured on the same machine in the same run. Prefill is the same over the prompts
# (all positions at once; logits at the last position only, as ``generate`` does).

def kv_values(shape: ModelShape, context: float) -> float:
    """KV-cache values of one row at this context length (K and V, every layer)."""
    return 2.0 * shape.num_layers * shape.num_kv_heads * shape.head_dim * context


def roofline_s(flops: float, nbytes: float, peak: float, bandwidth: float) -> float:
    return max(nbytes / bandwidth, flops / peak)


def decode_bound_s(shape: ModelShape, prompt_lens: list[int], steps: int, peak: float, bandwidth: float,
                   dtype_bytes: int = 4) -> float:
    """Roofline bound of ``steps`` decode steps over rows with these prompt lengths (step t: each
    row's context is prompt + t; every row is computed at every step, as ``generate`` does)."""
    weights = shape.matmul_params * dtype_bytes
    total = 0.0
    for t in range(1, steps + 1):
        flops = sum(2.0 * shape.matmul_params + shape._attn * (p + t) for p in prompt_lens)
        nbytes = weights + sum(kv_values(shape, p + t) for p in prompt_lens) * dtype_bytes
        total += roofline_s(flops, nbytes, peak, bandwidth)
    return total


def prefill_bound_s(shape: ModelShape, prompt_lens: list[int], peak: float, bandwidth: float,
                    dtype_bytes: int = 4) -> float:
    """Roofline bound of the prompt forward (KV written, logits at the last position only)."""
    head = 2.0 * shape.hidden_size * shape.vocab_size
    flops = sum(shape.forward(p) - head * max(p - 1, 0) for p in prompt_lens)
    nbytes = (shape.matmul_params + sum(kv_values(shape, p) for p in prompt_lens)) * dtype_bytes
    return roofline_s(flops, nbytes, peak, bandwidth)
