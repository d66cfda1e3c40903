"""The simulated executor: devices that run batches on a virtual clock.

A batch's solo duration comes from the cost model (the controller priced it
when placing). Batches sharing a device split its throughput (processor
sharing) at the profile's measured sharing efficiency; a device slowed by
fault injection runs everything ``factor`` times longer. Telemetry records
are synthesized in the same shape live workers report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from scheduler.sim.engine import FINISH, EventQueue
from scheduler.state import Batch, DeviceState
from scheduler.view import Telemetry


@dataclass(slots=True)
class _Running:
    batch: Batch
    remaining: float  # solo seconds of work left
    version: int = 0
    finish: float = 0.0


@dataclass(slots=True)
class _Device:
    state: DeviceState
    slow: float = 1.0
    running: dict[str, _Running] = field(default_factory=dict)
    rate: float = 1.0  # progress of each elastic batch per second
    last: float = 0.0
    busy_integral: float = 0.0
    flops_done: float = 0.0
    speed: float = 1.0
    total_busy: float = 0.0


class SimExecutor:
    def __init__(self, devices: Mapping[str, DeviceState], events: EventQueue,
                 slow: Mapping[str, float] | None = None) -> None:
        self.events = events
        self.devices = {k: _Device(s, (slow or {}).get(k, 1.0)) for k, s in devices.items()}
        self.last_tick = 0.0

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
                busy = 1.0 if dev.state.elastic else min(
                    1.0, sum(r.batch.share for r in dev.running.values()))
                dev.busy_integral += busy * elapsed
                dev.total_busy += busy * elapsed
        dev.last = now

    def _reschedule(self, dev: _Device, now: float) -> None:
        elastic = [r for r in dev.running.values() if r.batch.elastic]
        k = len(elastic)
        if k:
            profile = dev.state.profile
            efficiency = profile.sharing_efficiency(k) if profile else 1.0
            dev.rate = efficiency / k / dev.slow
        for run in elastic:
            run.version += 1
            run.finish = now + max(0.0, run.remaining) / dev.rate
            self.events.push(run.finish, FINISH, (run.batch.id, run.version, dev.state.spec.id))

    def start(self, batch: Batch, now: float) -> None:
        dev = self.devices[batch.device]
        self._advance(dev, now)
        run = _Running(batch, batch.solo_seconds)
        dev.running[batch.id] = run
        if not batch.elastic:  # holds its resources for exactly its duration
            run.finish = now + batch.solo_seconds
            self.events.push(run.finish, FINISH, (batch.id, 0, batch.device))
            return  # the elastic batches' rate is unchanged: nothing to reschedule
        self._reschedule(dev, now)

    def is_current(self, batch_id: str, version: int, device: str) -> bool:
        run = self.devices[device].running.get(batch_id)
        return run is not None and run.version == version

    def finish(self, batch: Batch, now: float, completed: bool) -> None:
        dev = self.devices[batch.device]
        self._advance(dev, now)
        run = dev.running.pop(batch.id, None)
        if run is not None and completed:
            dev.flops_done += batch.flops
            if batch.elastic and now > batch.start:
                dev.speed = 1.0 / dev.slow
        if batch.elastic:  # a cluster job leaving changes no elastic batch's rate
            self._reschedule(dev, now)

    # -- telemetry ------------------------------------------------------------------------

    def sample(self, now: float, queue_len: int) -> list[Telemetry]:
        interval = max(now - self.last_tick, 1e-9)
        out = []
        for device_id, dev in self.devices.items():
            self._advance(dev, now)
            state = dev.state
            out.append(Telemetry(
                now, device_id, min(1.0, dev.busy_integral / interval),
                state.spec.memory_bytes - state.memory_free, state.spec.memory_bytes,
                queue_len, len(dev.running), dev.flops_done / interval, dev.speed))
            dev.busy_integral = 0.0
            dev.flops_done = 0.0
        self.last_tick = now
        return out

    def utilization(self, makespan: float) -> float:
        """Mean busy fraction of all devices over the run."""
        if makespan <= 0 or not self.devices:
            return 0.0
        return sum(d.total_busy for d in self.devices.values()) / (len(self.devices) * makespan)
