"""What a submission costs through attnsched's API, and through Ray Serve doing the same.

    pip install "ray[serve]"      # for the second case only
    python bench/serve_ingress.py [--jobs 500]

Both cases accept the same job the same way (``Service.accept``: stamp, admit,
commit to SQLite, hand to an inbox); no run loop drains it, so only the
ingress differs:

- **attnsched**: ``attnsched serve``'s FastAPI app under uvicorn on a thread of
  the process that holds the service (what ``attnsched serve`` runs);
- **Ray Serve**: the same routes as a Ray Serve deployment with a FastAPI
  ingress (HTTP proxy on 127.0.0.1), forwarding each submission to a Ray
  actor that holds the service, the shape a Serve ingress in front of the
  controller would take.

Prints each one's submit latency (p50/p99, one request at a time) and
throughput (``--jobs`` requests from 32 concurrent aiohttp clients), and the
ratios, measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from scheduler.serve.admission import Admission, Verdict
from scheduler.serve.service import ServeOptions, Service

JOB = {"kind": "prefill", "batch": 1, "heads": 2, "kv_heads": 1, "q_len": 64, "kv_len": 64,
       "head_dim": 16, "dtype": "fp32"}


def stub_service(state: Path) -> Service:
    """A service with no run loop: accepted jobs stay in its inbox."""
    service = Service(ServeOptions(state, port=0, max_queue=10**9), "bench")
    service.inbox.clock = time.monotonic
    service.admission = Admission(devices=2, seconds_of=lambda job: 0.001, max_queue=10**9)
    return service


async def load(url: str, token: str, jobs: int, prefix: str) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        one: list[float] = []
        for i in range(50):  # one at a time: the latency of a submission
            t = time.perf_counter()
            async with session.post(f"{url}/v1/jobs", json={**JOB, "id": f"{prefix}s{i}"}) as r:
                assert r.status == 202, await r.text()
            one.append(time.perf_counter() - t)
        gate = asyncio.Semaphore(32)

        async def submit(i: int) -> None:
            async with gate, session.post(f"{url}/v1/jobs",
                                          json={**JOB, "id": f"{prefix}c{i}"}) as r:
                assert r.status == 202, await r.text()

        t0 = time.perf_counter()
        await asyncio.gather(*(submit(i) for i in range(jobs)))
        rate = jobs / (time.perf_counter() - t0)
    one.sort()
    return {"p50": statistics.median(one), "p99": one[int(len(one) * 0.99) - 1], "rate": rate}


def ours(state: Path, jobs: int) -> dict[str, float]:
    from scheduler.serve.app import make_app, run_in_thread

    service = stub_service(state)
    ports: list[int] = []
    server = run_in_thread(make_app(service), "127.0.0.1", 0, ports.append)
    try:
        return asyncio.run(load(f"http://127.0.0.1:{ports[0]}", service.token, jobs, "a"))
    finally:
        server.should_exit = True


def ray_serve(state: Path, jobs: int) -> dict[str, float]:
    import ray
    from ray import serve

    from scheduler.traces.canonical import job_from_record

    @ray.remote
    class Holder:
        def __init__(self) -> None:
            self.service = stub_service(state)

        def token(self) -> str:
            return self.service.token

        def accept(self, record: dict[str, Any]) -> float:
            answer = self.service.accept(job_from_record({**record, "submit_time": 0.0}),
                                         None)
            if answer is None or isinstance(answer, Verdict):
                raise RuntimeError(f"not accepted: {answer}")
            return float(answer.submit_time)

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=64)  # the default (5) queues the 32 in flight
    @serve.ingress(app)
    class Ingress:
        def __init__(self, holder: Any) -> None:
            self.holder = holder

        @app.post("/v1/jobs", status_code=202)
        async def submit(self, request: Request) -> JSONResponse:
            # Named in the body so the replica's pickled globals carry it: FastAPI reads the
            # annotation (a string here) against them.
            assert isinstance(request, Request)
            record = await request.json()
            submitted = await self.holder.accept.remote(record)
            return JSONResponse({"id": record["id"], "submit_time": submitted},
                                status_code=202)

    port = 18765
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        holder = Holder.remote()  # type: ignore[attr-defined]
        token = ray.get(holder.token.remote())
        serve.run(Ingress.bind(holder), route_prefix="/")  # type: ignore[attr-defined]
        return asyncio.run(load(f"http://127.0.0.1:{port}", token, jobs, "b"))
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = ours(Path(tmp) / "a", args.jobs)
        b = ray_serve(Path(tmp) / "b", args.jobs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    for name, r in (("attnsched (FastAPI in process)", a), ("Ray Serve ingress + actor", b)):
        print(f"{name:31s}: submit p50 {r['p50'] * 1e3:6.2f} ms, p99 {r['p99'] * 1e3:6.2f} ms; "
              f"{r['rate']:7.1f} submissions/s with 32 in flight")
    print(f"ratio: Ray Serve's p50 is {b['p50'] / a['p50']:.1f}x, its throughput "
          f"{b['rate'] / a['rate']:.2f}x attnsched's")


if __name__ == "__main__":
    main()
