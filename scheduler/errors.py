"""The one error type for bad input, so every edge reports it the same way.

Traces, cluster files, profiles and CLI options all raise :class:`InputError`.
The CLI turns it into a single line on stderr and exit code 2; library callers
get the structured fields (``path``, ``line``, ``field``) to act on.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad data at the edge, located as precisely as the source allows.

    Attributes:
        path: the file the data came from, or ``None`` for in-memory values.
        line: 1-based line (text formats) or row (Parquet); ``None`` when the
            fault is not tied to one place (e.g. an empty file).
        field: the column, key path or option at fault, or ``None``.
        reason: what is wrong and, where it helps, the expected form.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``path:line: field: reason`` with the parts that are known."""
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
        elif self.line is not None:
            where = f"line {self.line}"
        parts = [p for p in (where, self.field) if p]
        text = " ".join(self.reason.split())  # one line, always
        return ": ".join([*parts, text])

    def located(
        self, *, path: str | Path | None = None, line: int | None = None
    ) -> InputError:
        """A copy with the location filled in where it was still unknown."""
        return InputError(
            self.reason,
            path=self.path if self.path is not None else path,
            line=self.line if self.line is not None else line,
            field=self.field,
        )
