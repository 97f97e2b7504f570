"""Console output: one rich console on stderr and a progress bar with step, ETA and a status line.

When stderr is not a terminal (a log file, a job scheduler, a pipe) a live bar would only be drawn
once, at the end; there each logged step prints a plain line instead."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True)


@contextlib.contextmanager
def step_progress(description: str, total: int, disable: bool = False, completed: int = 0):
    """Yields advance(n, info="", line=False) that moves the bar by n and shows info (e.g. loss,
    KL); off a terminal, ``line=True`` prints "description done/total info" instead."""
    live = console.is_terminal
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console,
                        disable=disable or not live, transient=False)
    done = [completed]
    with progress:
        task = progress.add_task(description, total=total, completed=completed, info="")

        def advance(n: int = 1, info: str | None = None, line: bool = False) -> None:
            done[0] += n
            if info is None:
                progress.advance(task, n)
            else:
                progress.update(task, advance=n, info=info)
            if line and not live and not disable:
                console.print(f"{description} {done[0]}/{total}" + (f"  {info}" if info else ""),
                              markup=False, highlight=False, soft_wrap=True)

        yield advance
