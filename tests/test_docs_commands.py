"""Every ``attnsched`` command in the README's and docs' shell blocks runs: docs do not rot.

Each document's commands run in order, in-process, in a fresh folder of the
user's own outside the checkout, as a user there gives them: the repository's
files (``../shared/traces/...``, ``examples/...``, ``cluster.yaml``) by absolute
path, anything else as written; a command may read what an earlier one wrote.
What cannot run here is only *parsed*: its command path and every option must
exist. The exceptions are listed below, each with its reason, for review:

- docs/cluster.md is left to tests/test_docs_cluster.py (every command there
  needs a cluster); its ``resolve``/``_cli`` parse the commands here too.
- ``PARSE_ONLY``: live runs, calibration and fidelity (Ray, minutes), the
  service and its clients and ``trace export`` of its state, and any
  command with ``--address`` (a cluster) or ``--mode live``. Where a later command reads their
  output, a stand-in writes it (``stand_in``): a simulation for a live run's
  ``--out``, the shipped cpu profile for calibrate's ``-o``.
- ``RUN_ELSEWHERE``: the README's newcomer walk ("Using it" up to "More") is
  run, as written and in order, by tests/test_newcomer.py; here it is parsed.
- ``LIMIT``: simulate and compare without ``--limit`` get ``--limit 1000``
  (the whole Azure trace takes ~20 s per policy on two cores).
- ``PLACEHOLDERS``: words the docs use for "your file" become sandbox files.
- Files a doc asks the reader to write ("Save this as `my_policy.py`:" and a
  Python block) are written into the sandbox first (``saved_files``).
- Synopsis lines (``[--opt X]``, ``a|b``) are parsed, not run.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, TRACES
from tests.test_docs_cluster import _cli, resolve

DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md")
                                    if p.name != "cluster.md")]
SHELL = ("", "bash", "sh", "shell", "console")

PARSE_ONLY = {
    "run": "a live run on Ray (tests/test_live_cli.py runs one); minutes at the docs' sizes",
    "fidelity": "live runs of every policy, then simulations: minutes",
    "calibrate": "measures this machine for minutes (tests/test_calibrate.py runs a tiny grid)",
    **dict.fromkeys(("serve", "submit", "status", "cancel", "queue"),
                    "a service, or a client of one (tests/test_serve_live.py runs them)"),
}
LIMIT = ("simulate", "compare")
RUN_ELSEWHERE = {"README.md": ("## Using it\n", "### More\n")}
PLACEHOLDERS = {"TRACE": "trace.jsonl"}
SMALL_TRACE = ["trace", "generate", "--jobs", "300", "--seed", "1", "--rate", "12",
               "--model", "tiny", "-o"]


def fenced_blocks(text: str) -> list[str]:
    """The shell blocks of a Markdown text (```, ```bash, ...), not Python, TOML or YAML."""
    return [body for lang, body in re.findall(r"^```([\w-]*)\n(.*?)^```", text, re.S | re.M)
            if lang in SHELL]


def shell_commands(text: str, programs: tuple[str, ...] = ("attnsched",),
                   markdown: bool = True) -> list[list[str]]:
    """Each command of ``programs`` in the text's shell blocks (or a script), as words.

    Continued lines are joined, comments dropped, a trailing ``&`` ignored, and
    ``ray job submit ... -- attnsched run ...`` counts as two commands.
    """
    found = []
    for block in (fenced_blocks(text) if markdown else [text]):
        for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip().removesuffix("&").strip()
            for part in line.split(" -- "):
                words = shlex.split(part)
                if words and words[0] in programs:
                    found.append(words)
    return found


def check_command_exists(words: list[str]) -> None:
    """The command path and every option in ``words`` exist in the installed CLI."""
    command, rest = resolve(_cli(words[0]), words[1:])
    name = " ".join(words[:3])
    if hasattr(command, "commands"):
        assert rest and all(w.startswith("-") for w in rest), f"{name}: no such subcommand"
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for word in rest:
        flag = word.strip("[]").split("=", 1)[0]
        if flag.startswith("-") and flag != "-":
            assert flag in options, f"{name}: no option {flag}"


def saved_files(text: str) -> dict[str, str]:
    """The files a doc tells its reader to save: "Save this as `NAME`:" and the block after."""
    return dict(re.findall(r"Save this as `([^`]+)`:\s*\n+```\w*\n(.*?)^```", text,
                           re.S | re.M))


def is_synopsis(words: list[str]) -> bool:
    return any(c in w for w in words for c in "[]|") or any(w.endswith(".{jsonl,csv,parquet}")
                                                            for w in words)


REPO_FILES = {"../shared/traces/": TRACES, "examples/": REPO / "examples",
              "cluster.yaml": REPO / "cluster.yaml"}


def absolute(word: str) -> str:
    """A repository file the docs name from the checkout, as a user elsewhere names it."""
    for prefix, place in REPO_FILES.items():
        if word.startswith(prefix):
            rest = word.removeprefix(prefix)
            return str(place / rest.lstrip("/")) if rest.strip("/") else str(place)
    return word


def prepared(words: list[str]) -> list[str]:
    """The words as they run here: placeholders filled in, repository files by absolute
    path, a --limit where none is given."""
    args = [absolute(PLACEHOLDERS.get(w, w)) for w in words[1:]]
    if args[0] in LIMIT and "--limit" not in args:
        args += ["--limit", "1000"]
    return args


def option(args: list[str], *names: str) -> str | None:
    for i, word in enumerate(args[:-1]):
        if word in names:
            return args[i + 1]
    return None


def stand_in(args: list[str]) -> list[str] | None:
    """What writes a parse-only command's outputs, for the commands after it to read."""
    out = option(args, "--out", "-o", "--output")
    if out is None or "--address" in args:
        return None
    if args[0] == "calibrate":
        shutil.copy(REPO / "scheduler" / "profile_data" / "cpu.json", out)
        return None
    if args[0] == "run":
        model = option(args, "--model")
        return ["simulate", args[1], "--limit", "200", "--out", out,
                *(["--model", model] if model else [])]
    if args[:2] == ["trace", "export"]:  # a served period's jobs: a small generated trace
        return [*SMALL_TRACE, out]
    return None


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch, cli) -> Path:
    """A user's own folder (cwd), nothing of the checkout in it or beside it; "your
    trace" and make demo's trace ready in it."""
    if not TRACES.exists():
        pytest.skip(f"{TRACES} not present")
    main = tmp_path / "mine"
    main.mkdir()
    monkeypatch.chdir(main)
    (main / "demo").mkdir()
    (main / "runs").mkdir()
    for path in ("demo/trace.jsonl", "trace.jsonl"):  # make demo's trace, and "your trace"
        code, _, err = cli(*SMALL_TRACE, path)
        assert code == 0, err
    return main


def test_the_docs_hold_the_commands_a_user_needs() -> None:
    seen = {" ".join(w[:2]) for doc in DOCS
            for w in shell_commands(doc.read_text(encoding="utf-8"))}
    for expected in ("attnsched simulate", "attnsched compare", "attnsched report",
                     "attnsched trace", "attnsched calibrate", "attnsched fidelity",
                     "attnsched policies", "attnsched explain", "attnsched run"):
        assert expected in seen, expected


def test_extraction_handles_continuations_comments_and_job_submit() -> None:
    text = ("```bash\nattnsched simulate t.csv \\\n    --limit 5   # five\n"
            "ray job submit --address x -- attnsched run t.csv --address auto\n```\n"
            "```python\nattnsched = 1\n```\n")
    assert shell_commands(text) == [["attnsched", "simulate", "t.csv", "--limit", "5"],
                                    ["attnsched", "run", "t.csv", "--address", "auto"]]


def test_a_wrong_doc_command_is_caught() -> None:
    with pytest.raises(AssertionError, match="no option --polcy"):
        check_command_exists(["attnsched", "simulate", "t.csv", "--polcy", "greedy"])
    with pytest.raises(AssertionError, match="no such subcommand"):
        check_command_exists(["attnsched", "trace", "stat", "t.csv"])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_doc_runs(doc: Path, sandbox: Path, cli) -> None:
    text = doc.read_text(encoding="utf-8")
    if doc.name in RUN_ELSEWHERE:
        start, end = (text.index(mark) for mark in RUN_ELSEWHERE[doc.name])
        for words in shell_commands(text[start:end]):
            check_command_exists(words)
        text = text[:start] + text[end:]
    for name, body in saved_files(text).items():
        (sandbox / name).write_text(body, encoding="utf-8")
    commands = shell_commands(text)
    ran = 0
    for words in commands:
        shown = " ".join(words)
        check_command_exists(words)
        if is_synopsis(words):
            continue
        args = prepared(words)
        if (args[0] in PARSE_ONLY or "--address" in args or option(args, "--mode") == "live"
                or args[:2] == ["trace", "export"]):  # reads a service's state folder
            stand = stand_in(args)
            if stand is not None:
                code, _, err = cli(*stand)
                assert code == 0, f"stand-in for `{shown}`: {err}"
            continue
        code, _, err = cli(*args)
        assert code == 0, f"`{shown}` (run as {args}) exited {code}: {err.strip()}"
        ran += 1
    if any(not is_synopsis(w) and prepared(w)[0] not in PARSE_ONLY for w in commands):
        assert ran, f"{doc.name}: no command ran"
