"""``attnsched policy check``: a policy against the contract, on small generated runs.

The contract (docs/policies.md) a policy must keep whatever it decides:

- **no error**: ``decide`` returns actions; it does not raise;
- **valid actions**: every action it returns is one the controller can apply
  (no over-committed device, no job placed twice or that is not queued);
- **every job ends once**: each job finishes exactly once, done or failed with
  a reason;
- **work-conserving**: it never leaves queued work unplaced on an idle cluster;
- **deterministic**: the same trace, cluster and seed give the same run.

Each run is a generated trace on the packaged cluster (``--nodes gpu_h100=N
--nodes cpu=M``), simulated as ``attnsched simulate`` does. The first broken
rule is shrunk to a minimal trace (jobs removed while the rule stays broken)
and written as a file that ``attnsched simulate`` replays. A policy that
changes its own public attributes between calls is warned: state belongs in
``Decisions(state=...)``, where the view hands it back, so a run can be
replayed from any point.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scheduler.cluster import load_cluster
from scheduler.jobs import AttentionJob, ClusterJob, DType, Job, JobKind
from scheduler.kvcache import prompt_blocks
from scheduler.pricing import load_profiles
from scheduler.records import DecisionRecord, Sink
from scheduler.sim.executor import LiveCosts
from scheduler.sim.runner import SimConfig, simulate
from scheduler.state import JobRecord
from scheduler.view import View

RULES = ("no error", "valid actions", "every job ends once", "work-conserving",
         "deterministic")
KINDS = (JobKind.PREFILL, JobKind.DECODE, JobKind.TRAIN)


@dataclass(frozen=True)
class Scenario:
    """One generated run: its jobs, the packaged cluster's node counts and the seed."""

    jobs: tuple[Job, ...]
    gpu_nodes: int
    cpu_nodes: int
    seed: int

    @property
    def nodes(self) -> dict[str, int]:
        return {"gpu_h100": self.gpu_nodes, "cpu": self.cpu_nodes}

    def options(self) -> list[str]:
        """The ``attnsched simulate`` options that replay it."""
        return ["--nodes", f"gpu_h100={self.gpu_nodes}", "--nodes", f"cpu={self.cpu_nodes}",
                "--seed", str(self.seed)]


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str
    scenario: Scenario


@dataclass
class Report:
    """What a check found: the first violation (shrunk), warnings, and the runs made."""

    violation: Violation | None = None
    warnings: list[str] = field(default_factory=list)
    runs: int = 0


def scenarios(count: int, seed: int, pods: bool = True) -> Iterator[Scenario]:
    """``count`` small runs, growing from a handful of jobs to a few dozen (a tenth of
    them pods, duration-only cluster jobs, unless ``pods`` is False)."""
    rng = random.Random(seed)
    for i in range(count):
        n = 2 + (i * 58) // max(1, count - 1)
        gpus = rng.choice((0, 1, 1, 2))  # no GPU node: the jobs queue for the CPUs
        yield Scenario(tuple(_jobs(rng, n, pods)), gpus, rng.choice((0, 1)) if gpus else 1,
                       rng.randrange(4))


def _jobs(rng: random.Random, n: int, pods: bool) -> list[Job]:
    jobs: list[Job] = []
    t = 0.0
    for i in range(n):
        t += rng.choice((0.0, 0.0, 0.0001, 0.001, 0.01, 0.5))
        common: dict[str, Any] = {
            "submit_time": t, "tenant": rng.choice("abc"), "priority": rng.randrange(3),
            "deadline": rng.choice((None, None, 0.01, 0.5, 5.0))}
        if rng.randrange(10) == 0 and pods:
            jobs.append(ClusterJob(id=f"c{i}", duration=rng.choice((0.01, 0.2, 1.0)),
                                   gpus=rng.randrange(3), **common))
            continue
        kind = rng.choice(KINDS)
        heads, group = rng.choice(((8, 1), (8, 4), (32, 4)))
        parent = jobs[-1].id if jobs and rng.randrange(3) == 0 else None
        q_len = 1 if kind is JobKind.DECODE else rng.randint(1, 2048)
        jobs.append(AttentionJob(
            id=f"j{i}", kind=kind, batch=rng.choice((1, 2, 4, 64)), heads=heads,
            kv_heads=heads // group, q_len=q_len,
            kv_len=rng.randint(1, 1 << 14), head_dim=rng.choice((64, 128)),
            layers=rng.choice((1, 4)), dtype=rng.choice((DType.BF16, DType.FP32)),
            causal=rng.choice((True, False)), steps=rng.randint(1, 20), depends_on=parent,
            **_prefix(i, kind, q_len), **common))
    return jobs


def _prefix(i: int, kind: JobKind, q_len: int) -> dict[str, Any]:
    """Prompt blocks shared by every third prefill, so a policy's cache-reading code runs
    (and hits happen) in the check; drawn from the job's index, not the RNG, so the rest
    of each generated run is what it was without them."""
    if kind is not JobKind.PREFILL:
        return {}
    family, tokens = i % 3, 64
    count = min(4, prompt_blocks(q_len, tokens))
    return {"prefix_blocks": tuple(1000 * family + b for b in range(count)),
            "block_tokens": tokens}


class _Recorder(Sink):
    def __init__(self) -> None:
        self.finished: list[JobRecord] = []
        self.records: list[DecisionRecord] = []

    def job_finished(self, record: JobRecord) -> None:
        self.finished.append(record)

    def decision(self, record: DecisionRecord) -> None:
        self.records.append(record)


class _Watched:
    """The policy under check, noting public attributes it changes between calls."""

    def __init__(self, inner: Any, changed: set[str]) -> None:
        self.inner, self.changed = inner, changed
        self.name = getattr(inner, "name", "checked")

    def decide(self, view: View) -> Any:
        before = _public_state(self.inner)
        answer = self.inner.decide(view)
        after = _public_state(self.inner)
        if before is not None and after is not None:
            self.changed.update(k for k in before.keys() | after.keys()
                                if not _same(before.get(k, _MISSING), after.get(k, _MISSING)))
        return answer


_MISSING = object()
_IDENTITY_EQ: Any = object.__eq__


def _same(a: Any, b: Any, depth: int = 4) -> bool:
    """Equal by value, looking into plain objects (which compare by identity) a few levels
    deep: a policy holding a helper object has not changed because the copy is another."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], depth) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y, depth) for x, y in zip(a, b, strict=True))
    if type(a).__eq__ is _IDENTITY_EQ and hasattr(a, "__dict__"):
        return depth > 0 and _same(vars(a), vars(b), depth - 1)
    try:
        return bool(a == b)
    except Exception:  # an object that cannot say: count it as unchanged
        return True


def _public_state(policy: Any) -> dict[str, Any] | None:
    """A deep copy of the policy's public attributes (None when they cannot be copied);
    ``_private`` ones are a policy's caches, which the rule allows."""
    try:
        return {k: copy.deepcopy(v) for k, v in vars(policy).items() if not k.startswith("_")}
    except Exception:  # no __dict__, or values that refuse to be copied: nothing to compare
        return None


def _simulate(load: Callable[[], Any], scenario: Scenario, changed: set[str]
              ) -> tuple[Any, _Recorder]:
    cluster = load_cluster(None, scenario.nodes)
    profiles = load_profiles(cluster)
    recorder = _Recorder()
    config = SimConfig(seed=scenario.seed, observer=recorder,
                       live=LiveCosts.from_profiles(profiles.values()))
    policy = _Watched(load(), changed)
    result = simulate(scenario.jobs, cluster, profiles, policy, policy.name, None, config)
    return result, recorder


def _broken(run: tuple[Any, _Recorder], scenario: Scenario) -> tuple[str, str] | None:
    """The first rule one run breaks, with what broke it."""
    _, recorder = run
    for record in recorder.records:
        if record.outcome == "error":
            return "no error", f"decide failed: {record.why}"
        if record.outcome == "rejected" and record.policy != "controller":
            return "valid actions", (f"{record.action} of {', '.join(map(str, record.jobs or ()))}"
                                     f" on {record.device} was rejected: {record.why}")
    ended = [r.id for r in recorder.finished]
    if sorted(ended) != sorted(j.id for j in scenario.jobs):
        missing = sorted({j.id for j in scenario.jobs} - set(ended))
        twice = sorted({i for i in ended if ended.count(i) > 1})
        return "every job ends once", f"never ended: {missing[:5]}; ended twice: {twice[:5]}"
    for r in recorder.finished:
        if r.state.value == "failed" and not r.reason:
            return "every job ends once", f"{r.id} failed without a reason"
        if "unplaced" in (r.reason or ""):
            return "work-conserving", f"{r.id}: {r.reason}"
    return None


def _outcome(run: tuple[Any, _Recorder]) -> Any:
    result, recorder = run
    return result.summary, [(r.id, r.state, r.end, r.device) for r in recorder.finished]


def check_scenario(load: Callable[[], Any], scenario: Scenario, changed: set[str]
                   ) -> Violation | None:
    """Run ``scenario`` twice with fresh policies; the first rule broken, if any."""
    first = _simulate(load, scenario, changed)
    broken = _broken(first, scenario)
    if broken is None:
        second = _simulate(load, scenario, set())
        if _outcome(first) != _outcome(second):
            broken = ("deterministic", "two runs of the same trace and seed differ")
    return None if broken is None else Violation(*broken, scenario)


def shrink(load: Callable[[], Any], found: Violation, deadline: float) -> Violation:
    """Remove jobs (with the jobs that depend on them) while the same rule stays broken,
    halves first, then one at a time, until nothing more goes or time is up."""
    best = found
    chunk = max(1, len(best.scenario.jobs) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        progress = False
        start = 0
        while start < len(best.scenario.jobs) and time.monotonic() < deadline:
            jobs = _without(best.scenario.jobs, best.scenario.jobs[start:start + chunk])
            smaller = replace(best.scenario, jobs=jobs)
            again = check_scenario(load, smaller, set()) if jobs else None
            if again is not None and again.rule == found.rule:
                best, progress = again, True
            else:
                start += chunk
        if not progress:
            chunk //= 2
    return best


def _without(jobs: Sequence[Job], gone: Sequence[Job]) -> tuple[Job, ...]:
    removed = {j.id for j in gone}
    kept = []
    for job in jobs:  # a dependent goes with its parent: the trace stays valid
        if job.id in removed or (job.depends_on is not None and job.depends_on in removed):
            removed.add(job.id)
        else:
            kept.append(job)
    return tuple(kept)


def check_policy(load: Callable[[], Any], runs: int = 24, seed: int = 0,
                 budget_s: float = 45.0, pods: bool = True) -> Report:
    """Check the policy ``load`` builds on ``runs`` generated runs; stop at the first
    violation and shrink it within what is left of ``budget_s``."""
    deadline = time.monotonic() + budget_s
    report = Report()
    changed: set[str] = set()
    for scenario in scenarios(runs, seed, pods):
        report.runs += 1
        found = check_scenario(load, scenario, changed)
        if found is not None:
            report.violation = shrink(load, found, deadline)
            break
        if time.monotonic() > deadline:
            break
    if changed:
        report.warnings.append(
            "decide changes the policy's own attributes between calls "
            f"({', '.join(sorted(changed))}): keep state in Decisions(state=...), which the "
            "next view hands back")
    return report
