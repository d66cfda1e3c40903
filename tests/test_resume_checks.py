"""A live run's folder holds one run: resume checks what it resumes, reruns keep crashed runs.

``--resume`` must continue exactly the run its journal recorded (the trace's
content, not its path, and every option that shapes the jobs or the cluster),
and a rerun that forgot ``--resume`` must not delete an unfinished run's
journal. Interrupted journals are built directly with :class:`Journal`, as a
run killed after dispatching its first job leaves one; only the tests that
must see a run go through proceed to Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from scheduler.journal import FILE, Journal, journal_state, read_results, running_transitions

RUN = ("--policy", "greedy", "--emulate-gpus", "1", "--speed", "10",
       "--telemetry-interval", "0.3")


@pytest.fixture
def trace(cli, tmp_path: Path) -> Path:
    path = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", path, "--jobs", "20", "--seed", "1",
               "--model", "tiny")[0] == 0
    return path


@pytest.fixture
def local_ray() -> Iterator[None]:
    yield
    import ray

    ray.shutdown()


def interrupted(out: Path, trace: Path, *, keep_open: bool = False, **spec: Any) -> Journal:
    """The journal ``attnsched run TRACE *RUN --out OUT`` leaves when killed early on."""
    from scheduler.runs import RunSpec, trace_jobs
    from scheduler.state import JobRecord, JobState
    from workers.executor import LiveConfig, run_identity

    run = RunSpec(trace=trace, policy="greedy", **spec)
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / FILE, run_identity(run, LiveConfig(emulate_gpus=1), "greedy"))
    first = next(trace_jobs(run))
    journal.transition(0.0, JobRecord(first, state=JobState.RUNNING, attempts=1, batch="b0",
                                      device="head/gpu0"))
    if keep_open:
        journal.commit()  # on disk, in the -wal, as a killed run leaves it
    else:
        journal.close()
    return journal


def fingerprint(out: Path) -> dict[str, str]:
    """The journal's files and their bytes' digests (the -shm index is not data)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob(FILE + "*")) if not p.name.endswith("-shm")}


# -- point 1: resume checks the trace's content and the options ---------------------------


def test_resume_refuses_a_trace_rewritten_in_place(cli, trace, tmp_path) -> None:
    out = tmp_path / "run"
    interrupted(out, trace)
    assert cli("trace", "generate", "-o", trace, "--jobs", "20", "--seed", "2",
               "--model", "tiny")[0] == 0
    code, _, err = cli("run", trace, *RUN, "--resume", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "a different trace (content changed: digest" in err and "--overwrite" in err
    assert not (out / "jobs.parquet").exists()  # refused before anything ran


@pytest.mark.parametrize(("options", "named"), [
    (["--limit", "10"], ["--limit (none) not 10"]),
    (["--model", "tiny"], ["--model 'llama3-8b' not 'tiny'"]),
    (["--seed", "3"], ["--seed 0 not 3"]),
    (["--memory-fraction", "0.5"], ["--memory-fraction 0.9 not 0.5"]),
    (["--policy-opt", "max_batch=8"], ["--policy-opt (none) not max_batch=8"]),
    (["--limit", "10", "--model", "tiny"], ["--limit (none) not 10", "--model"]),
])
def test_resume_refuses_changed_options_naming_each(cli, trace, tmp_path, options,
                                                     named) -> None:
    out = tmp_path / "run"
    interrupted(out, trace)
    code, _, err = cli("run", trace, *RUN, *options, "--resume", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(n in " ".join(err.split()) for n in named), err
    assert "different trace" not in err


def test_resume_refuses_more_emulated_gpus_and_another_policy(cli, trace, tmp_path) -> None:
    out = tmp_path / "run"
    interrupted(out, trace)
    code, _, err = cli("run", trace, "--policy", "adaptive", "--emulate-gpus", "2",
                       "--resume", out)
    assert code == 2, err
    text = " ".join(err.split())
    assert "--emulate-gpus 1 not 2" in text and "--policy 'greedy' not 'adaptive'" in text


def test_the_identity_ignores_how_the_trace_is_named_and_the_pace(trace, tmp_path,
                                                                  monkeypatch) -> None:
    from scheduler.runs import RunSpec
    from workers.executor import LiveConfig, run_identity

    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.jsonl").symlink_to(trace)
    same = [run_identity(RunSpec(trace=path), LiveConfig(speed=speed, telemetry_interval=tick),
                         "greedy").meta()
            for path, speed, tick in [(trace, 1.0, 1.0), (Path("t.jsonl"), 8.0, 0.1),
                                      (Path("link.jsonl"), 0.5, 5.0)]]
    for meta in same:
        meta.pop("trace")  # the path as given: shown, never compared
    assert same[0] == same[1] == same[2]
    assert json.loads(same[0]["trace_digest"]) == hashlib.blake2b(
        trace.read_bytes(), digest_size=20).hexdigest()


def test_a_schema_1_journal_is_not_resumed_unchecked(cli, trace, tmp_path) -> None:
    """Journals from before the run identity record no trace digest: refused, with how."""
    out = tmp_path / "run"
    interrupted(out, trace)
    with closing(sqlite3.connect(out / FILE)) as db, db:
        db.execute("DELETE FROM meta WHERE key NOT IN ('policy', 'trace', 'sessions')")
        db.execute("INSERT INTO meta VALUES ('schema', '1')")
    code, _, err = cli("run", trace, *RUN, "--resume", out)
    assert code == 2 and "schema 1" in err and "--overwrite" in err, err
    assert not (out / (FILE + "-wal")).exists()  # the refusal closed the journal it opened
    assert not journal_state(out / FILE).finished  # and a rerun would not delete it
    assert cli("run", trace, *RUN, "--out", out)[0] == 2
    (out / "summary.json").write_text("{}")  # an old run that got to its end
    assert journal_state(out / FILE).finished


def test_resume_and_overwrite_together_are_refused(cli, trace, tmp_path) -> None:
    code, _, err = cli("run", trace, *RUN, "--resume", tmp_path, "--overwrite")
    assert code == 2 and "--overwrite" in err and "give one" in err


# -- point 13: a rerun never deletes an unfinished run's journal --------------------------


def test_a_rerun_without_resume_keeps_an_unfinished_journal_byte_for_byte(cli, trace,
                                                                           tmp_path) -> None:
    out = tmp_path / "run"
    interrupted(out, trace)
    before = fingerprint(out)
    code, _, err = cli("run", trace, *RUN, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "this folder holds an unfinished run" in err
    assert "--resume" in err and "--overwrite" in err
    assert fingerprint(out) == before and not (out / "jobs.parquet").exists()


def test_a_killed_runs_journal_is_read_through_its_wal_and_left_as_it_is(cli, trace,
                                                                          tmp_path) -> None:
    """Killed runs leave their latest commits in ``journal.sqlite-wal``: the check reads
    them (the dispatch is there) without checkpointing them into the journal."""
    out = tmp_path / "run"
    journal = interrupted(out, trace, keep_open=True)
    try:
        before = fingerprint(out)
        assert FILE + "-wal" in before
        state = journal_state(out / FILE)
        assert state.work and not state.finished
        assert cli("run", trace, *RUN, "--out", out)[0] == 2
        assert fingerprint(out) == before
    finally:
        journal.close()


def test_an_empty_or_finished_journal_is_replaced_and_an_unfinished_one_on_request(
        trace, tmp_path, caplog) -> None:
    from scheduler.errors import InputError
    from scheduler.journal import RunIdentity

    path = tmp_path / FILE
    Journal(path, RunIdentity(policy="p")).close()  # a run that failed before any dispatch
    with caplog.at_level("WARNING", logger="scheduler.journal"):
        Journal(path, RunIdentity(policy="p")).finish()
    assert "replaces it" in caplog.text and journal_state(path).finished
    interrupted(tmp_path, trace)
    with pytest.raises(InputError, match=r"unfinished run.*--overwrite"):
        Journal(path, RunIdentity(policy="p"))
    Journal(path, RunIdentity(policy="p"), overwrite=True).close()
    assert not running_transitions(path)


# -- through Ray: the resumes that must go ahead, and the reruns that may -----------------


def test_the_same_trace_by_another_name_resumes_and_a_finished_run_reruns(
        cli, trace, tmp_path, monkeypatch, local_ray) -> None:
    """Journalled via a relative path, resumed via the absolute one and via a link; a
    finished folder reruns without flags; an unfinished one reruns with --overwrite.
    One in-process Ray serves every run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.jsonl").symlink_to(trace)
    ids = {json.loads(line)["id"] for line in trace.open()}
    cases = {"rel": (Path("t.jsonl"), trace), "link": (trace, Path("link.jsonl"))}
    for name, (journalled, resumed) in cases.items():
        out = tmp_path / name
        interrupted(out, journalled)
        code, _, err = cli("run", resumed, *RUN, "--resume", out)
        assert code == 0, err
        rows = pq.read_table(out / "jobs.parquet").to_pylist()
        assert {r["id"] for r in rows} == ids and {r["status"] for r in rows} == {"done"}
        assert {s for _, _, s in read_results(out / FILE).values()} == {2}
        assert journal_state(out / FILE).finished
    out = tmp_path / "rel"
    code, _, err = cli("run", trace, *RUN, "--out", out)  # finished: replaced, as `make demo`
    assert code == 0, err
    assert {s for _, _, s in read_results(out / FILE).values()} == {1}
    out = tmp_path / "crashed"
    interrupted(out, trace)
    code, _, err = cli("run", trace, *RUN, "--out", out, "--overwrite")
    assert code == 0, err
    assert len(read_results(out / FILE)) == 20 and journal_state(out / FILE).finished


def test_compare_live_keeps_an_unfinished_policy_folder(cli, trace, tmp_path,
                                                        local_ray) -> None:
    out = tmp_path / "cmp"
    interrupted(out / "greedy", trace)
    before = fingerprint(out / "greedy")
    code, _, err = cli("compare", trace, "--mode", "live", "--policies", "greedy",
                       "--emulate-gpus", "1", "--speed", "10", "--out", out)
    assert code == 2 and "unfinished run" in err and "--overwrite" in err, err
    assert fingerprint(out / "greedy") == before
    assert os.listdir(out / "greedy") == [FILE]
