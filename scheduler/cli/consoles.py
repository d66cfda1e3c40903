"""Where the CLI's tables and messages go.

Rich wraps to 80 columns when its stream is not a terminal, so a table sent
to a log file came out with its policy names cut to "stat…"; a file has no
width, so anything not a terminal gets a wide one (``COLUMNS`` still wins).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

FILE_WIDTH = 240  # columns when writing to a file or pipe (fidelity's widest table fits)


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = hasattr(stream, "isatty") and stream.isatty()
    width = None if terminal or "COLUMNS" in os.environ else FILE_WIDTH
    return Console(stderr=stderr, width=width)
