"""Issue 20's trace points: files that are not files, endless lines, time zones,
dependencies, empty CSVs, duplicate JSON keys, Unicode digits and line numbers.

Each refusal goes through the real CLI and must be exit 2 with one short line
that names the file (and the line and field, where there is one).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scheduler.errors import InputError
from scheduler.inputfiles import MAX_LINE_BYTES
from scheduler.traces import open_trace
from scheduler.traces.textio import iter_lines
from tests.conftest import REPO
from tests.malformed import GOOD_ROW, run_cli, run_cli_guarded

CSV_HEADER = "id,submit_time,kind,batch,heads,q_len,kv_len,head_dim,depends_on"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
ALIBABA_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
                  "creation_time,deletion_time,scheduled_time")
ALIBABA_ROW = "pod-0,6000,12288,1,460,,LS,Running,0,500,1"


def stats(path: Path, *extra: object) -> tuple[int, str]:
    return run_cli("trace", "stats", path, "--json", *extra)


def refused(code: int, text: str, path: Path, line: int | None = None,
            field: str | None = None) -> str:
    """Assert the bad-input contract and return the message."""
    assert code == 2, text[:500]
    lines = text.strip().splitlines()
    assert len(lines) == 1, text[:1000]
    message = lines[0]
    where = f"{path}:{line}: " if line is not None else f"{path}"
    assert message.startswith(f"attnsched: error: {where}"), message
    if field is not None:
        assert f": {field}: " in message, message
    assert len(message) < 300, message
    return message


def span(text: str) -> float:
    return float(json.loads(text[text.index("{"):])["span_s"])


# -- 4: non-regular files and endless lines ------------------------------------------------


def _make(kind: str, folder: Path, suffix: str) -> Path:
    path = folder / f"t{suffix}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()  # the socket file stays
    else:  # one 3 MiB line without a newline
        path.write_bytes(b'{"id": "' + b"a" * (3 * MAX_LINE_BYTES))
    return path


COMMANDS = {"stats": ("trace", "stats"),
            "simulate": ("simulate",)}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("kind", "suffix"), [
    ("fifo", ".jsonl"), ("fifo", ".csv"), ("fifo", ".parquet"),
    ("dev-zero", ".jsonl"), ("dev-zero", ".csv"), ("dev-zero", ".parquet"),
    ("socket", ".jsonl"), ("long-line", ".jsonl"), ("long-line", ".csv")])
def test_a_trace_that_is_not_a_regular_file_or_has_an_endless_line_exits_2(
        tmp_path: Path, command: str, kind: str, suffix: str) -> None:
    path = _make(kind, tmp_path, suffix)
    args: list[object] = [*COMMANDS[command], path]
    if command == "simulate":
        args += ["--limit", "1", "--cluster", REPO / "cluster.yaml", "--out", tmp_path / "run"]
    code, text = run_cli_guarded(*args, fifo=path if kind == "fifo" else None)
    message = refused(code, text, path, line=1 if kind == "long-line" else None)
    expected = {"fifo": "is a FIFO", "dev-zero": "is a device", "socket": "is a socket",
                "long-line": "line longer than 1 MiB"}[kind]
    assert expected in message, message


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_line_of_exactly_the_cap_is_read_and_one_byte_more_is_refused(
        tmp_path: Path, newline: bytes) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"{}\n" + b" " * (MAX_LINE_BYTES - 2) + b"{}" + newline + b"{}\n")
    assert [n for n, _ in iter_lines(path)] == [1, 2, 3]
    path.write_bytes(b"{}\n" + b" " * (MAX_LINE_BYTES - 1) + b"{}" + newline)
    with pytest.raises(InputError, match="line longer than 1 MiB") as caught:
        list(iter_lines(path))
    assert caught.value.line == 2


@pytest.mark.parametrize(("name", "data", "field"), [
    ("t.csv", f"id,submit_time,kind,batch,heads,q_len,kv_len,head_dim\n"
              f"a,0,prefill,{'9x' * 50_000},2,4,4,16\n", "batch"),
    ("t.jsonl", json.dumps({**GOOD_ROW, "kind": "k" * 200_000}) + "\n", "kind"),
    ("t.jsonl", json.dumps({**GOOD_ROW, "id": "i" * 200_000}) + "\n", "id"),
    ("t.jsonl", json.dumps({**GOOD_ROW, "batch": list(range(50_000))}) + "\n", "batch"),
    ("mc.jsonl", json.dumps({"timestamp": 0, "input_length": ["x"] * 50_000,
                             "output_length": 1}) + "\n", "input_length"),
    ("az.csv", f"{AZURE_HEADER}\n{'2' * 100_000},10,10\n", "TIMESTAMP"),
    ("pods.csv", f"{ALIBABA_HEADER}\npod-0,6000,12288,1,460,,{'Q' * 100_000},Running,0,500,1\n",
     "qos"),
])
def test_a_message_quotes_at_most_a_clip_of_a_huge_value(tmp_path: Path, name: str, data: str,
                                                         field: str) -> None:
    path = tmp_path / name
    path.write_text(data)
    refused(*stats(path), path, line=2 if name.endswith(".csv") else 1, field=field)


# -- 5: Azure time zones -------------------------------------------------------------------


def _azure(tmp_path: Path, *times: str) -> Path:
    path = tmp_path / "azure.csv"
    path.write_text("\n".join([AZURE_HEADER, *(f"{t},100,20" for t in times)]) + "\n")
    return path


@pytest.mark.parametrize(("first", "second"), [
    ("2023-11-16 18:15:46.1000000+00:00", "2023-11-16 23:15:47.1000000+05:00"),
    ("2023-11-16 18:15:46.1000000Z", "2023-11-16T10:15:47.1-08:00"),
    ("2023-11-16 18:15:46+00:00", "2023-11-16 23:45:47+0530"),
])
def test_zoned_azure_times_are_ordered_in_utc(tmp_path: Path, first: str, second: str) -> None:
    code, text = stats(_azure(tmp_path, first, second))
    assert code == 0, text
    assert span(text) == pytest.approx(1.0)


def test_a_zoned_azure_time_earlier_in_utc_is_out_of_order(tmp_path: Path) -> None:
    path = _azure(tmp_path, "2023-11-16 18:15:46.5000000+00:00",
                  "2023-11-16 18:15:47.5000000+05:00")
    message = refused(*stats(path), path, line=3, field="TIMESTAMP")
    assert "backwards" in message


@pytest.mark.parametrize("times", [
    ("2023-11-16 18:15:46.1000000", "2023-11-16 18:15:47.1000000+00:00"),
    ("2023-11-16 18:15:46Z", "2023-11-16 18:15:47.5"),
])
def test_azure_times_that_mix_zoned_and_unzoned_rows_are_refused(tmp_path: Path,
                                                                 times: tuple[str, str]) -> None:
    path = _azure(tmp_path, times[0], times[0], times[1])
    message = refused(*stats(path), path, line=4, field="TIMESTAMP")
    assert "zone" in message


# -- 6: dependencies -----------------------------------------------------------------------


def _dep_rows(*deps: str | None, times: list[float] | None = None) -> list[dict[str, Any]]:
    return [{**GOOD_ROW, "id": f"j{i}", "submit_time": float(times[i] if times else i),
             **({"depends_on": d} if d is not None else {})} for i, d in enumerate(deps)]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        cols = [*GOOD_ROW, "depends_on"]
        text = ",".join(cols) + "\n" + "".join(
            ",".join(str(r.get(c, "")).lower() if isinstance(r.get(c), bool)
                     else str(r.get(c, "")) for c in cols) + "\n" for r in rows)
        path.write_text(text)
    else:
        pq.write_table(pa.Table.from_pylist([{"depends_on": None, **r} for r in rows]), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize(("deps", "bad"), [
    ((None, "ghost", None), 1),   # a job that does not exist
    ((None, "j2", None), 1),      # a later job
    ((None, None, "j2"), 2),      # itself
    (("j1", "j0"), 0),            # a cycle: j0 names the later j1
    ((None, "j2", "j1"), 1),      # a cycle of two later in the trace
])
def test_a_dependency_on_a_job_not_listed_earlier_is_refused_at_its_line(
        tmp_path: Path, suffix: str, deps: tuple[str | None, ...], bad: int) -> None:
    path = _write(tmp_path / f"t{suffix}", _dep_rows(*deps))
    line = bad + (2 if suffix == ".csv" else 1)
    refused(*stats(path), path, line=line, field="depends_on")


def test_dependencies_on_earlier_jobs_load_and_a_prefix_streams(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", _dep_rows(None, "j0", "j1", "j0", "ghost"))
    assert [j.id for j in itertools.islice(open_trace(path).jobs(), 4)] == ["j0", "j1", "j2",
                                                                               "j3"]
    with pytest.raises(InputError) as caught:
        list(open_trace(path).jobs())
    assert (caught.value.line, caught.value.field) == (5, "depends_on")
    code, text = run_cli("simulate", path, "--limit", "4", "--policy", "greedy", "--nodes",
                         "gpu_h100=1", "--cluster", REPO / "cluster.yaml", "--out",
                         tmp_path / "run")
    assert code == 0, text


def test_convert_sort_checks_dependencies_in_the_order_it_writes(tmp_path: Path) -> None:
    fine = _write(tmp_path / "fine.jsonl", _dep_rows("j1", None, times=[1.0, 0.0]))
    out = tmp_path / "out.jsonl"
    code, text = run_cli("trace", "convert", fine, "-o", out, "--sort")
    assert code == 0, text
    assert [j.id for j in open_trace(out).jobs()] == ["j1", "j0"]
    bad = _write(tmp_path / "bad.jsonl", _dep_rows(None, "j0", times=[1.0, 0.0]))
    code, text = run_cli("trace", "convert", bad, "-o", tmp_path / "out2.jsonl", "--sort")
    refused(code, text, bad, line=2, field="depends_on")
    assert not (tmp_path / "out2.jsonl").exists()


# -- 7: header-only CSVs, duplicate JSON keys, Unicode digits ------------------------------


@pytest.mark.parametrize("header", [CSV_HEADER, AZURE_HEADER, ALIBABA_HEADER])
@pytest.mark.parametrize("tail", ["\n", "\r\n\r\n\n", ""])
def test_a_csv_with_only_a_header_has_no_jobs(tmp_path: Path, header: str, tail: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(header + tail)
    assert "no jobs" in refused(*stats(path), path)


@pytest.mark.parametrize(("name", "line", "field"), [
    ("t.jsonl", '{"id": "a", "batch": 1, "batch": 2}', "batch"),
    ("t.jsonl", '{"id": "a", "id": "b", "submit_time": 0}', "id"),
    ("mc.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 5, "input_length": 9}',
     "input_length"),
    ("mc.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 5, '
                 '"hash_ids": [{"a": 1, "a": 2}]}', "a"),
])
def test_json_objects_with_a_duplicate_key_are_refused_naming_it(tmp_path: Path, name: str,
                                                                 line: str, field: str) -> None:
    path = tmp_path / name
    good = json.dumps({**GOOD_ROW, "id": "first", "submit_time": 0.0}) if name == "t.jsonl" else \
        '{"timestamp": 0, "input_length": 5, "output_length": 5}'
    path.write_text(good + "\n" + line + "\n")
    assert "duplicate key" in refused(*stats(path), path, line=2, field=field)


UNICODE_DIGITS = ["\u0663", "\uff13", "1\u0663", "\u0661.5", "1_000"]


@pytest.mark.parametrize("digits", UNICODE_DIGITS)
@pytest.mark.parametrize(("name", "header", "row", "field"), [
    ("t.csv", CSV_HEADER, "a,{},prefill,1,2,4,4,16,", "submit_time"),
    ("t.csv", CSV_HEADER, "a,0,prefill,{},2,4,4,16,", "batch"),
    ("az.csv", AZURE_HEADER, "2023-11-16 18:15:46.1,{},20", "ContextTokens"),
    ("az.csv", AZURE_HEADER, "2023-11-16 18:15:4{},100,20", "TIMESTAMP"),
    ("pods.csv", ALIBABA_HEADER, "pod-0,{},12288,1,460,,LS,Running,0,500,1", "cpu_milli"),
    ("pods.csv", ALIBABA_HEADER, "pod-0,6000,12288,{},460,,LS,Running,0,500,1", "num_gpu"),
])
def test_numbers_in_non_ascii_digits_are_refused_naming_the_field(
        tmp_path: Path, digits: str, name: str, header: str, row: str, field: str) -> None:
    path = tmp_path / name
    path.write_text(f"{header}\n{row.format(digits)}\n", encoding="utf-8")
    refused(*stats(path), path, line=2, field=field)


# -- 8: line numbers are the file's lines --------------------------------------------------


def test_canonical_csv_lines_count_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = [CSV_HEADER, "", "j0,0,prefill,1,2,4,4,16,", "  ", "j1,1,prefill,x,2,4,4,16,"]
    path.write_bytes("\r\n".join(rows).encode() + b"\r\n")
    refused(*stats(path), path, line=5, field="batch")


def test_a_quoted_csv_cell_over_lines_is_reported_at_its_record_s_first_line(
        tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"{CSV_HEADER}\n\nj0,0,prefill,1,2,4,4,16,\n\"j\n1\",1,prefill,1,2,4,4,16,\n")
    refused(*stats(path), path, line=4, field="id")  # ids may not hold a newline


@pytest.mark.parametrize(("header", "rows", "field"), [
    (AZURE_HEADER, ["2023-11-16 18:15:46.1,100,20", "2023-11-16 18:15:47.1,x,20"],
     "ContextTokens"),
    (ALIBABA_HEADER, [ALIBABA_ROW, ALIBABA_ROW.replace("pod-0", "pod-1").replace("LS", "??")],
     "qos"),
])
def test_importer_lines_count_blank_lines_and_crlf(tmp_path: Path, header: str,
                                                   rows: list[str], field: str) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("\r\n".join(["", header, "", rows[0], "", rows[1]]).encode() + b"\r\n")
    refused(*stats(path), path, line=6, field=field)


def test_an_importer_header_after_blank_lines_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("\n\nTIMESTAMP,ContextTokens\n2023-11-16 18:15:46.1,100\n")
    refused(*stats(path, "--format", "azure"), path, line=3, field="GeneratedTokens")
