"""Cache affinity weighed against load: the rule ``adaptive`` routes prefills by.

A device holding a prefill's leading prompt blocks runs it for less (the
cost model prices only the queries after them). The rule compares predicted
finish times: a free holder, priced with the blocks it saves, against the
earliest finish without the cache; a busy holder, priced the same plus its
wait (its predicted end, and the work this decision already gave it or left
waiting for it). Whichever finishes first wins, so affinity pulls a job only
as far as it pays: a hot prefix spreads to a second device once the queue
behind its holder costs more than computing the prefix again. The same price
ranks a prefill among its tenant's jobs (:func:`cheapest_seconds`): a prompt
mostly cached is a short job, and goes before a long one. And a batch leaves
out a prefill that another device holds more of (:func:`cached_elsewhere`):
packed here, it would compute there-cached tokens again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from policies.common import cached_seconds, fits
from scheduler.jobs import AttentionJob, Job
from scheduler.view import DeviceView, View

Route = tuple[float, DeviceView, float]  # (predicted finish, device, predicted run time)


def earliest_with_cache(view: View, job: AttentionJob, taken: Mapping[str, int],
                        queued: dict[str, float], speed: Callable[[View, str], float],
                        best: Route | None) -> Route | None:
    """``best`` or a holder of ``job``'s prefix that finishes sooner; None when that is a
    busy holder (the job waits for it, and its run time joins ``queued[holder]``).

    ``speed(view, device)`` is the device's measured speed (1.0 on profile); holders
    are visited in a fixed order, so equal finishes resolve the same way every run.
    """
    wait_for: tuple[float, str, float] | None = None
    gpu_job = best is not None and best[1].kind != "cpu"
    for device_id in sorted(view.cache.holders(job)):
        device = view.devices[device_id]
        if not device.up or (gpu_job and device.kind == "cpu"):
            continue  # a CPU worker takes GPU work only as an offload, cache or not
        seconds = cached_seconds(view, job, device_id)[0]
        finish = seconds / speed(view, device_id)
        if not math.isfinite(finish):
            continue
        if device_id in view.free and fits(view, job, device, taken):
            if best is None or finish < best[0]:
                best = (finish, device, seconds)
            continue
        finish += max(0.0, device.busy_until - view.now) + queued.get(device_id, 0.0)
        if wait_for is None or finish < wait_for[0]:
            wait_for = (finish, device_id, seconds)
    if wait_for is not None and (best is None or wait_for[0] < best[0]):
        _, device_id, seconds = wait_for
        queued[device_id] = queued.get(device_id, 0.0) + seconds
        return None
    return best


def cheapest_seconds(view: View, job: Job) -> float:
    """Predicted run time on the fastest kind of device, or on a device holding the
    job's prefix if that is less: what the job would cost where it is cheapest."""
    seconds = view.cost.best_seconds(job)
    if not isinstance(job, AttentionJob) or not job.block_tokens:
        return seconds
    # Devices of one profile price alike, and more cached tokens cost less: price only
    # each profile's longest hit (a common first block makes most devices holders).
    longest: dict[str | None, tuple[int, str]] = {}
    for device_id in view.cache.holders(job):
        device = view.devices[device_id]
        if device.up:
            hit = view.cache.hit(job, device_id)
            if hit > longest.get(device.profile, (0, ""))[0]:
                longest[device.profile] = (hit, device_id)
    for hit, device_id in longest.values():
        seconds = min(seconds, view.cost.cached([job], device_id, {job.id: hit})[0])
    return seconds


def cached_elsewhere(view: View, job: Job, device: str) -> bool:
    """Whether another device holds more of ``job``'s prompt than ``device`` does."""
    if not isinstance(job, AttentionJob) or not job.block_tokens:
        return False
    here = view.cache.hit(job, device)
    return any(view.cache.hit(job, d) > here for d in view.cache.holders(job) if d != device)
