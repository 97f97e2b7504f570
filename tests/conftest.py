"""Shared fixtures: a tiny locally built model + tokenizer + synthetic preference file."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests whose assertions depend on float arithmetic: losses, log-probs, estimators, precision,
# step-0 invariants, resume and equivalence bitwise, evaluators. scripts/test.sh runs them again
# under other CPU kernels (ATEN_CPU_CAPABILITY=default, =avx2 with MKL's compatible code path), so
# an equality that holds only for one CPU's kernels fails on every machine (docs/precision.md).
# Tests marked slow are left to the main pass.
NUMERICS_MODULES = {
    "test_losses.py", "test_logprobs.py", "test_kl_estimators.py", "test_precision.py",
    "test_trainer.py", "test_modeling.py", "test_packed_linear.py", "test_refcache.py",
    "test_evaluate.py", "test_coverage.py", "test_sampling.py", "test_resume.py",
    "test_equivalence.py", "test_trl_parity.py", "test_realexp.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in NUMERICS_MODULES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.numerics)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{'model': folder, 'data': jsonl} built once per test worker (no downloads)."""
    import torch

    from hypo.tiny import make_tiny_setup

    torch.set_num_threads(1)
    return make_tiny_setup(tmp_path_factory.mktemp("tiny"), n_train=128, seed=0)


@pytest.fixture
def base_config(tiny, tmp_path):
    """A fast TrainConfig on the tiny model; tests override what they need."""
    from hypo.config import TrainConfig

    def make(**overrides):
        values = dict(model_name_or_path=str(tiny["model"]), dataset_name=str(tiny["data"]),
                      output_dir=str(tmp_path / "out"), ref_cache_dir=str(tmp_path / "cache"),
                      learning_rate=3e-3, per_device_train_batch_size=8, max_steps=6,
                      max_new_tokens=8, max_length=64, max_prompt_length=32, save_steps=0,
                      report_to="none", disable_progress_bar=True, eval_online_prompts=0, seed=0)
        values.update(overrides)
        return TrainConfig(**values)

    return make


class Float32Rounding:
    """Tolerances for comparing two float32 computations of one value that are equal up to
    rounding (docs/precision.md), derived instead of tuned.

    Both sides sum the same terms in another order (another batch shape or chunking, another
    CPU's kernels). A float32 sum of n terms, in any order, is within γ_n·Σ|x_i| of the exact sum
    (Higham, *Accuracy and Stability of Numerical Algorithms*, §4.2), γ_n = n·u / (1 − n·u) with
    u = 2⁻²⁴; two orders are therefore within 2·γ_n·Σ|x_i| of each other. Each test states its n
    (the longest reduction its value goes through) and its scale (Σ|x_i|, or a bound on it).
    """

    u = 2.0 ** -24

    def gamma(self, n: int) -> float:
        return n * self.u / (1 - n * self.u)

    def reorder(self, n: int, scale: float) -> float:
        """Bound on |a − b| for two orders of a float32 sum of n terms with Σ|x_i| ≤ scale."""
        return 2 * self.gamma(n) * float(scale)

    def model_terms(self, config, seq_len: int, backward: bool = False) -> int:
        """n for a value computed through a decoder-only transformer's forward: the reductions
        one token's value passes through, summed over depth (per layer: q·k over the head
        dimension, softmax and p·v over the sequence, the attention output and MLP input over the
        hidden size, the MLP output over the intermediate size), then the LM head over the hidden
        size and the log-softmax over the vocabulary. A backward pass runs as many again."""
        hidden, layers = config.hidden_size, config.num_hidden_layers
        head_dim = hidden // config.num_attention_heads
        per_layer = head_dim + 2 * seq_len + 2 * hidden + config.intermediate_size
        n = layers * per_layer + hidden + config.vocab_size
        return 2 * n if backward else n


@pytest.fixture
def f32() -> Float32Rounding:
    return Float32Rounding()
