"""``attnsched trace``: inspect, convert and generate traces."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from scheduler.cli.consoles import make_console
from scheduler.errors import InputError
from scheduler.jobs import MAX_TIME_S
from scheduler.presets import PRESETS, get_preset
from scheduler.runs import MAX_LIMIT, bounded, check_out_file
from scheduler.traces import FORMATS, open_trace, write_trace
from scheduler.traces.importers import BLOCK_TOKENS
from scheduler.traces.stats import trace_stats
from scheduler.traces.synth import MAX_TOKENS, SharedPrefix, SynthSpec, generate, parse_mix

# Plain help text: rich's panels cut option names to fit 80 columns.
app = typer.Typer(rich_markup_mode=None, help="Inspect, convert and generate job traces.",
                  epilog="Example: attnsched trace stats "
                         "../shared/traces/azure_llm_2023_conv.csv --model llama3-8b",
                  no_args_is_help=True)
console = make_console()

FORMAT_HELP = f"Input format: {', '.join(FORMATS)} (auto: from the extension and header)."
MODEL_HELP = f"Model preset that shapes token traces: {', '.join(PRESETS)}."


@app.command()
def stats(
    trace: Path = typer.Argument(..., help="Trace file (.csv, .jsonl or .parquet)."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    model: str = typer.Option("llama3-8b", "--model", help=MODEL_HELP),
    token_scale: float = typer.Option(1.0, "--token-scale", help="Multiply token counts."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Jobs, time span, arrival rate, shape percentiles, total FLOPs, tenants.

    Example: attnsched trace stats ../shared/traces/azure_llm_2023_conv.csv --model llama3-8b
    """
    opened = open_trace(trace, fmt, model, token_scale)
    result = trace_stats(opened.jobs())
    token_trace = opened.format in ("azure", "mooncake")  # only these are shaped by a preset
    result = {"trace": str(trace), "format": opened.format,
              "model": opened.preset.name if token_trace else None, **result}
    if as_json:
        typer.echo(json.dumps(result, indent=1, sort_keys=True))
        return
    _print_stats(result)


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _duration(seconds: float) -> str:
    for limit, scale, unit in ((120, 1, "s"), (7200, 60, "min"), (172800, 3600, "h")):
        if seconds < limit:
            return f"{seconds / scale:,.1f} {unit}"
    return f"{seconds / 86400:,.1f} days"


def _flops(x: float) -> str:
    for scale, unit in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP")):
        if x >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f} FLOP"


def _print_stats(s: dict[str, Any]) -> None:
    shaped = f", model {s['model']}" if s["model"] else ""
    head = Table(title=f"{s['trace']}  ({s['format']}{shaped})", show_header=False)
    head.add_column(style="bold")
    head.add_column(justify="right")
    span = s["span_s"]
    kinds = ", ".join(f"{k} {v:,}" for k, v in s["kinds"].items())
    head.add_row("jobs", f"{s['jobs']:,}  ({kinds})")
    head.add_row("requests (jobs depending on none)", f"{s['requests']:,}")
    head.add_row("time span", f"{span:,.1f} s ({_duration(span)})")
    rate = s["arrival_rate_per_s"]
    head.add_row("arrival rate", "-" if rate is None else f"{rate:,.2f} requests/s"
                 if rate >= 0.1 else f"{rate * 3600:,.2f} requests/hour")
    if s["total_flops"]:
        head.add_row("total work", _flops(s["total_flops"]))
    if s["cluster_gpu_hours"]:
        head.add_row("GPU time held (cluster jobs)", f"{s['cluster_gpu_hours']:,.0f} GPU-hours")
    console.print(head)
    dist = Table(title="distributions")
    for col in ("", "p50", "p90", "p99", "mean", "max"):
        dist.add_column(col, justify="right" if col else "left")
    labels = {"prompt_tokens": "prompt tokens (prefill q_len)",
              "decode_steps": "generated tokens (decode steps)",
              "train_seq": "train/model sequence (q_len)", "train_batch": "train/model batch",
              "duration": "duration s (cluster)",
              "gpus": "GPUs per job (cluster)"}
    for name, d in s["distributions"].items():
        dist.add_row(labels.get(name, name), *(_fmt(d[k], 0 if d["max"] >= 100 else 2)
                                               for k in ("p50", "p90", "p99", "mean", "max")))
    console.print(dist)
    tenants = Table(title="tenants")
    tenants.add_column("tenant")
    tenants.add_column("jobs", justify="right")
    for name, count in list(s["tenants"].items())[:20]:
        tenants.add_row(name, f"{count:,}")
    if len(s["tenants"]) > 20:
        tenants.add_row(f"... {len(s['tenants']) - 20} more", "")
    console.print(tenants)


def _atomic_write(jobs: Any, out: Path) -> int:
    """Write to a temporary sibling and rename: a failed run leaves no half file."""
    tmp = out.with_name(f".{out.name}.partial{out.suffix}")
    try:
        n = write_trace(jobs, tmp)
        os.replace(tmp, out)
        return n
    finally:
        tmp.unlink(missing_ok=True)


def _check_output(out: Path, *inputs: Path) -> None:
    if any(out.resolve() == i.resolve() for i in inputs):
        raise InputError("output would overwrite the input", path=out, field="--output")
    check_out_file(out, "--output")


# The longest a generated trace may span on average (jobs / rate): a tenth of the longest
# submit time a trace may hold, so the random gaps cannot reach it.
MAX_MEAN_SPAN_S = MAX_TIME_S / 10
PREFIX = SharedPrefix()  # --shared-prefix's defaults


@app.command()
def convert(
    trace: Path = typer.Argument(..., help="Trace to read."),
    output: Path = typer.Option(..., "-o", "--output", help="Output: .jsonl, .csv or .parquet."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    model: str = typer.Option("llama3-8b", "--model", help=MODEL_HELP),
    token_scale: float = typer.Option(1.0, "--token-scale", help="Multiply token counts."),
    sort: bool = typer.Option(False, "--sort", help="Sort by submit time (loads the trace)."),
    limit: int = typer.Option(0, "--limit", min=0, help="Keep only the first N jobs (0: all)."),
) -> None:
    """Convert any supported trace to the canonical format.

    Example: attnsched trace convert azure.csv --model tiny -o azure-tiny.parquet
    """
    bounded("--limit", limit, 0, MAX_LIMIT)
    _check_output(output, trace)
    opened = open_trace(trace, fmt, model, token_scale)
    # sorted_rows checks dependencies in the sorted order, the order the output has
    rows = opened.sorted_rows() if sort else opened.rows()
    jobs: Any = (job for _, job in rows)
    if limit:
        jobs = itertools.islice(jobs, limit)  # stops reading at the N-th job
    n = _atomic_write(jobs, output)
    console.print(f"wrote {n:,} jobs to {output}")


@app.command("export")
def export_cmd(
    state: Path = typer.Argument(..., help="A service's --state folder (attnsched serve)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output: .jsonl, .csv or .parquet."),
) -> None:
    """Write the jobs a service accepted as a canonical trace, with their arrival times:
    record a served period live, replay it in the simulator with any policy. Jobs a
    client cancelled before they started are left out (they used no device).

    Example: attnsched trace export attnsched-state -o served.parquet
    """
    from scheduler.journal import FILE as JOURNAL_FILE
    from scheduler.journal import outcomes
    from scheduler.serve.state import ACCEPTED_FILE, Accepted

    if not (state / ACCEPTED_FILE).is_file():
        raise InputError(f"no {ACCEPTED_FILE} here: not a service's state folder", path=state)
    _check_output(output)
    accepted = Accepted(state)
    try:
        ended = outcomes(state / JOURNAL_FILE) if (state / JOURNAL_FILE).is_file() else {}
        unrun = {j for j in accepted.cancels() if j in ended and ended[j].get("start") is None}
        jobs = sorted((j for j, _ in accepted.jobs() if j.id not in unrun),
                      key=lambda j: j.submit_time)
        n = _atomic_write(jobs, output)
    finally:
        accepted.close()
    console.print(f"wrote {n:,} jobs to {output}"
                  + (f" ({len(unrun):,} cancelled before they started left out)"
                     if unrun else ""))


@app.command("generate")
def generate_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="Output: .jsonl, .csv or .parquet."),
    jobs: int = typer.Option(..., "--jobs", help="Number of jobs."),
    seed: int = typer.Option(0, "--seed", help="RNG seed: same seed, same bytes."),
    rate: float = typer.Option(5.0, "--rate", help="Mean arrivals per second (at most 1e7, "
                                                   "and at least jobs / 1e9 s)."),
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    token_scale: float = typer.Option(1.0, "--token-scale", help="Multiply token counts."),
    arrivals: str = typer.Option("poisson", "--arrivals", help="poisson or bursty."),
    mix: str = typer.Option("prefill=0.45,decode=0.45,train=0.1", "--mix",
                            help="Job kinds and their weights."),
    tenants: int = typer.Option(4, "--tenants", help="Number of tenants (Zipf-weighted)."),
    deadline_fraction: float = typer.Option(0.3, "--deadline-fraction",
                                            help="Share of jobs with a deadline."),
    shared_prefix: bool = typer.Option(
        False, "--shared-prefix", help=f"Give prefills prefix blocks ({BLOCK_TOKENS}-token "
        "blocks, scaled as prompts are) shared by system prompts and multi-turn "
        "conversations, for prefix caching."),
    system_prompts: int | None = typer.Option(
        None, "--system-prompts", show_default=False,
        help="With --shared-prefix: how many system prompts new conversations open with, "
             f"Zipf-weighted (0: none).  [default: {PREFIX.system_prompts}]"),
    system_prompt_tokens: int | None = typer.Option(
        None, "--system-prompt-tokens", show_default=False,
        help=f"With --shared-prefix: a system prompt's length, {BLOCK_TOKENS}.."
             f"{MAX_TOKENS // 2} tokens.  [default: {PREFIX.system_prompt_tokens}]"),
    followup_fraction: float | None = typer.Option(
        None, "--followup-fraction", show_default=False,
        help="With --shared-prefix: share of prefills that are a later turn of an open "
             "conversation, extending its last prompt.  "
             f"[default: {PREFIX.followup_fraction}]"),
) -> None:
    """Generate a seeded synthetic trace in the canonical format.

    Example: attnsched trace generate -o demo.jsonl --jobs 2000 --seed 1 --rate 20 --model tiny
    """
    _check_output(output)
    prefix = _shared_prefix(shared_prefix, system_prompts, system_prompt_tokens,
                            followup_fraction)
    spec = SynthSpec(jobs=jobs, seed=seed, rate=rate, arrivals=arrivals, mix=parse_mix(mix),
                     tenants=tenants, deadline_fraction=deadline_fraction, prefix=prefix)
    if prefix is not None and not spec.mix.get("prefill"):
        raise InputError("--shared-prefix gives prefills prefix blocks, and this --mix has "
                         "none", field="--mix")
    if jobs / rate > MAX_MEAN_SPAN_S:  # a tiny rate: refuse it here, not as a submit_time
        raise InputError(f"{jobs:,} jobs at {rate:g}/s would span {jobs / rate:.3g} s; expected "
                         f"a rate of at least {jobs / MAX_MEAN_SPAN_S:.3g}", field="--rate")
    preset = get_preset(model, token_scale)
    n = _atomic_write(generate(spec, preset), output)
    console.print(f"wrote {n:,} jobs to {output} (seed {seed}, model {preset.name})")


def _shared_prefix(on: bool, prompts: int | None, tokens: int | None,
                   followup: float | None) -> SharedPrefix | None:
    """The --shared-prefix knobs as a SharedPrefix; a knob without the switch is an error,
    not silently ignored."""
    given = {"--system-prompts": prompts, "--system-prompt-tokens": tokens,
             "--followup-fraction": followup}
    if not on:
        for name, value in given.items():
            if value is not None:
                raise InputError("takes effect only with --shared-prefix", field=name)
        return None
    if prompts == 0 and tokens is not None:
        raise InputError("takes effect only with system prompts (--system-prompts is 0)",
                         field="--system-prompt-tokens")
    return SharedPrefix(
        system_prompts=PREFIX.system_prompts if prompts is None else prompts,
        system_prompt_tokens=PREFIX.system_prompt_tokens if tokens is None else tokens,
        followup_fraction=PREFIX.followup_fraction if followup is None else followup)
