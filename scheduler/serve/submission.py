"""What a client submits: a canonical job row without ``submit_time``, maybe with tensors.

One rule for the service, which judges each submission, and for ``attnsched
submit``, which checks every row of a file with it before it sends any.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from scheduler.errors import InputError
from scheduler.jobs import Job
from scheduler.traces.canonical import job_from_record

if TYPE_CHECKING:
    import torch


def submitted_job(record: Mapping[str, Any], qkv: Mapping[str, torch.Tensor] | None = None
                  ) -> Job:
    """The job a submission describes (its shape read off ``qkv`` when it brought tensors;
    submit time 0 until the service stamps it); InputError naming the field at fault."""
    if "submit_time" in record:
        raise InputError("set by the service when it accepts the job", field="submit_time")
    slo = record.get("slo")
    if slo is not None and not isinstance(slo, str):
        raise InputError("expected a class name", field="slo")
    fields = {k: v for k, v in record.items() if k != "slo"}
    if qkv is not None:
        from scheduler.serve.tensors import job_record

        fields = job_record(fields, qkv)
    return job_from_record({**fields, "id": fields.get("id", "-"), "submit_time": 0.0})
