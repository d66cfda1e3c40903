"""``attnsched serve`` end to end: a real service process (its own local Ray, emulated
GPUs), a real HTTP client, SIGKILL and restart. Nothing accepted is lost or run twice;
nothing gets in without the token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from scheduler.client import Client, ServiceError, connect
from scheduler.journal import read_results
from tests.test_observability import free_port

pytestmark = pytest.mark.slow
ATTNSCHED = str(Path(sys.executable).with_name("attnsched"))


def _job(i: int, q_len: int = 256, kind: str = "prefill") -> dict[str, Any]:
    row = {"id": f"s{i}", "kind": kind, "batch": 2, "heads": 2, "kv_heads": 1,
           "q_len": 1 if kind == "decode" else q_len, "kv_len": q_len, "head_dim": 16,
           "dtype": "fp32", "tenant": f"t{i % 2}"}
    if kind == "decode":
        row["steps"] = 8
    return row


def _start(state: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [ATTNSCHED, "serve", "--policy", "greedy", "--emulate-gpus", "2", "--port", "0",
         "--state", str(state), *extra], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if connect(state).status()["ready"]:
                return process
        except Exception:  # not listening yet, or Ray still starting
            pass
        time.sleep(0.5)
    process.kill()
    raise AssertionError(log.read_text())


def _scrape(port: int, name: str) -> str:
    """The lines of one metric on the service's Prometheus endpoint, once it has some."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                          timeout=5).read().decode()
        except OSError:
            text = ""
        lines = [line for line in text.splitlines() if line.startswith(name)]
        if lines:
            return "\n".join(lines)
        time.sleep(1.0)
    raise AssertionError(f"{name} never exported")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    return process.wait(timeout=120)


def test_submit_result_cancel_status_and_the_served_log_replays(tmp_path: Path, cli) -> None:
    state, log = tmp_path / "state", tmp_path / "serve.log"
    port = free_port()
    process = _start(state, log, "--metrics-port", str(port))
    try:
        client = connect(state)
        with pytest.raises(ServiceError, match="401"):
            Client(client.url, "not-the-token").submit(_job(9))
        handles = [client.submit(_job(i, kind=k))
                   for i, k in enumerate(("prefill", "decode", "train", "prefill"))]
        results = [h.result(timeout=60) for h in handles]
        assert [r["state"] for r in results] == ["done"] * 4
        assert {r["device"] for r in results} <= {"head/gpu0", "head/gpu1"}
        assert all(r["end"] >= r["start"] >= r["submit_time"] for r in results)
        with pytest.raises(ServiceError, match="409"):
            handles[0].cancel()  # done already
        assert client.queue() == []
        exported = _scrape(port, "ray_attnsched_admissions_total")  # Ray exports every ~10 s
        assert 'verdict="accepted"' in exported and 'class="batch"' in exported
        assert _stop(process) == 0  # drains, writes the outputs, exits
    finally:
        if process.poll() is None:
            process.kill()
    jobs = pq.read_table(state / "jobs.parquet").to_pylist()
    assert sorted(r["id"] for r in jobs) == ["s0", "s1", "s2", "s3"]
    assert json.loads((state / "summary.json").read_text())["jobs_completed"] == 4
    code, text, err = cli("trace", "export", state, "-o", tmp_path / "served.jsonl")
    assert code == 0, err
    code, text, err = cli("simulate", tmp_path / "served.jsonl", "--policy", "adaptive")
    assert code == 0 and "4/4 jobs done" in text, err


def test_sigkill_and_restart_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    state, log = tmp_path / "state", tmp_path / "serve.log"
    process = _start(state, log)
    try:
        client = connect(state)
        handles = [client.submit(_job(i, q_len=2048)) for i in range(24)]
        while not read_results(state / "journal.sqlite"):  # some done, most still to run
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        before = read_results(state / "journal.sqlite")
        assert len(before) < 24, "every job ended before the kill: make them longer"
        process = _start(state, log)  # the same --state: resumes what has no outcome
        results = {h.id: h.result(timeout=120) for h in handles}  # the handles outlive it
        assert {r["state"] for r in results.values()} == {"done"}
        assert client.status()["classes"]["batch"]["done"] == 24  # both sessions' jobs
        assert _stop(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
    outcomes = read_results(state / "journal.sqlite")
    assert sorted(outcomes) == sorted(h.id for h in handles)  # each job one outcome
    for job, (_, _, session) in before.items():
        assert outcomes[job][2] == session  # what ended before the kill was not run again
    ids = pq.read_table(state / "jobs.parquet").column("id").to_pylist()
    assert sorted(ids) == sorted(h.id for h in handles)  # the outputs cover both sessions



def test_overload_sheds_interactive_jobs_at_once_and_runs_every_admitted_one(
        tmp_path: Path) -> None:
    """Past the interactive class's predicted-delay target, its jobs are refused with 429
    and Retry-After at once (batch work ahead does not count against it, and best-effort
    batch jobs are still taken); every job admitted runs, and the service counts both."""
    state, log = tmp_path / "state", tmp_path / "serve.log"
    process = _start(state, log, "--policy", "adaptive", "--slo", "interactive=0.5")
    try:
        client = connect(state)
        batch = [client.submit({**_job(i, q_len=2048), "slo": "batch"}) for i in range(30)]
        taken, shed = [], []
        for i in range(40):
            try:
                taken.append(client.submit({**_job(100 + i, q_len=4096), "slo": "interactive"}))
            except ServiceError as e:
                shed.append(e)
        assert taken and shed and all("interactive" in e.detail for e in shed)
        assert all(e.status == 429 and (e.retry_after or 0) >= 1 for e in shed)
        assert client.submit({**_job(999), "slo": "batch"})  # best effort is still taken
        ended = {h.id: h.result(timeout=120) for h in [*batch, *taken]}
        assert {r["state"] for r in ended.values()} == {"done"}
        status = client.status()
        assert status["classes"]["interactive"]["done"] == len(taken)
        shed_counted = sum(a["jobs"] for a in status["admissions"]
                           if (a["verdict"], a["class"]) == ("slo", "interactive"))
        assert shed_counted == len(shed)  # per tenant in the status; summed here
    finally:
        _stop(process)


def test_tensors_in_correct_output_out_and_a_running_job_cancelled(tmp_path: Path) -> None:
    """A job's own Q, K, V run on a worker and O comes back equal to the plain formula
    (causal fp32, non-causal bf16, grouped heads); a long running job is cancelled: it
    ends failed as cancelled long before it would have finished, and its device is free.
    A tenant's memory quota, priced by the service's cost model, refuses its job."""
    import torch

    from workers.kernels import reference_attention

    state, log = tmp_path / "state", tmp_path / "serve.log"
    process = _start(state, log, "--quota", "alice=none:1e-9")  # 1 byte of device memory
    try:
        client = connect(state)
        with pytest.raises(ServiceError) as refused:  # priced by the run's own cost model
            client.submit({**_job(7), "tenant": "alice"})
        assert refused.value.status == 422 and "device memory" in refused.value.detail
        assert refused.value.field == "tenant"  # its quota can never hold it: no retry helps
        g = torch.Generator().manual_seed(3)
        for dtype, causal, atol in ((torch.float32, True, 1e-5), (torch.bfloat16, False, 2e-2)):
            q = torch.randn(2, 4, 40, 16, generator=g).to(dtype)
            k, v = (torch.randn(2, 2, 56, 16, generator=g).to(dtype) for _ in range(2))
            out = client.submit({"causal": causal}, tensors={"q": q, "k": k, "v": v}).output(60)
            assert out.dtype == dtype and out.shape == q.shape
            torch.testing.assert_close(out.float(), reference_attention(q, k, v, causal).float(),
                                       atol=atol, rtol=atol)
        long = client.submit({"id": "long", "kind": "decode", "batch": 8, "heads": 8,
                              "kv_heads": 8, "q_len": 1, "kv_len": 2048, "head_dim": 64,
                              "dtype": "fp32", "steps": 20_000})
        while client.job("long")["state"] != "running":
            time.sleep(0.05)
        assert client.cancel("long") == {"id": "long", "state": "cancelling"}
        found = long.result(timeout=60)
        assert found["state"] == "failed" and found["reason"] == "cancelled by the client"
        # Run whole, its 20,000 steps over a growing 2-22k cache take over 2 minutes here;
        # cancelled, it stops within 64 steps of the request (after its cache is drawn).
        assert found["end"] - found["start"] < 60
        after = client.submit(_job(1))  # the devices take work again
        assert after.result(timeout=60)["state"] == "done"
        assert _stop(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not list((state / "inputs").glob("*"))  # inputs go once their jobs end
    assert len(list((state / "outputs").glob("*.safetensors"))) == 2
