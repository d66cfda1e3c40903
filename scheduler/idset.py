"""Sets of job ids in 8 bytes an id, for what must remember every id of a trace.

A trace's reader checks every id is new and every ``depends_on`` names an
earlier job; the controller answers "did job X end?" for any later job. A
set of id strings would make a million-job trace hold a million strings
(85 MiB at 10⁶ ids measured, more in RSS). A 64-bit digest stands for each
id instead: two ids of a trace collide with odds of about n²/2⁶⁵ (3·10⁻⁸ for
a million jobs), the price of memory that does not grow with the ids'
lengths. The digest is the string's own hash (SipHash, 64 bits, computed once
per string and kept by it), so asking costs no hashing of its own; digests
never leave the process, so the per-process seed does not matter.

Every job asks once or twice, and nearly every answer is "no", so a bitmap
of about 16 bits a digest answers most of those without searching the array.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

_U64 = (1 << 64) - 1
_NATIVE = sys.hash_info.width >= 64
FILTER_BITS = 16  # bitmap bits per digest, at least: about 6% of absent ids are searched


def digest_of(job_id: str) -> int:
    """A job id's 64-bit digest: its hash where hashes have 64 bits, else BLAKE2."""
    if _NATIVE:
        return hash(job_id) & _U64
    data = job_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class DigestSet:
    """64-bit digests: the newest in a set, the rest in one sorted array (8 bytes each)
    behind a bitmap (about 2 bytes each) whose bit ``digest mod size`` is set for each."""

    FOLD = 4_096  # digests held in the set before they are folded into the array

    def __init__(self) -> None:
        self._new: set[int] = set()
        self._old = np.empty(0, dtype=np.uint64)
        self._bits = bytearray(1)
        self._mask = 7  # the bitmap's size in bits, less one (a power of two)

    def add(self, digest: int) -> None:
        self._new.add(digest)
        if len(self._new) >= self.FOLD:
            fresh = np.sort(np.fromiter(self._new, dtype=np.uint64, count=len(self._new)))
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self._old = np.sort(np.concatenate([self._old, fresh]), kind="stable")
            self._new = set()
            self._mark(fresh)

    def _mark(self, fresh: np.ndarray) -> None:
        """Set the folded digests' bits; a bitmap grown too small is built anew, larger."""
        size = 1 << max(3, (FILTER_BITS * int(self._old.size) - 1).bit_length())
        if size > self._mask + 1:
            self._bits, self._mask = bytearray(size // 8), size - 1
            fresh = self._old
        slots = fresh & np.uint64(self._mask)
        view = np.frombuffer(self._bits, dtype=np.uint8)
        np.bitwise_or.at(view, (slots >> np.uint64(3)).astype(np.intp),
                         np.left_shift(1, slots & np.uint64(7)).astype(np.uint8))

    def __contains__(self, digest: int) -> bool:
        if digest in self._new:
            return True
        slot = digest & self._mask
        if not self._bits[slot >> 3] >> (slot & 7) & 1:
            return False
        i = int(np.searchsorted(self._old, np.uint64(digest)))
        return i < self._old.size and int(self._old[i]) == digest

    def __len__(self) -> int:
        return len(self._new) + int(self._old.size)

    @property
    def nbytes(self) -> int:
        """Bytes held: the array, the bitmap, the set and its int objects."""
        return (int(self._old.nbytes) + len(self._bits) + sys.getsizeof(self._new)
                + 32 * len(self._new))


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
