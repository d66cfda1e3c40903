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

The journal's ``meta`` holds the run's :class:`RunIdentity`: a digest of the
trace's bytes and every option that shapes the job stream or the cluster. A
resume whose identity differs is refused, naming what changed, so a folder
never mixes two runs' jobs. ``meta`` also says whether the run finished: a
fresh run may replace a finished run's journal, never an unfinished one's
unless told to (``--overwrite``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from scheduler.errors import InputError
from scheduler.inputfiles import MAX_ECHO, clip, regular_file
from scheduler.state import JobRecord, JobState
from scheduler.traces.canonical import job_from_record, record_from_job

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2  # 2: meta holds the run identity and whether the run finished
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


CHUNK = 1 << 20  # bytes hashed at a time: a trace is digested without being held


def file_digest(path: Path, *, field: str | None = None) -> str:
    """BLAKE2b of the file's bytes, read in 1 MiB chunks (hex)."""
    regular_file(path, field=field)
    digest = hashlib.blake2b(digest_size=20)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise InputError(f"cannot read file: {e.strerror or e}", path=path,
                         field=field) from None
    return digest.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What a live run's job stream and cluster depend on; a resume must match it exactly.

    The trace is named by its content (``trace_digest``), never by its path, so
    the same file reached another way (relative, absolute, a link) resumes
    while a file rewritten in place does not. ``trace`` is the path as given,
    kept for people reading the journal and never compared. ``speed`` and
    ``telemetry_interval`` are absent on purpose: they change when things
    happen, not which jobs run where.
    """

    policy: str
    trace: str = ""
    trace_digest: str | None = None
    format: str | None = None
    model: str | None = None
    token_scale: float = 1.0
    limit: int | None = None
    policy_options: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    emulate_gpus: int = 0
    cpu_workers: int = 0
    memory_fraction: float = 0.9
    address: str | None = None
    slow: Mapping[str, float] = field(default_factory=dict)
    profiles: Mapping[str, str] = field(default_factory=dict)  # name -> file digest

    def meta(self) -> dict[str, str]:
        """Each field as JSON text: what the journal's ``meta`` table stores."""
        return {key: json.dumps(value, sort_keys=True, separators=(",", ":"))
                for key, value in asdict(self).items()}


# How a difference in each compared key is named to the user: the option it came from.
_OPTION = {"format": "--format", "model": "--model", "token_scale": "--token-scale",
           "limit": "--limit", "policy": "--policy", "policy_options": "--policy-opt",
           "seed": "--seed", "emulate_gpus": "--emulate-gpus", "cpu_workers": "--cpu-workers",
           "memory_fraction": "--memory-fraction", "address": "--address", "slow": "--slow",
           "profiles": "--profile"}
COMPARED = ("trace_digest", *_OPTION)
assert set(COMPARED) == {f.name for f in fields(RunIdentity)} - {"trace"}


def _shown(text: str | None) -> str:
    """A stored meta value as the user would have typed it, clipped."""
    if text is None:
        return "(none)"
    try:
        value: Any = json.loads(text)
    except ValueError:
        return clip(text)
    if value is None:
        return "(none)"
    if isinstance(value, dict):  # as --slow/--profile/--policy-opt take it: KEY=VALUE
        pairs = ",".join(f"{k}={v}" for k, v in value.items()) or "(none)"
        return pairs if len(pairs) <= MAX_ECHO else pairs[:MAX_ECHO] + "..."
    return clip(value) if isinstance(value, str) else str(value)


def _digest(text: str | None) -> str:
    shown = _shown(text)
    return shown if shown == "(none)" else shown.strip("'")[:16]


def differences(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Each compared key whose value differs, worded as "--limit 200 not 100"."""
    out = []
    for key in COMPARED:
        was, now = recorded.get(key), current.get(key)
        if was == now:
            continue
        if key == "trace_digest":
            out.append(f"a different trace (content changed: digest {_digest(was)} "
                       f"not {_digest(now)})")
        else:
            out.append(f"{_OPTION[key]} {_shown(was)} not {_shown(now)}")
    return out


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
    """One run's journal; ``identity`` says which run it is (checked on resume).

    A fresh journal (``resume`` false) replaces one already there only when
    that run finished, did nothing, or ``overwrite`` says so: an interrupted
    run's journal is the one thing that lets it continue, so it is never
    deleted by a rerun that merely forgot ``--resume``.
    """

    def __init__(self, path: Path, identity: RunIdentity, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.path = path
        self.duplicates = 0  # outcomes refused because the job already had one
        meta = identity.meta()
        if not resume:
            self._replace(overwrite)
        elif not path.is_file():
            raise InputError("no journal here to resume from (was the run started with "
                             "--out this folder?)", path=path.parent, field="--resume")
        try:
            self.db = sqlite3.connect(path, isolation_level="DEFERRED")
        except sqlite3.DatabaseError as e:
            raise InputError(f"not a readable journal: {e}", path=path,
                             field="--resume") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.resumed = self._load(meta) if resume else Resumed()
        except BaseException as e:
            # A refused resume must not leave the journal open: its -wal would stay until
            # the garbage collector closed it, and the run would read as unclosed.
            self.db.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise InputError(f"not a readable journal: {e}", path=path,
                                 field="--resume") from None
            raise
        self.session = self.resumed.session + 1
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [*meta.items(), ("schema", str(SCHEMA_VERSION)),
                                 ("sessions", str(self.session)), ("finished", "0")])

    def _replace(self, overwrite: bool) -> None:
        """Delete the journal already here, if any, once that is safe or asked for."""
        if not self.path.exists():
            return
        state = journal_state(self.path)
        if state.finished or not state.work:
            log.warning("%s holds an earlier run's journal; starting afresh replaces it",
                        self.path)
        elif overwrite:
            log.warning("%s holds an unfinished run (%d jobs finished); --overwrite "
                        "replaces it", self.path, state.outcomes)
        else:
            raise InputError(f"this folder holds an unfinished run ({state.outcomes} jobs "
                             f"finished); use --resume {self.path.parent} to continue it "
                             "or --overwrite to replace it", path=self.path.parent,
                             field="--out")
        for stale in (self.path, self.path.with_name(self.path.name + "-wal"),
                      self.path.with_name(self.path.name + "-shm")):
            stale.unlink(missing_ok=True)

    def _load(self, meta: Mapping[str, str]) -> Resumed:
        known = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if known.get("schema") == "1":
            raise InputError("this journal is from an older attnsched (schema 1) and records "
                             "no digest of its trace, so resuming cannot check it is the same "
                             "run; finish it with the version that started it, or start "
                             "afresh with --overwrite", path=self.path, field="--resume")
        if known.get("schema") != str(SCHEMA_VERSION):
            raise InputError(f"journal schema {clip(known.get('schema'))}, this version reads "
                             f"{SCHEMA_VERSION}", path=self.path, field="--resume")
        changed = differences(known, meta)
        if changed:
            raise InputError(f"this run folder holds a run with {', '.join(changed)}; rerun "
                             "with the same inputs or start afresh with --overwrite",
                             path=self.path.parent, field="--resume")
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

    def finish(self) -> None:
        """Close, marking the run finished: its outputs are written, a rerun may replace it."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('finished', '1')")
        self.close()


@dataclass(frozen=True)
class JournalState:
    """What a journal already in a folder says about its run, read without changing it."""

    finished: bool
    work: bool  # any job was dispatched or finished: something a rerun would lose
    outcomes: int  # jobs with a recorded outcome
    meta: Mapping[str, str] = field(default_factory=dict)  # the run identity, and more


def journal_state(path: Path) -> JournalState:
    """Whether the journal's run finished and whether it holds any work.

    A journal whose writer is gone without closing it (killed, or still
    running) has its latest commits in the ``-wal`` file: that one is read
    through SQLite's read-only mode, which leaves the journal's bytes as they
    are; a closed one is opened immutable, which creates no ``-wal`` beside
    it. Schema 1 journals did not record ``finished``: their run counts as
    finished when its ``summary.json`` was written and the journal closed.
    Unreadable: unfinished (only ``--overwrite`` replaces it).
    """
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "immutable=1"
    try:
        with closing(sqlite3.connect(f"file:{path}?{mode}", uri=True)) as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            outcomes = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            moves = db.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
    except sqlite3.DatabaseError:
        return JournalState(finished=False, work=True, outcomes=0)
    if "finished" in meta:
        finished = meta["finished"] == "1"
    else:
        finished = (path.parent / "summary.json").is_file() and not wal.exists()
    return JournalState(finished, bool(outcomes or moves), outcomes, meta)


def read_results(path: Path) -> dict[str, tuple[str, int, int]]:
    """Job id -> (state, attempts, session) of every recorded outcome (tests, chaos bench)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {job: (state, attempts, session) for job, state, attempts, session in
                db.execute("SELECT job, state, attempts, session FROM results")}


def outcomes(path: Path) -> dict[str, dict[str, Any]]:
    """Job id -> its recorded outcome (the job record's fields: state, start, end, ...)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {job: json.loads(record)
                for job, record in db.execute("SELECT job, record FROM results")}


def running_transitions(path: Path) -> list[tuple[str, int, int]]:
    """(job, attempt, session) of every dispatch, in order."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return list(db.execute("SELECT job, attempt, session FROM transitions "
                               "WHERE state = 'running' ORDER BY seq"))
