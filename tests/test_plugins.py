"""Third-party policies: by path, by module, by installed entry point; bad ones contained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

SMALL = ["--limit", "200", "--telemetry-interval", "0.5"]


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "t.jsonl"
    from scheduler.presets import get_preset
    from scheduler.traces import write_trace
    from scheduler.traces.synth import SynthSpec, generate

    write_trace(generate(SynthSpec(jobs=200, seed=2, rate=200.0), get_preset("llama3-8b")), path)
    return path


def test_example_plugin_runs_by_path(cli, small_trace, tmp_path) -> None:
    code, _out, err = cli("simulate", small_trace, "--policy",
                         REPO / "examples" / "custom_policy.py:ShortestJobFirst",
                         "--cluster", REPO / "cluster.yaml", "--out", tmp_path / "r", *SMALL)
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["policy"] == "sjf-example"
    assert summary["jobs_completed"] == 200


def test_a_plugin_goes_by_its_own_name_in_every_output(cli, small_trace, tmp_path) -> None:
    """Console tables, compare folders and comparison.md say ``sjf-example``, as
    summary.json does, never the file spec that loaded it."""
    spec = f"{REPO / 'examples' / 'custom_policy.py'}:ShortestJobFirst"
    code, text, err = cli("simulate", small_trace, "--policy", spec, *SMALL)
    assert code == 0, err
    assert "sjf-example" in text and "custom_policy" not in text
    out = tmp_path / "cmp"
    code, text, err = cli("compare", small_trace, "--policies", f"greedy,{spec}", "--jobs", "1",
                          "--out", out, *SMALL)
    assert code == 0, err
    assert {p.name for p in out.iterdir() if p.is_dir()} >= {"greedy", "sjf-example"}
    assert not [p for p in out.iterdir() if "custom_policy" in p.name]
    assert "sjf-example" in (out / "comparison.md").read_text()
    assert "custom_policy" not in text + (out / "comparison.md").read_text()
    code, _, err = cli("compare", small_trace, "--policies",
                       f"{spec},examples.custom_policy:ShortestJobFirst", *SMALL)
    assert code == 2 and "both called 'sjf-example'" in err, err


def test_plugin_by_module_with_options(cli, small_trace, tmp_path) -> None:
    code, _, err = cli("simulate", small_trace, "--policy", "policies.greedy:GreedyPolicy",
                       "--policy-opt", "max_batch=4", "--cluster", REPO / "cluster.yaml",
                       "--out", tmp_path / "r", *SMALL)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "r" / "decisions.jsonl").open()]
    assert max(len(r["jobs"]) for r in rows) <= 4


@pytest.mark.parametrize(
    ("spec", "opts", "needle"),
    [
        ("nosuch", [], "unknown policy 'nosuch'"),
        ("missing.py:X", [], "missing.py: --policy: no such file"),
        ("policies.greedy:Nope", [], "has no 'Nope'"),
        ("collections:OrderedDict", [], "is not a policy"),
        ("json:dumps", [], "is not a policy"),
        ("os:system", ["command=true"], "nothing was called"),
        ("no.such.module:X", [], "cannot import module"),
        ("greedy", ["colour=red"], "takes no option 'colour'"),
        ("greedy", ["max_batch=many"], "expected an integer"),
        ("greedy", ["max_batch=0"], "--policy-opt: 'greedy' refused its options: max_batch"),
        ("prefix-affinity", ["threshold=1"], "threshold must be in [0, 1)"),
        ("greedy", ["max_batch"], "expected key=value"),
    ],
)
def test_bad_policy_specs_exit_2(cli, small_trace, spec, opts, needle) -> None:
    args = [x for o in opts for x in ("--policy-opt", o)]
    code, _, err = cli("simulate", small_trace, "--policy", spec, *args, "--cluster",
                       REPO / "cluster.yaml", *SMALL)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1


BAD_PLUGIN = '''
from scheduler.decisions import Place
class Bad:
    name = "bad"
    description = "misbehaves on purpose"
    def decide(self, view):
        jobs = list(view.pending)
        free = list(view.free)
        if view.now > 0.5 and len(jobs) > 3:
            raise RuntimeError("plugin bug")
        out = [Place(("ghost",), free[0], "unknown id")] if free else []
        for job, device in zip(jobs, free):
            out.append(Place((job,), device, "ok"))
            out.append(Place((job,), device, "double placement"))
        if jobs and free:
            out.append(Place(tuple(jobs[:64]), free[-1], "over-commit"))
        return out
'''


def test_misbehaving_plugin_is_contained(cli, small_trace, tmp_path) -> None:
    plugin = tmp_path / "bad.py"
    plugin.write_text(BAD_PLUGIN)
    code, _, _err = cli("simulate", small_trace, "--policy", f"{plugin}:Bad", "--cluster",
                       REPO / "cluster.yaml", "--out", tmp_path / "r", *SMALL)
    rows = [json.loads(x) for x in (tmp_path / "r" / "decisions.jsonl").open()]
    whys = {r.get("why", "") for r in rows if r["outcome"] == "rejected"}
    assert any("'ghost' is unknown" in w for w in whys)
    assert any("is running, not queued" in w for w in whys)
    assert any(r["outcome"] == "error" and "plugin bug" in r["why"] for r in rows)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    # every job is accounted for: done, or failed with the reason the run stopped
    assert summary["jobs_completed"] + summary["jobs_failed"] == 200
    assert code in (0, 1)


def test_installed_entry_point_plugin_runs_by_name(small_trace, tmp_path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "fifo_plugin").mkdir(parents=True)
    marker = tmp_path / "imported"
    (pkg / "fifo_plugin" / "__init__.py").write_text(textwrap.dedent(f'''
        import pathlib
        pathlib.Path({str(marker)!r}).touch()  # proves when the plugin was imported
        from scheduler.decisions import Place
        class Fifo:
            name = "fifo-plugin"
            description = "first come, first served on any free device"
            def decide(self, view):
                return [Place((j,), d, "fifo") for j, d in zip(view.pending, view.free)]
    '''))
    (pkg / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "fifo-plugin"
        version = "0.1"
        description = "FIFO onto any free device, from a package"
        [project.entry-points."attnsched.policies"]
        fifo-plugin = "fifo_plugin:Fifo"
    '''))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(pkg)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{REPO}"}
    listed = subprocess.run([sys.executable, "-m", "scheduler.cli", "policies"], env=env,
                            capture_output=True, text=True, check=True)
    assert "fifo-plugin" in listed.stdout
    # Described from its package's metadata (summary, package, version), not imported.
    assert "FIFO onto any free device, from a package" in " ".join(listed.stdout.split())
    assert "fifo-plugin 0.1" in listed.stdout
    assert not marker.exists(), "listing the policies imported a plugin nobody named"
    result = subprocess.run([sys.executable, "-m", "scheduler.cli", "simulate",
                             str(small_trace), "--policy", "fifo-plugin", "--cluster",
                             str(REPO / "cluster.yaml"), "--out", str(tmp_path / "r"), *SMALL],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["policy"] == "fifo-plugin"
    assert summary["jobs_completed"] == 200
