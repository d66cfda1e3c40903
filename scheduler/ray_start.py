"""Ray for a run: join the cluster at ``address``, or start a private one on loopback.

The live path's workers and the simulator's sweeps both start Ray here, so
they join and bind the same way and fail with the same one-line hint. Ray is
imported on call: the core imports without it.
"""

from __future__ import annotations

import os
from typing import Any

from scheduler.errors import InputError


def join_or_start(address: str | None, *, num_cpus: int | None = None,
                  num_gpus: int | None = None, **extra: Any) -> bool:
    """Connect this process to Ray; True when this call started or joined it (the caller
    then shuts it down), False when it was connected already."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            # address="local": always a new embedded Ray, never a cluster someone else
            # started on this machine (ray.init() alone would join the latest one).
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **extra,
                     include_dashboard=False, log_to_driver=False, configure_logging=False,
                     _node_ip_address="127.0.0.1")
    except (ConnectionError, RuntimeError, ValueError) as e:
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if address:
            hint = (f"cannot reach Ray at {address} ({cause}); start it first (`ray "
                    "start --head` here, `ray up cluster.yaml` for a cluster) or leave out "
                    "--address to run on a private local Ray")
        else:
            hint = (f"cannot start a local Ray ({cause}); check free memory and /tmp space, "
                    "or join a running one with --address auto")
        raise InputError(hint, field="--address") from None
    return True
