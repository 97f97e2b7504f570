"""Where metrics go: metrics.jsonl always, TensorBoard and Weights & Biases on request."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    """Writes one JSON object per logging event to ``output_dir/metrics.jsonl`` and mirrors scalars
    to the trackers named in ``report_to``. Metric names follow TRL's DPO names."""

    def __init__(self, output_dir: str | Path, trackers: list[str], config: dict, enabled: bool = True,
                 log_dir: str | Path | None = None, run_name: str | None = None):
        """log_dir: TensorBoard folder of this run (default output_dir/runs); run_name: W&B name."""
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(log_dir or Path(output_dir) / "runs"))
        if "wandb" in trackers:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("report_to includes wandb but it is not installed: "
                                   "pip install 'hypo[wandb]' (or drop wandb from report_to).") from None
            self.wandb = wandb.init(config=config, dir=str(output_dir), reinit=True, name=run_name)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                if self.tb:
                    self.tb.add_scalar(name, value, step)
        if self.tb:
            self.tb.flush()
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint's step (they will be redone)."""
        if self.enabled:
            truncate_jsonl(self.path, step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the records of a JSONL log with "step" ≤ step; a torn last line (killed mid-write) goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
