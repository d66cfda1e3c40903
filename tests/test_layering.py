"""The core stays importable without the live stack (STYLE.md rule 5)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

BLOCKED = ("ray", "torch", "pynvml")

PROBE = f"""
import importlib, pkgutil, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked for the layering test: " + name)
        return None

sys.meta_path.insert(0, Block())
import scheduler, policies
for pkg in (scheduler, policies):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
from scheduler.cluster import load_cluster
from scheduler.traces import open_trace
spec = load_cluster("cluster.yaml")
jobs = sum(1 for _ in open_trace("{{trace}}").jobs())
print(spec.gpus, jobs, sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
"""


def test_core_imports_and_works_with_ray_torch_nvml_blocked(tmp_path) -> None:
    trace = tmp_path / "t.jsonl"
    from scheduler.presets import get_preset
    from scheduler.traces import write_trace
    from scheduler.traces.synth import SynthSpec, generate

    write_trace(generate(SynthSpec(jobs=50), get_preset("tiny")), trace)
    result = subprocess.run([sys.executable, "-c", PROBE.replace("{trace}", str(trace))],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8", "50", "[]"]
