"""Live prefix caching: workers keep real K/V by block id and reuse them as the controller plans.

A prefill run twice on one worker takes its reusable blocks from the cache and
gives the rows computing the whole prompt gives; under a small budget its hits
fall exactly as the controller's plan (``CacheIndex`` on a ``BlockLRU``) says;
and a live run on a local Ray reports the simulator's hit rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from scheduler.jobs import AttentionJob
from scheduler.kvcache import BlockLRU, CacheIndex, block_bytes, reusable_blocks
from tests import rayenv
from workers import kernels
from workers.kvstore import prompt_rows
from workers.worker import AttentionWorker

TOL = {"fp32": {"atol": 1e-5, "rtol": 1e-5}, "bf16": {"atol": 2e-2, "rtol": 2e-2}}
BT = 16  # tokens a block


def prefill(job_id: str, blocks: tuple[int, ...], q_len: int, dtype: str = "fp32",
            submit: float = 0.0, **shape: int) -> AttentionJob:
    """A prefill of the tiny preset's shape (2 heads of 16 sharing one KV head, one layer)
    unless ``shape`` says otherwise."""
    dims = {"heads": 2, "kv_heads": 1, "head_dim": 16, "layers": 1, **shape}
    return AttentionJob(id=job_id, submit_time=submit, kind="prefill", batch=1, q_len=q_len,
                        kv_len=q_len, dtype=dtype, causal=True, prefix_blocks=blocks,
                        block_tokens=BT if blocks else 0, **dims)  # type: ignore[arg-type]


def whole_prompt(job: AttentionJob, device: str = "cpu") -> torch.Tensor:
    """Every layer's output rows computed afresh over the whole prompt, in fp32."""
    q, k, v = prompt_rows(job, 0, device)
    return torch.stack([kernels.reference_attention(q[i], k[i], v[i], job.causal).float()
                        for i in range(job.layers)])


# -- one worker, no Ray -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("q_len", [70, 64])  # a tail after 4 whole blocks; or none (48 hit)
def test_a_repeated_prefill_hits_its_blocks_and_gives_the_whole_prompts_rows(dtype,
                                                                            q_len) -> None:
    job = prefill("p", (1, 2, 3, 4), q_len, dtype, heads=4, kv_heads=2, head_dim=8, layers=2)
    worker = AttentionWorker("test/cpu0", "cpu")
    first = worker.run("b1", [job], 0.01, 1.0)
    assert first.failure is None and first.cached == {"p": 0}
    second = worker.run("b2", [job], 0.01, 1.0)
    hit = reusable_blocks(q_len, BT) * BT
    assert second.cached == {"p": hit} and hit == (64 if q_len == 70 else 48)
    assert second.backend.endswith("+prefix")

    expected = whole_prompt(job)[..., hit:, :]
    out, tokens = worker.prefill(job)
    assert tokens == hit and out.dtype == kernels.DTYPES[dtype]
    assert out.shape == (2, 1, 4, q_len - hit, 8)
    assert torch.allclose(out.float(), expected, **TOL[dtype])
    # run() computed the same rows: its checksum is theirs
    assert second.checksum == pytest.approx(float(expected.sum()), abs=1e-3 * expected.numel())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_on_a_gpu_the_cache_holds_device_tensors_and_gives_the_whole_prompts_rows(dtype
                                                                                 ) -> None:
    job = prefill("p", (1, 2, 3, 4, 5, 6, 7, 8), 200, dtype, heads=8, kv_heads=2,
                  head_dim=64, layers=2)
    worker = AttentionWorker("test/gpu0", "gpu", memory_budget=1 << 30)
    assert worker.run("b1", [job], 0.01, 1.0).cached == {"p": 0}
    assert worker.run("b2", [job], 0.01, 1.0).cached == {"p": 8 * BT}
    out, hit = worker.prefill(job)
    assert out.is_cuda and hit == 8 * BT
    expected = whole_prompt(job, "cuda")[..., hit:, :]
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == "fp32" else TOL[dtype]  # fused kernels
    assert torch.allclose(out.float(), expected, **tol)


def test_jobs_of_one_batch_do_not_hit_each_other_and_share_after() -> None:
    """Hits are found when the batch starts, as the controller plans them at placement."""
    a, b = prefill("a", (1, 2, 3), 50), prefill("b", (1, 2, 9), 50)
    worker = AttentionWorker("test/cpu0", "cpu")
    assert worker.run("b1", [a, b], 0.01, 1.0).cached == {"a": 0, "b": 0}
    c = prefill("c", (1, 2, 7, 8), 70)
    plain = prefill("plain", (), 8)  # packed beside it, as before
    result = worker.run("b2", [c, plain], 0.01, 1.0)
    assert result.failure is None and result.cached == {"c": 32}  # the shared (1, 2)
    assert worker.run("b3", [plain], 0.01, 1.0).cached is None  # no job with blocks


def test_reset_starts_the_cache_cold() -> None:
    job = prefill("p", (1, 2, 3), 50)
    worker = AttentionWorker("test/cpu0", "cpu")
    worker.run("b1", [job], 0.01, 1.0)
    worker.reset()
    assert len(worker.cache) == 0
    assert worker.run("b2", [job], 0.01, 1.0).cached == {"p": 0}


def controller_plan(batches: list[tuple[list[AttentionJob], int]], budget: int
                    ) -> list[dict[str, int]]:
    """The controller's steps on one device with ``budget`` bytes: hits found and used at
    placement (``Actions._launch``), the cache fit into what the batch leaves
    (``Capacity.book``), then grown back and the prompts kept (``release``, ``batch_done``)."""
    lru: BlockLRU[object] = BlockLRU(budget)
    index = CacheIndex({"d": lru})
    plans = []
    for jobs, memory in batches:
        hits = {j.id: index.hit(j, "d") for j in jobs if j.block_tokens}
        for j in jobs:
            index.use(j, "d", hits.get(j.id, 0))
        index.forget("d", lru.shrink(budget - memory))
        lru.budget = budget
        for j in jobs:
            index.keep(j, "d")
        plans.append(hits)
    return plans


def test_under_a_small_budget_hits_fall_as_the_controller_plans() -> None:
    a = prefill("a", (1, 2, 3, 4, 5, 6), 100)  # 6 whole blocks; 4 fit
    b = prefill("b", (7, 8, 9), 50)
    plain = prefill("plain", (), 8)
    per_block = block_bytes(a)
    assert per_block == 2 * 1 * 16 * 4 * BT  # K and V, one layer of one KV head, fp32
    budget = 4 * per_block
    batches = [([a], 0), ([a], 0),  # only 4 of a's 6 blocks fit: it never evicts its own
               ([b], 0),  # b's 3 blocks evict a's least recent: its tail, 4, 3 and 2
               ([a], 0),
               ([plain], 3 * per_block),  # the batch's start leaves room for one block
               ([a], 0)]
    worker = AttentionWorker("test/cpu0", "cpu", memory_budget=budget)
    measured = []
    for n, (jobs, memory) in enumerate(batches):
        result = worker.run(f"b{n}", jobs, 0.01, 1.0, memory=memory)
        assert result.failure is None
        measured.append(dict(result.cached or {}))
        assert worker.cache.bytes_used <= budget
    assert measured == [{"a": 0}, {"a": 64}, {"b": 0}, {"a": 16}, {}, {"a": 16}]
    assert measured == controller_plan(batches, budget)


def test_a_worker_without_a_budget_still_bounds_its_cache() -> None:
    from workers.worker import DEFAULT_CACHE_BYTES

    assert AttentionWorker("test/cpu0", "cpu").cache.budget_bytes == DEFAULT_CACHE_BYTES
    assert AttentionWorker("test/cpu0", "cpu", memory_budget=5000).cache.budget_bytes == 5000


# -- a live run on a local Ray, beside the simulator -------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    with rayenv.local_ray(gpus=1) as ray:
        yield ray


def shared_prefix_jobs(n: int = 30, groups: int = 3) -> list[AttentionJob]:
    """Requests cycling through ``groups`` system prompts of 4 blocks, each with a block
    and 8 tokens of its own. A request's group last ran ``groups`` requests before, so
    two neighbours packed into one batch would not change what hits."""
    def blocks(i: int) -> tuple[int, ...]:
        system = 1000 * (i % groups)
        return (system, system + 1, system + 2, system + 3, 100_000 + i)

    return [prefill(f"r{i}", blocks(i), 5 * BT + 8, submit=0.1 * i) for i in range(n)]


def test_a_live_run_reports_hits_and_the_simulators_hit_rate(cli, local_ray,
                                                             tmp_path: Path) -> None:
    from scheduler.traces import write_trace

    jobs = shared_prefix_jobs()
    trace = tmp_path / "shared.jsonl"
    write_trace(jobs, trace)
    out = tmp_path / "fid"
    code, text, err = cli("fidelity", trace, "--policies", "greedy", "--speed", "2",
                          "--out", out)
    assert code == 0, err
    entry = json.loads((out / "fidelity.json").read_text())["policies"]["greedy"]
    live, sim = entry["live"], entry["sim"]
    assert live["jobs_completed"] == sim["jobs_completed"] == len(jobs)
    # Each group's first request misses; the rest hit the 4 shared blocks.
    expected = (len(jobs) - 3) * 4 * BT / sum(j.q_len for j in jobs)
    assert sim["cache_hit_rate"] == pytest.approx(expected)
    assert live["cache_hit_rate"] > 0
    assert abs(sim["cache_hit_rate"] - live["cache_hit_rate"]) <= 0.1 * live["cache_hit_rate"]
    assert entry["error"]["cache_hit_rate"] <= 0.1
    assert "cache hits live/sim" in text
    rows = pq.read_table(out / "greedy" / "live" / "jobs.parquet",
                         columns=["cached_tokens"]).to_pydict()["cached_tokens"]
    assert all(t % BT == 0 for t in rows) and sum(rows) > 0  # what the workers measured
