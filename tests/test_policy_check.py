"""attnsched policy check: the built-ins keep the contract; a broken plugin is caught, with a
minimal trace that attnsched simulate replays to the same failure."""

from __future__ import annotations

import pytest

from policies.base import available
from tests.conftest import REPO

LAZY = '''
from scheduler.decisions import Decisions


class Lazy:
    name = "lazy"

    def decide(self, view):
        return Decisions()
'''

BOOM = '''
from policies.base import load_policy


class Boom:
    name = "boom"

    def decide(self, view):
        if len(view.pending) > 3:
            raise RuntimeError("too many")
        return load_policy("fifo").decide(view)
'''

CACHED = '''
from policies.base import load_policy


class Cached:
    name = "cached"

    def decide(self, view):
        if any(view.cache.hit(j, d) for j in view.pending.values() for d in view.devices):
            raise RuntimeError("a bug only a cache hit reaches")
        return load_policy("fifo").decide(view)
'''

FLIP = '''
import os

from policies.base import load_policy


class Flip:
    name = "flip"

    def __init__(self):
        # Every other instance orders its queue differently (counted outside the module,
        # which each load runs afresh).
        made = int(os.environ["FLIP_MADE"]) + 1
        os.environ["FLIP_MADE"] = str(made)
        self.inner = load_policy("fifo" if made % 2 else "sjf")
        self.count = 0

    def decide(self, view):
        self.count += 1
        return self.inner.decide(view)
'''


@pytest.mark.parametrize("policy", sorted(available()))
def test_every_built_in_policy_keeps_the_contract(cli, policy) -> None:
    code, text, err = cli("policy", "check", policy, "--runs", "12")
    assert code == 0, text + err
    assert "kept the contract on 12 runs" in text and "warning" not in text


@pytest.mark.parametrize(("source", "rule", "most_jobs"), [
    (LAZY, "work-conserving", 1), (BOOM, "no error", 4), (CACHED, "no error", 4)])
def test_a_broken_plugin_is_caught_with_a_minimal_reproducer(cli, tmp_path, monkeypatch,
                                                            source, rule, most_jobs) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugin.py").write_text(source)
    cls = source.split("class ")[1].split(":")[0]
    code, text, err = cli("policy", "check", f"plugin.py:{cls}")
    assert code == 1, text + err
    assert f"broke '{rule}'" in text
    repro = tmp_path / "policy-check-repro.jsonl"
    assert 1 <= len(repro.read_text().splitlines()) <= most_jobs
    replay, explain = [line.split()[1:] for line in text.splitlines()
                       if line.startswith("  attnsched ")]  # the commands it printed
    code, _, err = cli(*replay)
    assert code == 1, err  # the same failure, from the file alone
    code, told, err = cli(*explain)
    assert code == 0 and " failed" in " ".join(told.split()), told + err


def test_nondeterminism_and_state_on_the_policy_are_named(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLIP_MADE", "0")
    (tmp_path / "flip.py").write_text(FLIP)
    code, text, err = cli("policy", "check", "flip.py:Flip")
    assert code == 1, text + err
    assert "broke 'deterministic'" in text
    # its counter is state kept on the policy; the helper policy it holds is not
    assert "warning: decide changes the policy's own attributes between calls (count)" in text


def test_bad_input_is_one_line_and_exit_2(cli, tmp_path) -> None:
    code, _, err = cli("policy", "check", str(tmp_path / "none.py:X"))
    assert code == 2 and "no such file" in err
    code, _, err = cli("policy", "check", "fifo", "--runs", "0")
    assert code == 2 and "--runs" in err


def test_a_policy_for_attention_jobs_alone_is_checked_without_pods(cli, tmp_path,
                                                                   monkeypatch) -> None:
    """The shipped example places attention jobs only: pods needing a gang of GPUs break it
    (named, with the pod as the reproducer), and --no-pods leaves them out."""
    monkeypatch.chdir(tmp_path)
    example = f"{REPO / 'examples' / 'custom_policy.py'}:ShortestJobFirst"
    code, text, _ = cli("policy", "check", example)
    assert code == 1 and "broke 'valid actions'" in text and "gang" in text
    assert '"kind":"cluster"' in (tmp_path / "policy-check-repro.jsonl").read_text()
    code, text, err = cli("policy", "check", example, "--no-pods")
    assert code == 0, text + err
