"""Padding vs jagged (nested) tensors vs one call per shape, for mixes of lengths.

    python bench/pack_methods.py [--device cpu|cuda] [--threads 1] [--quick]

The worker packs jobs of different lengths through ``kernels.packed_attention``,
which can run them split (one call per distinct shape), padded (one call, a
mask hides the padding) or nested (one call over ``torch.nested`` jagged
tensors). This times each method on the current device for several mixes,
causal and not, prints which one ``kernels.choose_packing`` picks, and checks
that every method gives the same outputs. The thresholds in
``kernels.RULES`` come from this table (docs/benchmarks.md).

Sizes follow the device: CPU mixes are scaled down so the whole run takes a
couple of minutes on two cores; CUDA mixes are llama-like (32 heads, 8 KV
heads, head size 128, bf16) with lengths up to a few thousand.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from workers import kernels


@dataclass(frozen=True)
class Mix:
    name: str
    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]


def mixes(device: str) -> list[Mix]:
    """Length mixes from uniform to one-long-many-short; decode-like has one query each."""
    rng = random.Random(7)
    scale = 8 if device == "cuda" else 1

    def lens(*xs: int) -> tuple[int, ...]:
        return tuple(x * scale for x in xs)

    spread = lens(*sorted(int(min(512, rng.lognormvariate(4.6, 0.8))) + 8 for _ in range(16)))
    tiny = lens(*(rng.randint(8, 64) for _ in range(48)))
    near = lens(*(rng.randint(224, 256) for _ in range(16)))
    cache = lens(*(rng.randint(100, 1000) for _ in range(32)))
    cross_q = lens(*(rng.randint(16, 128) for _ in range(16)))
    return [
        Mix("uniform 16x256", lens(*[256] * 16), lens(*[256] * 16)),
        Mix("near 16x224-256", near, near),
        Mix("spread 16x8-520", spread, spread),
        Mix("one 1024 + 15x64", lens(1024, *[64] * 15), lens(1024, *[64] * 15)),
        Mix("tiny 48x8-64", tiny, tiny),
        Mix("cross q16-128 kv=2q", cross_q, tuple(2 * q for q in cross_q)),
        Mix("decode 32x(1, 100-1000)", (1,) * 32, cache),
    ]


def timed(calls: dict[str, Callable[[], object]], device: str, budget_s: float
          ) -> dict[str, float]:
    """Fastest of several rounds per method, the methods interleaved in every round.

    On a shared machine other work only ever adds time, so the minimum is the
    figure least disturbed, and interleaving keeps drift from favouring one.
    A method whose warm-up call alone overruns the budget is timed once more
    and no further: it is far behind, and its rank is all that matters.
    """
    def once(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    best = {name: once(fn) for name, fn in calls.items()}  # warm-up, kept as a bound
    slow = {name for name, took in best.items() if took > budget_s}
    spent, rounds = 0.0, 0
    while rounds < 3 or (spent < budget_s and rounds < 20):
        for name, fn in calls.items():
            if name in slow and rounds > 0:
                continue
            took = once(fn)
            best[name] = min(best[name], took)
            spent += took if name not in slow else 0.0
        rounds += 1
    return best


@dataclass
class Row:
    mix: Mix
    causal: bool
    waste: float
    chosen: str
    seconds: dict[str, float]  # method -> median seconds; absent: cannot run here


def run_mix(mix: Mix, causal: bool, device: str, heads: int, kv_heads: int, head_dim: int,
            dtype: torch.dtype, budget_s: float) -> Row:
    g = torch.Generator(device=device).manual_seed(0)

    def rand(h: int, n: int) -> torch.Tensor:
        return torch.randn(1, h, n, head_dim, generator=g, device=device, dtype=dtype)

    qs = [rand(heads, q) for q in mix.q_lens]
    ks = [rand(kv_heads, k) for k in mix.kv_lens]
    vs = [rand(kv_heads, k) for k in mix.kv_lens]
    choice = kernels.choose_packing(mix.q_lens, mix.kv_lens, causal, device, heads=heads,
                                    head_dim=head_dim)
    row = Row(mix, causal, kernels.padding_waste(mix.q_lens, mix.kv_lens), choice.method, {})
    reference: list[torch.Tensor] | None = None
    calls: dict[str, Callable[[], object]] = {}
    for method in ("split", "padded", "nested"):
        outs, used = kernels.packed_attention(qs, ks, vs, causal, method=method)
        if method == "nested" and "+nested" not in used:
            continue  # nested cannot run these inputs here; the kernels padded instead
        if reference is None:
            reference = outs
        else:  # every method must give the same outputs, or its time means nothing
            worst = max(float((a.float() - b.float()).abs().max())
                        for a, b in zip(outs, reference, strict=True))
            assert worst < (1e-3 if dtype == torch.float32 else 5e-2), (method, worst)

        def call(m: str = method) -> None:
            kernels.packed_attention(qs, ks, vs, causal, method=m)

        calls[method] = call
    row.seconds.update(timed(calls, device, budget_s))
    return row


def fmt_ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:9.2f}" if seconds is not None else "      n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (a CPU worker's default is one)")
    parser.add_argument("--dtype", choices=sorted(kernels.DTYPES), default=None)
    parser.add_argument("--quick", action="store_true", help="less time per measurement")
    args = parser.parse_args()
    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
        heads, kv_heads, head_dim, dname = 8, 2, 64, args.dtype or "fp32"
    else:
        heads, kv_heads, head_dim, dname = 32, 8, 128, args.dtype or "bf16"
    dtype = kernels.DTYPES[dname]
    budget = 0.5 if args.quick else 1.5
    where = torch.cuda.get_device_name() if device == "cuda" else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s)"
    print(f"device: {where}; torch {torch.__version__}; {dname}, heads {heads}/{kv_heads}, "
          f"head_dim {head_dim}; best-of-rounds ms per packed call (inputs built inside the call)")
    print(f"{'mix':26} {'causal':6} {'waste':>5} {'split':>9} {'padded':>9} {'nested':>9}  "
          f"{'fastest':7} {'chosen':7}")
    for mix in mixes(device):
        for causal in (False, True):
            row = run_mix(mix, causal, device, heads, kv_heads, head_dim, dtype, budget)
            fastest = min(row.seconds, key=row.seconds.__getitem__)
            print(f"{mix.name:26} {causal!s:6} {row.waste:5.0%} "
                  f"{fmt_ms(row.seconds.get('split'))} {fmt_ms(row.seconds.get('padded'))} "
                  f"{fmt_ms(row.seconds.get('nested'))}  {fastest:7} {row.chosen:7}", flush=True)
    print("n/a: nested SDPA cannot run these inputs here (the kernels fall back to padding).")
    print("Uniform mixes are one shape: every method runs the same single dense call.")


if __name__ == "__main__":
    main()
