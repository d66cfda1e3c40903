"""Builders for test jobs: defaults that are valid, overrides that say what matters."""

from __future__ import annotations

from typing import Any

from scheduler.jobs import AttentionJob, ClusterJob


def attention_job(**overrides: Any) -> AttentionJob:
    fields: dict[str, Any] = {"id": "j0", "submit_time": 0.0, "kind": "prefill", "batch": 1,
                              "heads": 8, "kv_heads": 8, "q_len": 128, "kv_len": 128,
                              "head_dim": 64, "layers": 1, "dtype": "bf16", "causal": False,
                              "steps": 1}
    fields.update(overrides)
    return AttentionJob(**fields)


def cluster_job(**overrides: Any) -> ClusterJob:
    fields: dict[str, Any] = {"id": "c0", "submit_time": 0.0, "duration": 10.0, "gpus": 1}
    fields.update(overrides)
    return ClusterJob(**fields)
