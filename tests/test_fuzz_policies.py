"""Fuzzing policy specs and policy decisions through ``attnsched simulate`` in-process.

Two properties:

* A ``--policy`` spec (name, ``module:Class``, ``path.py:Class``) with any
  ``--policy-opt`` values is loaded, or refused with exit 2 and one line; a
  plugin that fails to import, to build or to be a policy never crashes the CLI.
* A plugin that returns impossible actions (unknown or duplicate job ids,
  unknown or down devices, over-memory batches, bad splits, wrong types, not
  actions at all) or raises never crashes the run and never loses or
  duplicates a job: every job of the trace ends exactly once in
  ``jobs.parquet``, done or failed with a reason, and the exit code is 0, 3
  when some jobs failed, or 1 with a one-line "run stopped" when the policy
  kept failing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from policies.greedy import GreedyPolicy
from scheduler.decisions import Decisions, Defer, Migrate, Offload, Place, Preempt, Split
from scheduler.view import View
from tests.malformed import FUZZ, assert_clean, examples, run_cli
from tests.test_fuzz_configs import SMALL_CLUSTER

ROWS: list[dict[str, Any]] = [
    {"id": f"j{i}", "submit_time": i * 0.002, "kind": kind, "batch": batch, "heads": 8,
     "kv_heads": 2, "q_len": q, "kv_len": kv, "head_dim": 64, "dtype": "fp16", "causal": True,
     "steps": steps}
    for i, (kind, batch, q, kv, steps) in enumerate([
        ("prefill", 4, 512, 512, 1), ("prefill", 4, 512, 512, 1), ("decode", 2, 1, 1024, 8),
        ("prefill", 1, 128, 128, 1), ("train", 2, 256, 256, 2), ("decode", 1, 1, 512, 4),
        ("prefill", 64, 4096, 4096, 1)])]  # j6: fits a GPU, not the CPU worker's memory
ROWS.append({"id": "j7", "submit_time": 0.02, "kind": "prefill", "batch": 1, "heads": 8,
             "kv_heads": 2, "q_len": 64, "kv_len": 64, "head_dim": 64, "depends_on": "j3"})
ROWS.append({"id": "g8", "submit_time": 0.03, "kind": "cluster", "duration": 0.05, "gpus": 2,
             "cpus": 1.0, "memory_mib": 64.0})
JOB_IDS = [r["id"] for r in ROWS]
DEVICES = ["gpu-0/gpu0", "gpu-0/gpu1", "cpu-0/cpu"]


@pytest.fixture(autouse=True)
def _no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip report.md and its plots: seconds per run, and not what is under test."""
    monkeypatch.setattr("scheduler.report.write_report", lambda out: None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("world")
    trace, cluster = folder / "t.jsonl", folder / "c.yaml"
    trace.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cluster.write_text(yaml.safe_dump(SMALL_CLUSTER))
    return trace, cluster


# --- decisions -------------------------------------------------------------------------

def _ref(value: Any, view: View) -> Any:
    """Resolve ``@name`` references against the view; anything else passes through."""
    if not (isinstance(value, str) and value.startswith("@")):
        return [_ref(v, view) for v in value] if isinstance(value, list) else value
    pending, free = list(view.pending), list(view.free)
    by_kind = {d.kind: d.id for d in reversed(list(view.devices.values()))}
    return {"@pending0": pending[0] if pending else "ghost",
            "@pending_last": pending[-1] if pending else "ghost",
            "@all": tuple(pending[:80]), "@free0": free[0] if free else "ghost",
            "@free_last": free[-1] if free else "ghost", "@cpu": by_kind.get("cpu"),
            "@gpu": by_kind.get("gpu")}[value]


def _build(template: dict[str, Any], view: View) -> Any:
    kind, args = template["type"], {k: _ref(v, view) for k, v in template.items()
                                    if k not in ("type", "calls")}
    if kind == "raise":
        raise RuntimeError("plugin bug on purpose")
    if kind == "object":
        return args.get("value")
    return {"place": Place, "offload": Offload, "preempt": Preempt, "migrate": Migrate,
            "split": Split, "defer": Defer}[kind](**args)


class Scripted:
    """A plugin that emits the scripted junk before greedy's own (valid) actions.

    Junk stops after a template's ``calls`` rounds, so a run can always end;
    rounds are counted in an attribute (impure on purpose: a failed round
    keeps the previous ``Decisions.state``). Returning a non-Decisions value
    (``answer``) is junk of its own kind.
    """

    name: ClassVar[str] = "scripted"
    description: ClassVar[str] = "fuzz: scripted bad actions, then greedy"

    def __init__(self, script: str = "[]", answer: str = "decisions") -> None:
        self.script: list[dict[str, Any]] = json.loads(script)
        self.answer = answer
        self.greedy = GreedyPolicy()
        self.calls = 0

    def decide(self, view: View) -> Any:
        self.calls += 1
        calls = self.calls
        junk = [_build(t, view) for t in self.script if calls <= t["calls"]]
        good = self.greedy.decide(view).actions
        if self.answer == "list" and calls <= 3:
            return [*junk, *good]  # a plain list keeps the previous state
        if self.answer == "none" and calls <= 3:
            return None
        if self.answer == "generator" and calls <= 3:
            return (a for a in [*junk, *good])
        return Decisions((*junk, *good), calls)


JOB_REFS = st.sampled_from([*JOB_IDS, "@pending0", "@pending_last", "@pending0", "ghost", "",
                            "j0/0"])
DEVICE_REFS = st.sampled_from([*DEVICES, "@free0", "@free_last", "@cpu", "@gpu", "@free0",
                               "ghost", "", "gpu-0"])
JOB_LISTS = st.one_of(st.lists(JOB_REFS, max_size=3), st.just("@all"),
                      JOB_REFS.map(lambda j: [j, j]))
# A wrong type anywhere makes the whole answer a policy error, not one rejection.
WRONG = st.sampled_from([5, None, 1.5, ["j0"], {"a": 1}, "@all"])


def _template(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    optional = {} if "reason" in fields else {"reason": st.sampled_from(["", "why"])}
    return st.fixed_dictionaries({"type": st.just(kind), "calls": st.integers(1, 14), **fields},
                                 optional=optional)


WELL_TYPED = st.one_of(
    _template("place", jobs=JOB_LISTS, device=DEVICE_REFS,
              gang=st.sampled_from([[], ["@gpu"], ["gpu-0/gpu1"], ["gpu-0/gpu1", "gpu-0/gpu1"],
                                    ["ghost"], ["cpu-0/cpu"]])),
    _template("offload", jobs=JOB_LISTS, device=DEVICE_REFS),
    _template("preempt", job=JOB_REFS),
    _template("migrate", job=JOB_REFS, device=DEVICE_REFS),
    _template("split", job=JOB_REFS, parts=st.sampled_from([2, 4, 0, 1, -1, 3, 10**6, 64]),
              axis=st.sampled_from(["batch", "heads", "tokens", ""])),
    _template("defer", job=st.one_of(JOB_REFS, st.none())),
)
BROKEN = st.one_of(
    _template("place", jobs=st.one_of(WRONG, st.just([5])), device=DEVICE_REFS),
    _template("place", jobs=JOB_LISTS, device=WRONG, gang=st.sampled_from(["gpu-0/gpu1", None])),
    _template("offload", jobs=JOB_LISTS, device=DEVICE_REFS, reason=st.sampled_from([None, 3])),
    _template("preempt", job=WRONG), _template("migrate", job=JOB_REFS, device=WRONG),
    _template("split", job=JOB_REFS, parts=st.sampled_from([2.0, "2", None, True]),
              axis=st.sampled_from(["batch", None, 5])),
    _template("defer", job=st.sampled_from([5, ["j0"]])),
    _template("raise"),
    _template("object", value=st.sampled_from([None, 5, "place", [1], {"a": 1}])),
)
SCRIPTS = st.one_of(st.lists(WELL_TYPED, min_size=1, max_size=6),
                    st.lists(st.one_of(WELL_TYPED, BROKEN), min_size=1, max_size=4))


@settings(FUZZ, max_examples=examples(70))
@given(script=SCRIPTS,
       answer=st.sampled_from(["decisions", "decisions", "decisions", "list", "none",
                               "generator"]),
       fail=st.sampled_from([[], ["--fail", "gpu-0/gpu1@0.004"], ["--fail-node", "cpu-0@0.01"]]),
       slots=st.sampled_from(["1", "2"]))
def test_impossible_actions_lose_no_job(world: tuple[Path, Path], tmp_path: Path,
                                        script: list[dict[str, Any]], answer: str,
                                        fail: list[str], slots: str) -> None:
    trace, cluster = world
    out = tmp_path / "run"
    code, text = run_cli("simulate", trace, "--cluster", cluster, "--out", out, "--slots", slots,
                         "--policy", f"{__name__}:Scripted", "--policy-opt",
                         f"script={json.dumps(script)}", "--policy-opt", f"answer={answer}",
                         "--telemetry-interval", "0.01", "--no-live-costs", *fail)
    event(f"exit {code}")
    assert "Traceback" not in text and "internal error" not in text, text
    assert code in (0, 1, 3), text
    if code == 1:
        assert "run stopped" in text, text
    jobs = pq.read_table(out / "jobs.parquet").to_pylist()
    # 0 only when every job completed; 3 when the run finished with some failed
    assert (code == 3) == (code != 1 and any(j["status"] != "done" for j in jobs)), text
    assert sorted(j["id"] for j in jobs) == sorted(JOB_IDS)  # each job once, none lost
    for job in jobs:
        assert job["status"] == "done" or job["reason"], job
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs_completed"] + summary["jobs_failed"] == len(JOB_IDS)
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").open()]
    for outcome in sorted({d["outcome"] for d in decisions} - {"applied"}):
        event(f"some actions {outcome}")
    if any(t["type"] != "defer" for t in script) and answer == "decisions":
        assert any(d["outcome"] in ("rejected", "error") for d in decisions)


# --- specs -----------------------------------------------------------------------------

PLUGINS = {
    "ok": "from policies.greedy import GreedyPolicy as P\n",
    "raises": "raise RuntimeError('import fails')\n",
    "exits": "import sys\nsys.exit(3)\n",
    "syntax": "def (:\n",
    "binary": b"\xff\xfe\x00junk",
    "empty": "",
    "init_raises": "class P:\n    def __init__(self):\n        raise ValueError('no')\n"
                   "    def decide(self, view):\n        return []\n",
    "init_exits": "class P:\n    def __init__(self):\n        raise SystemExit(0)\n",
    "init_args": "class P:\n    def __init__(self, required):\n        pass\n"
                 "    def decide(self, view):\n        return []\n",
    "no_decide": "class P:\n    pass\n",
    "decide_attr": "class P:\n    decide = 5\n",
    "not_callable": "P = 42\n",
    "getattr_raises": "def __getattr__(name):\n    raise KeyError(name)\n",
    "recursion": "def f():\n    return f()\nf()\n",
    "options": "class P:\n    name = 'p'\n    def __init__(self, n: int = 1, x: float = 0.5,"
               " on: bool = False, s: str = '', anything=None):\n"
               "        if n < 1 or not 0 <= x <= 1:\n"
               "            raise ValueError('out of range')\n"
               "    def decide(self, view):\n        return []\n",
}
SPECS = ["greedy", "adaptive", "static", "nosuch", "", " ", "GREEDY", "greedy ", ":", "a:", ":b",
         "policies.greedy:GreedyPolicy", "policies.greedy:Nope", "policies.base:Policy",
         "policies.base:load_policy", "no.such.module:X", "collections:OrderedDict",
         "json:dumps", "math:pi", "builtins:object", "builtins:exit", "sys:exit",
         "scheduler:__version__", "policies.greedy:GreedyPolicy.decide", "..:X", "/:X",
         "missing.py:P", "dir.py:P"]
OPTION_KEYS = ["max_batch", "lookahead", "head", "temperature", "aging_s", "budget_factor",
               "min_budget_s", "offload_max_s", "slow_speed", "mode", "n", "x", "on", "s",
               "anything", "colour", "", " ", "self", "kwargs"]
OPTION_VALUES = ["", "0", "1", "-1", "2", "1.5", "nan", "inf", "-inf", "1e400", "true", "off",
                 "maybe", "1_0", " 3 ", "\u0663", "0x10", "job", "tenant", "9" * 30]


@st.composite
def policy_spec(draw: st.DrawFn) -> tuple[str, str | bytes | None, list[str]]:
    plugin = None
    if draw(st.booleans()):
        plugin = draw(st.sampled_from(sorted(PLUGINS)))
        spec = f"plugin.py:{draw(st.sampled_from(['P', 'Q', '', 'P.x']))}"
    else:
        spec = draw(st.sampled_from(SPECS))
    options = [f"{draw(st.sampled_from(OPTION_KEYS))}{draw(st.sampled_from(['=', '=', '']))}"
               f"{draw(st.sampled_from(OPTION_VALUES))}" for _ in range(draw(st.integers(0, 2)))]
    return spec, (PLUGINS[plugin] if plugin else None), options


@settings(FUZZ, max_examples=examples(120))
@given(case=policy_spec())
def test_fuzzed_policy_specs(world: tuple[Path, Path], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             case: tuple[str, str | bytes | None, list[str]]) -> None:
    spec, plugin, options = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.py").mkdir(exist_ok=True)
    if plugin is not None:
        data = plugin if isinstance(plugin, bytes) else plugin.encode()
        (tmp_path / "plugin.py").write_bytes(data)
    trace, cluster = world
    args = [x for o in options for x in ("--policy-opt", o)]
    code, text = run_cli("simulate", trace, "--cluster", cluster, "--policy", spec, *args,
                         "--no-live-costs")
    if code == 1:  # a loadable policy that places nothing: the run stops, and says why
        assert "run stopped: policy" in text and "internal error" not in text, text
        return
    assert_clean(code, text, None)
    if code == 2:
        assert "--policy" in text or "plugin.py" in text, text
