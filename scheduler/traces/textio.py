"""Line-oriented reading that knows where it is, for error messages that do too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scheduler.errors import InputError


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, decoded strictly as UTF-8.

    Binary garbage and truncated multi-byte characters become an InputError on
    the line where they occur, never a UnicodeDecodeError from deep inside a
    parser. Blank lines are skipped; an empty file is an error.
    """
    try:
        handle = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror or e}", path=path) from None
    seen = False
    with handle:
        for number, raw in enumerate(handle, start=1):
            if b"\x00" in raw:
                raise InputError("binary data (NUL byte); expected text", path=path, line=number)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("not UTF-8 text", path=path, line=number) from None
            if number == 1:
                text = text.removeprefix("\ufeff")  # a BOM from spreadsheet exports
            if not text.strip():
                continue
            seen = True
            yield number, text
    if not seen:
        raise InputError("file is empty", path=path)


def first_line(path: Path) -> str:
    """The first non-blank line, for format sniffing."""
    for _, text in iter_lines(path):
        return text
    raise InputError("file is empty", path=path)  # pragma: no cover - iter_lines raises first


def json_line(text: str) -> Any:
    """One JSON value; every way ``json.loads`` refuses text becomes an InputError.

    Beyond syntax errors it refuses integers of more than 4,300 digits
    (ValueError) and nesting deeper than the interpreter's stack
    (RecursionError); neither may escape as an internal error.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (truncated last line?)" if not text.endswith("\n") else ""
        raise InputError(f"invalid JSON: {e.msg}{hint}") from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply") from None
    except ValueError:
        raise InputError("invalid JSON: a number with too many digits") from None
