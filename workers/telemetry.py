"""Utilization reports from a worker's device: NVML for GPUs, psutil otherwise.

NVML sits behind :class:`NvmlSource`, a one-method seam, so tests (and
machines without a GPU) can feed recorded readings; the psutil fallback runs
for real. Either way the worker emits the controller's
:class:`~scheduler.view.Telemetry` record, the same one the simulator
synthesizes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil

from scheduler.view import Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuReading:
    util: float  # 0..1, share of the last sample period a kernel ran
    mem_used: int
    mem_total: int
    power_w: float


class NvmlSource(Protocol):
    """Where GPU readings come from: live NVML, or recorded ones in tests."""

    def read(self) -> GpuReading: ...


class PynvmlSource:
    """Live NVML through the official binding (``nvidia-ml-py`` provides ``pynvml``)."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def read(self) -> GpuReading:
        nvml, h = self._nvml, self._handle
        util = nvml.nvmlDeviceGetUtilizationRates(h)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        try:
            power = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
        except nvml.NVMLError:  # not every board reports power
            power = 0.0
        return GpuReading(util.gpu / 100.0, int(mem.used), int(mem.total), power)


class RecordedNvml:
    """Replays recorded readings in a loop: the seam tests use without a GPU."""

    def __init__(self, readings: Sequence[GpuReading]) -> None:
        if not readings:
            raise ValueError("need at least one reading")
        self._readings: Iterator[GpuReading] = iter(readings)
        self._all = tuple(readings)

    def read(self) -> GpuReading:
        try:
            return next(self._readings)
        except StopIteration:
            self._readings = iter(self._all)
            return next(self._readings)


def nvml_source(index: int) -> NvmlSource | None:
    """Live NVML for GPU ``index``, or None where NVML is absent (no driver, no GPU)."""
    try:
        return PynvmlSource(index)
    except Exception as e:  # pynvml raises NVMLError_* subclasses, or ImportError
        log.info("NVML unavailable (%s); falling back to psutil", e)
        return None


class Sampler:
    """Turns device readings and the worker's own counters into Telemetry records.

    Without NVML it reports the worker process's CPU share (of the cores it
    was given) and resident memory, plus torch's allocator figures on CUDA.
    """

    def __init__(self, device: str, cpus: float = 1.0, nvml: NvmlSource | None = None,
                 mem_total: int | None = None) -> None:
        self.device, self.cpus, self.nvml = device, max(cpus, 1e-9), nvml
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # start the interval
        self.mem_total = mem_total or psutil.virtual_memory().total
        self.last = time.monotonic()
        self.flops = 0.0
        self.predicted = self.observed = 0.0

    def record(self, flops: float, predicted_s: float, observed_s: float) -> None:
        """Account for one finished batch: work done, and how it ran against prediction."""
        self.flops += flops
        self.predicted += predicted_s
        self.observed += observed_s

    def sample(self, now: float, queue_len: int, running: int) -> Telemetry:
        interval = max(time.monotonic() - self.last, 1e-6)
        if self.nvml is not None:
            r = self.nvml.read()
            util, mem_used, mem_total = r.util, r.mem_used, r.mem_total
        else:
            util = min(1.0, self.process.cpu_percent(None) / 100.0 / self.cpus)
            mem_used, mem_total = self.process.memory_info().rss, self.mem_total
        speed = self.predicted / self.observed if self.observed > 0 else 1.0
        sample = Telemetry(now, self.device, util, mem_used, mem_total, queue_len, running,
                           self.flops / interval, speed)
        self.last = time.monotonic()
        self.flops = self.predicted = self.observed = 0.0
        return sample
