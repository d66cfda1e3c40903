"""What one calibration measures: a :class:`Plan`, so tests can run a grid of a few points
in seconds while a real calibration sweeps the full one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Tick = Callable[[str], None]  # told the name of each measurement as it starts
SHARING_ROUNDS = 3  # node-sharing rounds, each over k = 1..sharing_workers
REPLAY_JOBS = 600  # a live replay's jobs
REPLAY_ROUNDS = 3  # replays back to back; each figure is their median


def no_tick(label: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """The live replays calibration ends with (and ``attnsched fidelity --retime`` runs):
    ``jobs`` tiny-preset jobs, ``rounds`` times, on ``workers`` emulated GPUs."""

    jobs: int = REPLAY_JOBS
    rounds: int = REPLAY_ROUNDS
    workers: int = 2

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.rounds < 1 or self.workers < 1:
            raise ValueError(f"a replay needs at least one job, round and worker: {self}")


@dataclass(frozen=True)
class Plan:
    """What one calibration measures.

    ``threads`` is the torch thread count of the grid: 1 by default because a
    live run's emulated GPU workers (and CPU workers on a 2-core node split
    by ``--cpu-workers``) compute with one thread each, and the simulator
    prices them with this profile's rates. ``point_flops`` sizes each SDPA
    call so it runs well above the host floor; ``min_time`` is the seconds
    spent timing each figure.
    """

    device: str = "cpu"
    threads: int = 1
    lengths: tuple[int, ...] = (128, 512, 2048, 8192)
    head_dims: tuple[int, ...] = (16, 64, 128)
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    backends: tuple[str, ...] = ("flash", "math")
    causal: tuple[bool, ...] = (False, True)
    point_flops: float = 2.0**27
    min_time: float = 0.2
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # the batching curve
    packing_lengths: tuple[int, ...] = (128, 512, 2048)
    worker_batches: tuple[int, ...] = (1, 4, 16, 32, 64)  # jobs per batch in the per-job fit
    worker_repeats: int = 9
    sharing_workers: int = 2  # node sharing is measured for k = 1..this busy workers
    sharing_batch_s: float = 0.1
    sharing_batches: int = 6
    decision_devices: int = 4
    decision_queue: int = 32
    decision_rounds: int = 200
    ray: bool = True
    replay_jobs: int = REPLAY_JOBS  # a live replay's jobs (0: none); see :attr:`replay`
    replay_rounds: int = REPLAY_ROUNDS

    def __post_init__(self) -> None:
        if not (self.lengths and self.head_dims and self.dtypes and self.backends
                and self.causal and self.batch_sizes and self.packing_lengths):
            raise ValueError("a plan needs at least one of each grid axis")
        if len(set(self.worker_batches)) < 2:
            raise ValueError("the per-job fit needs at least two batch sizes")

    @property
    def reference_dtype(self) -> str:
        """The dtype of the batching curve and the live-path jobs: the grid's first."""
        return self.dtypes[0]

    @property
    def replays(self) -> bool:
        """Whether calibration ends with live replays: on a CPU, through Ray, when asked."""
        return self.ray and self.device == "cpu" and self.replay_jobs > 0

    @property
    def replay(self) -> ReplayPlan:
        return ReplayPlan(max(1, self.replay_jobs), max(1, self.replay_rounds),
                          max(1, self.sharing_workers))

    def grid(self) -> list[tuple[str, int, bool, int, str]]:
        """(dtype, head_dim, causal, length, backend) of every SDPA point."""
        return [(dt, d, c, length, b) for dt in self.dtypes for d in self.head_dims
                for c in self.causal for length in self.lengths for b in self.backends]


def count_steps(plan: Plan) -> int:
    """How many times a calibration of ``plan`` calls its ``tick``: the progress bar's total.

    The device: host cost, decode step, decode mask, the grid, matmul and bandwidth, the
    batching curve, packing. The live path: decision time and the in-process fit; through
    Ray also its start, round trips, the Ray fit, telemetry and, on a CPU, every
    node-sharing round and replay.
    """
    device = 3 + len(plan.grid()) + 1 + len(plan.batch_sizes) + len(plan.packing_lengths)
    if not plan.ray:
        return device + 2
    cpu = plan.device == "cpu"
    replays = plan.replay_rounds if plan.replay_jobs else 0
    return device + 6 + (SHARING_ROUNDS * plan.sharing_workers + replays if cpu else 0)
