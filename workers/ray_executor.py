"""The live executor: batches run on worker actors, results come back as events.

It is the run loop's executor in ``attnsched run``, on a wall clock that
waits on its outstanding Ray calls (``poll``). A call that completes is
turned into a typed event (``resolve``): a batch done or failed, telemetry,
a worker that died (its device, or its whole node, is lost; the fleet
restarts it) or came back. Nothing here decides anything: the controller
does, through the loop.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scheduler.events import (
    BatchDone,
    DeviceDown,
    DeviceUp,
    Event,
    Failure,
    FailureCode,
    NodeDown,
    Samples,
)
from scheduler.jobs import Job
from scheduler.metrics import RunOutputs
from scheduler.state import Batch
from workers.fleet import Fleet
from workers.live_config import PROGRESS_EVERY, LiveConfig, LiveProgress
from workers.ray_metrics import RayMetrics
from workers.session import metrics_endpoints

if TYPE_CHECKING:
    from scheduler.controller import Controller
    from scheduler.journal import Journal

log = logging.getLogger(__name__)
DRAIN_TIMEOUT = 120.0  # wall seconds a reused fleet gets to finish a stopped run's calls


class RayExecutor:
    mode = "live"

    def __init__(self, fleet: Fleet, config: LiveConfig, outputs: RunOutputs,
                 metrics: RayMetrics, journal: Journal | None,
                 jobs_of: Callable[[Batch], list[Job]], *, own: bool,
                 dead: Sequence[str] = (), info: Mapping[str, Any] | None = None) -> None:
        self.fleet, self.config, self.outputs, self.metrics = fleet, config, outputs, metrics
        self.journal, self.jobs_of, self.own = journal, jobs_of, own
        self.info = dict(info or {})
        self.in_flight: dict[Any, Batch] = {}
        self.sent: dict[Any, float] = {}  # wall clock at each batch's send, for on_batch
        self.probes: dict[Any, str] = {}
        self.utils: list[float] = []
        self.latest: dict[str, float] = {}  # device -> utilization in its latest sample
        self.down: set[str] = set()
        self.notes: list[tuple[str, str]] = [("dead", d) for d in dead]
        self.t0 = time.monotonic()
        self.reported = self.t0 - PROGRESS_EVERY  # the first report goes out at once

    # -- the wall clock's source ------------------------------------------------------------

    def _refs(self) -> list[Any]:
        return [*self.in_flight, *self.probes, *self.fleet.restarts]

    def outstanding(self) -> bool:
        return bool(self.in_flight or self.probes or self.fleet.restarts)

    def poll(self, timeout: float) -> list[Any]:
        """Calls that completed (waiting up to ``timeout`` for one), and fleet news."""
        import ray

        items: list[Any] = [*self.notes, *(("node", n) for n in self.fleet.overdue())]
        self.notes.clear()
        refs = self._refs()
        if not refs:
            if timeout > 0 and not items:
                time.sleep(timeout)
            return items
        if timeout > 0 and not items:
            ray.wait(refs, num_returns=1, timeout=timeout)
        return items + ray.wait(refs, num_returns=len(refs), timeout=0)[0]

    # -- the executor ------------------------------------------------------------------------

    def resolve(self, kind: int, payload: Any, now: float) -> Event | None:
        if isinstance(payload, tuple):
            what, target = payload
            return (self._worker_died(target, "dead before this run") if what == "dead"
                    else self._node_gone(target))
        if payload in self.fleet.restarts:
            return self._restarted(payload)
        if payload in self.probes:
            return self._sampled(payload)
        if payload in self.in_flight:
            return self._done(payload, now)
        return None  # its device was lost meanwhile: nobody waits for it any more

    def _restarted(self, ref: Any) -> Event | None:
        import ray

        restart = self.fleet.restarts.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError as e:
            return self._worker_died(restart.device, type(e).__name__)
        self.down.discard(restart.device)
        return DeviceUp(restart.device)

    def _sampled(self, ref: Any) -> Event | None:
        import ray

        device = self.probes.pop(ref)
        try:
            sample = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            return self._worker_died(device, type(e).__name__)
        self.utils.append(sample.util)
        self.latest[sample.device] = sample.util
        return Samples((sample,))

    def _done(self, ref: Any, now: float) -> Event | None:
        import ray

        batch = self.in_flight.pop(ref)
        sent_at = self.sent.pop(ref, None)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            return self._worker_died(batch.device, type(e).__name__)
        except ray.exceptions.TaskCancelledError:
            return BatchDone(batch.id, Failure(FailureCode.CANCELLED, "cancelled while running"))
        except ray.exceptions.RayError as e:
            return BatchDone(batch.id, Failure(FailureCode.WORKER,
                                               f"worker failed: {type(e).__name__}"))
        if result.outputs and self.config.payloads is not None:
            self.config.payloads.save_outputs(result.outputs)  # on disk before the outcome
        on_batch = self.config.on_batch
        if on_batch is not None and result.failure is None and sent_at is not None:
            on_batch(batch, result.seconds, time.perf_counter() - sent_at,
                     (now - batch.start) / self.config.speed)
        # cached: the prompt tokens each prefill's worker really took from its KV cache.
        return BatchDone(batch.id, result.failure, result.cached)

    def _forget(self, device: str) -> None:
        for ref in [r for r, b in self.in_flight.items() if b.device == device]:
            del self.in_flight[ref]
            self.sent.pop(ref, None)
        for ref in [r for r, d in self.probes.items() if d == device]:
            del self.probes[ref]
        self.latest.pop(device, None)
        self.down.add(device)

    def _worker_died(self, device: str, why: str) -> Event:
        """Take the device (or its whole node) away; the fleet restarts its worker."""
        node = self.fleet.lost(device)
        if node is not None:
            return self._node_gone(node)
        self._forget(device)
        return DeviceDown(device, f"worker died: {why}")

    def _node_gone(self, node: str) -> Event:
        log.warning("node %s is gone; its work moves to the other nodes", node)
        for spec in self.fleet.spec.nodes:
            if spec.name == node:
                for device in spec.devices:
                    self._forget(device.id)
        return NodeDown(node, f"node {node} lost")

    def start(self, batches: Sequence[Batch], now: float) -> None:
        if self.journal is not None:
            self.journal.commit()  # what workers are about to run is on disk first
        payloads = self.config.payloads
        for batch in batches:
            inputs = payloads.inputs(batch.jobs) if payloads is not None else None
            ref = self.fleet.handles[batch.device].run.remote(
                batch.id, self.jobs_of(batch), batch.solo_seconds, batch.flops, batch.memory,
                inputs or None)
            self.in_flight[ref] = batch
            if self.config.on_batch is not None:
                self.sent[ref] = time.perf_counter()

    def stop(self, batch: Batch, now: float) -> None:
        """Flag the batch's call as cancelled: the worker stops between launches and
        answers with a failure, which ends the batch as usual."""
        import ray

        for ref, running in self.in_flight.items():
            if running.id == batch.id:
                ray.cancel(ref)

    def cancel(self, batches: Sequence[Batch], now: float) -> None:
        """Stop waiting for these batches (their device is gone, or the policy took them
        back): a late result is ignored, and a live worker is asked to stop early."""
        import ray

        ids = {b.id for b in batches}
        for ref in [r for r, b in self.in_flight.items() if b.id in ids]:
            batch = self.in_flight.pop(ref)
            self.sent.pop(ref, None)
            if batch.device not in self.down:
                ray.cancel(ref)  # its worker frees the device between launches

    def tick(self, now: float, queue_len: int) -> Event | None:
        for device, worker in self.fleet.handles.items():
            if device not in self.down:
                self.probes[worker.telemetry.remote(now, queue_len)] = device
        return None  # the samples arrive as the probes answer

    def recovering(self) -> bool:
        return bool(self.fleet.restarts)

    def settle(self, now: float, controller: Controller, submitted: int) -> None:
        if self.journal is not None:
            self.journal.commit()
        self._report(now, controller)
        self.metrics.sample(controller)

    def _report(self, now: float, controller: Controller, force: bool = False) -> None:
        wall = time.monotonic()
        progress = self.config.progress
        if progress is None or (wall - self.reported < PROGRESS_EVERY and not force):
            return
        self.reported = wall
        done = self.outputs.completed + self.outputs.failed
        latest = self.latest
        util = sum(latest.values()) / len(latest) if latest else None
        devices = {d: (latest.get(d), view.running_jobs, view.up)
                   for d, view in controller.devices.items()}
        progress(LiveProgress(done, self.outputs.failed, now, done / max(wall - self.t0, 1e-9),
                              util, controller.queued, devices))

    def finish(self, controller: Controller) -> None:
        import ray

        self._report(controller.now, controller, force=True)
        self.metrics.sample(controller, force=True)
        refs = [*self.in_flight, *self.probes]
        if not self.own and refs:
            # A stopped run may leave batches running; the next run on these workers
            # must find them idle.
            ray.wait(refs, num_returns=len(refs), timeout=DRAIN_TIMEOUT)

    def summary_fields(self, makespan: float, completed: int) -> dict[str, Any]:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        wall = makespan / self.config.speed  # the replay's span on the wall clock
        # Both time bases, named: makespan and throughput_jobs_per_s are in trace seconds
        # (the trace's own clock, which --speed compresses), the rest on the wall clock.
        return {"device_util_mean": sum(self.utils) / len(self.utils) if self.utils else None,
                "devices": len(self.fleet.spec.devices), "speed": self.config.speed,
                "memory_fraction": self.config.memory_fraction,
                "peak_rss_mib": round(peak_rss, 1), "makespan_trace_s": makespan,
                "makespan_wall_s": wall,
                "throughput_jobs_per_wall_s": completed / wall if wall > 0 else None}

    def run_info(self, controller: Controller) -> dict[str, Any]:
        fleet = self.fleet
        return {"cluster": fleet.spec.source, "workers": sorted(fleet.handles),
                "worker_deaths": fleet.deaths, "worker_restarts": sum(fleet.count.values()),
                "nodes_lost": sorted(fleet.dead_nodes),
                "late_results_ignored": controller.late_results
                + (self.journal.duplicates if self.journal else 0),
                **self.info, "metrics_endpoints": metrics_endpoints()}
