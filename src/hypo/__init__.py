"""hypo: HyPO (Hybrid Preference Optimization) and DPO for causal language models.

Implements Song, Swamy, Singh, Bagnell, Sun, "The Importance of Online Data: Understanding
Preference Fine-tuning via Coverage", arXiv 2406.01462 (NeurIPS 2024).
"""

__version__ = "0.1.0"
