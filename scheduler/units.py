"""Sizes as people read them in messages: small budgets must not read as 0.00 GiB."""

from __future__ import annotations


def size(n: float) -> str:
    """Bytes with a binary unit and three significant digits: ``72.8 KiB``, ``80 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"
