"""Admission control: which submitted jobs a service takes, and which it sheds at once.

Work is counted in predicted device-seconds: the cost model's time for the
job alone on the fastest device that can run it. A job is refused at
submission, never accepted and dropped later, when:

1. **queue**: ``max_queue`` jobs are already waiting or running;
2. **slo**: its class has a queue-delay target and the predicted delay
   exceeds it. The prediction is the outstanding work of every class at
   least as urgent (jobs of a more urgent class run first under any policy
   that honours priority) spread over the devices, scaled by how long jobs
   have really taken per predicted second (a moving average over finished
   jobs); ``Retry-After`` is the excess, rounded up;
3. **quota**: its tenant's outstanding jobs would pass the tenant's nominal
   quota of a resource and there is no idle quota of it to borrow. A quota
   has two resources: device-seconds (the predicted work) and device memory
   (the cost model's peak bytes of each job on the device that runs it
   fastest, summed over the tenant's outstanding jobs: what its work may
   claim at once). As in Kueue's cohorts, a tenant may go beyond its own
   quota while the other tenants leave theirs unused: while the outstanding
   use of all tenants together stays within the sum of their quotas.
   Borrowed admissions are counted.

A job's class travels to the policy's view as its ``priority`` and, for a
class with a target, a ``deadline`` (its SLO in seconds after submission:
the target plus the predicted run time), which the built-in ``adaptive`` and
``edf`` policies read and the run's summary scores.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from scheduler.errors import InputError
from scheduler.jobs import Job
from scheduler.units import size


@dataclass(frozen=True)
class SloClass:
    name: str
    priority: int  # higher runs first
    max_delay_s: float | None  # queue-delay target; None: best effort, never shed for delay


DEFAULT_CLASSES: Mapping[str, SloClass] = {
    "interactive": SloClass("interactive", 10, 2.0),
    "batch": SloClass("batch", 0, None),
}
DEFAULT_CLASS = "batch"
SCALE_WEIGHT = 0.05  # each finished job's weight in the predicted-time correction


@dataclass(frozen=True)
class Verdict:
    admit: bool
    reason: str = ""  # queue | slo | quota, when refused
    detail: str = ""
    retry_after: int = 1  # seconds, when refused (0: retrying cannot help)
    borrowed: bool = False


@dataclass(frozen=True)
class Quota:
    """A tenant's nominal share of outstanding work; None: that resource is not limited."""

    seconds: float | None = None  # predicted device-seconds
    memory: int | None = None  # bytes of device memory


RESOURCES = ("seconds", "memory")


@dataclass
class _Held:
    tenant: str
    slo: str
    seconds: float
    memory: int = 0


@dataclass
class _Sum:
    """Outstanding jobs and their predicted device-seconds, of one tenant or one class."""

    jobs: int = 0
    seconds: float = 0.0
    memory: int = 0


@dataclass
class Admission:
    """The service's accounting of outstanding work; safe to call from any thread."""

    devices: int
    seconds_of: Callable[[Job], float]  # predicted device-seconds (the cost model)
    classes: Mapping[str, SloClass] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    quotas: Mapping[str, Quota] = field(default_factory=dict)  # tenant ("default": others)
    memory_of: Callable[[Job], int] = lambda job: 0  # predicted peak bytes (the cost model)
    max_queue: int = 10_000
    held: dict[str, _Held] = field(default_factory=dict)
    # Running sums of ``held`` (kept with it), so a verdict costs O(tenants + classes), not
    # a scan of every outstanding job under the lock.
    tenants: dict[str, _Sum] = field(default_factory=dict)
    by_class: dict[str, _Sum] = field(default_factory=dict)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # verdict, tenant, class
    # Device-seconds jobs really took per predicted one (a moving average): the prediction
    # is a job alone on a device; a busy machine (the API, the driver, packing) runs slower.
    scale: float = 1.0
    on_verdict: Callable[[str, str, str], None] | None = None  # (verdict, tenant, class)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def slo_class(self, name: str | None) -> SloClass:
        chosen = self.classes.get(name or DEFAULT_CLASS)
        if chosen is None:
            raise InputError(f"unknown class {name!r}; this service has "
                             f"{', '.join(sorted(self.classes))}", field="slo")
        return chosen

    def admit(self, job: Job, slo: str | None = None) -> tuple[Job, Verdict]:
        """The job as the policy will see it (class as priority and deadline), and whether
        it is taken; a taken job counts as outstanding until :meth:`release`."""
        cls = self.slo_class(slo)
        held = _Held(job.tenant, cls.name, self._seconds(job), self.memory_of(job))
        seconds = held.seconds
        with self._lock:
            verdict = self._judge(held, cls)
            name = "borrowed" if verdict.borrowed else verdict.reason or "accepted"
            self.counts[name, job.tenant, cls.name] += 1
            if verdict.admit:
                self._add(job.id, held)
        if self.on_verdict is not None:
            self.on_verdict(name, job.tenant, cls.name)
        # A deadline is seconds after submission (the job model's SLO): the delay target
        # plus the predicted run time.
        deadline = None if cls.max_delay_s is None else cls.max_delay_s + seconds
        return replace(job, priority=cls.priority, deadline=deadline), verdict

    def hold(self, job: Job, slo: str) -> None:
        """Count a job accepted before a restart (judged then) as outstanding again."""
        cls = self.classes.get(slo) or self.slo_class(None)
        held = _Held(job.tenant, cls.name, self._seconds(job), self.memory_of(job))
        with self._lock:
            self._drop(job.id)
            self._add(job.id, held)

    def _add(self, job_id: str, held: _Held) -> None:
        self.held[job_id] = held
        for key, table in ((held.tenant, self.tenants), (held.slo, self.by_class)):
            total = table.setdefault(key, _Sum())
            total.jobs, total.seconds = total.jobs + 1, total.seconds + held.seconds
            total.memory += held.memory

    def _drop(self, job_id: str) -> None:
        held = self.held.pop(job_id, None)
        if held is None:
            return
        for key, table in ((held.tenant, self.tenants), (held.slo, self.by_class)):
            total = table[key]
            total.jobs, total.seconds = total.jobs - 1, total.seconds - held.seconds
            total.memory -= held.memory
            if not total.jobs:
                del table[key]  # none left: no float residue stays behind

    def _seconds(self, job: Job) -> float:
        seconds = self.seconds_of(job)
        return seconds if math.isfinite(seconds) else 0.0  # fits nothing: it fails at once

    def observe(self, predicted: float, taken: float) -> None:
        """A job took ``taken`` device-seconds where ``predicted`` were expected."""
        if predicted > 0 and taken > 0:
            ratio = min(max(taken / predicted, 0.1), 100.0)
            with self._lock:
                self.scale += SCALE_WEIGHT * (ratio - self.scale)

    def release(self, job_id: str) -> None:
        """The job ended (or was never run): its work is no longer outstanding."""
        with self._lock:
            self._drop(job_id)

    def _judge(self, held: _Held, cls: SloClass) -> Verdict:
        if len(self.held) >= self.max_queue:
            return Verdict(False, "queue", f"the queue is full ({len(self.held):,} jobs "
                           f"outstanding; at most {self.max_queue:,})")
        if cls.max_delay_s is not None:
            ahead = sum(total.seconds for name, total in self.by_class.items()
                        if self.classes[name].priority >= cls.priority)
            delay = ahead * self.scale / max(self.devices, 1)
            if delay > cls.max_delay_s:
                return Verdict(False, "slo", f"predicted queue delay {delay:.3g} s exceeds "
                               f"class {cls.name}'s {cls.max_delay_s:g} s",
                               retry_after=math.ceil(delay - cls.max_delay_s))
        return self._quota(held)

    def _nominal(self, tenant: str) -> Quota | None:
        return self.quotas.get(tenant, self.quotas.get("default"))

    def _quota(self, held: _Held) -> Verdict:
        """Within the tenant's own quota of every resource; else borrowed from the idle
        quota of its cohort; else refused, naming the resource."""
        nominal = self._nominal(held.tenant)
        if nominal is None:
            return Verdict(True)
        mine = self.tenants.get(held.tenant, _Sum())
        over = [r for r in RESOURCES if getattr(nominal, r) is not None
                and getattr(mine, r) + getattr(held, r) > getattr(nominal, r)]
        if not over:
            return Verdict(True)
        # The cohort: every tenant with a quota of its own, and those holding work now.
        cohort = {held.tenant, *self.quotas.keys() - {"default"}, *self.tenants}
        for resource in over:
            total = sum(getattr(t, resource) for t in self.tenants.values())
            # A resource left unlimited (None) lends nothing: only numbers are pooled.
            pool = sum(getattr(q, resource) or 0 for q in map(self._nominal, cohort)
                       if q is not None)
            if total + getattr(held, resource) > pool:
                return self._refused(held, nominal, mine, resource, pool)
        return Verdict(True, borrowed=True)

    def _refused(self, held: _Held, nominal: Quota, mine: _Sum, resource: str, pool: float
                 ) -> Verdict:
        used, cap, need = getattr(mine, resource), getattr(nominal, resource), \
            getattr(held, resource)

        def shown(x: float) -> str:
            return f"{x:.3g} device-seconds" if resource == "seconds" else \
                f"{size(x)} of device memory"

        if need > pool:  # more than all the quota there is: retrying cannot help
            return Verdict(False, "quota", f"the job needs {shown(need)}, more than tenant "
                           f"{held.tenant!r} can ever hold ({shown(pool)} with all idle "
                           "quota borrowed)", retry_after=0)
        # Retry once the tenant's own backlog has had time to drain to make room.
        drain = (used + need - cap if resource == "seconds" else mine.seconds)
        return Verdict(False, "quota", f"tenant {held.tenant!r} has {shown(used)} outstanding "
                       f"of its {shown(cap)} and the job needs {shown(need)}; no idle quota "
                       "to borrow", retry_after=max(1, math.ceil(
                           drain * self.scale / max(self.devices, 1))))


def parse_quotas(items: list[str]) -> dict[str, Quota]:
    """``--quota TENANT=SECONDS[:GIB]`` (repeatable; ``default`` for tenants not named;
    ``none`` for a resource without a limit): device-seconds, and GiB of device memory."""
    out: dict[str, Quota] = {}
    for item in items:
        tenant, sep, value = item.partition("=")
        seconds_text, _, gib_text = value.partition(":")
        try:
            seconds = None if seconds_text == "none" else float(seconds_text)
            gib = None if gib_text in ("", "none") else float(gib_text)
        except ValueError:
            seconds, gib = -1.0, None
        ok = [x is None or (math.isfinite(x) and x > 0) for x in (seconds, gib)]
        if not sep or not tenant or not all(ok) or (seconds is None and gib is None):
            raise InputError(f"expected TENANT=SECONDS[:GIB] (positive numbers, or none), "
                             f"got {item!r}", field="--quota")
        out[tenant] = Quota(seconds, None if gib is None else int(gib * (1 << 30)))
    return out


def parse_classes(items: list[str]) -> dict[str, SloClass]:
    """``--slo NAME=SECONDS[:PRIORITY]`` over the defaults (``none``: no delay target)."""
    out = dict(DEFAULT_CLASSES)
    for item in items:
        name, sep, rest = item.partition("=")
        target, _, prio = rest.partition(":")
        try:
            delay = None if target == "none" else float(target)
            priority = int(prio) if prio else out.get(name, SloClass(name, 0, None)).priority
        except ValueError:
            delay, priority = -1.0, 0
        if not sep or not name or (delay is not None and not (delay > 0)):
            raise InputError(f"expected NAME=SECONDS[:PRIORITY] or NAME=none, got {item!r}",
                             field="--slo")
        out[name] = SloClass(name, priority, delay)
    return out
