"""hypo: HyPO (Hybrid Preference Optimization) and DPO for causal language models.

Implements Song, Swamy, Singh, Bagnell, Sun, "The Importance of Online Data: Understanding
Preference Fine-tuning via Coverage", arXiv 2406.01462 (NeurIPS 2024).

    from hypo import DPOConfig, DPOTrainer        # TRL's API; HyPOConfig / HyPOTrainer for HyPO

See docs/python-api.md.
"""

__version__ = "0.1.0"

# Exported lazily, so `import hypo.config` (the CLI's --help, YAML checks) does not import torch.
_EXPORTS = {"HyPOConfig": "api", "HyPOTrainer": "api", "DPOConfig": "api", "DPOTrainer": "api",
            "TrainerCallback": "callbacks", "TrainerState": "callbacks",
            "TrainerControl": "callbacks", "TrainOutput": "callbacks",
            "ConfigError": "config", "DataError": "data", "CheckpointError": "checkpoint"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'hypo' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
