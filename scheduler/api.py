"""The Python API for notebooks and scripts: ``simulate``, ``compare``, ``run``, ``load_trace``.

Each function runs exactly what its command runs (``attnsched simulate``,
``compare``, ``run``): the arguments are handed, in their command-line forms,
to the parsers and run builders the CLI uses (:mod:`scheduler.sims`,
:mod:`scheduler.live_runs`), so a notebook and a shell see the same checks, the
same messages and the same outputs. What differs is the return value: a result
object holding the summary and the per-job table, instead of a printed table.

Bad input raises :class:`scheduler.errors.InputError` (a ``ValueError``) with
the same one-line message the CLI prints. ``run`` starts Ray (or joins one
already started in the process); nothing here imports Ray or torch until then.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pyarrow as pa

    from scheduler.runs import RunSpec
    from scheduler.sim.runner import RunResult

Pairs = Mapping[str, Any] | Sequence[str] | None


@dataclass(frozen=True)
class Result:
    """One finished run: its figures and its tables, read back from the run's folder.

    ``jobs`` and ``telemetry`` are the run's ``jobs.parquet`` and
    ``telemetry.parquet`` as pyarrow tables (``.to_pandas()`` where pandas is
    installed), so a notebook works on the same data the reports are drawn from.
    ``out`` is the folder, or ``None`` when the run wrote to a temporary one.
    ``exit_code`` is what the command would exit with: 0 when every job
    completed, 1 when the run stopped early, 3 when it finished but some jobs
    failed (``message`` says why: how many, and the commonest reasons).
    """

    summary: dict[str, Any]
    jobs: pa.Table
    telemetry: pa.Table
    run_info: dict[str, Any]
    exit_code: int = 0  # the run's own: 0, or 1 when it stopped early; jobs_failed adds 3
    message: str | None = None
    out: Path | None = None

    def __post_init__(self) -> None:
        # The CLI's rule, from the same function: a notebook and a shell agree on "ok".
        from scheduler.runs import EXIT_JOBS_FAILED, failure_note, outcome_code

        code = outcome_code(self.exit_code, self.summary)
        if code == EXIT_JOBS_FAILED:
            object.__setattr__(self, "exit_code", code)
            object.__setattr__(self, "message", self.message or failure_note(self.summary))

    @property
    def ok(self) -> bool:
        """Every job completed (``exit_code`` 0)."""
        return self.exit_code == 0

    def __repr__(self) -> str:
        s = self.summary
        return (f"Result(policy={s.get('policy')!r}, mode={s.get('mode')!r}, "
                f"jobs={s.get('jobs_completed')}/{s.get('jobs_total')}, "
                f"jct_mean={s.get('jct_mean')!r}, exit_code={self.exit_code}, out={self.out!r})")


@dataclass(frozen=True)
class Comparison(Mapping[str, Result]):
    """Several policies on one trace: a mapping policy → :class:`Result`, in the order
    the policies were given (``c["greedy"]``, ``list(c)``, ``c.items()``)."""

    results: dict[str, Result]
    out: Path | None = None

    def __getitem__(self, policy: str) -> Result:
        return self.results[policy]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def exit_code(self) -> int:
        """What ``attnsched compare`` exits with: 1 if a run stopped early, else 3 if
        jobs failed in any, else 0."""
        from scheduler.runs import combined_code

        return combined_code(r.exit_code for r in self.results.values())

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def summaries(self) -> dict[str, dict[str, Any]]:
        """Policy → its summary; ``comparison.json`` holds the same."""
        return {name: r.summary for name, r in self.results.items()}

    @property
    def summary(self) -> pa.Table:
        """One row per policy, its figures in columns (``.to_pandas()`` for a DataFrame);
        a figure that is itself a mapping or list, such as ``failed_reasons``, as JSON."""
        import pyarrow as pa

        rows = [{"policy": name, **{k: json.dumps(v) if isinstance(v, dict | list) else v
                                    for k, v in r.summary.items() if k != "policy"}}
                for name, r in self.results.items()]
        return pa.Table.from_pylist(rows)

    @property
    def jobs(self) -> pa.Table:
        """Every policy's jobs in one table, with a leading ``policy`` column to group by."""
        import pyarrow as pa

        tables = [r.jobs.add_column(0, "policy", pa.array([name] * r.jobs.num_rows,
                                                          pa.string()))
                  for name, r in self.results.items()]
        return pa.concat_tables(tables)

    def __repr__(self) -> str:
        return f"Comparison({list(self.results)}, out={self.out!r})"


@dataclass(frozen=True)
class LoadedTrace:
    """A trace read whole: its jobs as a table in the canonical columns, and its statistics.

    Pass it to :func:`simulate`, :func:`compare` or :func:`run` in place of a
    path: they replay the jobs it holds, read from its file the same way (a
    ``limit`` given to the run as well replays the first that many of them).
    """

    path: Path
    format: str
    model: str | None
    jobs: pa.Table
    summary: dict[str, Any] = field(default_factory=dict)
    # How it was read, so a run replays the same jobs: the first ``limit`` of them
    # (None: all), at ``token_scale``, through the ``fmt`` importer asked for.
    limit: int | None = None
    token_scale: float = 1.0
    fmt: str = "auto"

    def __len__(self) -> int:
        return int(self.jobs.num_rows)

    def __repr__(self) -> str:
        return f"LoadedTrace({str(self.path)!r}, format={self.format!r}, jobs={len(self)})"


def load_trace(path: str | Path, *, model: str | None = None, fmt: str = "auto",
               token_scale: float = 1.0, limit: int | None = None) -> LoadedTrace:
    """Read a trace (canonical JSONL/CSV/Parquet, Azure, Mooncake, Alibaba) to look at it.

    The table holds the jobs the simulator would replay, after the importer and
    the model preset (``model``, for token traces) turned rows into attention
    jobs; ``summary`` is ``attnsched trace stats``.
    """
    import itertools

    import pyarrow as pa

    from scheduler.traces import open_trace
    from scheduler.traces.canonical import FIELDS, record_from_job
    from scheduler.traces.parquet import SCHEMA
    from scheduler.traces.stats import trace_stats

    trace = open_trace(path, fmt, model, token_scale)
    jobs = list(itertools.islice(trace.jobs(), limit) if limit else trace.jobs())
    rows = [record_from_job(job) for job in jobs]
    table = pa.table({name: [row.get(name) for row in rows] for name in FIELDS}, schema=SCHEMA)
    return LoadedTrace(Path(path), trace.format, model, table, trace_stats(jobs), limit,
                       token_scale, fmt)


def simulate(trace: str | Path | LoadedTrace, policy: Any = "adaptive", *,
             policy_options: Mapping[str, Any] | None = None,
             cluster: str | Path | None = None, nodes: Pairs = None,
             model: str | None = None, load: float | None = None, limit: int | None = None,
             seed: int = 0, slots: int = 1, telemetry_interval: float = 1.0,
             decision_interval: float = 0.0, fail: Sequence[str] = (),
             fail_node: Sequence[str] = (), slow: Pairs = None, profiles: Pairs = None,
             live_costs: bool = True, fallback_policy: str | None = None,
             out: str | Path | None = None) -> Result:
    """Replay a trace in the simulator with one policy, as ``attnsched simulate`` does.

    ``policy`` is a registered name, ``module:Class``, ``path.py:Class``, or a
    policy object (a class defined in the notebook works). ``nodes``, ``slow``
    and ``profiles`` take mappings (``{"gpu_h100": 2}``) or the CLI's
    ``"KEY=VALUE"`` strings; ``fail`` takes ``"DEVICE@SECONDS"``. Without
    ``out`` the outputs go to a temporary folder that is gone on return.
    """
    from scheduler.runs import prepare, run_sim, validate_spec

    name, built = _policy(policy, policy_options)
    spec = _sim_spec(trace, name, policy_options, cluster=cluster, nodes=nodes, model=model,
                     load=load, limit=limit, seed=seed, slots=slots,
                     telemetry_interval=telemetry_interval, fail=fail, fail_node=fail_node,
                     slow=slow, decision_interval=decision_interval, profiles=profiles,
                     live_costs=live_costs, fallback_policy=fallback_policy)
    with _folder(out) as folder:
        spec = replace(spec, out=folder, report=out is not None)
        if built is None:
            built = validate_spec(spec)
        else:
            prepare(spec)
        return _result(run_sim(spec, None, built), folder, out is not None)


def compare(trace: str | Path | LoadedTrace,
            policies: Sequence[str] | str = ("static", "greedy", "adaptive"), *,
            cluster: str | Path | None = None, nodes: Pairs = None,
            model: str | None = None, load: float | None = None, limit: int | None = None,
            seed: int = 0, slots: int = 1, telemetry_interval: float = 1.0,
            decision_interval: float = 0.0, fail: Sequence[str] = (),
            fail_node: Sequence[str] = (), slow: Pairs = None, profiles: Pairs = None,
            live_costs: bool = True, processes: int = 0,
            out: str | Path | None = None) -> Comparison:
    """Simulate several policies on the same trace, in parallel, as ``attnsched compare``.

    Each policy runs in its own process (``processes``: at most this many at
    once; 0: one per core), so policies are given by name or ``module:Class``
    / ``path.py:Class``, which a fresh process can load. The comparison, its
    folders and tables go by each policy's own ``name`` (a plugin's, not its
    file spec), as ``summary.json`` does. With ``out``, each
    policy's folder and ``comparison.md`` are written there, ready for
    ``attnsched report``. Live comparisons: ``attnsched compare --mode live``.
    """
    from policies.base import load_policy, run_names
    from scheduler.errors import InputError
    from scheduler.run_options import policy_folder
    from scheduler.sims import compare_sims

    names = [p.strip() for p in (policies.split(",") if isinstance(policies, str) else policies)
             if p.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError("expected distinct policy names", field="policies")
    shown = run_names({name: load_policy(name) for name in names})
    specs = {shown[name]: _sim_spec(trace, name, None, cluster=cluster, nodes=nodes,
                                    model=model, load=load, limit=limit, seed=seed, slots=slots,
                                    telemetry_interval=telemetry_interval, fail=fail,
                                    fail_node=fail_node, slow=slow,
                                    decision_interval=decision_interval, profiles=profiles,
                                    live_costs=live_costs)
             for name in names}
    with _folder(out) as folder:
        specs = {name: replace(spec, out=folder / policy_folder(name), report=out is not None)
                 for name, spec in specs.items()}
        results = compare_sims(specs, folder, processes)
        return Comparison({name: _result(results[name], folder / policy_folder(name),
                                         out is not None) for name in specs},
                          folder if out is not None else None)


def run(trace: str | Path | LoadedTrace, policy: Any = "adaptive", *,
        policy_options: Mapping[str, Any] | None = None, address: str | None = None,
        model: str | None = None, limit: int | None = None, seed: int = 0,
        speed: float = 1.0, emulate_gpus: int = 0, cpu_workers: int = 0,
        memory_fraction: float = 0.9, telemetry_interval: float = 1.0, slow: Pairs = None,
        profiles: Pairs = None, resume: str | Path | None = None,
        fallback_policy: str | None = None, decide_timeout: float = 10.0,
        metrics_port: int | None = None, num_cpus: int | None = None,
        out: str | Path | None = None, overwrite: bool = False) -> Result:
    """Replay a trace live on Ray worker actors, as ``attnsched run`` does.

    Real PyTorch attention runs on one worker per device. Ray starts locally
    on 127.0.0.1 (``num_cpus`` caps what it may use) unless one is already up
    in this process or ``address`` names a cluster; the workers are stopped on
    return, Ray is left running for the next call. The options mean what the
    CLI's do (``resume`` continues the interrupted run in that folder, and
    ``overwrite`` replaces one that did not finish, which is otherwise refused;
    ``metrics_port`` serves Ray's Prometheus metrics on 127.0.0.1); ``policy``
    may also be a policy object, as for :func:`simulate`.
    """
    from scheduler.live_runs import live_run, live_setup
    from scheduler.runs import KEEP_JOBS, bounded, replay, scan_arrivals

    if metrics_port is not None:  # typer bounds the CLI's; live_setup bounds the rest
        bounded("--metrics-port", metrics_port, 1, 65535)
    name, built = _policy(policy, policy_options)
    source = _trace(trace, model, limit)
    if resume is not None and out is None:
        out = resume
    with _folder(out) as folder:
        spec, built, config = live_setup(
            source.path, name, policy_opt=_pairs(policy_options), address=address,
            model=source.model, limit=source.limit, seed=seed, speed=speed,
            emulate_gpus=emulate_gpus, cpu_workers=cpu_workers, memory_fraction=memory_fraction,
            telemetry_interval=telemetry_interval, slow=_pairs(slow), profile=_pairs(profiles),
            out=folder, resume=None if resume is None else Path(resume),
            fallback_policy=fallback_policy, decide_timeout=decide_timeout,
            metrics_port=metrics_port, built=built, overwrite=overwrite)
        spec = replace(spec, fmt=source.fmt, token_scale=source.token_scale)
        if num_cpus is not None:
            config.num_cpus = num_cpus
        arrivals = scan_arrivals(spec, keep=KEEP_JOBS)  # the trace checked before Ray starts
        result = live_run(spec, built, config, report=out is not None,
                          jobs=replay(spec, arrivals))
        return _result(result, folder, out is not None)


def _pairs(value: Pairs) -> list[str]:
    """A mapping or the CLI's ``KEY=VALUE`` strings, as the strings the CLI parses."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [f"{k}={_text(v)}" for k, v in value.items()]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _policy(policy: Any, options: Mapping[str, Any] | None) -> tuple[str, Any]:
    """(name, built policy or None): a name is loaded later, by the command's own code."""
    from scheduler.errors import InputError

    if isinstance(policy, str):
        return policy, None
    if not callable(getattr(policy, "decide", None)):
        raise InputError(f"expected a policy name or an object with decide(view), got "
                         f"{type(policy).__name__}", field="policy")
    if options:
        raise InputError("options configure a policy loaded by name; pass them to the "
                         "object's constructor instead", field="policy_options")
    return str(getattr(policy, "name", type(policy).__name__)), policy


class _Source(NamedTuple):
    """Where a run's jobs come from, and how they are read."""

    path: Path
    fmt: str
    model: str | None
    token_scale: float
    limit: int | None


def _trace(trace: str | Path | LoadedTrace, model: str | None, limit: int | None) -> _Source:
    """A path, or a loaded trace replayed as it was read (its limit, and the run's if
    that is smaller)."""
    if isinstance(trace, LoadedTrace):
        both = [n for n in (trace.limit, limit) if n is not None]
        return _Source(trace.path, trace.fmt, model or trace.model, trace.token_scale,
                       min(both) if both else None)
    return _Source(Path(trace), "auto", model, 1.0, limit)


def _sim_spec(trace: str | Path | LoadedTrace, policy: str,
              policy_options: Mapping[str, Any] | None, *, cluster: str | Path | None,
              nodes: Pairs,
              fail: Sequence[str], fail_node: Sequence[str], slow: Pairs, profiles: Pairs,
              model: str | None, limit: int | None, **kw: Any) -> RunSpec:
    from scheduler.sims import sim_spec

    source = _trace(trace, model, limit)
    return sim_spec(source.path, policy, opts=_pairs(policy_options),
                    cluster=None if cluster is None else Path(cluster),
                    nodes=_pairs(nodes), fail=list(fail), fail_node=list(fail_node),
                    slow=_pairs(slow), profile=_pairs(profiles), model=source.model,
                    fmt=source.fmt, token_scale=source.token_scale, limit=source.limit, **kw)


@contextlib.contextmanager
def _folder(out: str | Path | None) -> Iterator[Path]:
    """``out``, or a temporary folder: results are always read back from a run's files."""
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="attnsched-") as tmp:
        yield Path(tmp)


def _result(result: RunResult, folder: Path, keep: bool) -> Result:
    """Read the run's tables into memory (the folder may be temporary)."""
    import pyarrow.parquet as pq

    jobs = pq.read_table(folder / "jobs.parquet", memory_map=False)
    telemetry = pq.read_table(folder / "telemetry.parquet", memory_map=False)
    summary = json.loads(json.dumps(result.summary))  # a plain copy, as summary.json holds it
    return Result(summary, jobs, telemetry, dict(result.run_info), result.exit_code,
                  result.message, folder if keep else None)
