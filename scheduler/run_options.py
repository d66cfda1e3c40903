"""The run options' command-line forms, parsed for the CLI and the Python API alike.

``--slow DEVICE=FACTOR``, ``--profile PATH`` or ``NAME=PATH``, and the folder
each policy gets under a comparison's ``--out``. The API hands its arguments
over in these same forms, so a notebook and a shell see the same checks and
the same messages.
"""

from __future__ import annotations

from scheduler.errors import InputError
from scheduler.inputfiles import clip
from scheduler.runs import check_slowdown


def parse_slow(items: list[str]) -> dict[str, float]:
    """``DEVICE=FACTOR`` items → {device: factor}, each factor in bounds."""
    out = {}
    for item in items:
        device, sep, factor = item.rpartition("=")
        try:
            out[device] = float(factor)
            if not sep:
                raise ValueError
        except ValueError:
            raise InputError(f"expected DEVICE=FACTOR, got {clip(item)}",
                             field="--slow") from None
        check_slowdown(out[device])
    return out


def parse_profiles(items: list[str]) -> dict[str, str]:
    """``PATH`` (for the profile of its own name) or ``NAME=PATH`` → {name: path}.

    Each file is loaded here, so a bad one fails before anything runs.
    """
    from scheduler.profiles import load_profile

    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.rpartition("=")
        if not path or (sep and not name):
            raise InputError(f"expected PATH or NAME=PATH, got {item!r}", field="--profile")
        profile = load_profile(path)  # a bad file fails now, not mid-run
        out[name or profile.name] = path
    return out


def policy_folder(name: str) -> str:
    """A policy's folder under a comparison's --out; plugin specs hold ':' and '/'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
