"""``attnsched serve`` and its clients' commands: submit, status, cancel, queue, output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from scheduler.cli.options import (
    ADDRESS,
    CPU_WORKERS,
    EMULATE_GPUS,
    FALLBACK,
    MEMORY_FRACTION,
    OPTS,
    POLICY_HELP,
    PROFILE,
    SEED,
    TICK,
)
from scheduler.cli.results import console, exit_for
from scheduler.client import Client, ServiceError, connect
from scheduler.errors import InputError

STATE = typer.Option(Path("attnsched-state"), "--state",
                     help="The service's folder: token, accepted jobs, journal, outputs.")


def serve(
    policy: str = typer.Option("adaptive", "--policy", help=POLICY_HELP),
    policy_opt: list[str] = OPTS,
    state: Path = STATE,
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on; beyond loopback only when named."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="0: any free port."),
    max_queue: int = typer.Option(10_000, "--max-queue", min=1,
                                  help="Jobs outstanding (queued or running) before "
                                       "submissions are refused (429)."),
    slo: list[str] = typer.Option(
        [], "--slo", metavar="NAME=SECONDS[:PRIORITY]",
        help="A job class and its queue-delay target (none: best effort); jobs whose "
             "predicted delay exceeds it are refused (429). Defaults: interactive=2:10, "
             "batch=none:0."),
    quota: list[str] = typer.Option(
        [], "--quota", metavar="TENANT=SECONDS[:GIB]",
        help="A tenant's nominal quota of outstanding work: predicted device-seconds, and "
             "GiB of device memory its jobs plan to hold (none: no limit; default=... for "
             "tenants not named); idle quota is lent to busy tenants."),
    max_tensor_mib: int = typer.Option(256, "--max-tensor-mib", min=1,
                                       help="Largest Q, K and V one submission may carry."),
    address: str | None = ADDRESS, seed: int = SEED, emulate_gpus: int = EMULATE_GPUS,
    cpu_workers: int = CPU_WORKERS, memory_fraction: float = MEMORY_FRACTION,
    telemetry_interval: float = TICK, profile: list[str] = PROFILE,
    fallback_policy: str | None = FALLBACK,
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=1, max=65535,
        help="Serve the local Ray's Prometheus metrics (attnsched's, admissions among them) "
             "on this port of 127.0.0.1."),
) -> None:
    """Run the scheduler as a service: clients submit jobs over HTTP (token in --state).

    Example: attnsched serve --emulate-gpus 2   (then: attnsched submit job.json)

    Stop with Ctrl-C (queued jobs finish; twice: at once). Started again with the
    same --state, it resumes every accepted job that has not ended.
    """
    from policies.base import load_policy, parse_options
    from scheduler.policy import run_name
    from scheduler.serve.admission import parse_classes, parse_quotas
    from scheduler.serve.service import ServeOptions
    from scheduler.serve.service import serve as run_service

    config = _live_config(address, emulate_gpus, cpu_workers, memory_fraction,
                          telemetry_interval, seed, profile, metrics_port)
    built = load_policy(policy, parse_options(policy_opt))
    if fallback_policy is not None:
        config.fallback = (load_policy(fallback_policy), fallback_policy)
    options = ServeOptions(state, host, port, max_queue, parse_classes(slo),
                           parse_quotas(quota), max_tensor_mib << 20)
    name = run_name(policy, built)
    console.print(f"attnsched serve: policy {name}, state {state}/; starting Ray and the "
                  "workers ...", markup=False)
    result = run_service(options, built, name, config, on_ready=_ready_line)
    console.print(f"served {result.summary['jobs_total']:,} jobs "
                  f"({result.summary['jobs_failed']:,} failed); outputs in {state}/",
                  markup=False)
    if result.exit_code:  # the service stopped on an error; failed jobs are the clients'
        exit_for(result)


def _live_config(address: str | None, emulate_gpus: int, cpu_workers: int,
                 memory_fraction: float, telemetry_interval: float, seed: int,
                 profile: list[str], metrics_port: int | None) -> Any:
    """The live run's config, checked as ``run`` checks it (a service runs at speed 1)."""
    from scheduler.live_runs import live_config
    from scheduler.run_options import parse_profiles

    if metrics_port is not None and address:
        raise InputError("a cluster's nodes serve metrics on their own ports",
                         field="--metrics-port")
    config = live_config(address=address, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
                         speed=1.0, memory_fraction=memory_fraction,
                         telemetry_interval=telemetry_interval, seed=seed, slow={},
                         profiles=parse_profiles(profile))
    config.metrics_port = metrics_port
    return config


def _ready_line(url: str, state: Path) -> None:
    console.print(f"listening on {url}; token in {state / 'token'}; submit with: "
                  f"attnsched submit JOBS.jsonl --state {state}", markup=False)


def submit(
    jobs: Path = typer.Argument(..., help="A JSON Lines file of jobs (canonical trace rows "
                                "without submit_time; \"tensors\": a safetensors file with "
                                "q, k and v, beside the jobs file), or - for standard input."),
    state: Path = STATE,
    wait: bool = typer.Option(False, "--wait", help="Wait for every job to end."),
    outputs: Path | None = typer.Option(None, "--outputs", help="With --wait: write each "
                                        "job's O here, as ID.safetensors."),
) -> None:
    """Submit jobs to a running service; prints each job's id (and outcome with --wait).

    Example: attnsched submit jobs.jsonl --wait
    """
    if outputs is not None and not wait:
        raise InputError("outputs are written once the jobs end: add --wait",
                         field="--outputs")
    rows = [(n, row, _tensors_of(row, jobs, n)) for n, row in _rows(jobs)]
    for number, row, tensors in rows:  # every row checked before any is sent
        _check(row, tensors, jobs, number)
    client = _client(state)
    handles = []
    for number, row, tensors in rows:
        try:
            handles.append((client.submit(row, tensors), tensors is not None))
        except ServiceError as e:
            raise InputError(e.detail, path=jobs, line=number, field=e.field) from None
        console.print(f"accepted {handles[-1][0].id}", markup=False)
    for h, has_tensors in handles if wait else ():
        found = h.result()
        console.print(f"{h.id}: {found['state']} on {found.get('device')}"
                      + (f" ({found['reason']})" if found.get("reason") else ""), markup=False)
        if outputs is not None and has_tensors and found["state"] == "done":
            outputs.mkdir(parents=True, exist_ok=True)
            (outputs / f"{h.id}.safetensors").write_bytes(client.output(h.id))


def _check(row: dict[str, Any], tensors: Path | None, jobs: Path, line: int) -> None:
    """The service's own rules for a job (and its tensors), applied here first."""
    from scheduler.serve.submission import submitted_job
    from scheduler.serve.tensors import BUNDLE, read

    try:
        submitted_job(row, None if tensors is None else read({BUNDLE: tensors.read_bytes()}))
    except InputError as e:
        raise e.located(path=jobs, line=line) from None


def _tensors_of(row: dict[str, Any], jobs: Path, line: int) -> Path | None:
    """The safetensors file a row names (relative to the jobs file), checked to exist."""
    name = row.pop("tensors", None)
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise InputError(f"expected a file name, got {name!r}", path=jobs, line=line,
                         field="tensors")
    path = (Path(".") if str(jobs) == "-" else jobs.parent) / name
    if not path.is_file():
        raise InputError(f"no such file: {path}", path=jobs, line=line, field="tensors")
    return path


def output(job: str = typer.Argument(..., help="The job's id."),
           out: Path = typer.Option(..., "-o", "--out", help="Where to write O."),
           format: str | None = typer.Option(
               None, "--format", help="safetensors (tensor o) or npy (not for bf16); "
               "default: npy for a .npy file, else safetensors."),
           state: Path = STATE) -> None:
    """Fetch the output O of a job submitted with tensors.

    Example: attnsched output job-3f2a9c01d4e5 -o o.npy
    """
    format = format or ("npy" if out.suffix == ".npy" else "safetensors")
    if format not in ("safetensors", "npy"):
        raise InputError(f"expected safetensors or npy, got {format!r}", field="--format")
    if not out.parent.is_dir():
        raise InputError("no such folder", path=out.parent, field="--out")
    try:
        data = _client(state).output(job, format)
    except ServiceError as e:
        raise InputError(e.detail, field=e.field or "job") from None
    try:
        out.write_bytes(data)
    except OSError as e:
        raise InputError(f"cannot write: {e.strerror or e}", path=out, field="--out") from None
    console.print(f"wrote {out} ({len(data):,} bytes)", markup=False)


def status(state: Path = STATE) -> None:
    """The service's state: jobs done, failed and queued, and each device.

    Example: attnsched status --state attnsched-state
    """
    console.print(json.dumps(_client(state).status(), indent=2), markup=False)


def cancel(job: str = typer.Argument(..., help="The job's id."), state: Path = STATE) -> None:
    """Cancel a job: a queued one ends now, a running one when its batch stops.

    Example: attnsched cancel job-3f2a9c01d4e5
    """
    try:
        console.print(json.dumps(_client(state).cancel(job)), markup=False)
    except ServiceError as e:
        raise InputError(e.detail, field="job") from None


def queue(state: Path = STATE,
          limit: int = typer.Option(100, "--limit", min=1, max=10_000)) -> None:
    """Accepted jobs that have not ended, oldest first.

    Example: attnsched queue --limit 20
    """
    for row in _client(state).queue(limit):
        console.print(f"{row['id']}  {row['state']}  {row['kind']}  tenant {row['tenant']}  "
                      f"submitted at {row['submit_time']:.3f}s", markup=False)


def _client(state: Path) -> Client:
    try:
        return connect(state)
    except OSError as e:
        raise InputError(f"cannot read the service's token: {e.strerror or e}",
                         path=state, field="--state") from None


def _rows(path: Path) -> Any:
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InputError(f"cannot read the jobs: {reason}", path=path) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", path=path, line=number) from None
        if not isinstance(row, dict):
            raise InputError("expected a JSON object per line", path=path, line=number)
        yield number, row
