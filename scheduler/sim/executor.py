"""The simulated executor: devices that run batches on a virtual clock.

A batch's solo duration comes from the cost model (the controller priced it
when placing). Batches sharing a device split its throughput (processor
sharing) at the profile's measured sharing efficiency; a device slowed by
fault injection runs everything ``factor`` times longer. Telemetry records
are synthesized in the same shape live workers report.

With :class:`LiveCosts` the devices cost what the live path costs, not only
what the attention does: each batch also pays the controller's decision, the
Ray round trip and the worker's per-job setup (all calibrated into the
device profile), workers of one node slow each other down by the measured
node sharing curve, and ``time_scale`` stretches everything the way a live
replay at ``--speed X`` does (its clock runs X times faster than the wall).
The controller is not told: live, it predicts with the cost model too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from scheduler.cluster import ClusterSpec, DeviceSpec
from scheduler.events import BatchDone, DeviceDown, Event, NodeDown, Samples
from scheduler.profiles import DeviceProfile
from scheduler.sim.engine import FAULT, FINISH, TELEMETRY
from scheduler.state import Batch
from scheduler.view import Telemetry

if TYPE_CHECKING:
    from scheduler.clocks import Clock
    from scheduler.controller import Controller

PROGRESS_EVERY = 4096  # arrivals between progress reports


@dataclass(frozen=True)
class Fault:
    """``device`` or ``node`` lost at ``time`` seconds."""

    kind: str  # "device" | "node"
    target: str
    time: float


class SimProgress(NamedTuple):
    """What a simulation's progress bar shows (a tuple: it crosses process queues)."""

    submitted: int  # jobs that have arrived
    clock: float  # trace seconds
    queued: int  # jobs waiting in the controller
    busy: int  # devices running a batch
    devices: int


@dataclass(slots=True)
class _Running:
    batch: Batch
    remaining: float  # solo seconds of work left
    version: int = 0
    finish: float = 0.0
    started: float = 0.0


@dataclass(frozen=True)
class LiveCosts:
    """What the simulator adds to model a live run (see the module docstring)."""

    time_scale: float = 1.0  # the live run's --speed
    decision_s: float = 0.0  # the controller's time per decision round
    telemetry_s: float = 0.0  # wall seconds a telemetry sample takes to reach the controller

    @classmethod
    def from_profiles(cls, profiles: Iterable[DeviceProfile], time_scale: float = 1.0
                      ) -> LiveCosts:
        """The costs the profiles measured; the slowest figure stands for the cluster."""
        profiles = list(profiles)
        return cls(time_scale, max((p.decision_s for p in profiles), default=0.0),
                   max((p.telemetry_s for p in profiles), default=0.0))


@dataclass(slots=True)
class _Device:
    spec: DeviceSpec
    profile: DeviceProfile | None
    slow: float = 1.0
    node: str = ""
    per_batch: float = 0.0  # solo seconds each batch costs outside its worker's timing
    per_job: float = 0.0  # ... and inside it, per job
    in_batch: float = 0.0  # ... and inside it, per batch
    contended: bool = False  # its profile measured workers of a node slowing each other
    running: dict[str, _Running] = field(default_factory=dict)
    rate: float = 1.0  # progress of each elastic batch per second
    last: float = 0.0
    busy_integral: float = 0.0
    flops_done: float = 0.0
    speed: float = 1.0
    total_busy: float = 0.0
    predicted: float = 0.0  # since the last sample, as a live worker counts them
    observed: float = 0.0
    memory_used: int = 0  # what its batches hold: the sample's mem_used
    elastic: int = 0  # running batches that take a slot (attention work)


class SimExecutor:
    """Simulated devices on a virtual clock: the loop's executor in ``attnsched simulate``.

    It keeps its own model of each device (what runs there, how fast, what it
    holds) and reports through the clock's events, as live workers do.
    """

    mode = "sim"

    def __init__(self, spec: ClusterSpec, profiles: Mapping[str, DeviceProfile | None],
                 clock: Clock, slow: Mapping[str, float] | None = None,
                 live: LiveCosts | None = None, faults: Sequence[Fault] = (),
                 progress: Callable[[SimProgress], None] | None = None) -> None:
        self.clock, self.progress = clock, progress
        self.devices = {d.id: _Device(d, profiles.get(d.id), (slow or {}).get(d.id, 1.0),
                                      d.node) for d in spec.devices}
        self.scale = live.time_scale if live else 1.0
        self.live = live
        self.by_node: dict[str, list[_Device]] = {}
        self.busy_on_node: dict[str, int] = {}
        for dev in self.devices.values():
            profile = dev.profile
            if live is not None and profile is not None:
                dev.per_batch = live.decision_s + (profile.batch_call_s or profile.actor_call_s)
                dev.per_job = profile.worker_job_s
                dev.in_batch = profile.worker_batch_s
                dev.contended = len(profile.node_sharing) > 1
            self.by_node.setdefault(dev.node, []).append(dev)
        self.last_tick = 0.0
        self.reported = 0  # arrivals at the last progress report
        for fault in faults:
            clock.schedule(fault.time, FAULT, fault)

    # -- processor sharing -----------------------------------------------------------------

    def _advance(self, dev: _Device, now: float) -> None:
        elapsed = now - dev.last
        if elapsed > 0:
            for run in dev.running.values():
                if run.batch.elastic:
                    run.remaining -= elapsed * dev.rate
            if dev.running:
                # Attention work keeps the whole device busy whatever its slot share;
                # cluster jobs hold the fraction of a GPU they asked for.
                busy = 1.0 if dev.elastic else min(
                    1.0, sum(r.batch.share for r in dev.running.values()))
                dev.busy_integral += busy * elapsed
                dev.total_busy += busy * elapsed
        dev.last = now

    def _reschedule(self, dev: _Device, now: float) -> None:
        elastic = [r for r in dev.running.values() if r.batch.elastic]
        k = len(elastic)
        if k:
            profile = dev.profile
            efficiency = profile.sharing_efficiency(k) if profile else 1.0
            if dev.contended and profile is not None:
                efficiency *= profile.node_efficiency(self.busy_on_node.get(dev.node, 1))
            dev.rate = efficiency / k / dev.slow / self.scale
        for run in elastic:
            run.version += 1
            run.finish = now + max(0.0, run.remaining) / dev.rate
            self.clock.schedule(run.finish, FINISH, (run.batch.id, run.version, dev.spec.id))

    def start(self, batches: Sequence[Batch], now: float) -> None:
        for batch in batches:
            self._start(batch, now)

    def cancel(self, batches: Sequence[Batch], now: float) -> None:
        for batch in batches:
            self._finish(batch, now, completed=False)

    def stop(self, batch: Batch, now: float) -> None:
        """Simulated runs take no clients' cancellations: a batch runs to its end."""

    def _start(self, batch: Batch, now: float) -> None:
        dev = self.devices[batch.device]
        self._advance(dev, now)
        run = _Running(batch, batch.solo_seconds, started=now)
        dev.running[batch.id] = run
        dev.memory_used += batch.memory
        dev.elastic += batch.elastic
        if not batch.elastic:  # holds its resources for exactly its duration
            run.finish = now + batch.solo_seconds * self.scale
            self.clock.schedule(run.finish, FINISH, (batch.id, 0, batch.device))
            return  # the elastic batches' rate is unchanged: nothing to reschedule
        run.remaining += dev.per_batch + dev.in_batch + dev.per_job * len(batch.jobs)
        if dev.contended and self._elastic_running(dev) == 1:
            self._node_changed(dev, now, +1)  # this worker starts computing
        self._reschedule(dev, now)

    def _elastic_running(self, dev: _Device) -> int:
        return sum(r.batch.elastic for r in dev.running.values())

    def _node_changed(self, dev: _Device, now: float, delta: int) -> None:
        """A worker of the node started or stopped computing: its peers change speed."""
        self.busy_on_node[dev.node] = self.busy_on_node.get(dev.node, 0) + delta
        for peer in self.by_node[dev.node]:
            if peer is not dev and peer.contended and self._elastic_running(peer):
                self._advance(peer, now)
                self._reschedule(peer, now)

    def is_current(self, batch_id: str, version: int, device: str) -> bool:
        run = self.devices[device].running.get(batch_id)
        return run is not None and run.version == version

    def resolve(self, kind: int, payload: Any, now: float) -> Event | None:
        if kind == FINISH:
            batch_id, version, device = payload
            run = self.devices[device].running.get(batch_id)
            if run is None or run.version != version:
                return None  # superseded by a reschedule, or cancelled
            self._finish(run.batch, now, completed=True)
            return BatchDone(batch_id)
        if kind == FAULT:
            if payload.kind == "device":
                return DeviceDown(payload.target, f"device {payload.target} failed")
            return NodeDown(payload.target, f"node {payload.target} failed")
        assert kind == TELEMETRY
        assert isinstance(payload, Samples)
        return payload  # samples taken a round trip ago reach the controller now

    def _finish(self, batch: Batch, now: float, completed: bool) -> None:
        dev = self.devices[batch.device]
        self._advance(dev, now)
        run = dev.running.pop(batch.id, None)
        if run is not None:
            dev.memory_used -= batch.memory
            dev.elastic -= batch.elastic
        if run is not None and completed:
            dev.flops_done += batch.flops
            if batch.elastic and now > batch.start:
                if self.live is not None:  # a worker times its call: the round trip is not in it
                    dev.predicted += batch.solo_seconds
                    dev.observed += max((now - run.started) / self.scale - dev.per_batch, 1e-9)
                else:
                    dev.speed = 1.0 / dev.slow
        if batch.elastic:  # a cluster job leaving changes no elastic batch's rate
            if run is not None and dev.contended and self._elastic_running(dev) == 0:
                self._node_changed(dev, now, -1)  # this worker goes idle
            self._reschedule(dev, now)

    # -- telemetry ------------------------------------------------------------------------

    def tick(self, now: float, queue_len: int) -> Event | None:
        samples = Samples(tuple(self.sample(now, queue_len)))
        if self.live is not None and self.live.telemetry_s > 0:
            self.clock.schedule(now + self.live.telemetry_s * self.scale, TELEMETRY, samples)
            return None
        return samples

    def sample(self, now: float, queue_len: int) -> list[Telemetry]:
        interval = max(now - self.last_tick, 1e-9)
        out = []
        for device_id, dev in self.devices.items():
            self._advance(dev, now)
            if dev.observed > 0:
                dev.speed = dev.predicted / dev.observed
                dev.predicted = dev.observed = 0.0
            out.append(Telemetry(
                now, device_id, min(1.0, dev.busy_integral / interval), dev.memory_used,
                dev.spec.memory_bytes, queue_len, len(dev.running),
                dev.flops_done / interval, dev.speed))
            dev.busy_integral = 0.0
            dev.flops_done = 0.0
        self.last_tick = now
        return out

    def recovering(self) -> bool:
        return False  # a simulated device that failed stays down

    def settle(self, now: float, controller: Controller, submitted: int) -> None:
        if self.progress is None or submitted - self.reported < PROGRESS_EVERY:
            return
        self.reported = submitted - submitted % PROGRESS_EVERY
        self.progress(SimProgress(submitted, now, controller.queued,
                                  sum(bool(d.running) for d in self.devices.values()),
                                  len(self.devices)))

    def finish(self, controller: Controller) -> None:
        """Nothing to wait for: simulated batches stop with the clock."""

    def summary_fields(self, makespan: float, completed: int) -> dict[str, Any]:
        return {"device_util_mean": self.utilization(makespan)}

    def run_info(self, controller: Controller) -> dict[str, Any]:
        return {}

    def utilization(self, makespan: float) -> float:
        """Mean busy fraction of all devices over the run."""
        if makespan <= 0 or not self.devices:
            return 0.0
        return sum(d.total_busy for d in self.devices.values()) / (len(self.devices) * makespan)
