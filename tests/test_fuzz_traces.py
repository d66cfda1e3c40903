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
import os
import re
import socket
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from scheduler.inputfiles import MAX_LINE_BYTES
from scheduler.traces.canonical import FIELDS
from tests.conftest import REPO
from tests.malformed import FUZZ, GOOD_ROW, assert_clean, examples, run_cli, run_cli_guarded

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


# -- issue 20: time zones, dependency graphs, non-regular files, over-long lines -----------

ZONES = [None, "Z", "+00:00", "+05:00", "-08:00", "+0530", "+14:00", "-12:00", "-00:30"]
BASE = datetime(2023, 11, 16, 18, 0, 0, tzinfo=timezone.utc)


@st.composite
def zoned_azure_file(draw: st.DrawFn) -> tuple[bytes, list[float], list[bool]]:
    """Rows at UTC instants (tenths of a second, sorted or nudged out of order),
    each written without a zone (the instant's UTC wall clock) or in some zone."""
    n = draw(st.integers(1, 5))
    tenths = sorted(draw(st.lists(st.integers(0, 36_000), min_size=n, max_size=n)))
    if n > 1 and draw(st.booleans()):
        i = draw(st.integers(1, n - 1))
        tenths[i] = tenths[i - 1] - draw(st.integers(1, 50_000))  # earlier than its predecessor
    rows, zoned = [], []
    mixed = draw(st.booleans())
    first_zone = draw(st.sampled_from(ZONES))
    for t in tenths:
        zone = draw(st.sampled_from(ZONES)) if mixed else (
            first_zone if first_zone is None else draw(st.sampled_from(ZONES[1:])))
        offset = timedelta(0) if zone in (None, "Z") else timedelta(
            hours=int(zone[1:3]), minutes=int(zone[-2:])) * (1 if zone[0] == "+" else -1)
        wall = BASE + timedelta(seconds=t / 10) + offset
        sep = draw(st.sampled_from([" ", "T"]))
        frac = draw(st.sampled_from(["7", "1", "none"]))
        text = wall.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
        if frac == "7":
            text += f".{t % 10}000000"
        elif frac == "1" or t % 10:
            text += f".{t % 10}"
        rows.append(f"{text}{zone or ''},100,20")
        zoned.append(zone is not None)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    data = newline.join(["TIMESTAMP,ContextTokens,GeneratedTokens", *rows]) + newline
    return data.encode(), [t / 10 for t in tenths], zoned


@settings(FUZZ, max_examples=examples(120))
@given(case=zoned_azure_file())
def test_fuzzed_azure_time_zones(tmp_path: Path,
                                 case: tuple[bytes, list[float], list[bool]]) -> None:
    """Zoned times order in UTC; a zone-less row among zoned ones (or the reverse) is
    refused at the first row whose form differs, or earlier if a row is out of order."""
    data, seconds, zoned = case
    path = tmp_path / "azure.csv"
    path.write_bytes(data)
    code, text = stats(path)
    bad = next((i for i in range(1, len(seconds))
                if zoned[i] != zoned[0] or seconds[i] < seconds[i - 1]), None)
    event("accepted" if bad is None else "mixed" if zoned[bad] != zoned[0] else "unordered")
    if bad is None:
        assert code == 0, text
        assert json.loads(text[text.index("{"):])["span_s"] == pytest.approx(
            seconds[-1] - seconds[0], abs=1e-6)
        return
    assert_clean(code, text, path, must_fail=True)
    if zoned[bad] != zoned[0]:
        assert f"{path}:{bad + 2}: TIMESTAMP: mixes times with and without a zone" in text, text
    else:  # earlier than the first row (the importer) or than the one before (the trace)
        assert re.match(rf"attnsched: error: {re.escape(str(path))}:{bad + 2}: "
                        r"(TIMESTAMP: time goes backwards|submit_time: .* is earlier)", text), text


@st.composite
def dependency_graph(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int | None]:
    """Jobs whose ``depends_on`` names nothing, an earlier job, a later job, itself or a
    job that does not exist; returns the rows and the index of the first bad one."""
    n = draw(st.integers(1, 8))
    rows, bad = [], None
    for i in range(n):
        row: dict[str, Any] = {**GOOD_ROW, "id": f"j{i}", "submit_time": float(i)}
        target = draw(st.sampled_from(["none", "none", "earlier", "earlier", "later", "self",
                                       "ghost"]))
        if target == "earlier" and i:
            row["depends_on"] = f"j{draw(st.integers(0, i - 1))}"
        elif target == "later" and i < n - 1:
            row["depends_on"] = f"j{draw(st.integers(i + 1, n - 1))}"
        elif target in ("self", "ghost"):
            row["depends_on"] = f"j{i}" if target == "self" else "ghost"
        if "depends_on" in row and row["depends_on"] not in {f"j{k}" for k in range(i)}:
            bad = i if bad is None else bad
        rows.append(row)
    return rows, bad


def _with_blank_lines(data: bytes, blanks: list[int], crlf: bool) -> tuple[bytes, list[int]]:
    """``data`` with ``blanks[i]`` blank lines before line i; the new number of each line."""
    lines = data.decode().splitlines()
    out, numbers = [], []
    for i, line in enumerate(lines):
        out += [""] * blanks[i % len(blanks)]
        out.append(line)
        numbers.append(len(out))
    newline = "\r\n" if crlf else "\n"
    return (newline.join(out) + newline).encode(), numbers


@settings(FUZZ, max_examples=examples(120))
@given(case=dependency_graph(), suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]),
       blanks=st.lists(st.integers(0, 2), min_size=1, max_size=4), crlf=st.booleans())
def test_fuzzed_dependency_graphs(tmp_path: Path, case: tuple[list[dict[str, Any]], int | None],
                                  suffix: str, blanks: list[int], crlf: bool) -> None:
    """Valid graphs (every dependency earlier) load whole; the first job naming anything
    else is refused at its file line (blank lines and CRLF counted), field depends_on."""
    rows, bad = case
    path = tmp_path / f"t{suffix}"
    write_canonical(path, rows)
    numbers = list(range(1, len(rows) + 2))  # Parquet rows; text lines without blanks
    if suffix != ".parquet":
        data, numbers = _with_blank_lines(path.read_bytes(), blanks, crlf)
        path.write_bytes(data)
    code, text = stats(path)
    if bad is None:
        assert code == 0, text
        assert jobs_reported(text) == len(rows)
        return
    assert_clean(code, text, path, must_fail=True)
    line = numbers[bad + (1 if suffix == ".csv" else 0)]
    assert f"{path}:{line}: depends_on: " in text, text


NON_REGULAR = ["fifo", "dev-zero", "dev-null", "socket", "directory"]
TRACE_COMMANDS: list[tuple[str, ...]] = [("trace", "stats"), ("trace", "convert"), ("simulate",)]


@settings(FUZZ, max_examples=examples(40))
@given(kind=st.sampled_from(NON_REGULAR),
       suffix=st.sampled_from([".jsonl", ".csv", ".parquet", ".ndjson", ".pq"]),
       command=st.sampled_from(TRACE_COMMANDS), fmt=st.sampled_from(["auto", "canonical"]))
def test_non_regular_trace_files(tmp_path: Path, kind: str, suffix: str,
                                 command: tuple[str, ...], fmt: str) -> None:
    """Whatever the command or format, a trace that is not a regular file is refused
    before it is opened: exit 2, one short line naming it, never a hang."""
    path = tmp_path / f"nr-{kind}{suffix}"
    if path.exists() or path.is_symlink():
        path.unlink() if not path.is_dir() else path.rmdir()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind in ("dev-zero", "dev-null"):
        path.symlink_to(f"/dev/{kind[4:]}")
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    else:
        path.mkdir()
    args: list[object] = [*command, path]
    if command[0] == "trace":
        args += ["--format", fmt]
    if command[-1] == "convert":
        args += ["-o", tmp_path / "out.jsonl"]
    elif command == ("simulate",):  # a fresh run folder: an old one must not be what fails
        args += ["--limit", "1", "--cluster", REPO / "cluster.yaml", "--out",
                 tempfile.mkdtemp(dir=tmp_path) + "/run"]
    code, text = run_cli_guarded(*args, fifo=path if kind == "fifo" else None)
    assert_clean(code, text, path, must_fail=True)
    assert len(text.strip()) < 300, text
    assert "regular trace file" in text or "is a directory" in text, text


def _small_trace(name: str, rows: int) -> list[str]:
    """The lines of a valid trace of ``rows`` requests or jobs in the format ``name`` names."""
    if name == "az.csv":
        return ["TIMESTAMP,ContextTokens,GeneratedTokens",
                *(f"2023-11-16 18:15:{i:02d}.1,100,20" for i in range(rows))]
    if name == "mc.jsonl":
        return [json.dumps({"timestamp": i * 1000, "input_length": 5, "output_length": 5})
                for i in range(rows)]
    jobs = [{**GOOD_ROW, "id": f"j{i}", "submit_time": float(i)} for i in range(rows)]
    if name == "t.jsonl":
        return [json.dumps(j) for j in jobs]
    return [",".join(GOOD_ROW), *(",".join(_cell(v) for v in j.values()) for j in jobs)]


@settings(FUZZ, max_examples=examples(25))
@given(name=st.sampled_from(["t.jsonl", "t.csv", "az.csv", "mc.jsonl"]),
       rows=st.integers(1, 3), at=st.integers(0, 4), delta=st.integers(-2, 3),
       filler=st.sampled_from([b"x", b" ", b"\xc3\xa9", b","]),
       newline=st.sampled_from([b"\n", b"\r\n", b""]))
def test_over_long_lines(tmp_path: Path, name: str, rows: int, at: int, delta: int,
                         filler: bytes, newline: bytes) -> None:
    """A line over 1 MiB is refused at its number, however it ends (LF, CRLF, end of
    file); one at the cap is read and judged as any line would be. The message is short.

    The file is built here from small parameters, so a failing example prints small.
    """
    lines = [line.encode() for line in _small_trace(name, rows)]
    at = min(at, len(lines))
    size = MAX_LINE_BYTES + delta
    lines.insert(at, (filler * (size // len(filler) + 1))[:size])
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n" + lines[-1] + newline)
    code, text = stats(path)
    assert_clean(code, text, path)
    assert len(text.strip()) < 300 or code == 0, text[:500]
    if size > MAX_LINE_BYTES:
        assert f"{path}:{at + 1}: line longer than 1 MiB" in text, text[:500]
    else:
        assert "line longer" not in text, text[:500]
