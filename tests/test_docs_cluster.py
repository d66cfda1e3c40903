"""docs/cluster.md only shows commands and flags that exist.

Every ``attnsched`` and ``ray`` command in its shell blocks (and in its
inline code) is resolved against the real CLIs: attnsched's typer app and
the installed Ray's click group. A renamed option fails here, not on a
user's cluster.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import REPO

DOC = REPO / "docs" / "cluster.md"


def commands() -> list[list[str]]:
    """Each ``attnsched ...``/``ray ...`` command in the doc, as words."""
    text = DOC.read_text(encoding="utf-8")
    found: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.split("#", 1)[0].strip()
            # `ray job submit ... -- attnsched run ...`: both sides are commands
            found += [part.strip() for part in line.split(" -- ")]
    found += re.findall(r"`((?:ray|attnsched) [^`]+)`", text)
    return [shlex.split(c) for c in found if c.split(" ", 1)[0] in ("ray", "attnsched")]


def resolve(group, words: list[str]):
    """The click command ``words`` names, and the words left for its options."""
    command, rest = group, list(words)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def _cli(program: str):
    if program == "attnsched":
        import typer

        from scheduler.cli.main import app

        return typer.main.get_command(app)
    from ray.scripts.scripts import cli

    return cli


def test_the_doc_shows_the_commands_it_promises() -> None:
    seen = {" ".join(c[:3]) for c in commands()}
    for expected in ("ray up cluster.yaml", "ray attach cluster.yaml", "ray down cluster.yaml",
                     "ray job submit", "ray rsync-down cluster.yaml",
                     "attnsched run /home/ubuntu/traces/trace.jsonl",
                     "attnsched compare /home/ubuntu/traces/trace.jsonl"):
        assert expected in seen, expected


@pytest.mark.parametrize("words", commands(), ids=lambda w: " ".join(w[:3]))
def test_every_documented_command_and_flag_exists(words: list[str]) -> None:
    command, rest = resolve(_cli(words[0]), words[1:])
    if hasattr(command, "commands"):  # a group: only its own flags (ray --version) may follow
        assert rest and all(w.startswith("-") for w in rest), \
            f"{' '.join(words)}: no such subcommand"
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for word in rest:
        flag = word.split("=", 1)[0]
        if flag.startswith("-"):
            assert flag in options, f"{' '.join(words[:3])}: no option {flag}"
