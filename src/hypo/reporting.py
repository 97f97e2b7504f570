"""Small helpers shared by the `hypo eval` and `hypo coverage` reports: summary statistics,
Markdown tables and histogram plots (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def summary(values: Sequence[float]) -> dict:
    """n, mean, standard error, min, max and the QUANTILES of a list of numbers (NaN when empty)."""
    import numpy as np

    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": math.nan, "stderr": math.nan, "min": math.nan, "max": math.nan,
                **{f"q{int(q * 100):02d}": math.nan for q in QUANTILES}}
    stderr = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    out = {"n": int(x.size), "mean": float(x.mean()), "stderr": stderr, "min": float(x.min()),
           "max": float(x.max())}
    out.update({f"q{int(q * 100):02d}": float(np.quantile(x, q)) for q in QUANTILES})
    return out


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table; cells are formatted with ``fmt`` and '|' / newlines escaped."""
    def cell(v) -> str:
        return fmt(v).replace("|", "\\|").replace("\n", "⏎")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def histogram(path: Path, series: dict[str, Sequence[float]], title: str, xlabel: str,
              vlines: dict[str, float] | None = None, bins: int = 30) -> Path:
    """Overlaid histograms (one per named series, shared bins) saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = {k: np.asarray(list(v), dtype=float) for k, v in series.items() if len(v)}
    data = {k: v[np.isfinite(v)] for k, v in data.items()}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    everything = np.concatenate(list(data.values())) if data else np.zeros(1)
    lo, hi = float(everything.min()), float(everything.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for name, values in data.items():
        ax.hist(values, bins=edges, alpha=0.5, label=f"{name} (n={len(values)})")
    for name, x in (vlines or {}).items():
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=8, va="top")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if data:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def json_safe(obj):
    """Replace NaN/inf floats by None (strict JSON) recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
