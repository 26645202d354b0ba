"""The one place edgereason makes its rich consoles, so that every command's output reads the same
on a terminal and in a log.

On a terminal rich measures the window. Piped into a file or a CI log it falls back to 80 columns,
which wraps every echoed command line and squeezes the result tables; there a console is
`PIPED_WIDTH` wide instead. `COLUMNS`, when set, still wins, as rich documents.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.text import Text

PIPED_WIDTH = 120


def make_console(*, quiet: bool = False, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that is `PIPED_WIDTH` wide when that stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    width = PIPED_WIDTH if piped and "COLUMNS" not in os.environ else None
    return Console(quiet=quiet, stderr=stderr, width=width)


def print_error(console: Console, message: object, label: str = "error:") -> None:
    """`label` in red, then `message` as plain text. An error names what the user wrote, and rich
    reads a bracketed word as markup and drops it: "not among stages [sft, grpo]" lost its list."""
    console.print(Text.assemble((label, "red"), " ", str(message)))
