"""A live run's figures as Ray metrics: the Ray dashboard and Prometheus show them.

Ray exports what ``ray.util.metrics`` records in any process of a node
through that node's metrics agent, in Prometheus text format (names get
Ray's ``ray_`` prefix), at the node's ``MetricsExportPort``. The driver
records:

| metric | type | tags |
| --- | --- | --- |
| ``attnsched_queue_jobs`` | gauge: jobs queued in the controller | policy |
| ``attnsched_device_running_jobs`` | gauge: jobs running on the device | device, node |
| ``attnsched_device_utilization`` | gauge: latest telemetry, 0–1 | device, node |
| ``attnsched_device_memory_used_bytes`` | gauge: latest telemetry | device, node |
| ``attnsched_device_up`` | gauge: 1 while its worker is up | device, node |
| ``attnsched_decisions_total`` | counter: actions by outcome | action, outcome |
| ``attnsched_rejections_total`` | counter: rejected actions by reason | reason |
| ``attnsched_jobs_finished_total`` | counter | status |
| ``attnsched_job_latency_seconds`` | histogram: JCT of completed jobs | kind |

An online service (``attnsched serve``) adds :class:`AdmissionMetrics`:

| metric | type | tags |
| --- | --- | --- |
| ``attnsched_admissions_total`` | counter: submissions by verdict | verdict, tenant, class |
| ``attnsched_queue_delay_seconds`` | histogram: queue delay of completed jobs | class |
| ``attnsched_slo_jobs_total`` | counter: completed jobs of a class with a target | class, met |

Rejections are tagged with their :class:`~scheduler.records.RejectCode`: the
free text names jobs and devices, and a tag per job would flood Prometheus.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from scheduler.records import DecisionRecord, Sink
from scheduler.state import JobRecord, JobState

if TYPE_CHECKING:
    from scheduler.controller import Controller

LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0]
EVERY = 1.0  # wall seconds between gauge updates
class RayMetrics(Sink):
    """Records the controller's events as they happen and its state once a second."""

    def __init__(self, policy: str) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        device_tags = ("device", "node")
        self.policy = policy
        self.queue = Gauge("attnsched_queue_jobs", "jobs queued in the controller",
                           tag_keys=("policy",))
        self.running = Gauge("attnsched_device_running_jobs", "jobs running on the device",
                             tag_keys=device_tags)
        self.util = Gauge("attnsched_device_utilization", "latest utilization sample, 0-1",
                          tag_keys=device_tags)
        self.memory = Gauge("attnsched_device_memory_used_bytes", "latest memory sample",
                            tag_keys=device_tags)
        self.up = Gauge("attnsched_device_up", "1 while the device's worker is up",
                        tag_keys=device_tags)
        self.decisions = Counter("attnsched_decisions_total", "policy actions by outcome",
                                 tag_keys=("action", "outcome"))
        self.rejections = Counter("attnsched_rejections_total", "rejected actions by reason",
                                  tag_keys=("reason",))
        self.finished = Counter("attnsched_jobs_finished_total", "jobs done or failed",
                                tag_keys=("status",))
        self.latency = Histogram("attnsched_job_latency_seconds", "job completion time",
                                 boundaries=LATENCY_BUCKETS, tag_keys=("kind",))
        self.last = 0.0

    def job_finished(self, record: JobRecord) -> None:
        done = record.state is JobState.DONE
        self.finished.inc(1.0, tags={"status": "done" if done else "failed"})
        if done and record.end is not None:
            self.latency.observe(max(0.0, record.end - record.job.submit_time),
                                 tags={"kind": record.job.kind.value})

    def decision(self, record: DecisionRecord) -> None:
        self.decisions.inc(1.0, tags={"action": record.action, "outcome": record.outcome})
        if record.code is not None:
            self.rejections.inc(1.0, tags={"reason": record.code.value})

    def sample(self, controller: Controller, force: bool = False) -> None:
        """The gauges, at most every ``EVERY`` seconds (or now, with ``force``)."""
        wall = time.monotonic()
        if wall - self.last < EVERY and not force:
            return
        self.last = wall
        self.queue.set(controller.queued, tags={"policy": self.policy})
        for device_id, dev in controller.devices.items():
            tags = {"device": device_id, "node": dev.node}
            self.running.set(dev.running_jobs, tags=tags)
            self.up.set(1.0 if dev.up else 0.0, tags=tags)
            sample = controller.telemetry.get(device_id)
            if sample is not None:
                self.util.set(sample.util, tags=tags)
                self.memory.set(float(sample.mem_used), tags=tags)


class AdmissionMetrics:
    """An online service's admission verdicts and each class's queue delay."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.admissions = Counter(
            "attnsched_admissions_total",
            "submissions by verdict (accepted, borrowed, queue, slo, quota)",
            tag_keys=("verdict", "tenant", "class"))
        self.delay = Histogram("attnsched_queue_delay_seconds", "queue delay of completed jobs",
                               boundaries=LATENCY_BUCKETS, tag_keys=("class",))
        self.slo = Counter("attnsched_slo_jobs_total",
                           "completed jobs of classes with a target, by whether it was met",
                           tag_keys=("class", "met"))

    def verdict(self, verdict: str, tenant: str, slo: str) -> None:
        self.admissions.inc(1.0, tags={"verdict": verdict, "tenant": tenant, "class": slo})

    def done(self, slo: str, delay: float, met: bool | None) -> None:
        self.delay.observe(max(0.0, delay), tags={"class": slo})
        if met is not None:
            self.slo.inc(1.0, tags={"class": slo, "met": "yes" if met else "no"})
