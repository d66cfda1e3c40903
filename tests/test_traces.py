from __future__ import annotations

import json

import pytest

from scheduler.errors import InputError
from scheduler.jobs import AttentionJob, ClusterJob, JobKind
from scheduler.presets import get_preset
from scheduler.traces import open_trace, write_trace
from scheduler.traces.stats import trace_stats
from scheduler.traces.synth import SynthSpec, generate
from tests.builders import attention_job, cluster_job


def test_azure_conv_imports_as_prefill_then_decode(shared_trace) -> None:
    trace = open_trace(shared_trace("azure_llm_2023_conv.csv"), model="llama3-8b")
    assert trace.format == "azure"
    jobs = list(trace.jobs())
    assert len(jobs) == 2 * 19_366
    prefill, decode = jobs[0], jobs[1]
    # First row: 2023-11-16 18:15:46.6805900, 374 context tokens, 44 generated.
    assert (prefill.kind, prefill.q_len, prefill.kv_len, prefill.causal) == (
        JobKind.PREFILL, 374, 374, True)
    assert (decode.kind, decode.q_len, decode.kv_len, decode.steps) == (JobKind.DECODE, 1, 374, 44)
    assert decode.depends_on == prefill.id
    assert (prefill.layers, prefill.heads, prefill.kv_heads, prefill.head_dim) == (32, 32, 8, 128)
    # Second row is 4.314579 s later (7 fractional digits in the file, 6 kept).
    assert jobs[2].submit_time == pytest.approx(50.9951690 - 46.6805900, abs=1e-6)


def test_azure_stats_match_the_published_figures(shared_trace) -> None:
    stats = trace_stats(open_trace(shared_trace("azure_llm_2023_conv.csv")).jobs())
    assert stats["requests"] == 19_366
    assert stats["span_s"] / 60 == pytest.approx(58.4, abs=0.1)
    prompt = stats["distributions"]["prompt_tokens"]
    assert (prompt["p50"], prompt["p99"]) == (1020, 4142)
    assert stats["distributions"]["decode_steps"]["p50"] == 129


@pytest.mark.parametrize(
    ("name", "fmt", "requests", "jobs"),
    [("mooncake_fast25_conversation.jsonl", "mooncake", 12_031, 24_062),
     ("alibaba_gpu_v2023_pods.csv", "alibaba", 8_152, 8_152)],
)
def test_real_traces_import_with_their_row_counts(shared_trace, name, fmt, requests,
                                                  jobs) -> None:
    trace = open_trace(shared_trace(name))
    assert trace.format == fmt
    stats = trace_stats(trace.jobs())
    assert (stats["requests"], stats["jobs"]) == (requests, jobs)


def test_mooncake_times_are_milliseconds(shared_trace) -> None:
    stats = trace_stats(open_trace(shared_trace("mooncake_fast25_conversation.jsonl")).jobs())
    assert stats["span_s"] == pytest.approx(3537.0)
    assert stats["distributions"]["prompt_tokens"]["p50"] == pytest.approx(6909, abs=1)


def test_alibaba_pods_become_cluster_jobs(shared_trace) -> None:
    jobs = list(open_trace(shared_trace("alibaba_gpu_v2023_pods.csv")).jobs())
    first = jobs[0]
    # openb-pod-0000,12000,16384,1,1000,,LS,Running,0,12537496,0
    assert isinstance(first, ClusterJob)
    assert (first.cpus, first.memory_bytes, first.gpus, first.gpu_fraction) == (
        12.0, 16384 << 20, 1, 1.0)
    assert (first.duration, first.tenant, first.priority) == (12537496.0, "LS", 2)
    assert jobs[1].gpu_fraction == pytest.approx(0.46)
    assert sum(j.gpus == 0 for j in jobs) == 1088
    assert all(j.duration >= 1.0 for j in jobs)  # the zero-length pod is kept, as 1 s


def _mixed_jobs() -> list:
    return [
        attention_job(id="a", submit_time=0.0, tenant="x,y", deadline=2.5),
        attention_job(id="b", submit_time=0.1, kind="decode", q_len=1, kv_len=77, steps=9,
                      depends_on="a", dtype="fp32"),
        cluster_job(id="c", submit_time=0.1, gpus=1, gpu_fraction=0.3, cpus=1.5,
                    memory_bytes=3 << 20),
        attention_job(id="d", submit_time=1 / 3, kind="train", batch=4, causal=True),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_canonical_formats_round_trip_exactly(tmp_path, suffix) -> None:
    jobs = _mixed_jobs()
    path = tmp_path / f"t{suffix}"
    assert write_trace(jobs, path) == len(jobs)
    assert list(open_trace(path).jobs()) == jobs


def test_unsorted_rows_are_an_error_at_their_line(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    write_trace([attention_job(id="a", submit_time=5.0)], path)
    with path.open("a") as f:
        f.write(json.dumps({"id": "b", "submit_time": 1.0, "kind": "prefill", "batch": 1,
                            "heads": 1, "q_len": 1, "kv_len": 1, "head_dim": 8}) + "\n")
    with pytest.raises(InputError) as err:
        list(open_trace(path).jobs())
    assert (err.value.line, err.value.field) == (2, "submit_time")
    assert "--sort" in str(err.value)


def test_duplicate_ids_are_an_error(tmp_path) -> None:
    path = tmp_path / "t.csv"
    write_trace([attention_job(id="a"), attention_job(id="a", submit_time=1.0)], path)
    with pytest.raises(InputError, match="duplicate id 'a'") as err:
        list(open_trace(path).jobs())
    assert err.value.line == 3


def test_generator_is_deterministic_and_complete(tmp_path) -> None:
    preset = get_preset("tiny")
    spec = SynthSpec(jobs=5000, seed=7, rate=50.0)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_trace(generate(spec, preset), a)
    write_trace(generate(spec, preset), b)
    assert a.read_bytes() == b.read_bytes()
    write_trace(generate(SynthSpec(jobs=5000, seed=8, rate=50.0), preset), b)
    assert a.read_bytes() != b.read_bytes()
    jobs = list(open_trace(a).jobs())  # re-validated on the way in
    assert len(jobs) == 5000
    assert all(isinstance(j, AttentionJob) and j.head_dim == preset.head_dim for j in jobs)
    stats = trace_stats(jobs)
    assert stats["arrival_rate_per_s"] == pytest.approx(50.0, rel=0.05)
    assert set(stats["kinds"]) == {"prefill", "decode", "train"}
    assert len(stats["tenants"]) == 4
    assert stats["distributions"]["prompt_tokens"]["p50"] == pytest.approx(1020, rel=0.1)


def test_bursty_arrivals_are_burstier(tmp_path) -> None:
    import numpy as np

    preset = get_preset("tiny")
    cvs = {}
    for arrivals in ("poisson", "bursty"):
        times = np.array([j.submit_time for j in generate(
            SynthSpec(jobs=4000, seed=1, arrivals=arrivals), preset)])
        gaps = np.diff(times)
        cvs[arrivals] = gaps.std() / gaps.mean()
    assert cvs["poisson"] == pytest.approx(1.0, abs=0.1)
    assert cvs["bursty"] > 2.0


def test_token_scale_shrinks_requests(shared_trace) -> None:
    full = next(open_trace(shared_trace("azure_llm_2023_conv.csv")).jobs())
    half = next(open_trace(shared_trace("azure_llm_2023_conv.csv"), token_scale=0.5).jobs())
    assert half.q_len == (full.q_len + 1) // 2
