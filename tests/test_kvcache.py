"""Prefix caching: the eviction rule, what a placement reads from a device's cache, and
that the cache lives only in memory no batch holds."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.decisions import Place
from scheduler.errors import InputError
from scheduler.kvcache import BlockLRU, block_bytes, reusable_blocks, uncached_part
from scheduler.presets import get_preset
from scheduler.traces.canonical import read_csv, read_jsonl, write_csv, write_jsonl
from scheduler.traces.importers import read_mooncake
from tests.builders import attention_job
from tests.simkit import Scripted, controller

GPU0 = "gpu-0/gpu0"


def prompt(i: int, blocks: tuple[int, ...], q_len: int = 4096, **kw: object):
    return attention_job(id=f"p{i}", q_len=q_len, kv_len=q_len, causal=True, heads=32,
                         kv_heads=8, head_dim=128, layers=32, prefix_blocks=blocks,
                         block_tokens=512, **kw)


def test_lru_evicts_the_least_recent_and_trims_a_prefix_from_its_tail() -> None:
    lru: BlockLRU[int] = BlockLRU(3 * 10)
    assert lru.insert([1, 2], 10) == (2, [1, 2], [])
    assert lru.insert([7], 10) == (1, [7], [])
    lru.touch([1, 2])  # 1 ends most recent, then 2, then 7
    assert lru.insert([9], 10) == (1, [9], [7])
    assert lru.insert([9, 5, 6], 10)[2] == [2, 1]  # never its own 9, and trims 1..2 from 2
    assert lru.resident([9, 5, 6]) == 3 and lru.used == 30
    assert lru.insert([4, 8, 3, 11], 10)[0] == 3  # the fourth would evict its own first
    assert lru.shrink(10) and lru.used <= 10


@settings(deadline=None, max_examples=80)
@given(st.lists(st.tuples(st.lists(st.integers(0, 12), max_size=5, unique=True),
                          st.integers(1, 40), st.integers(0, 120)), max_size=30))
def test_the_cache_never_holds_more_than_its_budget(steps) -> None:
    lru: BlockLRU[int] = BlockLRU(60)
    sizes: dict[int, int] = {}
    for keys, nbytes, budget in steps:
        kept, added, evicted = lru.insert(keys, nbytes)
        assert not set(evicted) & set(keys[:kept]) - set(added)  # nor its own earlier ones
        for key in evicted:
            sizes.pop(key)
        sizes.update(dict.fromkeys(added, nbytes))
        assert lru.resident(keys) >= kept
        for key in lru.shrink(budget):
            sizes.pop(key)
        assert lru.used == sum(sizes.values()) <= lru.budget == budget
        assert set(sizes) == {k for k in range(13) if k in lru}


def test_a_prefill_reads_its_resident_prefix_and_pays_only_the_rest() -> None:
    ctl, _ = controller(Scripted(lambda v: [Place((j,), GPU0) for j in v.pending]))
    ctl.submit(prompt(0, tuple(range(8))), 0.0)
    first = ctl.decide(0.0, "arrival").started[0]
    ctl.batch_done(first.id, 1.0)
    index = ctl._cap.caches
    assert index.holders(prompt(1, (0, 1, 2, 50))) == {GPU0}
    ctl.submit(prompt(1, (0, 1, 2, 50, 51, 52, 53, 54)), 1.0)
    second = ctl.decide(1.0, "arrival").started[0]
    record = ctl.records["p1"]
    assert record.cached_tokens == 3 * 512  # blocks 0..2 were resident, 50 was not
    cost = ctl.cost  # what the same prompt computes alone, priced exactly
    rest = uncached_part(record.job, 3 * 512)  # type: ignore[arg-type]
    assert rest.q_len == 4096 - 1536 and rest.kv_len == 4096
    assert second.solo_seconds == pytest.approx(cost.seconds([rest], GPU0))
    assert second.solo_seconds < first.solo_seconds


def test_a_prompt_wholly_resident_still_computes_its_last_block() -> None:
    job = prompt(0, (1, 2, 3, 4), q_len=2048)
    assert reusable_blocks(job.q_len, job.block_tokens) == 3


def test_the_cache_lives_in_memory_no_batch_holds() -> None:
    ctl, _ = controller(Scripted(lambda v: [Place((j,), GPU0) for j in v.pending]))
    long = tuple(range(300))  # 300 blocks of 512 tokens: 150k tokens
    ctl.submit(prompt(0, long, q_len=300 * 512), 0.0)
    ctl.batch_done(ctl.decide(0.0, "arrival").started[0].id, 1.0)
    dev = ctl._cap.devices[GPU0]
    assert dev.cache.used == 300 * block_bytes(prompt(0, long, q_len=300 * 512))
    big = attention_job(id="big", kind="decode", q_len=1, kv_len=131_072, heads=8, kv_heads=8,
                        head_dim=128, layers=90)
    ctl.submit(big, 1.0)
    ctl.decide(1.0, "arrival")
    assert ctl.records["big"].device == GPU0
    assert dev.cache.used <= dev.memory_free  # evicted what the batch needed
    assert dev.memory_free + sum(b.memory for b in dev.running.values()) == dev.memory_limit


@pytest.mark.parametrize(("bad", "field", "said"), [
    ({"kind": "decode", "q_len": 1}, "prefix_blocks", "only a prefill"),
    ({"prefix_blocks": (1, -2)}, "prefix_blocks", "-2"),
    ({"block_tokens": 0}, "block_tokens", "needs block_tokens"),
    ({"prefix_blocks": ()}, "prefix_blocks", "block_tokens needs prefix_blocks"),
    ({"prefix_blocks": (1, 2, 1)}, "prefix_blocks", "block id 1 appears twice"),
    ({"prefix_blocks": tuple(range(9))}, "prefix_blocks",
     "block 9 of 512 tokens would start at token 4096, past the prompt's 4096"),
])
def test_bad_prefix_blocks_name_the_field(bad, field, said) -> None:
    fields = {"q_len": 4096, "kv_len": 4096, "prefix_blocks": (1, 2), "block_tokens": 512,
              **bad}
    with pytest.raises(InputError) as e:
        attention_job(**fields)
    assert e.value.field == field and said in str(e.value), str(e.value)


def test_canonical_formats_carry_prefix_blocks(tmp_path) -> None:
    jobs = [prompt(0, (5, 6, 7)), attention_job(id="plain")]
    for write, read, name in ((write_jsonl, read_jsonl, "t.jsonl"),
                              (write_csv, read_csv, "t.csv")):
        write(jobs, tmp_path / name)
        assert [j for _, j in read(tmp_path / name)] == jobs


def test_mooncake_hash_ids_become_the_prefills_blocks(tmp_path) -> None:
    rows = [{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]},
            {"timestamp": 5, "input_length": 20, "output_length": 5, "hash_ids": [0]}]
    path = tmp_path / "mooncake.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs = [j for _, j in read_mooncake(path, get_preset("llama3-8b"))]
    assert [(j.prefix_blocks, j.block_tokens) for j in jobs[::2]] == [((0, 1, 2), 512),
                                                                      ((0,), 512)]
    assert jobs[1].prefix_blocks == ()  # the decode
    path.write_text(json.dumps({**rows[0], "hash_ids": [0, "x"]}) + "\n")
    with pytest.raises(InputError) as e:
        list(read_mooncake(path, get_preset("llama3-8b")))
    assert (e.value.field, e.value.line) == ("hash_ids", 1)
