"""A local Ray for tests: bound to loopback, two CPUs, GPUs declared for emulated workers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def local_ray(gpus: int, **options: Any) -> Iterator[Any]:
    """``ray`` initialized for the block, shut down after it; ``options`` go to ray.init."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=gpus, include_dashboard=False,
             log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1",
             **options)
    try:
        yield ray
    finally:
        ray.shutdown()
