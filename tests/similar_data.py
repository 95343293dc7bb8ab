"""Similar data for the delta tests: compressible text and its next versions."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections import Counter

    import pytest

    from gfs.client import Client
    from gfs.read.local import LocalSource


def text(rng: random.Random, n: int) -> bytes:
    """Compressible text-like bytes (words from a small vocabulary)."""
    words = [bytes(rng.choice(b"abcdefghijklmnop_ ") for _ in range(rng.randrange(2, 10)))
             for _ in range(3000)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def mutate(data: bytes, rng: random.Random, edits: int) -> bytes:
    """A next version: a few small replacements, insertions and deletions."""
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(max(1, len(out) - 64))
        out[at:at + rng.randrange(0, 24)] = rng.randbytes(rng.randrange(0, 24))
    return bytes(out)


def two_versions(fs: Client, seed: int, size: int, edits: int) -> tuple[bytes, bytes]:
    """Write /a and a next version of it, /b, into `fs`; return both."""
    rng = random.Random(seed)
    a = text(rng, size)
    b = mutate(a, rng, edits)
    fs.write_bytes("/a", a)
    fs.write_bytes("/b", b)
    return a, b


def count_reads(source: LocalSource, monkeypatch: pytest.MonkeyPatch) -> Counter[bytes]:
    """Count, by chunk id, the verified reads `source` makes from its pools from now on."""
    from collections import Counter

    reads: Counter[bytes] = Counter()
    real = source.read_verified

    def counting(cid: bytes, path: str = "", **kw: object) -> tuple[bytes, bytes]:
        reads[cid] += 1
        return real(cid, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(source, "read_verified", counting)
    return reads
