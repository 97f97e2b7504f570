"""Where metrics go: metrics.jsonl always, TensorBoard and Weights & Biases on request."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from .runfolder import RunFolder


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
        self.run = RunFolder(output_dir)
        self.run.root.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = Path(log_dir or Path(output_dir) / "runs")
            with self._listing(log_dir):
                self.tb = SummaryWriter(log_dir=str(log_dir))
        if "wandb" in trackers:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("report_to includes wandb but it is not installed: "
                                   "pip install 'hypo[wandb]' (or drop wandb from report_to).") from None
            with self._listing(Path(output_dir) / "wandb", trees=True):
                self.wandb = wandb.init(config=config, dir=str(output_dir), reinit=True, name=run_name)

    @contextlib.contextmanager
    def _listing(self, folder: Path, trees: bool = False):
        """Inside the run folder: create ``folder`` as the run's (never through a link) and list
        what the tracker adds to it; elsewhere (an explicit logging_dir) the tracker writes alone."""
        try:
            # abspath, not resolve: a link on the way must be seen (and refused), not followed
            rel = Path(os.path.abspath(folder)).relative_to(self.run.root).as_posix()
        except ValueError:
            yield
            return
        self.run.mkdir(rel)
        before = set(os.listdir(folder))
        yield
        new = sorted(f"{rel}/{n}" for n in set(os.listdir(folder)) - before)
        self.run.record(**({"trees": new} if trees else {"files": new}))

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.run.append(self.path.name, json.dumps(record) + "\n")
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


MAX_LINE = 1 << 20  # a log line longer than this is not one hypo wrote


def read_jsonl(path: Path, problems: list | None = None):
    """The records of a JSONL log hypo wrote: JSON objects with an integer "step", one per line.

    A torn last line (killed mid-write) is skipped; any other line that is not such a record is
    skipped too, and described in ``problems`` (file, line, what was expected).
    """
    if not path.exists():
        return
    from .data import bounded_lines

    with path.open("rb") as fh:
        for n, raw in bounded_lines(fh, MAX_LINE):
            torn = not raw.endswith(b"\n")
            if len(raw) > MAX_LINE:
                why = f"longer than {MAX_LINE} bytes"
            else:
                try:
                    row = json.loads(raw)
                    ok = isinstance(row, dict) and type(row.get("step")) is int
                    why = "" if ok else "not a JSON object with an integer 'step'"
                except (ValueError, RecursionError):
                    why = "not valid JSON"
                    if torn:
                        continue  # killed mid-write
                if not why:
                    yield row
                    continue
            if problems is not None:
                problems.append(f"{path}: line {n}: {why} (expected a record such as "
                                '{"step": 3, "loss": 0.6})')


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the records of a JSONL log with "step" ≤ step; a torn last line (killed mid-write) goes
    too, and so does any line hypo did not write (said in one line)."""
    if not path.exists():
        return
    problems: list[str] = []
    kept = [json.dumps(r) for r in read_jsonl(path, problems) if r["step"] <= step]
    if problems:
        from .progress import console

        console.print(f"dropped {len(problems)} line(s) that hypo did not write; the first: "
                      f"{problems[0]}", markup=False, highlight=False)
    RunFolder(path.parent).write_text(path.name, "".join(line + "\n" for line in kept))


def append_jsonl(path: Path, record: dict) -> None:
    RunFolder(path.parent).append(path.name, json.dumps(record) + "\n")


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The records of output_dir/metrics.jsonl (lines hypo did not write are skipped)."""
    return list(read_jsonl(Path(output_dir) / "metrics.jsonl"))
