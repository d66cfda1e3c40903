"""A newcomer's first half hour, from the README alone: each step is a command that runs here.

The README's "Using it" section walks: replay a real trace, compare the three
policies, write and run their own policy, open the HTML report. This runs that
walk as written and in order, from an empty folder of the user's own (no
cluster.yaml, no examples; the shared traces by absolute path), so a README
edit that breaks a step, or a default that only works inside the checkout,
fails here. The browser side of the report is tests/test_report_html.py.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO, TRACES
from tests.test_docs_commands import fenced_blocks, saved_files

SHARED_TRACES = "../shared/traces/"

README = (REPO / "README.md").read_text(encoding="utf-8")


def walk() -> str:
    return README[README.index("## Using it\n"):README.index("### More\n")]


def test_the_readme_opens_with_make_demo_and_make_test() -> None:
    first = fenced_blocks(README)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo: ", makefile, re.M) and re.search(r"^test: ", makefile, re.M)


def test_the_walk_has_the_four_steps_in_order() -> None:
    text = walk()
    steps = [text.index(f"**{n}. ") for n in range(1, 5)]
    assert steps == sorted(steps)
    for needle in ("azure_llm_2023_conv.csv", "--policies static,greedy,adaptive",
                   "Save this as `my_policy.py`", "attnsched report", "report.html"):
        assert needle in text, needle


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch) -> Path:
    """A user's own empty folder: no cluster.yaml, no examples, no ../shared beside it."""
    if not TRACES.exists():
        pytest.skip(f"{TRACES} not present")
    folder = tmp_path / "mine"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def absolute(word: str) -> str:
    """The walk's ``../shared/traces/...`` as a user outside the workspace gives it."""
    return str(TRACES / word.removeprefix(SHARED_TRACES)) if word.startswith(SHARED_TRACES) \
        else word


def test_a_newcomer_walks_the_readme(elsewhere: Path, cli) -> None:
    """Every step, as written, from a folder of the user's own (the traces by absolute
    path): the packaged cluster stands in for cluster.yaml."""
    text = walk()
    for name, body in saved_files(text).items():  # step 3: "Save this as my_policy.py"
        (elsewhere / name).write_text(body, encoding="utf-8")
    opened = []
    for block in fenced_blocks(text):
        for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(re.split(r"(?:^|\s)#", raw, maxsplit=1)[0])
            if not words:
                continue
            if words[:2] == ["source", ".venv/bin/activate"]:
                continue  # the console script this test calls in-process
            if words[:3] == ["python", "-m", "webbrowser"]:
                opened.append(elsewhere / words[3])
                continue
            assert words[0] == "attnsched", f"the walk holds a step this test cannot run: {raw}"
            code, _, err = cli(*map(absolute, words[1:]))
            assert code == 0, f"`{raw.strip()}` exited {code}: {err.strip()}"

    def summary(run: str) -> dict[str, object]:
        return json.loads((elsewhere / "runs" / run / "summary.json").read_text(encoding="utf-8"))

    assert summary("adaptive")["jobs_completed"] == summary("adaptive")["jobs_total"] == 2000
    for policy in ("static", "greedy", "adaptive"):
        assert summary(f"compare/{policy}")["jobs_completed"] == 2000
    mine = summary("mine")
    assert mine["policy"] == "most-free-memory" and mine["jobs_completed"] == 2000
    mine_vs = (elsewhere / "runs/yours/comparison.md").read_text(encoding="utf-8")
    assert "most-free-memory" in mine_vs and "my_policy.py" not in mine_vs  # its own name
    assert opened == [elsewhere / "runs/report/report.html"]
    page = opened[0].read_text(encoding="utf-8")
    assert page.startswith("<!doctype html") or "<html" in page[:500]
    assert "most-free-memory" in page and "adaptive" in page
