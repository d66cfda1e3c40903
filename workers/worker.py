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

Each worker also keeps a KV cache by prefix block (:class:`~workers.kvstore.KVBlockStore`)
in the memory its running batches leave, by the rule the controller plans with
(``scheduler/capacity.py``): a prefill with prefix blocks takes its resident
leading blocks when its batch starts, the batch's start then evicts what it
needs, and once the batch ran each prompt's whole blocks are kept. Doing the
same steps in the same order on the same bytes is what makes the hits it
measures the hits the controller planned.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from scheduler import packing
from scheduler.events import Failure, FailureCode
from scheduler.jobs import AttentionJob, JobKind
from scheduler.kvcache import block_bytes, block_keys, reusable_blocks
from scheduler.units import size
from scheduler.view import Telemetry
from workers import kernels
from workers.kvstore import KVBlockStore, Prefix, cache_served, cached_prefill, hits
from workers.telemetry import Sampler, nvml_source

# The KV cache's bound for a worker made without a memory budget (a test, a notebook):
# live runs always pass one (the device's planned memory), and an unbounded cache
# would keep every prompt's blocks in host memory.
DEFAULT_CACHE_BYTES = 1 << 30
Prompts = dict[str, tuple[torch.Tensor, torch.Tensor]]  # job id -> its whole prompt's K, V


@dataclass(frozen=True)
class BatchResult:
    batch: str
    seconds: float
    backend: str
    checksum: float
    failure: Failure | None = None
    outputs: Mapping[str, bytes] | None = None  # job id -> O (safetensors), for jobs' own tensors
    # job id -> prompt tokens taken from the KV cache, for jobs with prefix blocks (None: none)
    cached: Mapping[str, int] | None = None

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
        self.cache = KVBlockStore(self._cache_budget())
        self.cache_lock = threading.Lock()  # a cancelled batch may still run beside the next

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
        with self.cache_lock:  # the controller's plan starts cold too
            self.cache.clear()
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
        The result's ``cached`` says how many prompt tokens each job with prefix
        blocks took from the KV cache.
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
        prefixes = self._take(jobs, inputs or {})  # before the batch's start evicts them
        self._fit_cache()
        prompts: Prompts = {}
        try:
            checksum, backend = self._run(jobs, inputs or {}, outputs, prefixes, prompts)
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
            self._fit_cache()
        self._keep(jobs, prompts)
        elapsed = time.perf_counter() - start
        if self.slowdown > 1.0:
            time.sleep(elapsed * (self.slowdown - 1.0))
            elapsed = time.perf_counter() - start
        self.sampler.record(flops, predicted_s, elapsed)
        return BatchResult(batch_id, elapsed, backend, checksum, outputs=outputs or None,
                           cached=hits(jobs, prefixes))

    def prefill(self, job: AttentionJob) -> tuple[torch.Tensor, int]:
        """One prefill with prefix blocks through the KV cache, as ``run`` computes it: its
        output rows ``(layers, batch, heads, new tokens, head_dim)`` and the prompt tokens
        it took from the cache. For checking the cache path against the whole prompt;
        work goes through ``run``."""
        prefixes = self._take([job], {})
        if job.id not in prefixes:
            raise ValueError(f"job {job.id!r} is not a prefill the KV cache serves")
        prompts: Prompts = {}
        out, _ = self._prefill(job, prefixes[job.id], prompts)
        self._keep([job], prompts)
        return out, prefixes[job.id].blocks * job.block_tokens

    def telemetry(self, now: float, queue_len: int) -> Telemetry:
        return self.sampler.sample(now, queue_len, self.running)

    # -- the KV cache ---------------------------------------------------------------------

    def _cache_budget(self) -> int:
        """The memory the running batches leave: the controller's cache budget for a
        device (``scheduler/capacity.py``: its memory free)."""
        return max(0, (self.budget or DEFAULT_CACHE_BYTES) - self.reserved)

    def _fit_cache(self) -> None:
        """Shrink the cache as a batch starts, let it grow back as one ends."""
        with self.cache_lock:
            self.cache.resize(self._cache_budget())

    def _take(self, jobs: list[AttentionJob], inputs: Mapping[str, bytes]
              ) -> dict[str, Prefix]:
        """Each cache-served prefill's resident leading blocks, in the batch's order; taking
        them makes them the most recent, as the controller's placement does."""
        prefixes: dict[str, Prefix] = {}
        with self.cache_lock:
            for job in jobs:
                if cache_served(job, inputs):
                    usable = reusable_blocks(job.q_len, job.block_tokens)
                    prefixes[job.id] = Prefix(*self.cache.take_prefix(block_keys(job)[:usable]))
        return prefixes

    def _keep(self, jobs: list[AttentionJob], prompts: Prompts) -> None:
        """Keep each computed prompt's whole blocks, in the batch's order (the controller's).

        Each block is charged :func:`scheduler.kvcache.block_bytes`, the bytes the
        controller charges, so both evict the same blocks. The tensors kept are that
        size too: K and V of every layer the worker computes (one SDPA call a layer).
        """
        with self.cache_lock:
            for job in jobs:
                if job.id in prompts:
                    k, v = prompts[job.id]
                    self.cache.put(block_keys(job), k, v, job.block_tokens,
                                   nbytes=block_bytes(job))

    # -- computing ------------------------------------------------------------------------

    def _rand(self, *shape: int, dtype: torch.dtype) -> torch.Tensor:
        return self.inputs.take(shape, dtype)

    def _run(self, jobs: list[AttentionJob], inputs: Mapping[str, bytes],
             outputs: dict[str, bytes], prefixes: Mapping[str, Prefix], prompts: Prompts
             ) -> tuple[float, str]:
        """Jobs with tensors of their own, one call each; then the prefills the KV cache
        serves (``prefixes``), one at a time, their prompts left in ``prompts``; then each
        launch group of the rest in turn (``packing.launch_groups``: the rule the cost
        model prices). The backend is the last call's."""
        checksum, backend = 0.0, ""
        for job in jobs:
            if job.id in inputs:
                _stop_if_cancelled()
                outputs[job.id], backend = self._given(job, inputs[job.id])
        rest = [j for j in jobs if j.id not in inputs]
        if prefixes:
            why = packing.refusal(rest)  # the batch as a whole, as launch_groups checks it
            if why is not None:
                raise ValueError(why)
            for job in (j for j in rest if j.id in prefixes):
                out, backend = self._prefill(job, prefixes[job.id], prompts)
                checksum += float(out.float().sum())
            rest = [j for j in rest if j.id not in prefixes]
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

    def _prefill(self, job: AttentionJob, prefix: Prefix, prompts: Prompts
                 ) -> tuple[torch.Tensor, str]:
        """One prompt computed after its cached prefix; its K and V go to ``prompts``."""
        out, k, v, backend = cached_prefill(job, prefix, self.torch_device, _stop_if_cancelled)
        prompts[job.id] = (k, v)
        return out, f"{backend}+prefix"

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

