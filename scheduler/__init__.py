"""attnsched: allocate GPU, CPU and memory to attention jobs on Ray.

This package is the pure-Python core (jobs, cost model, cluster spec, traces,
controller, simulator, CLI). It never imports ray, torch or pynvml; the live
side lives in ``workers``.

For notebooks: ``from scheduler import simulate, compare, run, load_trace``
(see :mod:`scheduler.api`). They load on first use, so ``import scheduler``
stays as light as the job model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scheduler.jobs import AttentionJob, ClusterJob, DType, Job, JobKind

if TYPE_CHECKING:
    from scheduler.api import Comparison, LoadedTrace, Result, compare, load_trace, run, simulate

__version__ = "0.1.0"

_API = ("Comparison", "LoadedTrace", "Result", "compare", "load_trace", "run", "simulate")

__all__ = ["AttentionJob", "ClusterJob", "Comparison", "DType", "Job", "JobKind", "LoadedTrace",
           "Result", "__version__", "compare", "load_trace", "run", "simulate"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from scheduler import api

        return getattr(api, name)
    raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
