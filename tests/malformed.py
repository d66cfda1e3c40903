"""Hypothesis strategies that produce input files guaranteed to be malformed,
and what every bad-input and fuzz test shares: settings, the in-process CLI
and the check of the bad-input contract.

Each strategy returns ``(file name, bytes, expect_line)``: ``expect_line`` says
whether the error must point at a line (it cannot for, say, an empty file).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import typer
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

# Fuzz settings: reproducible (derandomized), no per-example deadline (a CI box
# can stall), fixtures shared across examples (each writes its own file name).
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])



def examples(n: int) -> int:
    """``n`` cases, times ATTNSCHED_FUZZ_SCALE (set it to hunt longer than CI does)."""
    return n * int(os.environ.get("ATTNSCHED_FUZZ_SCALE", "1"))


_build: Callable[[typer.Typer], Any] = typer.main.get_command


@functools.cache
def _command(app: typer.Typer) -> Any:
    return _build(app)


def run_cli(*args: object) -> tuple[int, str]:
    """The real CLI in-process: ``(exit code, stderr + stdout)``.

    The click command is built once and reused (building it is most of an
    error case's cost); ``main`` still parses, runs and maps errors as usual.
    """
    out, err = io.StringIO(), io.StringIO()
    from scheduler.cli.main import main

    with mock.patch.object(typer.main, "get_command", _command), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, err.getvalue() + out.getvalue()


GUARD_S = 60.0  # a failsafe against a hang, not a measurement: a refusal takes milliseconds


def run_cli_guarded(*args: object, fifo: Path | None = None) -> tuple[int, str]:
    """:func:`run_cli` in a thread, so a regression that blocks on a FIFO or reads an
    endless file fails the test instead of hanging the suite.

    ``fifo``: a FIFO the command may be blocked opening; on timeout a writer is
    opened and closed so the blocked reader sees end of file and the thread ends.
    """
    outcome: list[tuple[int, str] | BaseException] = []

    def target() -> None:
        try:
            outcome.append(run_cli(*args))
        except BaseException as e:  # re-raised in the test's thread
            outcome.append(e)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(GUARD_S)
    if worker.is_alive():
        if fifo is not None:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError(f"still running after {GUARD_S:.0f} s: attnsched {args}")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def assert_clean(code: int, text: str, path: Path | str | None, *, must_fail: bool = False,
                 line: bool = False) -> None:
    """The bad-input contract: success (0, or 3: the run finished with failed jobs), or
    exit 2 with one located line; never a crash.

    ``path``: the file the message must start with (None: any location);
    ``line``: the message must also carry ``path:LINE:``.
    """
    event(f"exit {code}")  # --hypothesis-show-statistics: how often inputs pass
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    if code == 0 and not must_fail:
        return
    if code == 3 and not must_fail:  # the run finished, some jobs failed: it says how many
        assert re.search(r"\d+ of \d+ jobs failed", text), text[:500]
        return
    assert code == 2, (code, text[:500])
    lines = text.strip().splitlines()
    assert len(lines) == 1, text[:2000]
    prefix = "attnsched: error: " + ("" if path is None else str(path))
    assert lines[0].startswith(prefix), text[:500]
    if line:
        assert re.match(rf"{re.escape(prefix)}:\d+: ", lines[0]), text[:500]

GOOD_ROW = {"id": "a", "submit_time": 1.0, "kind": "prefill", "tenant": "t", "priority": 0,
            "batch": 1, "heads": 8, "kv_heads": 2, "q_len": 64, "kv_len": 64, "head_dim": 64,
            "layers": 1, "dtype": "bf16", "causal": True, "steps": 1}
NUMERIC = ["submit_time", "batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "layers",
           "steps", "priority"]
BAD_NUMBERS = ["abc", -1, -0.5, float("nan"), float("inf"), 1e30, 2**70, "", None, [], {}, True,
               "1;2", 0.5]
# Empty cells of fields with defaults (dtype, causal, tenant, ...) are legal, so
# none of these is empty unless the field is required.
BAD_VALUES = {"kind": ["", "inference", 3, "cluster"], "dtype": ["fp8", "float", 16],
              "causal": ["maybe", 2], "id": ["", None, 5, "x" * 300, "a\tb"],
              "tenant": ["a\nb", 7, "x" * 300]}
HAS_DEFAULT = {"kv_heads", "layers", "steps", "priority"}


def _rows(n: int) -> list[dict]:
    return [{**GOOD_ROW, "id": f"j{i}", "submit_time": float(i)} for i in range(n)]


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _csv_cell(v: object) -> str:
    if v is True or v is False:
        return str(v).lower()
    return "" if v is None else str(v)


def _csv(rows: list[dict], header: list[str] | None = None) -> bytes:
    cols = header or list(GOOD_ROW)
    lines = [",".join(cols)] + [",".join(_csv_cell(r.get(c)) for c in cols) for r in rows]
    return ("\n".join(lines) + "\n").encode()


@st.composite
def bad_canonical(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    rows = _rows(draw(st.integers(2, 5)))
    victim = rows[draw(st.integers(0, len(rows) - 1))]
    suffix = draw(st.sampled_from([".jsonl", ".csv"]))
    fault = draw(st.sampled_from(["number", "value", "unsorted", "duplicate", "missing",
                                  "unknown", "truncated", "binary", "empty", "not_object",
                                  "extra_field"]))
    if fault == "number":
        field = draw(st.sampled_from(NUMERIC))
        bad = draw(st.sampled_from(BAD_NUMBERS))
        if (field == "priority" and bad in (-1, -0.5)) or (field in HAS_DEFAULT
                                                            and bad in ("", None)):
            bad = "abc"  # negative priorities are legal; empty cells take the default
        if field == "submit_time" and bad == 0.5:
            bad = -3.0
        victim[field] = bad
        if suffix == ".csv" and bad in ([], {}):
            suffix = ".jsonl"
    elif fault == "value":
        field = draw(st.sampled_from(sorted(BAD_VALUES)))
        victim[field] = draw(st.sampled_from(BAD_VALUES[field]))
        if suffix == ".csv" and field == "tenant" and victim[field] == "a\nb":
            victim[field] = "a\x01b"  # a raw newline would split the CSV row
        if suffix == ".csv" and victim[field] in (7, 5, 16, 3, 2):
            suffix = ".jsonl"  # a number is a fine name in CSV; only JSON keeps its type
    elif fault == "unsorted":
        rows[-1]["submit_time"] = -0.0 if len(rows) > 1 else 0.0
        rows[-1]["submit_time"] = rows[-2]["submit_time"] - 0.25
        if rows[-1]["submit_time"] < 0:
            rows[-2]["submit_time"], rows[-1]["submit_time"] = 0.75, 0.5
            for i, r in enumerate(rows[:-2]):
                r["submit_time"] = i * 0.1
    elif fault == "duplicate":
        rows[-1]["id"] = rows[0]["id"]
    elif fault == "missing":
        field = draw(st.sampled_from(["id", "submit_time", "kind", "batch", "q_len", "head_dim"]))
        for r in rows:
            r.pop(field)
    elif fault == "unknown":
        victim[draw(st.sampled_from(["colour", "Batch", "q-len"]))] = 1
        if suffix == ".csv":
            return "t.csv", _csv(rows, [*GOOD_ROW, "colour"]), True
    elif fault == "extra_field":
        victim.update(duration=5.0)  # a cluster-job field on an attention job
        if suffix == ".csv":
            return "t.csv", _csv(rows, [*GOOD_ROW, "duration"]), True
    elif fault == "truncated":
        data = _jsonl(rows) if suffix == ".jsonl" else _csv(rows)
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        cut = draw(st.integers(last + 1, len(data) - 12))
        return f"t{suffix}", data[:cut], True
    elif fault == "binary":
        data = _jsonl(rows) if suffix == ".jsonl" else _csv(rows)
        junk = draw(st.binary(min_size=1, max_size=20)) + draw(st.sampled_from(
            [b"\x00", b"\xff\xfe", b"\xc3\x28", b"\x80"]))
        at = draw(st.integers(0, len(data)))
        return f"t{suffix}", data[:at] + junk + data[at:], True
    elif fault == "empty":
        return f"t{suffix}", draw(st.sampled_from([b"", b"\n", b"  \n\n"])), False
    elif fault == "not_object":
        return "t.jsonl", _jsonl(rows) + draw(st.sampled_from([b"[1,2]\n", b"3\n", b'"x"\n'])), \
            True
    data = _jsonl(rows) if suffix == ".jsonl" else _csv(rows)
    return f"t{suffix}", data, True


AZURE_HEADER = b"TIMESTAMP,ContextTokens,GeneratedTokens\n"


@st.composite
def bad_azure(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    rows = [[f"2023-11-16 18:15:{10 + i:02d}.1234567", "100", "20"] for i in range(4)]
    k = draw(st.integers(0, 3))
    fault = draw(st.sampled_from(["time", "tokens", "zero", "fields", "unsorted"]))
    if fault == "time":
        rows[k][0] = draw(st.sampled_from(["yesterday", "2023-13-01 00:00:00.0", "", "12:00"]))
    elif fault == "tokens":
        rows[k][draw(st.integers(1, 2))] = draw(st.sampled_from(["x", "1.5", "", "-4", "1e3"]))
    elif fault == "zero":
        rows[k][1] = "0"
    elif fault == "fields":
        rows[k] = rows[k][: draw(st.integers(0, 2))]
        if not rows[k]:
            rows[k] = ["a", "b", "c", "d"]
    else:
        rows[0][0] = "2023-11-16 18:16:59.0000000"
    body = b"".join(",".join(r).encode() + b"\n" for r in rows)
    return "azure.csv", AZURE_HEADER + body, True


@st.composite
def bad_mooncake(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    rows = [{"timestamp": i * 1000, "input_length": 600, "output_length": 10,
             "hash_ids": [0, 1]} for i in range(3)]
    key = draw(st.sampled_from(["timestamp", "input_length", "output_length", "hash_ids"]))
    options = {"timestamp": ["x", -5000, 1.5, None], "hash_ids": ["x", 3, {"a": 1}]}
    rows[draw(st.integers(0, 2))][key] = draw(st.sampled_from(
        options.get(key, ["x", -5, 1.5, None, 0])))
    return "mc.jsonl", _jsonl(rows), True


BAD_SCALARS = ["eight", -3, 0.5, None, [1], {"a": 1}, "1e400", True]


@st.composite
def bad_cluster_yaml(draw: st.DrawFn, good: str) -> tuple[str, bytes, bool]:
    """cluster.yaml with one fault: a bad value, a missing key, or broken syntax."""
    import yaml

    config = yaml.safe_load(good)
    fault = draw(st.sampled_from(["resource", "workers", "head", "drop", "syntax", "binary",
                                  "empty", "top"]))
    gpu = config["available_node_types"]["gpu_h100"]
    if fault == "resource":
        key = draw(st.sampled_from(["GPU", "CPU", "memory"]))
        value = draw(st.sampled_from(BAD_SCALARS))
        if key != "GPU" and value == 0.5:
            value = -1
        gpu["resources"][key] = value
    elif fault == "workers":
        gpu[draw(st.sampled_from(["min_workers", "max_workers"]))] = draw(st.sampled_from(
            ["two", -1, 1.5, None]))
    elif fault == "head":
        config["head_node_type"] = draw(st.sampled_from(["nope", 3, None, ""]))
    elif fault == "drop":
        key = draw(st.sampled_from(["available_node_types", "head_node_type", "provider"]))
        del config[key]
    elif fault == "syntax":
        text = yaml.safe_dump(config)
        lines = text.splitlines()
        at = draw(st.integers(1, len(lines) - 1))
        lines.insert(at, draw(st.sampled_from(["  - ]broken", "key: [unclosed", "\tx: 1",
                                               "a: b: c"])))
        return "cluster.yaml", "\n".join(lines).encode(), True
    elif fault == "binary":
        return "cluster.yaml", draw(st.binary(min_size=1, max_size=40)) + b"\xff\x00", False
    elif fault == "empty":
        return "cluster.yaml", b"", False
    else:
        return "cluster.yaml", draw(st.sampled_from([b"- a\n- b\n", b"42\n", b"just text\n"])), \
            False
    return "cluster.yaml", yaml.safe_dump(config).encode(), fault != "drop"


@st.composite
def bad_profile(draw: st.DrawFn, good: dict) -> tuple[str, bytes, bool]:
    """A profile JSON with one bad value or key; errors must name the key path."""
    data = json.loads(json.dumps(good))
    fault = draw(st.sampled_from(["point", "top", "missing", "extra", "json"]))
    if fault == "point":
        i = draw(st.integers(0, len(data["sdpa"]) - 1))
        key = draw(st.sampled_from(["tflops", "q_len", "backend", "dtype", "causal"]))
        data["sdpa"][i][key] = draw(st.sampled_from(["x", -1, 0, None, 1e30, [2]]))
    elif fault == "top":
        key = draw(st.sampled_from(["memory_bytes", "bandwidth_gb_s", "call_host_us", "kind",
                                    "format", "name"]))
        data[key] = draw(st.sampled_from(["x", -5, None, [1], "Bad Name!"]))
    elif fault == "missing":
        del data[draw(st.sampled_from(["sdpa", "kind", "memory_bytes"]))]
    elif fault == "extra":
        data["speed"] = "fast"
    else:
        text = json.dumps(data, indent=1)
        return "p.json", text[: draw(st.integers(1, len(text) - 2))].encode(), True
    return "p.json", json.dumps(data, indent=1).encode(), False
