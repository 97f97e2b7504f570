"""Console output: one rich console on stderr and a progress bar with step, ETA and a status line."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True)


@contextlib.contextmanager
def step_progress(description: str, total: int, disable: bool = False, completed: int = 0):
    """Yields advance(n, info="") that moves the bar by n and shows info (e.g. loss, KL)."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, disable=disable,
                        transient=False)
    with progress:
        task = progress.add_task(description, total=total, completed=completed, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            if info is None:
                progress.advance(task, n)
            else:
                progress.update(task, advance=n, info=info)

        yield advance
