"""A Python client for ``attnsched serve``.

    from scheduler.client import connect
    c = connect()                       # the service on ./attnsched-state (its URL and token)
    h = c.submit({"kind": "prefill", "batch": 1, "heads": 2, "kv_heads": 1, "q_len": 128,
                  "kv_len": 128, "head_dim": 16, "dtype": "fp32"})
    h.result()                          # waits; {"state": "done", "device": ..., ...}
    c.status(), c.queue(), h.cancel()
    h = c.submit({"causal": True}, tensors={"q": q, "k": k, "v": v})   # the job's own data
    o = h.output()                      # softmax(QKᵀ/√d)V, a torch tensor

A job is a canonical trace row (``docs/traces.md``) without ``submit_time``,
or an :class:`~scheduler.jobs.AttentionJob`. Errors the service returns are
raised as :class:`ServiceError` with the HTTP status and the service's words.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from scheduler.errors import InputError
from scheduler.jobs import Job
from scheduler.serve.state import FINAL, TOKEN_FILE, endpoint

if TYPE_CHECKING:
    import torch

DEFAULT_STATE = Path("attnsched-state")
# A job's own Q, K and V: name -> tensor, array or object ref; or a safetensors file.
Tensors: TypeAlias = Mapping[str, Any] | bytes | str | Path


class ServiceError(Exception):
    """The service refused a request: ``status`` is the HTTP code, ``retry_after`` seconds
    when it asked to be retried (429, 503)."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None,
                 field: str | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.retry_after = status, detail, retry_after
        self.field = field  # the job's field a 422 names


@dataclass
class Client:
    url: str
    token: str = field(repr=False)  # a printed client must not show it
    timeout: float = 30.0
    state: Path | None = None  # where the URL came from: read again when the service moved

    def reconnect(self) -> None:
        """Read the service's URL again (a restarted service may listen elsewhere)."""
        if self.state is not None:
            with contextlib.suppress(InputError):  # not up yet: the caller retries
                self.url = endpoint(self.state).rstrip("/")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        return json.loads(self._request(method, path, data, "application/json"))

    def _request(self, method: str, path: str, data: bytes | None, content_type: str
                 ) -> bytes:
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            detail = body.get("detail", raw.decode(errors="replace"))
            retry = e.headers.get("Retry-After")
            raise ServiceError(e.code, str(detail), float(retry) if retry else None,
                               body.get("field")) from None

    def submit(self, job: Mapping[str, Any] | Job, tensors: Tensors | None = None) -> Handle:
        """Hand the service one job; returns once it is accepted (on the service's disk).

        ``tensors``: the job's own Q, K and V (``{"q": ..., "k": ..., "v": ...}``
        of torch tensors, numpy arrays or Ray object refs to either; or the
        bytes or path (str or Path) of a safetensors file holding q, k and v); the job is
        then one attention call whose shape the tensors give, and
        :meth:`Handle.output` returns O.
        """
        if not isinstance(job, Mapping):
            from scheduler.traces.canonical import record_from_job

            job = {k: v for k, v in record_from_job(job).items() if k != "submit_time"}
        body, content_type = (json.dumps(dict(job)).encode(), "application/json") \
            if tensors is None else _multipart(job, tensors)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                answer = json.loads(self._request("POST", "/v1/jobs", body, content_type))
                break
            except ServiceError as e:  # 503: starting (Ray and the workers); nothing accepted
                if e.status != 503 or time.monotonic() >= deadline:
                    raise
                time.sleep(e.retry_after or 0.5)
        return Handle(self, str(answer["id"]), float(answer["submit_time"]))

    def job(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        """What the service knows of a job now (waiting up to ``wait`` s for it to end)."""
        answer: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}?wait={wait:g}")
        return answer

    def cancel(self, job_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("DELETE", f"/v1/jobs/{job_id}")
        return answer

    def output(self, job_id: str, format: str = "safetensors") -> bytes:
        """The O of a job that brought tensors, as safetensors (tensor ``o``) or .npy bytes."""
        return self._request("GET", f"/v1/jobs/{job_id}/output?format={format}", None,
                             "application/json")

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", "/v1/status")
        return answer

    def queue(self, limit: int = 100) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self._call("GET", f"/v1/queue?limit={limit}")["jobs"]
        return answer


@dataclass
class Handle:
    """One submitted job."""

    client: Client
    id: str
    submit_time: float

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the job to end (``done`` or ``failed``); TimeoutError after ``timeout`` s.

        Survives a service restart: while the service is down (connection
        refused, 503) it keeps asking until the deadline.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 10.0 if deadline is None else max(0.0, min(10.0, deadline - time.monotonic()))
            try:
                found = self.client.job(self.id, wait=left)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                found = None
                time.sleep(min(0.5, left))
                self.client.reconnect()
            except ServiceError as e:
                if e.status != 503:
                    raise
                found = None
                time.sleep(min(e.retry_after or 0.5, left))
            if found is not None and found["state"] in FINAL:
                return found
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} has not ended after {timeout} s")

    def cancel(self) -> dict[str, Any]:
        """Cancel the job: a queued one ends now, a running one when its batch stops."""
        return self.client.cancel(self.id)

    def output(self, timeout: float | None = None) -> torch.Tensor:
        """Wait for the job to end; its O (for a job submitted with tensors)."""
        from safetensors.torch import load

        found = self.result(timeout)
        if found["state"] != "done":
            raise ServiceError(409, f"job {self.id} failed: {found.get('reason')}")
        return load(self.client.output(self.id))["o"]


def _multipart(job: Mapping[str, Any], tensors: Tensors) -> tuple[bytes, str]:
    """The job's JSON and its tensors as one multipart/form-data body."""
    from urllib3 import encode_multipart_formdata

    if isinstance(tensors, bytes):
        data = tensors
    elif isinstance(tensors, str | Path):
        try:
            data = Path(tensors).read_bytes()
        except OSError as e:
            raise InputError(f"cannot read the tensors: {e.strerror or e}", path=Path(tensors),
                             field="tensors") from None
    else:
        from scheduler.serve.tensors import NAMES, encode

        missing = [n for n in NAMES if n not in tensors]
        if missing:
            raise InputError("expected q, k and v", field=f"tensors.{missing[0]}")
        data = encode({n: _torch(tensors[n]) for n in NAMES})
    return encode_multipart_formdata({
        "job": json.dumps(dict(job)),
        "tensors": ("tensors.safetensors", data, "application/octet-stream")})


def _torch(value: Any) -> torch.Tensor:
    """A torch tensor from a tensor, a numpy array or a Ray object ref to either."""
    import torch

    if type(value).__name__ == "ObjectRef":
        import ray

        value = ray.get(value)  # fetched here: the service's API takes bytes, not refs
    if isinstance(value, torch.Tensor):
        return value
    import numpy as np

    return torch.from_numpy(np.array(value))  # a copy: arrays from Ray are read-only


def connect(state: str | Path = DEFAULT_STATE, *, url: str | None = None,
            token: str | None = None, timeout: float = 30.0) -> Client:
    """A client for the service on ``state`` (reads its URL and token), or at ``url``."""
    folder, given = Path(state), url
    if url is None:
        url = endpoint(folder)
    if token is None:
        token = (folder / TOKEN_FILE).read_text(encoding="utf-8").strip()
    return Client(url.rstrip("/"), token, timeout, folder if given is None else None)
