"""Line-oriented reading that knows where it is, for error messages that do too.

Every text trace is read through :func:`iter_lines`, every JSON line through
:func:`json_line` and every numeric cell through :func:`parse_int` /
:func:`parse_float`, so each rule (regular files only, capped lines, no
duplicate keys, ASCII digits) holds for all formats at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scheduler.errors import InputError
from scheduler.inputfiles import MAX_LINE_BYTES, clip, regular_file, shown

# Python's int() and float() also take Unicode digits ('٣', '３') and '_'
# separators; a trace is ASCII numbers, so those are refused, not reinterpreted.
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                    r"|inf|infinity|nan)", re.ASCII | re.IGNORECASE)


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, decoded strictly as UTF-8.

    Binary garbage and truncated multi-byte characters become an InputError on
    the line where they occur, never a UnicodeDecodeError from deep inside a
    parser. A line longer than ``MAX_LINE_BYTES`` is refused as soon as that
    much has been read, so a file without newlines (or ``/dev/zero`` behind a
    link, refused earlier still) cannot fill memory. Blank lines are skipped;
    an empty file is an error.
    """
    regular_file(path, what="trace file")
    try:
        handle = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot open: {e.strerror or e}", path=path) from None
    seen = False
    with handle:
        number = 0
        # Room for the longest allowed line plus its CRLF terminator.
        while raw := handle.readline(MAX_LINE_BYTES + 2):
            number += 1
            if len(raw) > MAX_LINE_BYTES and len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                raise InputError(f"line longer than {MAX_LINE_BYTES >> 20} MiB", path=path,
                                 line=number)
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's dict; a repeated key is refused rather than keeping the last value."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InputError("duplicate key in a JSON object; give each key once",
                                 field=shown(key))
            seen.add(key)
    return record


def json_line(text: str) -> Any:
    """One JSON value; every way ``json.loads`` refuses text becomes an InputError.

    Beyond syntax errors it refuses objects that repeat a key (``json.loads``
    would keep the last value silently), integers of more than 4,300 digits
    (ValueError) and nesting deeper than the interpreter's stack
    (RecursionError); none may escape as an internal error.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except InputError:
        raise
    except json.JSONDecodeError as e:
        hint = " (truncated last line?)" if not text.endswith("\n") else ""
        raise InputError(f"invalid JSON: {e.msg}{hint}") from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply") from None
    except ValueError:
        raise InputError("invalid JSON: a number with too many digits") from None


def parse_int(text: str, field: str) -> int:
    """An integer cell: optional sign and ASCII digits, surrounding spaces allowed."""
    stripped = text.strip()
    if not _INT.fullmatch(stripped):
        raise InputError(f"expected an integer in ASCII digits, got {clip(text)}", field=field)
    try:
        return int(stripped)
    except ValueError:  # more than 4,300 digits
        raise InputError(f"an integer of {len(stripped):,} digits is out of range",
                         field=field) from None


def parse_float(text: str, field: str) -> float:
    """A number cell: ASCII decimal or exponent form (``inf``/``nan`` are left to range checks)."""
    stripped = text.strip()
    if not _FLOAT.fullmatch(stripped):
        raise InputError(f"expected a number in ASCII digits, got {clip(text)}", field=field)
    return float(stripped)
