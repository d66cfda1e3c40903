"""What would a trace cost? Price every job of a trace on an H100 and on this CPU.

    python examples/cost_of_a_trace.py [TRACE] [--model PRESET]

Without a trace it generates 1,000 seeded jobs. Uses only the pure-Python core:
the job model, the trace readers and the cost model with shipped profiles.
"""

from __future__ import annotations

import argparse
from collections import Counter

from scheduler.costmodel import estimate
from scheduler.jobs import AttentionJob, DType
from scheduler.presets import get_preset
from scheduler.profiles import load_profile
from scheduler.traces import open_trace
from scheduler.traces.synth import SynthSpec, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trace", nargs="?")
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()
    if args.trace:
        jobs = open_trace(args.trace, model=args.model).jobs()
    else:
        jobs = generate(SynthSpec(jobs=1000, seed=0), get_preset(args.model))
    profiles = [load_profile("h100"), load_profile("cpu")]
    busy = Counter[str]()
    backends = Counter[str]()
    count = 0
    for job in jobs:
        if count == args.limit:
            break
        count += 1
        for profile in profiles:
            if isinstance(job, AttentionJob) and profile.dtype_for(DType(job.dtype)) is None:
                continue  # the profile has no measurement for this dtype
            e = estimate(job, profile)
            busy[profile.name] += e.seconds
            backends[f"{profile.name}/{e.backend}"] += 1
    print(f"{count} jobs")
    for profile in profiles:
        print(f"  {profile.name:5} device-seconds if run one at a time: {busy[profile.name]:,.2f}")
    print("  backends chosen:", dict(backends))


if __name__ == "__main__":
    main()
