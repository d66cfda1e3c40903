"""Hypothesis strategies that produce input files guaranteed to be malformed.

Each strategy returns ``(file name, bytes, expect_line)``: ``expect_line`` says
whether the error must point at a line (it cannot for, say, an empty file).
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

GOOD_ROW = {"id": "a", "submit_time": 1.0, "kind": "prefill", "tenant": "t", "priority": 0,
            "batch": 1, "heads": 8, "kv_heads": 2, "q_len": 64, "kv_len": 64, "head_dim": 64,
            "layers": 1, "dtype": "bf16", "causal": True, "steps": 1}
NUMERIC = ["submit_time", "batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "layers",
           "steps", "priority"]
BAD_NUMBERS = ["abc", -1, -0.5, float("nan"), float("inf"), 1e30, 2**70, "", None, [], {}, True,
               "1;2", 0.5]
BAD_VALUES = {"kind": ["", "inference", 3, "cluster"], "dtype": ["fp8", "", 16],
              "causal": ["maybe", 2, None], "id": ["", None, 5, "x" * 300, "a\tb"],
              "tenant": ["", "a\nb", 7]}


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
        if field == "priority" and bad in (-1, -0.5, ""):
            bad = "abc"  # negative priorities are legal; an empty one defaults to 0
        if field == "submit_time" and bad == 0.5:
            bad = -3.0
        victim[field] = bad
        if suffix == ".csv" and bad in ([], {}):
            suffix = ".jsonl"
    elif fault == "value":
        field = draw(st.sampled_from(sorted(BAD_VALUES)))
        victim[field] = draw(st.sampled_from(BAD_VALUES[field]))
        if suffix == ".csv" and field == "tenant" and victim[field] in ("", "a\nb"):
            victim[field] = 7 if victim[field] == "" else "a\x01b"
        if suffix == ".csv" and field == "tenant" and victim[field] == 7:
            suffix = ".jsonl"  # a number is a fine tenant name in CSV
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
