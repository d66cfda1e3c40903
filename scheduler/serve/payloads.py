"""Where a service keeps jobs' own tensors: ``inputs/`` until the job ends, ``outputs/`` after.

Files are named by a digest of the job id (ids are the client's strings),
written to a temporary name, synced and renamed, so a file that exists is
whole. A job's inputs are on disk before it is acknowledged, as the job
itself is (:class:`~scheduler.serve.state.Accepted`): a restarted service
runs it on the same tensors. Outputs stay until the state folder is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path


def _name(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:32] + ".safetensors"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


class Payloads:
    """Inputs and outputs of the jobs that brought tensors; safe from any thread."""

    def __init__(self, state: Path) -> None:
        self.inputs_dir, self.outputs_dir = state / "inputs", state / "outputs"
        self._lock = threading.Lock()
        self._held: set[str] = set()  # ids whose inputs are on disk (the run loop asks often)

    def stage(self, job_id: str, data: bytes) -> Path:
        """Write inputs under a name of their own, before the job is judged."""
        path = self.inputs_dir / f".staged-{_name(job_id)}"
        _write(path, data)
        return path

    def commit(self, job_id: str, staged: Path) -> None:
        """The job was accepted: its staged inputs become its inputs."""
        os.replace(staged, self.inputs_dir / _name(job_id))
        with self._lock:
            self._held.add(job_id)

    def restore(self, job_ids: Iterable[str]) -> None:
        """After a restart: note which of these jobs have inputs on disk."""
        found = {j for j in job_ids if (self.inputs_dir / _name(j)).exists()}
        with self._lock:
            self._held |= found

    def inputs(self, job_ids: Iterable[str]) -> dict[str, bytes]:
        """The inputs of those of ``job_ids`` that brought tensors."""
        with self._lock:
            mine = [j for j in job_ids if j in self._held]
        return {j: (self.inputs_dir / _name(j)).read_bytes() for j in mine}

    def save_outputs(self, outputs: Mapping[str, bytes]) -> None:
        """Jobs' outputs, on disk before their outcome is journalled; their inputs go."""
        for job_id, data in outputs.items():
            _write(self.outputs_dir / _name(job_id), data)
            self.drop(job_id)

    def drop(self, job_id: str) -> None:
        """The job ended: its inputs are no longer needed."""
        with self._lock:
            self._held.discard(job_id)
        with contextlib.suppress(FileNotFoundError):
            (self.inputs_dir / _name(job_id)).unlink()

    def output(self, job_id: str) -> bytes | None:
        path = self.outputs_dir / _name(job_id)
        return path.read_bytes() if path.exists() else None
