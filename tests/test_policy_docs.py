"""docs/policies.md names every member a policy may read, so the reference cannot drift
from the code: a public member added to the view, a device, a job or the cost model
without a line in the docs fails here."""

from __future__ import annotations

import dataclasses
import re

import pytest

from scheduler.costmodel import Pack
from scheduler.jobs import AttentionJob, ClusterJob
from scheduler.policy import API_VERSION
from scheduler.view import CostOracle, DeviceView, JobInfo, NodeView, Telemetry, View
from tests.conftest import REPO

DOC = (REPO / "docs" / "policies.md").read_text(encoding="utf-8")
DOCUMENTED = (View, DeviceView, Telemetry, NodeView, JobInfo, CostOracle, Pack, AttentionJob,
              ClusterJob)


def public_members(cls: type) -> set[str]:
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    names |= {n for n, v in vars(cls).items()
              if isinstance(v, property | staticmethod | classmethod) or callable(v)}
    return {n for n in names if not n.startswith("_")}


def section(name: str) -> str:
    match = re.search(rf"^### {name}\n(.*?)(?=^##)", DOC, re.S | re.M)
    assert match, f"docs/policies.md has no '### {name}' section"
    return match.group(1)


@pytest.mark.parametrize("cls", DOCUMENTED, ids=lambda c: c.__name__)
def test_every_public_member_is_documented(cls: type) -> None:
    documented = {m.split("(")[0] for m in re.findall(r"`([A-Za-z_][\w]*(?:\([^`]*\))?)`",
                                                       section(cls.__name__))}
    missing = public_members(cls) - documented
    assert not missing, f"{cls.__name__}: document {sorted(missing)} in docs/policies.md"


def test_the_api_version_is_the_documented_one() -> None:
    from policies.base import API_VERSION as reexported

    assert API_VERSION == reexported == 1
    assert "`scheduler.policy.API_VERSION`" in DOC
