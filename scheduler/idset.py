"""Sets of job ids in 8 bytes an id, for what must remember every id of a trace.

A trace's reader checks every id is new and every ``depends_on`` names an
earlier job; the controller answers "did job X end?" for any later job. A
set of id strings would make a million-job trace hold a million strings
(85 MiB at 10⁶ ids measured, more in RSS). A 64-bit BLAKE2 digest stands for
each id instead: two ids of a trace collide with odds of about n²/2⁶⁵
(3·10⁻⁸ for a million jobs), the price of memory that does not grow with the
ids' lengths.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np


def digest_of(job_id: str) -> int:
    """A job id's 64-bit BLAKE2 digest."""
    data = job_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class DigestSet:
    """64-bit digests: the newest in a set, the rest in one sorted array (8 bytes each)."""

    FOLD = 4_096  # digests held in the set before they are folded into the array

    def __init__(self) -> None:
        self._new: set[int] = set()
        self._old = np.empty(0, dtype=np.uint64)

    def add(self, digest: int) -> None:
        self._new.add(digest)
        if len(self._new) >= self.FOLD:
            fresh = np.sort(np.fromiter(self._new, dtype=np.uint64, count=len(self._new)))
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self._old = np.sort(np.concatenate([self._old, fresh]), kind="stable")
            self._new = set()

    def __contains__(self, digest: int) -> bool:
        if digest in self._new:
            return True
        i = int(np.searchsorted(self._old, np.uint64(digest)))
        return i < self._old.size and int(self._old[i]) == digest

    def __len__(self) -> int:
        return len(self._new) + int(self._old.size)

    @property
    def nbytes(self) -> int:
        """Bytes held: the array, the set and its int objects."""
        return int(self._old.nbytes) + sys.getsizeof(self._new) + 32 * len(self._new)


class IdSet:
    """Job ids, remembered as digests (see the module's docstring for the odds)."""

    def __init__(self) -> None:
        self._digests = DigestSet()

    def add(self, job_id: str) -> None:
        self._digests.add(digest_of(job_id))

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and digest_of(job_id) in self._digests

    def __len__(self) -> int:
        return len(self._digests)
