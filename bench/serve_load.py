"""Load on ``attnsched serve``: a trace's arrivals as HTTP submissions, beside ``attnsched run``.

    python bench/serve_load.py [--jobs 600] [--speed 2] [--slo interactive=2]

Generates the default tiny trace (``attnsched trace generate --model tiny``),
starts ``attnsched serve`` on 127.0.0.1 with its default options (a state
folder in a temporary directory), and replays the trace's arrival times (÷
``--speed``) as submissions from an async HTTP client (aiohttp): prompts and
decodes in class ``interactive``, training steps in ``batch``. It stops by
itself once every job has ended or been refused. Prints the submit latency
(p50/p99), jobs accepted per second, jobs shed (429) by class, queue delay
and JCT per class, and the same trace replayed by ``attnsched run`` at the
same speed, in the same run. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import aiohttp

from scheduler.client import connect
from scheduler.serve.admission import parse_classes
from scheduler.traces import open_trace
from scheduler.traces.canonical import record_from_job

EXE = str(Path(sys.executable).with_name("attnsched"))


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


async def replay(url: str, token: str, rows: list[dict[str, Any]], speed: float
                 ) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    latency: list[float] = []
    taken: dict[str, str] = {}  # id -> class
    shed: dict[str, int] = defaultdict(int)
    first = rows[0]["submit_time"]
    async with aiohttp.ClientSession(headers=headers) as session:
        t0 = time.monotonic()

        async def one(row: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, t0 + (row["submit_time"] - first) / speed
                                    - time.monotonic()))
            slo = "batch" if row["kind"] == "train" else "interactive"
            body = {k: v for k, v in row.items() if k != "submit_time"} | {"slo": slo}
            start = time.monotonic()
            async with session.post(f"{url}/v1/jobs", json=body) as r:
                latency.append(time.monotonic() - start)
                if r.status == 202:
                    taken[row["id"]] = slo
                elif r.status == 429:
                    shed[slo] += 1
                else:
                    raise RuntimeError(f"{r.status}: {await r.text()}")

        await asyncio.gather(*(one(r) for r in rows))
        span = time.monotonic() - t0
        ended: dict[str, dict[str, Any]] = {}
        while len(ended) < len(taken):
            for job in [j for j in taken if j not in ended]:
                async with session.get(f"{url}/v1/jobs/{job}?wait=0") as r:
                    found = await r.json()
                if found["state"] in ("done", "failed"):
                    ended[job] = found
            await asyncio.sleep(0.2)
    return {"latency": latency, "taken": taken, "shed": shed, "ended": ended, "span": span}


def serve(state: Path, slo: list[str]) -> subprocess.Popen[bytes]:
    args = [EXE, "serve", "--port", "0", "--state", str(state)]
    for item in slo:
        args += ["--slo", item]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if connect(state).status()["ready"]:
                return process
        except Exception:  # not up yet
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the service did not come up in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--slo", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace, state = Path(tmp) / "t.jsonl", Path(tmp) / "state"
        subprocess.run([EXE, "trace", "generate", "-o", str(trace), "--jobs", str(args.jobs),
                        "--seed", "11", "--model", "tiny"], check=True,
                       stdout=subprocess.DEVNULL)
        rows = [record_from_job(j) for j in open_trace(trace, "auto", None, 1.0).jobs()]
        process = serve(state, args.slo)
        try:
            client = connect(state)
            got = asyncio.run(replay(client.url, client.token, rows, args.speed))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
        subprocess.run([EXE, "run", str(trace), "--speed", f"{args.speed:g}", "--out",
                        str(Path(tmp) / "run")], check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {len(rows)} tiny jobs at --speed {args.speed:g}")
    lat = got["latency"]
    print(f"submit latency p50 {p(lat, 0.5) * 1e3:.1f} ms, p99 {p(lat, 0.99) * 1e3:.1f} ms; "
          f"accepted {len(got['taken'])} ({len(got['taken']) / got['span']:.1f} jobs/s over "
          f"{got['span']:.1f} s), shed {dict(got['shed']) or 0}")
    targets = {n: c.max_delay_s for n, c in parse_classes(args.slo).items()}
    for cls in ("interactive", "batch"):
        ended = [e for j, e in got["ended"].items() if got["taken"][j] == cls
                 and e["state"] == "done"]
        if ended:
            jct = [e["end"] - e["submit_time"] for e in ended]
            delay = [e["start"] - e["submit_time"] for e in ended]
            target = targets.get(cls)
            met = "" if target is None else (
                f", {sum(d <= target for d in delay) / len(delay):.0%} within {target:g} s")
            print(f"  {cls:11s}: {len(ended)} done, queue delay mean "
                  f"{statistics.mean(delay):.3f} s p99 {p(delay, 0.99):.3f} s{met}, JCT mean "
                  f"{statistics.mean(jct):.3f} s p99 {p(jct, 0.99):.3f} s")
    speed = args.speed
    print(f"attnsched run, same trace and speed: JCT mean {summary['jct_mean'] / speed:.3f} s "
          f"p99 {summary['jct_p99'] / speed:.3f} s (wall seconds), "
          f"{summary['jobs_completed']} done")


if __name__ == "__main__":
    main()
