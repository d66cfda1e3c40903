"""The run journal: every job's state changes in SQLite, so a killed controller can resume.

A live run writes ``journal.sqlite`` (WAL mode) in its run folder. The
controller records a transition here before anything outside it acts on it:
a batch's jobs are journalled as running before the executor sends the batch
to a worker, and a finished job's outcome before the run's outputs show it.
The executor commits once per round of its loop, before it dispatches that
round's batches, so what a worker runs is always on disk first.

Outcomes are recorded exactly once per job id: ``results`` has the job id as
its primary key, and a second outcome for a job (a late completion from an
attempt that was given up on) is refused and counted, never written twice.

With WAL and ``synchronous=NORMAL`` a committed transaction survives the
process being killed (SIGKILL): it is in the OS's page cache, not in the
process. Only a power loss can take the last few commits, and then the jobs
they covered simply run again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.errors import InputError
from scheduler.state import JobRecord, JobState
from scheduler.traces.canonical import job_from_record, record_from_job

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
FILE = "journal.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, job TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL, batch TEXT, device TEXT, reason TEXT,
    session INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    job TEXT PRIMARY KEY, state TEXT NOT NULL, attempts INTEGER NOT NULL, t REAL NOT NULL,
    record TEXT NOT NULL, session INTEGER NOT NULL);
"""


@dataclass
class Resumed:
    """What an interrupted run had done, read back from its journal."""

    finished: dict[str, JobRecord] = field(default_factory=dict)  # id -> outcome
    attempts: dict[str, int] = field(default_factory=dict)  # unfinished id -> runs begun
    clock: float = 0.0  # the run's trace clock at its last journalled change
    session: int = 0  # sessions before this one


def _record_json(record: JobRecord) -> str:
    return json.dumps({
        "job": record_from_job(record.job), "state": record.state.value,
        "ready_time": record.ready_time, "attempts": record.attempts, "start": record.start,
        "end": record.end, "device": record.device, "node": record.node,
        "batch_size": record.batch_size, "solo_seconds": record.solo_seconds,
        "reason": record.reason}, separators=(",", ":"))


def _record_from_json(text: str) -> JobRecord:
    d = json.loads(text)
    return JobRecord(job_from_record(d["job"]), state=JobState(d["state"]),
                     ready_time=d["ready_time"], attempts=d["attempts"], start=d["start"],
                     end=d["end"], device=d["device"], node=d["node"],
                     batch_size=d["batch_size"], solo_seconds=d["solo_seconds"],
                     reason=d["reason"])


class Journal:
    """One run's journal; ``meta`` says which run it is (checked on resume)."""

    def __init__(self, path: Path, meta: Mapping[str, str], *, resume: bool = False) -> None:
        self.path = path
        self.duplicates = 0  # outcomes refused because the job already had one
        if not resume:
            if path.exists():
                log.warning("%s holds an earlier run's journal; starting afresh replaces it "
                            "(add --resume %s to continue that run instead)", path, path.parent)
            for stale in (path, path.with_name(path.name + "-wal"),
                          path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
        elif not path.is_file():
            raise InputError("no journal here to resume from (was the run started with "
                             "--out this folder?)", path=path.parent, field="--resume")
        try:
            self.db = sqlite3.connect(path, isolation_level="DEFERRED")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.resumed = self._load(meta) if resume else Resumed()
        except sqlite3.DatabaseError as e:
            raise InputError(f"not a readable journal: {e}", path=path,
                             field="--resume") from None
        self.session = self.resumed.session + 1
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [*meta.items(), ("schema", str(SCHEMA_VERSION)),
                                 ("sessions", str(self.session))])

    def _load(self, meta: Mapping[str, str]) -> Resumed:
        known = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if known.get("schema") != str(SCHEMA_VERSION):
            raise InputError(f"journal schema {known.get('schema')!r}, this version reads "
                             f"{SCHEMA_VERSION}", path=self.path, field="--resume")
        for key, value in meta.items():
            if key in known and known[key] != value:
                raise InputError(f"this run folder holds a run with {key} {known[key]!r}, "
                                 f"not {value!r}; resume it with the same {key}",
                                 path=self.path, field="--resume")
        out = Resumed(session=int(known.get("sessions", "0")))
        for text, in self.db.execute("SELECT record FROM results"):
            record = _record_from_json(text)
            out.finished[record.id] = record
        for job, attempt in self.db.execute(
                "SELECT job, MAX(attempt) FROM transitions WHERE state = 'running' "
                "GROUP BY job"):
            if job not in out.finished:
                out.attempts[job] = attempt
        last = self.db.execute("SELECT MAX(t) FROM transitions").fetchone()[0]
        done = self.db.execute("SELECT MAX(t) FROM results").fetchone()[0]
        out.clock = max(last or 0.0, done or 0.0)
        return out

    # -- what the controller reports --------------------------------------------------------

    def transition(self, t: float, record: JobRecord, reason: str | None = None) -> None:
        """The job entered ``record.state`` (running: on ``record.batch``)."""
        self.db.execute(
            "INSERT INTO transitions (t, job, state, attempt, batch, device, reason, session) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (t, record.id, record.state.value, record.attempts, record.batch, record.device,
             reason, self.session))

    def finished(self, t: float, record: JobRecord) -> bool:
        """Record the job's outcome; False (and counted) when it already has one."""
        try:
            self.db.execute("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
                            (record.id, record.state.value, record.attempts, t,
                             _record_json(record), self.session))
        except sqlite3.IntegrityError:
            self.duplicates += 1
            return False
        return True

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()


def read_results(path: Path) -> dict[str, tuple[str, int, int]]:
    """Job id -> (state, attempts, session) of every recorded outcome (tests, chaos bench)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {job: (state, attempts, session) for job, state, attempts, session in
                db.execute("SELECT job, state, attempts, session FROM results")}


def running_transitions(path: Path) -> list[tuple[str, int, int]]:
    """(job, attempt, session) of every dispatch, in order."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return list(db.execute("SELECT job, attempt, session FROM transitions "
                               "WHERE state = 'running' ORDER BY seq"))
