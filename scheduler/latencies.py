"""Decision latencies in bounded memory, for run.json's p50 and p99."""

from __future__ import annotations

import math

import numpy as np


class Latencies:
    """Decision times in a fixed log-spaced histogram (1 ns to 100 s, ~1.2% per bin).

    A run makes millions of decisions; keeping each time would grow with the
    trace, and run.json's p50/p99 need the bin, not the exact value.
    """

    LOW, HIGH, BINS = 1e-9, 1e2, 2_000

    def __init__(self) -> None:
        self.counts = [0] * (self.BINS + 2)  # plus under- and overflow
        self._scale = self.BINS / math.log(self.HIGH / self.LOW)
        self._n = 0

    def add(self, seconds: float) -> None:
        self._n += 1
        if seconds < self.LOW:
            self.counts[0] += 1
            return
        index = 1 + int(math.log(seconds / self.LOW) * self._scale)
        self.counts[min(self.BINS + 1, index)] += 1

    def __len__(self) -> int:
        return self._n

    def quantile(self, q: float) -> float | None:
        """The geometric middle of the bin holding the ``q`` quantile (None: no samples)."""
        n = len(self)
        if not n:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), min(n - 1, int(n * q)) + 1))
        return self.LOW * math.exp((index - 0.5) / self._scale) if index else self.LOW
