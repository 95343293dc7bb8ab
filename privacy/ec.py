"""The PSI group: hashing keys to Curve25519 (Elligator 2) and X25519 blinding,
in C (`privacy._ec`), spread over one worker process per core.

A key is hashed with BLAKE2b-256 (personalisation `hutong-psi-v1`, keyed by
the job's domain) to a field element, mapped to the curve with Elligator 2
(RFC 9380 6.7.1) and multiplied by the party's clamped per-job scalar.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from privacy import _ec  # type: ignore[attr-defined]
from privacy.errors import QueryError

PERSON = b"hutong-psi-v1"
POINT_BYTES = 32
#: Bytes kept of a doubly-blinded value: false match chance <= |X||Y| 2^-96.
TRUNC_BYTES = 12
#: Items per task handed to a worker process.
WORK_ITEMS = 8192
#: Forces the group arithmetic of this process and the worker processes it
#: starts: "portable", "ifma" or "auto" (the default: the best this CPU runs).
BACKEND_ENV = "HUTONG_EC_BACKEND"


def backend() -> str:
    """The group arithmetic in use: "ifma" (AVX-512 IFMA, eight ladders at once)
    or "portable" (radix 2^51 C); chosen at import, the best this CPU runs."""
    return str(_ec.backend())


def set_backend(name: str) -> str:
    """Choose "portable", "ifma" or "auto" (in this process); returns the choice.
    Asking for ifma on a CPU without it raises RuntimeError."""
    return str(_ec.set_backend(name))


def backend_from_env() -> str:
    """Apply HUTONG_EC_BACKEND (if set) and return the backend in use; a value the
    CPU or the build cannot honour is a QueryError naming the variable."""
    want = os.environ.get(BACKEND_ENV, "").strip()
    if want:
        try:
            set_backend(want)
        except (ValueError, RuntimeError) as e:
            raise QueryError(f"{BACKEND_ENV}={want!r}: {e}") from e
    return backend()


def new_scalar() -> bytes:
    """A fresh secret scalar for one job (never stored)."""
    return os.urandom(32)


def job_domain(job_id: str) -> bytes:
    """The hash key separating one job's encodings from every other job's."""
    return hashlib.blake2b(job_id.encode(), digest_size=32, person=b"hutong-psi-dom").digest()


def digests(keys: Sequence[str], domain: bytes) -> bytes:
    """32-byte hashes of `keys` (concatenated), to be mapped to the curve."""
    out = bytearray()
    for k in keys:
        out += hashlib.blake2b(k.encode(), digest_size=32, person=PERSON, key=domain).digest()
    return bytes(out)


def hash_mul(scalar: bytes, domain: bytes, keys: Sequence[str], outlen: int = 32) -> bytes:
    """[scalar] H(k) for each key, `outlen` leading bytes of each."""
    return bytes(_ec.hash_mul(scalar, digests(keys, domain), outlen))


def mul(scalar: bytes, points: bytes, outlen: int = 32) -> bytes:
    """[scalar] P for each 32-byte point, `outlen` leading bytes of each."""
    return bytes(_ec.mul(scalar, points, outlen))


def map_to_curve(hashes: bytes) -> bytes:
    """Elligator 2 u-coordinates of 32-byte hashes (for tests and references)."""
    return bytes(_ec.map_to_curve(hashes))


def split(blob: bytes, size: int) -> list[bytes]:
    """`blob` cut into `size`-byte items."""
    return [blob[i:i + size] for i in range(0, len(blob), size)]


class GroupPool:
    """One worker process per core for the group operations; results keep input order.

    Work is submitted in batches with a bounded number in flight, so a stream
    larger than memory flows through with O(workers x batch) memory.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        ctx = multiprocessing.get_context("forkserver")
        self._ex = ProcessPoolExecutor(self.workers, mp_context=ctx)

    def close(self) -> None:
        """Stop the workers."""
        self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> GroupPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ordered(self, calls: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
        pending: deque[Future[bytes]] = deque()
        limit = 2 * self.workers
        for args in calls:
            pending.append(self._ex.submit(*args))
            while len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def hash_mul(self, scalar: bytes, domain: bytes, batches: Iterable[Sequence[str]],
                 outlen: int = 32) -> Iterator[bytes]:
        """[scalar] H(k) for batches of keys, in order, as pieces of at most WORK_ITEMS."""
        def pieces() -> Iterator[tuple[Any, ...]]:
            for b in batches:
                for i in range(0, len(b), WORK_ITEMS):
                    yield (hash_mul, scalar, domain, b[i:i + WORK_ITEMS], outlen)
        return self._ordered(pieces())

    def mul(self, scalar: bytes, blobs: Iterable[bytes], outlen: int = 32) -> Iterator[bytes]:
        """[scalar] P for blobs of concatenated points, in order, as pieces of at
        most WORK_ITEMS points."""
        def pieces() -> Iterator[tuple[Any, ...]]:
            step = WORK_ITEMS * POINT_BYTES
            for blob in blobs:
                for i in range(0, len(blob), step):
                    yield (mul, scalar, blob[i:i + step], outlen)
        return self._ordered(pieces())


backend_from_env()  # at import: the party's and every worker process's choice
