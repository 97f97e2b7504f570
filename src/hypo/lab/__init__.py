"""Coverage lab: exact small-scale experiments of arXiv 2406.01462's theory on finite response sets.

Modules: ``setting`` (bandit, data, divergences), ``policies`` (tabular, log-linear), ``objectives``
(DPO, KL, HyPO, RLHF, RLOO estimator, reward MLE), ``optim`` (GD, Adam), ``algorithms`` (training
runs), ``settings_lib`` (the concrete settings), ``experiments`` (separation, extrapolation,
ood_mass), ``plots`` and ``cli`` (``hypo lab``). NumPy only at run time; no transformers.
"""
