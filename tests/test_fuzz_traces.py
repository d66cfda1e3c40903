"""Fuzzing every trace format the CLI reads, through the real CLI in-process.

Unlike ``test_bad_input.py`` (inputs built to be malformed), these inputs are
arbitrary: mutated rows with values of any type, corrupted Parquet, raw bytes.
The property is the bad-input contract: ``attnsched trace stats`` either
accepts the file, and then reports one job per row (none dropped or
duplicated), or exits 2 with one line naming the file (and the line, where
the format has lines). It never exits 1 with an internal error.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.traces.canonical import FIELDS
from tests.malformed import FUZZ, GOOD_ROW, assert_clean, examples, run_cli

# Values that sit on or past the edge of every field's type and range.
EDGE_VALUES: list[Any] = [
    None, "", " ", "abc", "1e3", "0x10", " 7 ", "\u0663", "NaN", "inf", "-inf", "true", "False",
    0, -1, 1, 2, 3, 7, 64, 2**24, 2**24 + 1, 2**31, 2**63, -(2**63), 2**70, 10**400,
    0.0, -0.0, 0.5, 1.0, 2.0, 1e-320, 1e10, 1e308, math.nan, math.inf, -math.inf,
    True, False, [], [1], {}, {"a": 1}, "x" * 300, "a\tb", "a\nb", "\u2028", "\ud800",
    "\U0001f600", "prefill", "decode", "train", "model", "cluster", "bf16", "fp16", "fp32",
    "j0", "j1",
]
VALUES = st.one_of(st.sampled_from(EDGE_VALUES), st.integers(), st.floats(),
                   st.text(max_size=6), st.booleans())
COLUMNS = [*FIELDS, "colour", "Batch", ""]
CLUSTER_ROW = {"id": "c", "submit_time": 0.0, "kind": "cluster", "duration": 5.0, "gpus": 1,
               "gpu_fraction": 0.5, "cpus": 2.0, "memory_mib": 1024.0}


def stats(path: Path, *extra: str) -> tuple[int, str]:
    return run_cli("trace", "stats", path, "--json", *extra)


def jobs_reported(text: str) -> int:
    return int(json.loads(text[text.index("{"):])["jobs"])


def write_canonical(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if path.suffix == ".jsonl":
        path.write_bytes(b"".join(json.dumps(r).encode("utf-8", "surrogatepass") + b"\n"
                                  for r in rows))
    elif path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(r.get(c)) for c in columns] for r in rows)
        path.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass"))
    else:
        arrays = {}
        for c in columns:
            values = [r.get(c) for r in rows]
            try:
                arrays[c] = pa.array(values)
            except (pa.ArrowException, OverflowError, TypeError, ValueError):
                arrays[c] = pa.array([None if v is None else json.dumps(v) for v in values])
        pq.write_table(pa.table(arrays), path)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


@st.composite
def canonical_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Good rows (attention and cluster kinds), then up to four arbitrary edits."""
    rows = [{**(CLUSTER_ROW if draw(st.booleans()) and i else GOOD_ROW), "id": f"j{i}",
             "submit_time": float(i)} for i in range(draw(st.integers(1, 4)))]
    for _ in range(draw(st.integers(0, 4))):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        column = draw(st.sampled_from(COLUMNS))
        if draw(st.integers(0, 4)) == 0:
            row.pop(column, None)
        else:
            row[column] = draw(VALUES)
    return rows


@settings(FUZZ, max_examples=examples(150))
@given(rows=canonical_rows(), suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_fuzzed_canonical_rows(tmp_path: Path, rows: list[dict[str, Any]], suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    try:
        write_canonical(path, rows)
    except (pa.ArrowException, UnicodeEncodeError, OverflowError):
        return  # pyarrow itself cannot store these values: nothing to read back
    code, text = stats(path)
    assert_clean(code, text, path, line=suffix != ".parquet")
    if code == 0:
        assert jobs_reported(text) == len(rows)


ARROW_TYPES: list[tuple[pa.DataType, list[Any]]] = [
    (pa.int8(), [1, -1]), (pa.uint64(), [2**64 - 1, 1]), (pa.float16(), [1.0, 2.0]),
    (pa.float32(), [math.nan, 1.0]), (pa.float64(), [math.inf, -0.0]), (pa.bool_(), [True, False]),
    (pa.string(), ["1", "x"]), (pa.large_string(), ["prefill", ""]), (pa.binary(), [b"\xff", b"a"]),
    (pa.timestamp("s"), [1, 2]), (pa.date32(), [1, 2]), (pa.decimal128(5, 2), [1, 2]),
    (pa.list_(pa.int64()), [[1], []]), (pa.struct([("a", pa.int64())]), [{"a": 1}, None]),
    (pa.null(), [None, None]), (pa.duration("ms"), [1, 2]),
]


@settings(FUZZ, max_examples=examples(80))
@given(column=st.sampled_from(COLUMNS), typed=st.sampled_from(ARROW_TYPES),
       dictionary=st.booleans(), duplicate=st.booleans())
def test_parquet_columns_of_any_type(tmp_path: Path, column: str,
                                     typed: tuple[pa.DataType, list[Any]], dictionary: bool,
                                     duplicate: bool) -> None:
    arrow_type, values = typed
    base = {k: pa.array([GOOD_ROW[k]] * 2) for k in GOOD_ROW}
    base["id"] = pa.array(["a", "b"])
    array = pa.array(values, type=arrow_type)
    if dictionary and pa.types.is_string(arrow_type):
        array = array.dictionary_encode()
    names, arrays = list(base), list(base.values())
    if column in base and not duplicate:
        arrays[names.index(column)] = array
    else:
        names.append(column)
        arrays.append(array)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    code, text = stats(path)
    assert_clean(code, text, path, must_fail=column in base and duplicate)
    if code == 0:
        assert jobs_reported(text) == 2


def _good_parquet() -> bytes:
    rows = [{**GOOD_ROW, "id": f"j{i}", "submit_time": float(i)} for i in range(3)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


GOOD_PARQUET = _good_parquet()


@st.composite
def corrupted_parquet(draw: st.DrawFn) -> bytes:
    data = bytearray(GOOD_PARQUET)
    how = draw(st.sampled_from(["truncate", "flip", "splice", "magic", "tail"]))
    if how == "truncate":
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])
    if how == "magic":
        return b"PAR1" + draw(st.binary(max_size=200)) + b"PAR1"
    cut = draw(st.integers(8, len(data) - 8))  # keep the footer, lose a middle part
    return bytes(data[:cut // 2]) + bytes(data[cut:])


@settings(FUZZ, max_examples=examples(120))
@given(data=corrupted_parquet())
def test_corrupted_parquet(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(data)
    code, text = stats(path)
    assert_clean(code, text, path)


AZURE_HEADERS = ["TIMESTAMP,ContextTokens,GeneratedTokens",
                 "ContextTokens,GeneratedTokens,TIMESTAMP",
                 " TIMESTAMP , ContextTokens , GeneratedTokens ",
                 "TIMESTAMP,ContextTokens,GeneratedTokens,Extra",
                 "TIMESTAMP,ContextTokens", "TIMESTAMP,TIMESTAMP,ContextTokens,GeneratedTokens"]
AZURE_TIMES = ["2023-11-16 18:15:46.6805900", "2023-11-16 18:15:47", "2023-11-16T18:15:48.1",
               "", "yesterday", "2023-02-30 00:00:00.0", "9999-12-31 23:59:59.9999999",
               "0001-01-01 00:00:00.0", "2023-11-16 18:15:46.", "2023-11-16 18:15:49+05:00",
               "2023-11-16 18:15:49.5+05:00", "2023-11-16 18:15:50Z", " 2023-11-16 18:15:51.0 ",
               "2023-11-16 18:15:52.\u0663"]
AZURE_TOKENS = ["1", "374", "0", "-4", "1.5", "", "x", "1e3", "9" * 20, "4294967296",
                "4294967297", "\u0663", "1_000", " 12 ", "NaN", "9" * 5000]


@st.composite
def azure_file(draw: st.DrawFn) -> tuple[bytes, int]:
    header = draw(st.sampled_from(AZURE_HEADERS))
    width = header.count(",") + 1
    rows = []
    for i in range(draw(st.integers(1, 4))):
        cells = [f"2023-11-16 18:15:{10 + i:02d}.1234567", "100", "20"][:width]
        cells += ["e"] * (width - len(cells))
        for _ in range(draw(st.integers(0, 2))):
            k = draw(st.integers(0, width - 1))
            pool = AZURE_TIMES if k == 0 else AZURE_TOKENS
            cells[k] = draw(st.one_of(st.sampled_from(pool), st.text(max_size=5)))
        if draw(st.integers(0, 9)) == 0:
            cells = cells[:draw(st.integers(0, width))]
        rows.append(",".join(c.replace("\n", " ").replace("\r", " ") for c in cells))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join([header, *rows]) + newline * draw(st.integers(0, 2))
    return text.encode("utf-8", "surrogatepass"), sum(1 for r in rows if r.strip())


@settings(FUZZ, max_examples=examples(100))
@given(case=azure_file(), token_scale=st.sampled_from(["1", "0.001", "1000"]))
def test_fuzzed_azure(tmp_path: Path, case: tuple[bytes, int], token_scale: str) -> None:
    data, rows = case
    path = tmp_path / "azure.csv"
    path.write_bytes(data)
    code, text = stats(path, "--format", "azure", "--token-scale", token_scale)
    assert_clean(code, text, path)
    if code == 0:
        assert jobs_reported(text) == 2 * rows  # a prefill and a decode per request


MOONCAKE_VALUES: list[Any] = [0, 1, 600, -5, 10**6, 2**53, 10**30, 10**400, 1.5, math.nan, True,
                              None, "7", [], [0, 1], {"a": 1}, ["x"]]


@st.composite
def mooncake_file(draw: st.DrawFn) -> tuple[bytes, int]:
    lines = []
    for i in range(draw(st.integers(1, 4))):
        row: dict[str, Any] = {"timestamp": i * 1000, "input_length": 600, "output_length": 10,
                               "hash_ids": [0, 1]}
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from([*row, "extra"]))
            if draw(st.integers(0, 4)) == 0:
                row.pop(key, None)
            else:
                row[key] = draw(st.one_of(st.sampled_from(MOONCAKE_VALUES), st.integers(),
                                          st.floats()))
        line = json.dumps(row)
        if draw(st.integers(0, 12)) == 0:
            line = draw(st.sampled_from(["[1, 2]", "3", "null", line[:-3], line + "}"]))
        lines.append(line)
    return ("\n".join(lines) + "\n").encode(), len(lines)


@settings(FUZZ, max_examples=examples(100))
@given(case=mooncake_file(), fmt=st.sampled_from(["auto", "mooncake"]))
def test_fuzzed_mooncake(tmp_path: Path, case: tuple[bytes, int], fmt: str) -> None:
    data, rows = case
    path = tmp_path / "mc.jsonl"
    path.write_bytes(data)
    code, text = stats(path, "--format", fmt)
    assert_clean(code, text, path, line=code == 2 and fmt == "mooncake")
    if code == 0 and fmt == "mooncake":
        assert jobs_reported(text) == 2 * rows


ALIBABA_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
                  "creation_time,deletion_time,scheduled_time")
ALIBABA_CELLS = ["", "0", "1", "-1", "1000", "460", "1e400", "nan", "inf", "-inf", "x", "1.5",
                 "99999999999999999999", "LS", "BE", "Guaranteed", "Burstable", "Unknown",
                 "Running", "Pending", "pod-a", "a/b", "\u0663"]


@st.composite
def alibaba_file(draw: st.DrawFn) -> tuple[bytes, int]:
    rows = []
    for i in range(draw(st.integers(1, 4))):
        cells = [f"pod-{i}", "6000", "12288", "1", "460", "", "LS", "Running", str(i * 10),
                 str(i * 10 + 500), str(i * 10 + 1)]
        for _ in range(draw(st.integers(0, 3))):
            k = draw(st.integers(0, len(cells) - 1))
            cells[k] = draw(st.one_of(st.sampled_from(ALIBABA_CELLS), st.text(max_size=4)))
        rows.append(",".join(c.replace("\n", " ").replace("\r", " ").replace(",", ";")
                             for c in cells))
    text = "\n".join([ALIBABA_HEADER, *rows]) + "\n"
    return text.encode("utf-8", "surrogatepass"), len(rows)


@settings(FUZZ, max_examples=examples(100))
@given(case=alibaba_file())
def test_fuzzed_alibaba_pods(tmp_path: Path, case: tuple[bytes, int]) -> None:
    data, rows = case
    path = tmp_path / "pods.csv"
    path.write_bytes(data)
    code, text = stats(path)
    assert_clean(code, text, path, line=True)
    if code == 0:
        assert jobs_reported(text) == rows


HEADS = [b"", b"TIMESTAMP,ContextTokens,GeneratedTokens\n", (ALIBABA_HEADER + "\n").encode(),
         b'{"timestamp": 0, "input_length": 5, "output_length": 5}\n',
         b"id,submit_time,kind,batch,heads,q_len,kv_len,head_dim\n", b"\xef\xbb\xbf", b"PAR1"]


@settings(FUZZ, max_examples=examples(120))
@given(head=st.sampled_from(HEADS),
       body=st.one_of(st.binary(max_size=80),
                      st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".jsonl", ".csv", ".parquet", ".ndjson", ".json", ".pq"]))
def test_arbitrary_bytes_in_any_format(tmp_path: Path, head: bytes, body: bytes,
                                       suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    path.write_bytes(head + body)
    code, text = stats(path)
    assert_clean(code, text, path)
