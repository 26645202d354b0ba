"""The one place edgereason makes its rich consoles, so that every command's output reads the same
on a terminal and in a log.

On a terminal rich measures the window. Piped into a file or a CI log it falls back to 80 columns,
which wraps every echoed command line and squeezes the result tables; there a console is
`PIPED_WIDTH` wide instead. `COLUMNS`, when set, still wins, as rich documents.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PIPED_WIDTH = 120
PIPED_PROGRESS_EVERY_S = 60.0


def make_console(*, quiet: bool = False, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that is `PIPED_WIDTH` wide when that stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    width = PIPED_WIDTH if piped and "COLUMNS" not in os.environ else None
    return Console(quiet=quiet, stderr=stderr, width=width)


class _LoggedProgress(Progress):
    """rich draws a progress bar on a console that is not a terminal only when the bar stops, so
    `make run > log` (and CI) showed nothing through a ten-minute training stage. Here the bar's
    line is also printed as it stands, at most once every `every_s` seconds, when piped."""

    def __init__(self, *columns: str | ProgressColumn, every_s: float, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._every_s = every_s
        self._printed = time.monotonic()

    def update(self, task_id: TaskID, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields: Any) -> None:
        super().update(task_id, total=total, completed=completed, advance=advance, description=description,
                       visible=visible, refresh=refresh, **fields)
        self._print_if_due()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._print_if_due()

    def _print_if_due(self) -> None:
        if self.disable or self.console.is_terminal or self.finished:  # a finished bar is drawn when it stops
            return
        if time.monotonic() - self._printed >= self._every_s:
            self._printed = time.monotonic()
            self.console.print(self.make_tasks_table(self.tasks))


def make_progress(label: str, *, remaining: bool = True, console: Console | None = None,
                  every_s: float = PIPED_PROGRESS_EVERY_S, **kwargs: Any) -> Progress:
    """The package's one progress bar: `label` in bold, the task's description, the bar, done/total,
    the time elapsed and (with `remaining`) the time left. On `make_console()` unless given; piped
    into a log it also prints its line every `every_s` seconds. `kwargs` are rich's own."""
    columns: list[ProgressColumn] = [TextColumn(f"[bold]{label}[/] {{task.description}}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        columns.append(TimeRemainingColumn())
    return _LoggedProgress(*columns, every_s=every_s, console=console or make_console(), **kwargs)


def print_error(console: Console, message: object, label: str = "error:") -> None:
    """`label` in red, then `message` as plain text. An error names what the user wrote, and rich
    reads a bracketed word as markup and drops it: "not among stages [sft, grpo]" lost its list."""
    console.print(Text.assemble((label, "red"), " ", str(message)))
