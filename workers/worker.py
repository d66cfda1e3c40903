"""The long-lived worker actor: one per device, running packed attention batches.

The executor wraps :class:`AttentionWorker` with ``ray.remote`` (GPU actors
take ``num_gpus=1``, CPU actors a set ``num_cpus``) and pins it to its node.
A batch arrives as plain job records; the worker builds tensors, runs the
job kinds (prefill, decode over a growing cache, train with backward, the
seq2seq model), times the call and reports results and telemetry.

Each worker enforces a memory budget: a batch whose predicted peak memory
(the cost model's, sent with the batch) does not fit is refused before any
tensor is allocated and comes back as an out-of-memory result, exactly as a
real OOM would. Refusing up front matters on a GPU: a real OOM mid-batch can
leave the allocator fragmented for every batch after it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from scheduler import packing
from scheduler.events import Failure, FailureCode
from scheduler.jobs import AttentionJob, JobKind
from scheduler.units import size
from scheduler.view import Telemetry
from workers import kernels
from workers.telemetry import Sampler, nvml_source


@dataclass(frozen=True)
class BatchResult:
    batch: str
    seconds: float
    backend: str
    checksum: float
    failure: Failure | None = None
    outputs: Mapping[str, bytes] | None = None  # job id -> O (safetensors), for jobs' own tensors

    @property
    def error(self) -> str | None:
        return None if self.failure is None else self.failure.detail


class AttentionWorker:
    """Runs batches for one device. ``emulate``: a declared GPU slot computing on CPU.

    ``memory_budget`` is in bytes (0: no budget). ``memory_fraction`` also caps
    it at that share of a real GPU's own memory, because the cluster spec can
    overstate a device (a MIG slice reports the whole card's model).
    """

    def __init__(self, device_id: str, kind: str, cpus: float = 1.0, emulate: bool = False,
                 gpu_index: int = 0, slowdown: float = 1.0, seed: int = 0,
                 memory_budget: int = 0, memory_fraction: float = 1.0) -> None:
        self.device_id = device_id
        use_cuda = kind == "gpu" and not emulate and torch.cuda.is_available()
        self.torch_device = torch.device("cuda", gpu_index) if use_cuda else torch.device("cpu")
        if not use_cuda:
            torch.set_num_threads(max(1, int(cpus)))
        nvml = nvml_source(gpu_index) if use_cuda else None
        self.cpus, self.nvml = cpus, nvml
        self.sampler = Sampler(device_id, cpus, nvml)
        self.slowdown = slowdown  # test knob: a worker that runs this many times slower
        self.seed = seed
        self.inputs = Inputs(self.torch_device, seed)
        self.running = 0
        self.budget = memory_budget
        if use_cuda:
            own = int(torch.cuda.get_device_properties(gpu_index).total_memory * memory_fraction)
            self.budget = min(self.budget, own) if self.budget else own
        self.reserved = 0  # predicted bytes of the batches running now

    def ping(self) -> str:
        return self.device_id

    def pid(self) -> int:
        """The worker's process id, for an operator (or a test) who must find it."""
        return os.getpid()

    def reset(self) -> str:
        """Start a run afresh on a reused worker: no telemetry or RNG state from the last one.

        Without it, a compare's second policy would see the first one's
        measured speed in its first telemetry sample, and different tensors.
        """
        self.sampler = Sampler(self.device_id, self.cpus, self.nvml)
        self.inputs = Inputs(self.torch_device, self.seed)
        return self.device_id

    def memory_budget(self) -> int:
        return self.budget

    def run(self, batch_id: str, jobs: list[AttentionJob], predicted_s: float,
            flops: float, memory: int = 0, inputs: Mapping[str, bytes] | None = None
            ) -> BatchResult:
        """Run one packed batch; never raises for the job's sake (errors are results).

        ``memory`` is the batch's predicted peak; over the budget, nothing runs.
        ``inputs`` holds the tensors of jobs that brought their own (job id ->
        safetensors with q, k, v); their outputs come back in the result. A
        batch cancelled through Ray (``ray.cancel``) stops between launches.
        """
        if self.budget and memory > self.budget - self.reserved:
            return BatchResult(batch_id, 0.0, "", 0.0, Failure(
                FailureCode.OUT_OF_MEMORY,
                f"out of memory: batch needs {size(memory)}, {self.device_id} has "
                f"{size(self.budget - self.reserved)} of its {size(self.budget)} budget free "
                "(refused before running)"))
        start = time.perf_counter()
        self.running += 1
        self.reserved += memory
        outputs: dict[str, bytes] = {}
        try:
            checksum, backend = self._run(jobs, inputs or {}, outputs)
            if self.torch_device.type == "cuda":
                torch.cuda.synchronize(self.torch_device)
        except Cancelled:
            return BatchResult(batch_id, time.perf_counter() - start, "", 0.0, Failure(
                FailureCode.CANCELLED, "cancelled while running"))
        except torch.cuda.OutOfMemoryError as e:
            return BatchResult(batch_id, time.perf_counter() - start, "", 0.0, Failure(
                FailureCode.OUT_OF_MEMORY, f"out of memory: {e}".splitlines()[0]))
        except (RuntimeError, ValueError) as e:  # ValueError: a batch the packing rule refuses
            return BatchResult(batch_id, time.perf_counter() - start, "", 0.0, Failure(
                FailureCode.ERROR, f"{type(e).__name__}: {e}".splitlines()[0]))
        finally:
            self.running -= 1
            self.reserved -= memory
        elapsed = time.perf_counter() - start
        if self.slowdown > 1.0:
            time.sleep(elapsed * (self.slowdown - 1.0))
            elapsed = time.perf_counter() - start
        self.sampler.record(flops, predicted_s, elapsed)
        return BatchResult(batch_id, elapsed, backend, checksum, outputs=outputs or None)

    def telemetry(self, now: float, queue_len: int) -> Telemetry:
        return self.sampler.sample(now, queue_len, self.running)

    # -- computing ------------------------------------------------------------------------

    def _rand(self, *shape: int, dtype: torch.dtype) -> torch.Tensor:
        return self.inputs.take(shape, dtype)

    def _run(self, jobs: list[AttentionJob], inputs: Mapping[str, bytes],
             outputs: dict[str, bytes]) -> tuple[float, str]:
        """Jobs with tensors of their own, one call each; then each launch group of the
        rest in turn (``packing.launch_groups``: the rule the cost model prices). The
        backend is the last call's."""
        checksum, backend = 0.0, ""
        for job in jobs:
            if job.id in inputs:
                _stop_if_cancelled()
                outputs[job.id], backend = self._given(job, inputs[job.id])
        rest = [j for j in jobs if j.id not in inputs]
        for group in packing.launch_groups(rest) if rest else ():
            _stop_if_cancelled()
            if group.kind == "model":
                c, backend = self._model(group.jobs[0]), "matmul"
            elif group.kind == "decode":
                c, backend = self._decode(group)
            else:
                c, backend = self._same_heads(group)
            checksum += c
        return checksum, backend

    def _given(self, job: AttentionJob, data: bytes) -> tuple[bytes, str]:
        """One attention call on the job's own Q, K, V; O as safetensors."""
        from safetensors.torch import load, save

        qkv = load(data)
        q, k, v = (qkv[n].to(self.torch_device) for n in ("q", "k", "v"))
        out, backend = kernels.attention(q, k, v, job.causal)
        return bytes(save({"o": out.cpu().contiguous()})), backend

    def _same_heads(self, group: packing.CallGroup) -> tuple[float, str]:
        """Prompts and training steps of one head layout, one launch per call of the group.

        A job takes part in its first ``packing.forward_calls`` launches. The
        kernels pick per launch how different lengths share it (one call per
        shape on a CPU, where padding and jagged tensors both measured slower;
        jagged tensors first on a GPU) and the backend string records it.
        """
        head, jobs = group.jobs[0], group.jobs
        dtype = kernels.DTYPES[head.dtype.value]
        calls = [packing.forward_calls(j) for j in jobs]
        checksum, backend = torch.zeros((), device=self.torch_device), ""
        for call in range(group.forward):
            _stop_if_cancelled()
            shapes: dict[tuple[int, int], list[AttentionJob]] = {}
            for j, n in zip(jobs, calls, strict=True):
                if call < n:
                    shapes.setdefault((j.q_len, j.kv_len), []).append(j)
            qs, ks, vs = [], [], []
            for (q_len, kv_len), same in shapes.items():
                batch = sum(j.batch for j in same)
                q = self._rand(batch, head.heads, q_len, head.head_dim, dtype=dtype)
                qs.append(q.requires_grad_(any(j.kind is JobKind.TRAIN for j in same)))
                ks.append(self._rand(batch, head.kv_heads, kv_len, head.head_dim, dtype=dtype))
                vs.append(self._rand(batch, head.kv_heads, kv_len, head.head_dim, dtype=dtype))
            outs, backend = kernels.packed_attention(qs, ks, vs, head.causal)
            total = torch.stack([o.float().sum() for o in outs]).sum()
            if total.requires_grad:
                total.backward()  # type: ignore[no-untyped-call]
            checksum += total.detach()  # on the device: one sync per batch, not per call
        return float(checksum), backend

    def _decode(self, group: packing.CallGroup) -> tuple[float, str]:
        """Requests of one head layout and depth decode together: a call per step and layer."""
        head = group.jobs[0]
        dtype = kernels.DTYPES[head.dtype.value]
        ordered = sorted(group.jobs, key=lambda j: -j.steps)  # rows still running: a prefix
        kv_lens = [j.kv_len for j in ordered for _ in range(j.batch)]
        steps = [j.steps for j in ordered for _ in range(j.batch)]
        length = max(kv + n - 1 for kv, n in zip(kv_lens, steps, strict=True))
        total, backend = torch.zeros((), device=self.torch_device), ""
        for _ in range(head.layers):
            _stop_if_cancelled()
            q = self._rand(len(steps), head.heads, steps[0], head.head_dim, dtype=dtype)
            k = self._rand(len(steps), head.kv_heads, length, head.head_dim, dtype=dtype)
            v = self._rand(len(steps), head.kv_heads, length, head.head_dim, dtype=dtype)
            out, backend = kernels.decode_many(q, k, v, kv_lens, steps,
                                               between=_stop_if_cancelled)
            total += out.float().sum()  # summed on the device: one sync per batch, not per layer
        return float(total), f"{backend}+decode"

    def _model(self, job: AttentionJob) -> float:
        from workers.seq2seq import Seq2Seq, synthetic_batch, train_steps

        model = Seq2Seq(units=job.head_dim).to(self.torch_device)
        source, target = synthetic_batch(job.batch, job.q_len, device=str(self.torch_device))
        losses = train_steps(model, source, target, job.steps)
        return sum(losses)


class Cancelled(Exception):
    """The batch was cancelled through Ray while it ran."""


def _stop_if_cancelled() -> None:
    """Raise :class:`Cancelled` when ``ray.cancel`` was called on the running batch.

    An actor's task cannot be interrupted, only flagged; the worker looks
    between launches. Outside a Ray task (a worker built in-process) nothing
    can cancel it.
    """
    import ray

    if not ray.is_initialized():  # asking the runtime context would start Ray
        return
    try:
        cancelled = ray.get_runtime_context().is_canceled()
    except RuntimeError:  # not inside a Ray task (the driver)
        return
    if cancelled:
        raise Cancelled


class Inputs:
    """The tensors jobs compute on: one random pool per dtype, sliced per call.

    What the numbers are does not matter to the scheduler, and drawing fresh
    random tensors for every call took a quarter to a third of a CPU
    worker's time (bench/gpu_efficiency.py). A pool twice the largest request
    is drawn once (seeded, so runs repeat) and handed out as views.
    """

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device, self.seed = device, seed
        self.pools: dict[torch.dtype, torch.Tensor] = {}
        self.cursor: dict[torch.dtype, int] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        pool = self.pools.get(dtype)
        if pool is None or n > pool.numel() // 2:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
            pool = torch.randn(max(2 * n, 1 << 16), generator=generator, device=self.device,
                               dtype=dtype)
            self.pools[dtype], self.cursor[dtype] = pool, 0
        start = self.cursor[dtype]
        if start + n > pool.numel():
            start = 0
        self.cursor[dtype] = start + n
        return pool[start:start + n].view(shape)

