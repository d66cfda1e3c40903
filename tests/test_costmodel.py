from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import costmodel as cm
from scheduler.errors import InputError
from scheduler.jobs import DType
from scheduler.profiles import load_profile, profile_from_dict
from tests.builders import attention_job, cluster_job


@pytest.fixture(scope="module")
def h100():
    return load_profile("h100")


def test_forward_flops_hand_computed() -> None:
    # 4 · batch 2 · heads 8 · q 128 · kv 256 · d 64 · layers 3
    job = attention_job(batch=2, heads=8, kv_heads=2, q_len=128, kv_len=256, head_dim=64,
                        layers=3)
    assert cm.forward_flops(job) == 4 * 2 * 8 * 128 * 256 * 64 * 3


def test_causal_halves_square_attention() -> None:
    full = attention_job(q_len=512, kv_len=512, causal=False)
    masked = attention_job(q_len=512, kv_len=512, causal=True)
    assert cm.forward_flops(masked) == cm.forward_flops(full) / 2


def test_decode_sums_the_growing_kv() -> None:
    job = attention_job(kind="decode", batch=1, heads=4, kv_heads=1, q_len=1, kv_len=100,
                        head_dim=32, layers=2, steps=5, causal=False)
    expected = sum(4 * 1 * 4 * 1 * (100 + i) * 32 * 2 for i in range(5))
    assert cm.forward_flops(job) == pytest.approx(expected, rel=1e-12)


def test_train_pays_backward() -> None:
    job = attention_job(kind="train", steps=3)
    assert cm.total_flops(job) == pytest.approx(cm.forward_flops(job) * 3.5)
    assert cm.total_flops(attention_job()) == cm.forward_flops(attention_job())


def test_cluster_jobs_cost_their_duration(h100) -> None:
    job = cluster_job(duration=42.0, memory_bytes=1 << 30)
    assert cm.estimate(job, h100).seconds == 42.0
    assert cm.peak_memory_bytes(job) == 1 << 30
    assert cm.forward_flops(job) == 0


def test_bytes_moved_counts_q_k_v_o() -> None:
    job = attention_job(batch=1, heads=8, kv_heads=2, q_len=10, kv_len=20, head_dim=4,
                        dtype="fp32")
    # Q and O: 8·10·4 each; K and V: 2·20·4 each; 4 bytes an element.
    assert cm.bytes_moved(job) == (2 * 8 * 10 * 4 + 2 * 2 * 20 * 4) * 4


def test_math_backend_materializes_scores() -> None:
    job = attention_job(batch=2, heads=8, q_len=1024, kv_len=1024)
    extra = cm.peak_memory_bytes(job, "math") - cm.peak_memory_bytes(job, "flash")
    assert extra == 2 * 2 * 8 * 1024 * 1024 * 2  # scores + probabilities, bf16


def test_decode_memory_holds_the_kv_cache_of_every_layer() -> None:
    job = attention_job(kind="decode", q_len=1, kv_len=1000, steps=24, layers=32, kv_heads=8,
                        head_dim=128)
    kv_cache = 2 * 1 * 8 * (1000 + 23) * 128 * 2 * 32
    assert cm.peak_memory_bytes(job) >= kv_cache
    assert cm.peak_memory_bytes(job) < kv_cache * 1.1


def _h100_reference() -> dict:
    from tests.conftest import SHARED

    path = SHARED / "profiles" / "h100-2026-11-24.json"
    if not path.exists():
        pytest.skip("shared H100 profile absent")
    return json.loads(path.read_text())


def test_h100_profile_reproduces_every_sdpa_point(h100) -> None:
    raw = _h100_reference()
    for p in raw["sdpa_forward_tflops"]:
        job = attention_job(batch=p["batch"], heads=p["heads"], kv_heads=p["heads"],
                            q_len=p["q_len"], kv_len=p["kv_len"], head_dim=p["head_dim"],
                            causal=p["causal"])
        e = cm.estimate(job, h100, p["backend"])
        assert e.flops / e.seconds / 1e12 == pytest.approx(p["tflops"], rel=0.05), p


def test_h100_profile_reproduces_packing_and_ray_figures(h100) -> None:
    raw = _h100_reference()
    for p in raw["packing_64_jobs_batch1_heads8_headdim64"]:
        jobs = [attention_job(id=f"j{i}", q_len=p["seq_len"], kv_len=p["seq_len"])
                for i in range(64)]
        packed = cm.batch_estimate(jobs, h100)
        alone = cm.batch_estimate(jobs, h100, packed=False)
        assert packed.flops / packed.seconds / 1e12 == pytest.approx(
            p["one_packed_call_tflops"], rel=0.05)
        assert alone.flops / alone.seconds / 1e12 == pytest.approx(
            p["one_by_one_tflops"], rel=0.05)
    ray = raw["ray_2_60_on_this_gpu"]
    assert 1 / h100.actor_call_s == pytest.approx(ray["actor_calls_per_s"], rel=0.05)
    assert 1 / h100.task_s == pytest.approx(ray["gpu_tasks_per_s_num_gpus_0_25"], rel=0.05)
    assert h100.sharing_efficiency(4) * ray["one_actor_sdpa_tflops"] == pytest.approx(
        ray["four_actors_sharing_gpu_total_tflops"], rel=0.05)
    assert h100.memory_bytes == raw["memory_bytes"]


def test_best_backend_is_picked(h100) -> None:
    job = attention_job(batch=8, heads=16, kv_heads=16, q_len=2048, kv_len=2048, head_dim=128)
    assert cm.estimate(job, h100).backend == "cudnn"


def _shipped_h100() -> dict:
    return json.loads(load_profile.__globals__["resources"].files("scheduler.profile_data")
                      .joinpath("h100.json").read_text())


def test_unmeasured_dtype_is_a_clear_error() -> None:
    data = _shipped_h100()
    del data["dtype_extrapolations"]
    with pytest.raises(InputError, match="no measurements for dtype fp32"):
        cm.estimate(attention_job(dtype="fp32"), profile_from_dict(data))


def test_an_extrapolated_dtype_is_priced_at_its_factor_and_reported() -> None:
    profile = profile_from_dict(_shipped_h100())
    rule = profile.dtype_extrapolations[DType.FP32]
    assert rule.source is DType.BF16 and 0 < rule.factor < 1
    assert profile.extrapolated() == []
    fp32 = profile.sdpa_tflops(4096, 4096, 128, DType.FP32, True)
    bf16 = profile.sdpa_tflops(4096, 4096, 128, DType.BF16, True)
    assert fp32 == (pytest.approx(bf16[0] * rule.factor), bf16[1])
    assert profile.sdpa_tflops(4096, 4096, 128, DType.FP16, True) == bf16  # an alias, as fast
    [line] = profile.extrapolated()
    assert "fp32 priced at 0.0677 x its bf16 rate" in line and "datasheet" in line


@pytest.mark.parametrize(("rule", "field", "needle"), [
    ({"from": "fp16", "factor": 0.1, "basis": "x"}, "dtype_extrapolations.fp32.from",
     "no points"),
    ({"from": "bf16", "factor": 0, "basis": "x"}, "dtype_extrapolations.fp32.factor", "0"),
    ({"from": "bf16", "factor": 0.1}, "dtype_extrapolations.fp32", "basis"),
])
def test_extrapolations_are_validated(rule: dict, field: str, needle: str) -> None:
    data = _shipped_h100()
    data["dtype_extrapolations"] = {"fp32": rule}
    with pytest.raises(InputError, match=needle) as err:
        profile_from_dict(data, "p.json")
    assert err.value.field == field


def test_a_measured_dtype_cannot_also_be_extrapolated() -> None:
    data = _shipped_h100()
    data["dtype_extrapolations"] = {"bf16": {"from": "bf16", "factor": 0.5, "basis": "x"}}
    with pytest.raises(InputError, match="has points or an alias"):
        profile_from_dict(data, "p.json")


def test_decode_is_memory_or_host_bound(h100) -> None:
    job = attention_job(kind="decode", q_len=1, kv_len=4096, heads=32, kv_heads=8,
                        head_dim=128, steps=10, layers=32)
    e = cm.estimate(job, h100)
    per_call = e.seconds / e.calls
    assert per_call >= h100.call_host_s
    compute_only = cm.forward_flops(job) / e.calls / (h100.sdpa_tflops(1, 4096, 128, job.dtype,
                                                                     False)[0] * 1e12)
    assert per_call > compute_only  # a single query cannot run at prefill rates


sizes = st.integers(min_value=1, max_value=64)
lengths = st.integers(min_value=1, max_value=1 << 16)


@given(batch=sizes, heads=st.sampled_from([1, 8, 32]), q=lengths, kv=lengths,
       d=st.sampled_from([32, 64, 96, 128, 256]), causal=st.booleans(),
       kind=st.sampled_from(["prefill", "decode", "train"]), which=st.sampled_from(
           ["batch", "q_len", "kv_len", "steps", "layers"]))
def test_durations_are_monotone_in_size(batch: int, heads: int, q: int, kv: int, d: int,
                                        causal: bool, kind: str, which: str) -> None:
    profile = load_profile("h100")
    base = attention_job(kind=kind, batch=batch, heads=heads, kv_heads=heads, q_len=q,
                         kv_len=kv, head_dim=d, causal=causal)
    fields = {"batch": batch, "heads": heads, "kv_heads": heads, "q_len": q, "kv_len": kv,
              "head_dim": d, "causal": causal, "kind": kind, "steps": 1, "layers": 1}
    fields[which] = fields[which] * 2
    bigger = attention_job(**fields)
    assert cm.estimate(bigger, profile).seconds >= cm.estimate(base, profile).seconds * 0.999
    assert cm.peak_memory_bytes(bigger) >= cm.peak_memory_bytes(base)


def test_profile_validation_names_the_key() -> None:
    data = _shipped_h100()
    data["sdpa"][3]["tflops"] = "fast"
    with pytest.raises(InputError) as err:
        profile_from_dict(data, "bad.json")
    assert err.value.field == "sdpa.3.tflops"
    assert "bad.json" in str(err.value)


def test_profile_file_errors(tmp_path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"format": "attnsched-profile/1",\n "name": }')
    with pytest.raises(InputError, match=r"p.json:2: invalid JSON"):
        load_profile(bad)
    with pytest.raises(InputError, match="no profile 'a100'"):
        load_profile("a100")


def test_a_batch_pays_the_calls_its_worker_makes() -> None:
    """A CPU worker runs each prompt shape in its own call; a GPU packs one head layout
    into one call; decode requests share one call per step everywhere."""
    from scheduler import costmodel
    from scheduler.profiles import load_profile
    from tests.builders import attention_job

    def prompts(*lengths: int) -> list:
        return [attention_job(id=f"p{i}", q_len=n, kv_len=n, layers=4, dtype="fp32")
                for i, n in enumerate(lengths)]

    cpu, h100 = load_profile("cpu"), load_profile("h100")
    assert costmodel.batch_estimate(prompts(64, 64, 64), cpu).calls == 4
    assert costmodel.batch_estimate(prompts(64, 96, 128), cpu).calls == 12
    bf16 = [attention_job(id=f"g{i}", q_len=n, kv_len=n, layers=4) for i, n in
            enumerate((64, 96, 128))]
    assert costmodel.batch_estimate(bf16, h100).calls == 4
    decodes = [attention_job(id=f"d{i}", kind="decode", q_len=1, kv_len=100 + i, steps=10 + i,
                             layers=2) for i in range(3)]
    for profile in (cpu, h100):
        pack = costmodel.Pack(profile)
        for job in decodes:
            before = pack.seconds_with(job)
            pack.add(job)
            assert pack.seconds == before  # seconds_with is what add then gives
        assert pack.calls == 2 * 12


def _with_scale(curves: dict) -> object:
    base = json.loads((__import__("pathlib").Path(cm.__file__).parent / "profile_data"
                       / "cpu.json").read_text())
    base["worker_scale"] = curves
    return profile_from_dict(base)


def test_worker_scale_multiplies_the_grids_device_time_by_kind_and_size() -> None:
    plain = load_profile("cpu")
    scaled = _with_scale({"prefill": [[1e-4, 2.0], [1e-2, 1.5]], "decode": [[1e-4, 3.0]]})
    small = attention_job(q_len=64, kv_len=64, heads=2, kv_heads=1, head_dim=16, dtype="fp32")
    big = attention_job(q_len=4096, kv_len=4096, heads=2, kv_heads=1, head_dim=16,
                        dtype="fp32")
    assert cm.device_seconds(small, plain) < 1e-4
    assert cm.device_seconds(big, plain) > 1e-2
    for job, ratio in ((small, 2.0), (big, 1.5)):  # clamped at the curve's ends
        device = cm.device_seconds(job, plain)
        assert scaled.scale("prefill", device) == ratio
        floor = cm.estimate(job, plain).calls * plain.call_host_s
        assert cm.estimate(job, scaled).seconds == pytest.approx(max(floor, ratio * device))
        # a batch of one is the job alone, scaled alike
        assert cm.batch_estimate([job], scaled).seconds == pytest.approx(
            cm.estimate(job, scaled).seconds)
    # the small prompt sits on the host floor, scaled or not; the big one is 1.5x
    assert cm.estimate(small, scaled).seconds == cm.estimate(small, plain).seconds
    assert cm.estimate(big, scaled).seconds == pytest.approx(
        1.5 * cm.estimate(big, plain).seconds)
    train = attention_job(kind="train", q_len=2048, kv_len=2048, heads=2, kv_heads=1,
                          head_dim=16, dtype="fp32")
    assert cm.estimate(train, scaled).seconds == cm.estimate(train, plain).seconds  # no curve


@pytest.mark.parametrize(("curves", "field"), [
    ({"prompt": [[1e-3, 1.0]]}, "worker_scale"),
    ({"decode": [[1e-3, 1.0], [1e-3, 2.0]]}, "worker_scale.decode"),
    ({"decode": [[1e-3, 0.0]]}, "worker_scale.decode.0.1"),
])
def test_worker_scale_is_validated(curves, field) -> None:
    with pytest.raises(InputError) as e:
        _with_scale(curves)
    assert e.value.field == field


def test_padded_positions_hand_worked() -> None:
    """Two requests: (3 steps, cache 10) and (1 step, cache 20). Step 0 runs both over the
    longer cache (2 × 20); steps 1 and 2 run the first alone over 11 and 12 keys."""
    assert cm.padded_positions([(3, 10, 1), (1, 20, 1)]) == (63.0, 4.0)
    # a lone request attends to its own growing cache: Σ (kv + s), s < steps
    assert cm.padded_positions([(5, 100, 2)]) == (2 * sum(100 + s for s in range(5)), 10.0)


@settings(deadline=None, max_examples=60)  # the first call warms torch up
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 40), st.integers(1, 3)),
                min_size=1, max_size=6))
def test_padded_positions_are_the_workers_calls(requests) -> None:
    """What the cost model counts is what ``kernels.decode_many`` computes: the key
    positions of every call it makes, each row of each call."""
    import torch

    from workers import kernels

    seen: list[tuple[int, int]] = []
    real = kernels._sdpa

    def spy(q, k, v, causal, mask):
        seen.append((q.shape[0], k.shape[-2]))
        return real(q, k, v, causal, mask)

    rows = sorted(requests, key=lambda r: -r[0])
    kv = [n for _, n, b in rows for _ in range(b)]
    steps = [s for s, _, b in rows for _ in range(b)]
    length = max(n + s - 1 for n, s in zip(kv, steps, strict=True))
    q = torch.randn(len(kv), 2, steps[0], 4)
    k = torch.randn(len(kv), 1, length, 4)
    kernels._sdpa = spy
    try:
        with torch.nn.attention.sdpa_kernel(kernels.BACKENDS["math"]):
            kernels.decode_many(q, k, k, kv, steps, backend="math")
    finally:
        kernels._sdpa = real
    assert len(seen) == steps[0]  # one call per step
    positions, work = cm.padded_positions(rows)
    assert positions == sum(r * n for r, n in seen)
    assert work == sum(steps)


def test_packed_decodes_pay_padding_and_the_mask() -> None:
    """A short cache packed with a long one is priced at the long one's length, and the
    profile's measured mask cost is added (outside worker_scale, which is the grid's
    error) only when the caches differ; a lone decode is unchanged."""
    base = json.loads((__import__("pathlib").Path(cm.__file__).parent / "profile_data"
                       / "cpu.json").read_text())
    plain = profile_from_dict(base)
    masked = profile_from_dict({**base, "decode_mask_call_us": 50.0, "decode_mask_score_ns": 2.0,
                                "worker_scale": {"decode": [[1e-3, 3.0]]}})

    def decode(i: int, kv: int, steps: int = 64) -> object:
        return attention_job(id=f"d{i}", kind="decode", q_len=1, kv_len=kv, steps=steps,
                             heads=8, kv_heads=8, head_dim=64, layers=2, dtype="fp32")

    short, long = decode(0, 64), decode(1, 8192)
    pack = cm.Pack(plain)
    pack.add(short)
    pack.add(long)
    rows = [(64, 64, 1), (64, 8192, 1)]
    positions, work = cm.padded_positions(rows)
    assert positions == 2 * 64 * (8192 + 31.5)  # both rows over the long cache
    rate, _ = plain.sdpa_tflops(1, round(positions / work), 64, short.dtype, False)
    assert pack.compute_s == pytest.approx(4 * 8 * 64 * 2 * positions / (rate * 1e12))
    assert pack.compute_s > cm._job_terms(short, plain, None)[0] \
        + cm._job_terms(long, plain, None)[0]
    assert pack.mask_s == 0.0  # the plain profile measured no mask cost

    both = cm.batch_estimate([short, long], masked).seconds
    mask = 64 * 2 * 50e-6 + positions * 8 * 2 * 2e-9
    device = max(pack.compute_s, pack.nbytes / masked.bandwidth_bytes_s)
    device *= masked.scale("decode", device)
    assert both == pytest.approx(max(pack.calls * masked.call_host_s, device) + mask)
    same = [decode(2, 8192), decode(3, 8192)]  # equal caches: no mask
    equal = cm.Pack(masked)
    for job in same:
        equal.add(job)
    assert equal.mask_s == 0.0
    # a batch of one is the job alone, as the simulator prices a lone job
    assert cm.batch_estimate([long], masked).seconds == cm.estimate(long, masked).seconds


def test_a_timed_decode_step_prices_decode_groups_without_the_grid() -> None:
    """With the worker's decode step timed, a group costs per layer: its longest request's
    steps × the step's fixed cost + every element it reads (padding included) × the
    per-element cost; no host floor on top (the step includes it), and another dtype's
    elements at the grid's ratio of the two dtypes' rates."""
    base = json.loads((__import__("pathlib").Path(cm.__file__).parent / "profile_data"
                       / "cpu.json").read_text())
    timed = profile_from_dict({**base, "decode_step_us": 40.0, "decode_element_ns": 0.5,
                               "decode_dtype": "fp32"})

    def decode(i: int, kv: int, steps: int, dtype: str = "fp32") -> object:
        return attention_job(id=f"d{i}", kind="decode", q_len=1, kv_len=kv, steps=steps,
                             heads=4, kv_heads=2, head_dim=32, layers=3, dtype=dtype)

    jobs = [decode(0, 100, 10), decode(1, 1000, 4)]
    positions, _ = cm.padded_positions([(10, 100, 1), (4, 1000, 1)])
    expected = 3 * (10 * 40e-6 + positions * 4 * 32 * 0.5e-9)
    pack = cm.Pack(timed)
    for job in jobs:
        pack.add(job)
    assert pack.compute_s == pytest.approx(expected)
    assert pack.calls == 0  # no host floor for the timed steps
    nbytes = pack.nbytes / timed.bandwidth_bytes_s
    assert cm.batch_estimate(jobs, timed).seconds == pytest.approx(max(expected, nbytes))
    lone = decode(2, 100, 10)
    assert cm.estimate(lone, timed).seconds == pytest.approx(
        max(3 * (10 * 40e-6 + 10 * (100 + 4.5) * 4 * 32 * 0.5e-9),
            cm._job_terms(lone, timed, None)[1] / timed.bandwidth_bytes_s))
    half = decode(3, 100, 10, "bf16")
    keys = round(10 * (100 + 4.5) / 10)
    fp32, used = timed.sdpa_tflops(1, keys, 32, cm.DType.FP32, False)
    bf16, _ = timed.sdpa_tflops(1, keys, 32, cm.DType.BF16, False, used)
    element = cm._job_terms(half, timed, None)[0] / 3 - 10 * 40e-6
    assert element == pytest.approx(10 * (100 + 4.5) * 4 * 32 * 0.5e-9 * fp32 / bf16)
    # without the timing, the grid prices it as before
    assert cm._job_terms(lone, profile_from_dict(base), None)[2] == 3 * 10


@pytest.mark.parametrize("key", ["decode_mask_call_us", "decode_mask_score_ns",
                                 "decode_step_us", "decode_element_ns", "decode_dtype"])
def test_decode_mask_costs_are_validated(key) -> None:
    base = json.loads((__import__("pathlib").Path(cm.__file__).parent / "profile_data"
                       / "cpu.json").read_text())
    with pytest.raises(InputError) as e:
        profile_from_dict({**base, key: -1})
    assert e.value.field == key


DECODE_ROWS = st.lists(st.tuples(st.integers(1, 256), st.integers(1, 16_384)), min_size=2,
                       max_size=12)


@pytest.mark.parametrize("name", ["h100", "cpu"])
@settings(max_examples=30, deadline=None, derandomize=True)
@given(rows=DECODE_ROWS, budget=st.floats(1e-6, 10.0))
def test_pack_within_answers_as_pricing_the_whole_group(name: str, rows, budget) -> None:
    """``within`` refuses a decode on its unpadded price before repricing its group; on
    the packaged profiles that never refuses one the group's price would take."""
    profile = load_profile(name)
    dtype = "bf16" if name == "h100" else "fp32"
    jobs = [attention_job(id=f"d{i}", kind="decode", q_len=1, kv_len=kv, steps=steps,
                          heads=8, kv_heads=8, head_dim=64, layers=4, dtype=dtype)
            for i, (steps, kv) in enumerate(rows)]
    pack = cm.Pack(profile)
    pack.add(jobs[0])
    for job in jobs[1:]:
        whole = pack.seconds_with(job)
        assert pack.within(job, budget) is (whole <= budget)
        pack.add(job)
