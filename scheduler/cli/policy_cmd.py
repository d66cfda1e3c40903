"""``attnsched policy check``: a policy against the contract, with a minimal reproducer."""

from __future__ import annotations

from pathlib import Path

import typer

from policies.base import load_policy, parse_options
from scheduler.cli.consoles import make_console
from scheduler.cli.options import OPTS, POLICY_HELP
from scheduler.errors import InputError
from scheduler.policy import run_name
from scheduler.policy_check import RULES, check_policy
from scheduler.runs import bounded
from scheduler.traces import write_trace

# Plain help text: rich's panels cut option names to fit 80 columns.
app = typer.Typer(rich_markup_mode=None, help="Check a policy before you run it.",
                  epilog="Example: attnsched policy check my_policy.py:MostFreeMemory",
                  no_args_is_help=True)
console = make_console()


@app.command()
def check(
    policy: str = typer.Argument(..., help=POLICY_HELP),
    policy_opt: list[str] = OPTS,
    runs: int = typer.Option(24, "--runs", help="Generated runs to try (1 to 1000)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated runs."),
    pods: bool = typer.Option(True, "--pods/--no-pods",
                              help="Mix in pods (duration-only cluster jobs, some needing "
                                   "several GPUs); --no-pods for a policy of attention jobs "
                                   "only."),
    out: Path = typer.Option(Path("policy-check-repro.jsonl"), "--out",
                             help="Where a broken rule's minimal trace is written."),
) -> None:
    """Run a policy on small generated traces and check the contract: no error, valid
    actions, every job ends once, work-conserving, deterministic. The first rule
    broken is shrunk to a minimal trace that attnsched simulate replays; exit 1.

    Example: attnsched policy check my_policy.py:MostFreeMemory
    """
    bounded("--runs", runs, 1, 1000)
    options = parse_options(policy_opt)
    name = run_name(policy, load_policy(policy, options))  # bad specs fail here, once
    report = check_policy(lambda: load_policy(policy, options), runs, seed, pods=pods)
    for warning in report.warnings:
        console.print(f"warning: {warning}", markup=False)
    found = report.violation
    if found is None:
        console.print(f"{name}: kept the contract on {report.runs} runs ({', '.join(RULES)})",
                      markup=False)
        return
    try:
        write_trace(found.scenario.jobs, out)
    except OSError as e:
        raise InputError(f"cannot write the reproducer: {e.strerror or e}", path=out,
                         field="--out") from None
    opts = "".join(f" --policy-opt {o}" for o in policy_opt)
    console.print(f"{name} broke '{found.rule}': {found.detail}", markup=False)
    jobs = len(found.scenario.jobs)
    run = out.with_suffix("")
    # A replay does not stop at the violation (the controller refuses a broken action and
    # the run goes on), so point at where it shows: the run's decisions.
    console.print(f"minimal reproducer: {jobs} job{'s' if jobs != 1 else ''} in {out}; "
                  "replay it and read its decisions (a refused action is 'rejected') with\n"
                  f"  attnsched simulate {out} --policy {policy}{opts} "
                  f"{' '.join(found.scenario.options())} --out {run}\n"
                  f"  attnsched explain {run}", markup=False, soft_wrap=True)
    raise typer.Exit(1)
