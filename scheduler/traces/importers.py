"""Importers for the real public traces (see ``docs/traces.md``).

Token traces (Azure LLM 2023, Mooncake) become attention jobs through a model
preset: each request is a prefill job and a decode job that depends on it.
The Alibaba GPU v2023 pod list becomes duration-only cluster jobs. Every
importer streams: one row in memory at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

from scheduler.errors import InputError
from scheduler.inputfiles import clip
from scheduler.jobs import MAX_BLOCK_ID, MAX_TIME_S, AttentionJob, ClusterJob, Job, JobKind
from scheduler.kvcache import prompt_blocks
from scheduler.presets import ModelPreset
from scheduler.traces.textio import iter_lines, json_line, parse_float, parse_int

MIB = 1 << 20
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
ALIBABA_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos",
                   "pod_phase", "creation_time", "deletion_time", "scheduled_time")
# Alibaba QoS classes, most protected first: they become tenants and priorities.
QOS_PRIORITY = {"Guaranteed": 3, "LS": 2, "Burstable": 1, "BE": 0}
MIN_POD_SECONDS = 1.0
# No request has 2^32 tokens; a bound keeps token_scale arithmetic in float range.
MAX_TOKENS = 1 << 32
BLOCK_TOKENS = 512  # Mooncake's prefix block (hash_ids), in trace tokens


def request_jobs(rid: str, submit: float, prompt: int, output: int, preset: ModelPreset,
                 tenant: str, blocks: Sequence[int] = ()) -> tuple[AttentionJob, AttentionJob]:
    """A served request: a causal prefill over the prompt, then ``output`` decode steps.

    The decode is non-causal: its single query attends to the whole cache.
    ``blocks`` are the prompt's prefix block ids, ``BLOCK_TOKENS`` trace tokens
    each, scaled as the prompt is; those that start past the scaled prompt go.
    """
    prompt_t, output_t = preset.tokens(prompt), preset.tokens(output)
    prefix: tuple[int, ...] = ()
    block_t = 0
    if blocks:
        block_t = preset.tokens(BLOCK_TOKENS)
        prefix = tuple(blocks[:prompt_blocks(prompt_t, block_t)])
    common = {"submit_time": submit, "batch": 1, "heads": preset.heads,
              "kv_heads": preset.kv_heads, "head_dim": preset.head_dim, "layers": preset.layers,
              "dtype": preset.dtype, "tenant": tenant}
    prefill = AttentionJob(id=f"{rid}-prefill", kind=JobKind.PREFILL, q_len=prompt_t,
                           kv_len=prompt_t, causal=True, steps=1, prefix_blocks=prefix,
                           block_tokens=block_t, **common)  # type: ignore[arg-type]
    decode = AttentionJob(id=f"{rid}-decode", kind=JobKind.DECODE, q_len=1, kv_len=prompt_t,
                          causal=False, steps=output_t, depends_on=prefill.id,
                          **common)  # type: ignore[arg-type]
    return prefill, decode


def _int_cell(text: str, field: str, minimum: int = 1, what: str = "a positive token count"
              ) -> int:
    value = parse_int(text, field)
    if not minimum <= value <= MAX_TOKENS:
        raise InputError(f"expected {what} (at most 2^32), got {clip(value)}", field=field)
    return value


def _split_header(path: Path, lines: Iterator[tuple[int, str]], expected: Sequence[str]
                  ) -> list[str]:
    line, text = next(lines)  # the file's line: blank lines before the header count
    header = [h.strip() for h in text.rstrip("\r\n").split(",")]
    missing = [c for c in expected if c not in header]
    if missing:
        raise InputError(f"missing column; expected {', '.join(expected)}", path=path,
                         line=line, field=missing[0])
    return header


def _cells(path: Path, line: int, text: str, width: int) -> list[str]:
    cells = text.rstrip("\r\n").split(",")
    if len(cells) != width:
        hint = " (truncated line?)" if len(cells) < width else ""
        raise InputError(f"expected {width} fields, got {len(cells)}{hint}", path=path, line=line)
    return cells


# 2023-11-16 18:15:46.6805900, optionally with a zone (Z, +05:00, -0800).
_AZURE_TIME = re.compile(r"(?P<head>[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}"
                         r"(?::[0-9]{2})?)(?:\.(?P<frac>[0-9]*))?"
                         r"(?P<zone>Z|[+-][0-9]{2}:?[0-9]{2})?", re.ASCII)


def _azure_time(text: str) -> datetime:
    """Parse ``2023-11-16 18:15:46.6805900``: 7 fractional digits, %f takes 6.

    The fraction is cut to six digits on its own, so a zone after it is kept
    (``.1234567+05:00`` is five hours earlier than ``.1234567+00:00``).
    """
    match = _AZURE_TIME.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError(text)
        frac = ((match["frac"] or "") + "000000")[:6]
        return datetime.fromisoformat(f"{match['head']}.{frac}{match['zone'] or ''}")
    except ValueError:
        raise InputError(f"expected a time like 2023-11-16 18:15:46.6805900, got {clip(text)}",
                         field="TIMESTAMP") from None


def read_azure(path: Path, preset: ModelPreset) -> Iterator[tuple[int, Job]]:
    lines = iter_lines(path)
    header = _split_header(path, lines, AZURE_COLUMNS)
    col = {name: header.index(name) for name in AZURE_COLUMNS}
    start: datetime | None = None
    for index, (line, text) in enumerate(lines):
        try:
            cells = _cells(path, line, text, len(header))
            when = _azure_time(cells[col["TIMESTAMP"]])
            start = start or when
            if (when.tzinfo is None) != (start.tzinfo is None):
                raise InputError("mixes times with and without a zone (offset); give every "
                                 "row an offset or none", field="TIMESTAMP")
            submit = (when - start).total_seconds()  # aware times subtract in UTC
            if submit < 0:
                raise InputError(f"time goes backwards ({submit:.3f} s before the first row); "
                                 "sort the file by TIMESTAMP", field="TIMESTAMP")
            prompt = _int_cell(cells[col["ContextTokens"]], "ContextTokens")
            output = _int_cell(cells[col["GeneratedTokens"]], "GeneratedTokens")
            jobs = request_jobs(f"r{index}", submit, prompt, output, preset, "conv")
        except InputError as e:
            raise e.located(path=path, line=line) from None
        for job in jobs:
            yield line, job


def read_mooncake(path: Path, preset: ModelPreset) -> Iterator[tuple[int, Job]]:
    for index, (line, text) in enumerate(iter_lines(path)):
        try:
            row = json_line(text)
            if not isinstance(row, dict):
                raise InputError("expected a JSON object per line")
            for key in ("timestamp", "input_length", "output_length"):
                value = row.get(key)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InputError(f"expected an integer, got {clip(value)}", field=key)
            blocks = row.get("hash_ids", [])
            if not isinstance(blocks, list) or not all(
                    type(b) is int and 0 <= b <= MAX_BLOCK_ID for b in blocks):
                raise InputError("expected a list of block ids (integers >= 0)",
                                 field="hash_ids")
            for key, lo, hi in (("timestamp", 0, MAX_TIME_S * 1000),
                                ("input_length", 1, MAX_TOKENS), ("output_length", 1, MAX_TOKENS)):
                if not lo <= row[key] <= hi:
                    raise InputError(f"{clip(row[key])} is outside [{lo}, {hi:.4g}]", field=key)
            jobs = request_jobs(f"r{index}", row["timestamp"] / 1000.0, row["input_length"],
                                row["output_length"], preset, "mooncake", blocks)
        except InputError as e:
            raise e.located(path=path, line=line) from None
        for job in jobs:
            yield line, job


def read_alibaba_pods(path: Path) -> Iterator[tuple[int, Job]]:
    """Pods become cluster jobs holding their request for their lifetime.

    Lifetime runs from scheduling to deletion; pods never scheduled (Pending)
    are replayed from creation, since the trace only says they were wanted for
    that long. A pod deleted the moment it started is replayed for one second
    rather than dropped.
    """
    lines = iter_lines(path)
    header = _split_header(path, lines, ALIBABA_COLUMNS)
    col = {name: header.index(name) for name in ALIBABA_COLUMNS}
    for line, text in lines:
        try:
            cells = _cells(path, line, text, len(header))
            row = {name: cells[i].strip() for name, i in col.items()}
            get = row.__getitem__
            created = parse_float(get("creation_time"), "creation_time")
            deleted = parse_float(get("deletion_time"), "deletion_time")
            scheduled = get("scheduled_time")
            start = parse_float(scheduled, "scheduled_time") if scheduled else created
            if deleted < start:
                raise InputError(f"deleted at {deleted:g} before it started at {start:g}",
                                 field="deletion_time")
            gpus = _int_cell(get("num_gpu"), "num_gpu", 0, "a count of at least 0")
            milli = parse_float(get("gpu_milli") or "0", "gpu_milli")
            fraction = milli / 1000 if gpus == 1 and 0 < milli < 1000 else 1.0
            qos = get("qos")
            if qos not in QOS_PRIORITY:
                raise InputError(f"expected one of {', '.join(QOS_PRIORITY)}, got {clip(qos)}",
                                 field="qos")
            memory_mib = parse_float(get("memory_mib"), "memory_mib")
            if not 0 <= memory_mib < 2**40:
                raise InputError(f"expected MiB in [0, 2^40), got {memory_mib:g}",
                                 field="memory_mib")
            yield line, ClusterJob(
                id=get("name"), submit_time=created,
                duration=max(deleted - start, MIN_POD_SECONDS), gpus=gpus,
                gpu_fraction=fraction, cpus=parse_float(get("cpu_milli"), "cpu_milli") / 1000,
                memory_bytes=round(memory_mib * MIB), tenant=qos,
                priority=QOS_PRIORITY[qos])
        except InputError as e:
            raise e.located(path=path, line=line) from None
