from __future__ import annotations

import math

import pytest

from scheduler.errors import InputError
from scheduler.jobs import DType, JobKind
from scheduler.presets import get_preset
from tests.builders import attention_job, cluster_job


def test_valid_job_is_frozen_and_typed() -> None:
    job = attention_job(kind="decode", dtype="fp32", submit_time=3)
    assert job.kind is JobKind.DECODE
    assert job.dtype is DType.FP32
    assert isinstance(job.submit_time, float)
    with pytest.raises(AttributeError):
        job.batch = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"batch": 0}, "batch"),  # sizes must be positive
        ({"heads": -1}, "heads"),
        ({"head_dim": 4096}, "head_dim"),  # absurdly large
        ({"q_len": 1.5}, "q_len"),  # not an integer
        ({"batch": True}, "batch"),  # bools are not sizes
        ({"heads": 32, "kv_heads": 7}, "kv_heads"),  # GQA groups must divide
        ({"dtype": "fp8"}, "dtype"),  # unknown dtype
        ({"kind": "cluster"}, "kind"),  # cluster jobs have no shape
        ({"kind": "inference"}, "kind"),
        ({"submit_time": math.nan}, "submit_time"),  # times must be finite
        ({"submit_time": math.inf}, "submit_time"),
        ({"submit_time": -1.0}, "submit_time"),
        ({"deadline": 0.0}, "deadline"),  # an SLO of zero seconds cannot be met
        ({"id": ""}, "id"),
        ({"tenant": "a\nb"}, "tenant"),  # would break one-line output
        ({"causal": "yes"}, "causal"),
        ({"depends_on": "j0"}, "depends_on"),  # self-dependency
        ({"priority": 10**9}, "priority"),
    ],
)
def test_invalid_attention_job_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        attention_job(**overrides)
    assert err.value.field == field
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"duration": 0.0}, "duration"),
        ({"gpus": -1}, "gpus"),
        ({"gpus": 2, "gpu_fraction": 0.5}, "gpu_fraction"),  # sharing only within one GPU
        ({"gpu_fraction": 1.5}, "gpu_fraction"),
        ({"cpus": math.inf}, "cpus"),
        ({"memory_bytes": -5}, "memory_bytes"),
    ],
)
def test_invalid_cluster_job_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        cluster_job(**overrides)
    assert err.value.field == field


def test_cluster_job_kind_and_fraction() -> None:
    job = cluster_job(gpus=1, gpu_fraction=0.25, cpus=2)
    assert job.kind is JobKind.CLUSTER
    assert job.gpu_fraction == 0.25


def test_decode_final_kv_grows_one_per_step() -> None:
    assert attention_job(kind="decode", q_len=1, kv_len=100, steps=10).final_kv_len == 109
    assert attention_job(kind="prefill", kv_len=100).final_kv_len == 100


def test_presets_shape_and_scale() -> None:
    llama = get_preset("llama3-70b")
    assert (llama.layers, llama.heads, llama.kv_heads, llama.head_dim) == (80, 64, 8, 128)
    assert get_preset("llama3-8b", token_scale=0.5).tokens(1001) == 501
    assert get_preset("tiny", token_scale=0.001).tokens(10) == 1  # never below one token
    with pytest.raises(InputError, match="unknown model preset"):
        get_preset("gpt-5")
    with pytest.raises(InputError, match="--token-scale"):
        get_preset("tiny", token_scale=-1)
