"""Entry point: the typer app and the error contract every command shares.

Exit codes:

- 0: done; for a run (simulate, run, compare), every job completed.
- 1: runtime failure: the run stopped early (the policy kept failing, jobs
  were left unplaced), or an internal error.
- 2: bad input (a file, an option, an unwritable --out), found before anything
  runs where it can be: one line naming file, line and field, never a
  traceback (``ATTNSCHED_DEBUG=1`` shows one for internal errors).
- 3: the run finished, but some jobs failed (all their workers lost, their node
  failed, no device fits them): stderr says how many and the commonest reasons;
  the outputs and report are written as for a clean run.
- 130: interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

import typer

from scheduler import __version__
from scheduler.cli import (
    calibrate_cmd,
    cluster_cmd,
    compare_cmd,
    explain_cmd,
    fidelity_cmd,
    policy_cmd,
    profile_cmd,
    report_cmd,
    run_cmd,
    serve_cmd,
    sim_cmd,
    sweep_cmd,
    trace_cmd,
)
from scheduler.errors import InputError

EXAMPLES = """Examples:

  attnsched trace generate -o trace.jsonl --jobs 1000 --seed 1 --model tiny

  attnsched compare trace.jsonl --policies static,greedy,adaptive --out runs/x

  attnsched run trace.jsonl --policy adaptive --emulate-gpus 2 --out runs/live

  attnsched report runs/x runs/live --out runs/report

Each command's --help shows its own examples."""

# What to do when a command is given no trace: where one is, or how to make one.
TRACE_HINT = ("give a trace file (.csv, .jsonl or .parquet), e.g. "
              "../shared/traces/azure_llm_2023_conv.csv, or make one: attnsched trace "
              "generate -o trace.jsonl --jobs 1000 --model tiny")

# Plain help text: rich's panels cut option names to fit 80 columns.
app = typer.Typer(
    name="attnsched",
    rich_markup_mode=None,
    help="Schedule attention jobs on Ray: replay traces in a simulator or live.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(trace_cmd.app, name="trace")
app.add_typer(cluster_cmd.app, name="cluster")
app.add_typer(profile_cmd.app, name="profile")
app.add_typer(policy_cmd.app, name="policy")
app.command()(run_cmd.run)
app.command()(sim_cmd.simulate)
app.command()(compare_cmd.compare)
app.command()(sweep_cmd.sweep)
app.command()(explain_cmd.explain)
app.command("policies")(sim_cmd.policies_cmd)
app.command()(calibrate_cmd.calibrate)
app.command("fidelity")(fidelity_cmd.fidelity_cmd)
app.command()(report_cmd.report)
app.command()(serve_cmd.serve)
app.command()(serve_cmd.submit)
app.command()(serve_cmd.status)
app.command()(serve_cmd.cancel)
app.command()(serve_cmd.queue)
app.command()(serve_cmd.output)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnsched {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 callback=_version, is_eager=True),
    log_level: str = typer.Option("WARNING", "--log-level",
                                  help="Python logging level: DEBUG, INFO, WARNING, ERROR."),
    log_format: str = typer.Option("text", "--log-format",
                                   help="text, or json: one JSON object per line (for log "
                                        "shippers)."),
) -> None:
    """Schedule attention jobs on Ray: replay traces in a simulator or live."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise InputError(f"expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}",
                         field="--log-level")
    if log_format not in ("text", "json"):
        raise InputError(f"expected text or json, got {log_format!r}", field="--log-format")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 6), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"attnsched: error: {' '.join(message.split())}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising (tests call it)."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode click returns a command's typer.Exit code instead
        # of exiting: keep it, or a run that stopped early would exit 0.
        code = command.main(args=args, prog_name="attnsched", standalone_mode=False)
    except InputError as e:
        return _fail(e.one_line(), 2)
    except typer.Exit as e:
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted", 130)
    except typer.TyperException as e:  # typer's bundled click: usage and parameter errors
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 0
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        missing = getattr(getattr(e, "param", None), "name", None)
        if type(e).__name__ == "MissingParameter" and missing in ("trace", "run_dirs"):
            message = message.rstrip(".") + "; " + (
                TRACE_HINT if missing == "trace" else
                "give the --out folder of a simulate, run or compare")
        return _fail(f"{message}{hint}", int(getattr(e, "exit_code", 1)))
    except BrokenPipeError:
        return 0
    except Exception as e:  # the last line of defence: one line, exit 1
        if os.environ.get("ATTNSCHED_DEBUG"):
            raise
        return _fail(f"internal error: {type(e).__name__}: {e} (set ATTNSCHED_DEBUG=1 for a "
                     "traceback)", 1)
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(main())
