"""Telemetry: the NVML path through its seam, the psutil fallback for real."""

from __future__ import annotations

import torch

from workers.telemetry import GpuReading, RecordedNvml, Sampler, nvml_source


def test_nvml_readings_become_telemetry() -> None:
    readings = [GpuReading(0.9, 40 << 30, 80 << 30, 610.0), GpuReading(0.2, 10 << 30, 80 << 30,
                                                                        200.0)]
    sampler = Sampler("node/gpu0", nvml=RecordedNvml(readings))
    sampler.record(flops=5e12, predicted_s=1.0, observed_s=2.0)  # ran twice as slow
    first = sampler.sample(now=10.0, queue_len=3, running=1)
    assert (first.device, first.util, first.mem_used, first.mem_total) == (
        "node/gpu0", 0.9, 40 << 30, 80 << 30)
    assert first.speed == 0.5
    assert first.achieved_flops > 0
    second = sampler.sample(now=11.0, queue_len=0, running=0)
    assert (second.util, second.speed, second.achieved_flops) == (0.2, 1.0, 0.0)
    assert sampler.sample(12.0, 0, 0).util == 0.9  # recorded readings loop


def test_without_a_gpu_nvml_is_absent_and_psutil_reports_for_real() -> None:
    if torch.cuda.is_available():  # pragma: no cover - GPU machines take the NVML path
        assert nvml_source(0) is not None
        return
    assert nvml_source(0) is None  # the real binding, failing to find the driver
    sampler = Sampler("node/cpu", cpus=1.0)
    x = torch.randn(512, 512)
    for _ in range(20):
        x = x @ x / 512  # keep the process busy between samples
    sample = sampler.sample(now=1.0, queue_len=0, running=1)
    assert 0.0 < sample.util <= 1.0
    assert 0 < sample.mem_used < sample.mem_total
