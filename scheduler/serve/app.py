"""The service's HTTP/JSON API (FastAPI): submit, look up, cancel, list, status.

Every route but ``/v1/health`` needs ``Authorization: Bearer TOKEN`` (the
token in the state folder). A job is a canonical trace row (the fields
``attnsched trace`` reads, ``submit_time`` left to the service); it is on
disk before ``202 Accepted`` is sent. The OpenAPI schema is served at
``/openapi.json`` and browsable at ``/docs``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scheduler.errors import InputError
from scheduler.serve.admission import Verdict
from scheduler.serve.state import FINAL, outcome, token_matches
from scheduler.serve.submission import submitted_job

if TYPE_CHECKING:
    from scheduler.serve.service import Service

MAX_BODY = 1 << 20  # bytes of one job's JSON: a spec, not data
MAX_WAIT_S = 30.0  # longest a GET may wait for a job to end
CANCEL_WAIT_S = 5.0  # how long a DELETE waits for the run loop to take the cancellation
_SUBMIT_BODY = {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "description": "one job: a canonical "
                                    "trace row without submit_time, plus slo (a class)"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "job": {"type": "string", "description": "the job's JSON (its shape comes from the "
                "tensors)"},
        "tensors": {"type": "string", "format": "binary",
                    "description": "safetensors with q, k and v"},
        "q": {"type": "string", "format": "binary", "description": ".npy or safetensors"},
        "k": {"type": "string", "format": "binary"},
        "v": {"type": "string", "format": "binary"}}}}}}
_SUBMIT_ANSWERS: dict[int | str, dict[str, Any]] = {
    409: {"description": "a job with this id was submitted before"},
    411: {"description": "tensors without a Content-Length"},
    413: {"description": "the job's JSON or its tensors are too large"},
    422: {"description": "a field (or tensor) at fault, named in `field`"},
    429: {"description": "refused by admission (queue, slo, quota); see Retry-After"},
    503: {"description": "starting or stopping; see Retry-After"}}
BEARER = HTTPBearer(auto_error=False, description="the token in the service's state folder")


def make_app(service: Service) -> FastAPI:
    app = FastAPI(title="attnsched", version="1",
                  description="Submit attention jobs to an attnsched scheduler.")

    def authorized(given: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
                   ) -> None:
        if given is None or not token_matches(given.credentials.strip(), service.token):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer TOKEN; "
                                "the token is in the service's state folder)",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

    @app.exception_handler(InputError)
    def bad_input(_: Request, e: InputError) -> JSONResponse:
        return JSONResponse({"detail": e.reason, "field": e.field}, status_code=422)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ready" if service.ready() else "starting"}

    @app.post("/v1/jobs", status_code=202, dependencies=auth, responses=_SUBMIT_ANSWERS,
              openapi_extra={"requestBody": _SUBMIT_BODY})
    async def submit(request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            record, qkv, data = await _with_tensors(request,
                                                    service.options.max_tensor_bytes)
            return _submitted(service, record, qkv, data)
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"a job's JSON is at most {MAX_BODY:,} bytes")
        return _submitted(service, _record(body))

    @app.get("/v1/jobs/{job_id}", dependencies=auth)
    def lookup(job_id: str, wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S)) -> dict[str, Any]:
        return _lookup(service, job_id, wait)

    @app.get("/v1/jobs/{job_id}/output", dependencies=auth, response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "O as safetensors (tensor o) or .npy"},
                        404: {"description": "no such job, or it brought no tensors"},
                        409: {"description": "not done yet, or failed"}})
    def output(job_id: str, format: str = Query("safetensors", pattern="^(safetensors|npy)$")
               ) -> Response:
        return _output(service, job_id, format)

    @app.delete("/v1/jobs/{job_id}", dependencies=auth)
    def cancel(job_id: str) -> dict[str, Any]:
        return _cancel(service, job_id)

    @app.get("/v1/status", dependencies=auth)
    def status() -> dict[str, Any]:
        return service.status()

    @app.get("/v1/queue", dependencies=auth)
    def queue(limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"jobs": service.unfinished(limit)}

    return app


def _record(body: bytes) -> dict[str, Any]:
    import json

    try:
        record = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"not JSON: {e}") from None
    if not isinstance(record, dict):
        raise HTTPException(422, "expected a JSON object: one job's fields")
    return record


async def _with_tensors(request: Request, limit: int
                        ) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """A multipart submission: the job's JSON in part ``job``, its tensors in ``tensors``
    (one safetensors file) or ``q``, ``k``, ``v``; returns the job's fields, Q, K and V,
    and the tensors as one safetensors file (a bundle as sent: it was read whole)."""
    from scheduler.serve import tensors

    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(411, "a submission with tensors needs a Content-Length")
    if int(length) > limit + MAX_BODY:
        raise HTTPException(413, f"the tensors are at most {limit:,} bytes (--max-tensor-mib)")
    form = await request.form(max_files=4, max_fields=4, max_part_size=MAX_BODY)
    parts = {}
    for name in (tensors.BUNDLE, *tensors.NAMES):
        upload = form.get(name)
        if upload is not None and not isinstance(upload, str):
            parts[name] = await upload.read()
    if sum(map(len, parts.values())) > limit:  # the exact bound; Content-Length's is coarse
        raise HTTPException(413, f"the tensors are at most {limit:,} bytes (--max-tensor-mib)")
    job = form.get("job")
    record = _record(job.encode() if isinstance(job, str) else b"{}")
    qkv = tensors.read(parts)
    return record, qkv, parts.get(tensors.BUNDLE) or tensors.encode(qkv)


def _submitted(service: Service, record: dict[str, Any], qkv: dict[str, Any] | None = None,
               tensors: bytes | None = None) -> JSONResponse:
    if not service.ready():
        raise HTTPException(503, "the service is starting or stopping",
                            headers={"Retry-After": "1"})
    record.setdefault("id", f"job-{uuid.uuid4().hex[:12]}")
    job = submitted_job(record, qkv)
    answer = service.accept(job, record.get("slo"), tensors)
    if answer is None:
        raise HTTPException(409, f"a job with id {record['id']!r} was submitted before")
    if isinstance(answer, Verdict):
        if not answer.retry_after:  # never admissible as it is: not a matter of load
            return JSONResponse({"detail": answer.detail, "reason": answer.reason,
                                 "field": "tenant"}, status_code=422)
        return JSONResponse({"detail": answer.detail, "reason": answer.reason},
                            status_code=429, headers={"Retry-After": str(answer.retry_after)})
    return JSONResponse({"id": answer.id, "state": "accepted",
                         "submit_time": answer.submit_time, "priority": answer.priority,
                         "deadline": answer.deadline}, status_code=202)


def _lookup(service: Service, job_id: str, wait: float) -> dict[str, Any]:
    if job_id not in service.accepted:
        raise HTTPException(404, f"no job {job_id!r} was accepted here")
    deadline = time.monotonic() + wait
    while True:
        found = outcome(service.state, job_id) or {"state": "accepted"}
        if found["state"] in FINAL or time.monotonic() >= deadline:
            return _shown(job_id, found)
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _shown(job_id: str, found: dict[str, Any]) -> dict[str, Any]:
    keys = ("state", "attempts", "start", "end", "device", "node", "reason")
    out: dict[str, Any] = {"id": job_id, **{k: found.get(k) for k in keys}}
    if found.get("job"):
        out["submit_time"] = found["job"].get("submit_time")
    return out


def _output(service: Service, job_id: str, format: str) -> Response:
    from scheduler.serve import tensors

    if job_id not in service.accepted:
        raise HTTPException(404, f"no job {job_id!r} was accepted here")
    data = service.payloads.output(job_id)
    if data is None:
        found = outcome(service.state, job_id) or {"state": "accepted"}
        if found["state"] not in FINAL:
            raise HTTPException(409, f"job {job_id!r} is {found['state']}: no output yet")
        if found["state"] == "failed":
            raise HTTPException(409, f"job {job_id!r} failed: {found.get('reason')}")
        raise HTTPException(404, f"job {job_id!r} brought no tensors: it has no output")
    if format == "npy":
        data = tensors.as_npy(data)
    return Response(data, media_type="application/octet-stream")


def _cancel(service: Service, job_id: str) -> dict[str, Any]:
    if job_id not in service.accepted:
        raise HTTPException(404, f"no job {job_id!r} was accepted here")
    found = outcome(service.state, job_id)
    if found is not None and found["state"] in FINAL:
        raise HTTPException(409, f"job {job_id!r} is {found['state']} already")
    request = service.cancel(job_id)
    try:
        state = request.outcome.result(timeout=CANCEL_WAIT_S)
    except TimeoutError:
        raise HTTPException(503, "the run loop did not take the cancellation in time",
                            headers={"Retry-After": "1"}) from None
    if state in ("queued", "blocked", "split"):
        return {"id": job_id, "state": "cancelled"}
    if state == "running":  # it ends, failed, when its batch stops (between launches)
        return {"id": job_id, "state": "cancelling"}
    raise HTTPException(409, f"job {job_id!r} is {state}: it cannot be cancelled")


def run_in_thread(app: FastAPI, host: str, port: int,
                  started: Callable[[int], None]) -> Any:
    """Serve ``app`` from a daemon thread; ``started(port)`` once it listens."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           access_log=False))

    thread = threading.Thread(target=server.run, name="attnsched-http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise InputError(f"cannot listen on {host}:{port}", field="--port")
        time.sleep(0.01)
    started(server.servers[0].sockets[0].getsockname()[1])
    return server
