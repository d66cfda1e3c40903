"""A service's state folder: its token, the jobs it accepted, and the run's journal.

``--state DIR`` holds everything a restarted service needs:

- ``token``: the bearer token clients present, created once (0600, owner only);
- ``endpoint.json``: the URL of the service running on it (gone once it stops);
- ``accepted.sqlite``: every job the service acknowledged, committed *before*
  the acknowledgement is sent, so a job a client was told is accepted is on
  disk even if the service is killed (SIGKILL) the next instant; and every
  cancellation asked for, likewise;
- ``inputs/`` and ``outputs/``: the tensors of jobs that brought their own
  (:mod:`scheduler.serve.payloads`);
- ``journal.sqlite``: the run journal (:mod:`scheduler.journal`): each job's
  state changes and its one outcome. A restart replays the accepted jobs that
  have no outcome; those that do are never run again;
- the run's outputs (``jobs.parquet``, ``decisions.jsonl``, ...), written when
  the service stops, so ``attnsched report DIR`` reads a served period.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from scheduler.errors import InputError
from scheduler.jobs import Job
from scheduler.journal import FILE as JOURNAL_FILE
from scheduler.traces.canonical import job_from_record, record_from_job

TOKEN_FILE = "token"
ACCEPTED_FILE = "accepted.sqlite"
ENDPOINT_FILE = "endpoint.json"  # where a running service listens: clients find it here
FINAL = ("done", "failed")  # the states a job ends in
_SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT UNIQUE NOT NULL, tenant TEXT NOT NULL,
    slo TEXT NOT NULL, record TEXT NOT NULL, accepted_wall REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cancels (job TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


def token(state: Path) -> str:
    """The service's token, created (owner-only) on first use."""
    path = state / TOKEN_FILE
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise InputError("the token file is readable by others; chmod 600 it", path=path)
    return path.read_text(encoding="utf-8").strip()


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison: a wrong token's timing says nothing about the right one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Accepted:
    """The jobs a service acknowledged, in order; safe to use from several threads."""

    def __init__(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / ACCEPTED_FILE
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged job survives a crash
        self.db.executescript(_SCHEMA)

    def add(self, job: Job, slo: str, wall: float) -> bool:
        """Record ``job`` (of class ``slo``) durably; False when its id was accepted before."""
        text = json.dumps(record_from_job(job), sort_keys=True)
        with self._lock:
            try:
                self.db.execute("INSERT INTO accepted (job, tenant, slo, record, accepted_wall) "
                                "VALUES (?, ?, ?, ?, ?)", (job.id, job.tenant, slo, text, wall))
            except sqlite3.IntegrityError:
                return False
        return True

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            row = self.db.execute("SELECT 1 FROM accepted WHERE job = ?", (job_id,)).fetchone()
        return row is not None

    def jobs(self) -> Iterator[tuple[Job, str]]:
        """Every accepted job with its class, in the order it was accepted."""
        with self._lock:
            rows = self.db.execute("SELECT record, slo FROM accepted ORDER BY seq").fetchall()
        for text, slo in rows:
            yield job_from_record(json.loads(text)), slo

    def cancel(self, job_id: str, reason: str) -> None:
        """Record a client's cancellation durably, before the run loop takes it."""
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO cancels (job, reason) VALUES (?, ?)",
                            (job_id, reason))

    def cancels(self) -> dict[str, str]:
        """Job id -> reason of every cancellation asked for."""
        with self._lock:
            return dict(self.db.execute("SELECT job, reason FROM cancels").fetchall())

    def close(self) -> None:
        with self._lock:
            self.db.close()


def outcome(state: Path, job_id: str) -> dict[str, Any] | None:
    """What the journal says of a job: its outcome, else its latest state; None if nothing."""
    path = state / JOURNAL_FILE
    if not path.exists():
        return None
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT record FROM results WHERE job = ?", (job_id,)).fetchone()
        if row is not None:
            return dict(json.loads(row[0]))
        row = db.execute("SELECT state, device, attempt, t FROM transitions WHERE job = ? "
                         "ORDER BY seq DESC LIMIT 1", (job_id,)).fetchone()
    if row is None:
        return None
    latest, device, attempts, t = row
    return {"state": latest, "device": device, "attempts": attempts,
            "start": t if latest == "running" else None}


def latest_states(state: Path, job_ids: list[str]) -> dict[str, str]:
    """Each job's latest state in the journal (jobs it has none for are left out), in one
    read: a queue listing asks for up to 10,000."""
    path = state / JOURNAL_FILE
    if not path.exists() or not job_ids:
        return {}
    marks = ",".join("?" * len(job_ids))
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return dict(db.execute(
            f"SELECT job, state FROM transitions WHERE seq IN (SELECT MAX(seq) FROM "
            f"transitions WHERE job IN ({marks}) GROUP BY job)", job_ids).fetchall())


def endpoint(state: Path) -> str:
    """The URL of the service running on ``state``; InputError when none is."""
    path = state / ENDPOINT_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["url"])
    except (OSError, ValueError, KeyError):
        raise InputError("no service is running on this state folder (start one with "
                         "attnsched serve --state DIR)", path=state, field="--state") from None
