"""attnsched: allocate GPU, CPU and memory to attention jobs on Ray.

This package is the pure-Python core (jobs, cost model, cluster spec, traces,
controller, simulator, CLI). It never imports ray, torch or pynvml; the live
side lives in ``workers``.
"""

from scheduler.jobs import AttentionJob, ClusterJob, DType, Job, JobKind

__version__ = "0.1.0"

__all__ = ["AttentionJob", "ClusterJob", "DType", "Job", "JobKind", "__version__"]
