"""What every input file must be before anything reads it, and how a message quotes it.

Traces, cluster files, node lists and profiles all come through here, so a
FIFO, a device, a link to ``/dev/zero`` or a line without end is refused the
same way everywhere: at once, as an :class:`InputError`, never as a hang or a
process that grows until the machine kills it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from scheduler.errors import InputError

MAX_LINE_BYTES = 1 << 20  # a text line longer than this is refused, not buffered
MAX_ECHO = 100  # characters of a bad value a message quotes


def clip(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never echoes a whole input.

    The value is formatted only up to the limit where that can be done
    without formatting all of it (strings and bytes); anything else is
    repr'd, which for the parsed data we hold is bounded by the file caps.
    """
    if isinstance(value, str | bytes) and len(value) > limit:
        head = value[:limit]
        return f"{head!r}... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(text: object) -> str:
    """``text`` as is when short and printable (a column name, a key path, a library's
    error), else :func:`clip`'d: a message never carries a whole input."""
    value = str(text)
    return value if len(value) <= MAX_ECHO and value.isprintable() else clip(value)


def regular_file(path: Path, *, field: str | None = None, what: str = "file") -> Path:
    """``path`` if it is a regular file (links followed); an InputError otherwise.

    A FIFO would block the first read forever and a character device (such
    as ``/dev/zero``) never ends, so neither is opened at all.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError("no such file", path=path, field=field) from None
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", path=path,
                         field=field) from None
    if stat.S_ISDIR(mode):
        raise InputError(f"is a directory, expected a {what}", path=path, field=field)
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise InputError(f"is {kind}, expected a regular {what}", path=path, field=field)
    return path


def read_capped(path: Path, limit: int, *, field: str | None = None,
                what: str = "file") -> bytes:
    """The whole of a regular file of at most ``limit`` bytes (checked while reading,
    so a file that grows after the size check still cannot exceed it)."""
    regular_file(path, field=field, what=what)
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror or e}", path=path,
                         field=field) from None
    if len(data) > limit:
        raise InputError(f"larger than {limit:,} bytes; expected a {what}", path=path,
                         field=field)
    return data
