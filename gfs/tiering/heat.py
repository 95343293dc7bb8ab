"""Heat: decayed access counts of chunks and files, recorded cheaply on reads.

Reads only bump counters in memory; `HeatTracker.flush` folds them into the
`heat` value table in one write transaction, at most every few seconds or
few thousand reads, and when the store closes. A score decays with a
half-life (the policy's `window`): a score of 4 read an hour ago with a
one-hour half-life counts as 2 now.

Keys: b"c" + chunk id, b"f" + inode number (u64 big-endian). Value: score
(f64), time of the last read (ns, i64), total reads (u64).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gfs.errors import MetadataDamagedError
from gfs.meta import MetaEngine, ReadTxn, WriteTxn

log = logging.getLogger(__name__)

_VALUE = struct.Struct("<dqQ")
#: Bytes of a heat record (score, last read, reads).
VALUE_LEN = _VALUE.size
CHUNK_PREFIX = b"c"
FILE_PREFIX = b"f"


@dataclass(frozen=True, slots=True)
class Heat:
    """The heat of one chunk or file as last flushed."""

    score: float
    last_ns: int
    reads: int

    def at(self, now_ns: int, half_life: float) -> float:
        """The score decayed to `now_ns`."""
        return decayed(self.score, self.last_ns, now_ns, half_life)


def decayed(score: float, last_ns: int, now_ns: int, half_life: float) -> float:
    """`score`, last counted at `last_ns`, decayed to `now_ns`."""
    return float(score * 0.5 ** (max(0, now_ns - last_ns) / 1e9 / half_life))


def decode(data: bytes) -> Heat:
    """A heat record; MetadataDamagedError if it is not one."""
    if len(data) != VALUE_LEN:
        raise MetadataDamagedError(f"a heat record has {len(data)} bytes, not {VALUE_LEN}; "
                                   f"the metadata is damaged; run `hutong fsck`")
    score, last, reads = _VALUE.unpack(data)
    return Heat(score, last, reads)


def encode(h: Heat) -> bytes:
    return _VALUE.pack(h.score, h.last_ns, h.reads)


def chunk_heat(txn: ReadTxn, cid: bytes) -> Heat | None:
    """The recorded heat of chunk `cid`, or None if it was never read."""
    data = txn.get_value("heat", CHUNK_PREFIX + cid)
    return None if data is None else decode(data)


def iter_chunk_heat(txn: ReadTxn) -> Iterator[tuple[bytes, Heat]]:
    """(chunk id, heat) of every chunk that was read."""
    for key, value in txn.iter_values("heat", CHUNK_PREFIX):
        yield key[len(CHUNK_PREFIX):], decode(value)


#: Chunks whose reads one flush folds in at most. Each lands on its own leaf page of a
#: big heat table, and LMDB keeps the pages one write transaction dirtied in malloc'd
#: memory for the process's life (measured: one transaction of 8,000 random inserts
#: into a table of 10^6 rows kept 25 MiB, of 2,000 kept 7 MiB). An engine may allow
#: more where a flush costs at most a small table (`MetaEngine.tick_rows`): a restore
#: of a small packed store then rewrites its heat blocks once, not once per 2,048.
FLUSH_EVERY = 2048


class HeatTracker:
    """Counts reads in memory and folds them into the store's `heat` table in batches."""

    def __init__(self, engine: MetaEngine, half_life: float, *, flush_every: int = FLUSH_EVERY,
                 flush_interval: float = 5.0) -> None:
        self.engine = engine
        self.half_life = half_life
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self._chunks: Counter[bytes] = Counter()
        self._files: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        #: the engine's allowance for `flush_every` (asked again after each flush)
        self._allowed: tuple[int, int] | None = None  # (flush_every asked, answer)

    def record(self, cids: Iterable[bytes]) -> None:
        """Count one read of each chunk in `cids`."""
        with self._lock:
            self._chunks.update(cids)
            due = ((len(self._chunks) >= self.flush_every
                   and len(self._chunks) >= self._allowance())
                   or time.monotonic() - self._last_flush >= self.flush_interval)
        if due:
            self.flush()

    def _allowance(self) -> int:
        """Distinct chunks a flush may fold in (`flush_every`, or more where the
        engine allows it); called under the lock."""
        if self._allowed is None or self._allowed[0] != self.flush_every:
            self._allowed = (self.flush_every,
                             self.engine.tick_rows("heat", self.flush_every))
        return self._allowed[1]

    def record_file(self, ino: int) -> None:
        """Count one open-for-read of file `ino`."""
        with self._lock:
            self._files[ino] += 1

    def flush(self) -> None:
        """Fold the counted reads into the `heat` table (one write transaction)."""
        with self._lock:
            chunks, self._chunks = self._chunks, Counter()
            files, self._files = self._files, Counter()
            self._last_flush = time.monotonic()
            self._allowed = None  # the table grew: ask again
        if not chunks and not files:
            return
        now = time.time_ns()
        counts = {CHUNK_PREFIX + cid: n for cid, n in chunks.items()}
        counts.update((FILE_PREFIX + ino.to_bytes(8, "big"), n) for ino, n in files.items())
        half_life, pack, unpack = self.half_life, _VALUE.pack, _VALUE.unpack

        def add(txn: WriteTxn) -> None:
            olds = txn.get_values("heat", counts)  # in key order: one seek per block
            put = txn.put_value
            for key, n in counts.items():
                old = olds.get(key)
                if old is not None and len(old) != VALUE_LEN:  # a hint: start it again
                    log.warning("heat record %s was damaged (%d bytes); counting afresh",
                                key.hex(), len(old))
                    old = None
                if old is None:
                    put("heat", key, pack(float(n), now, n))
                    continue
                score, last, reads = unpack(old)  # no Heat object: a key per chunk read
                put("heat", key, pack(decayed(score, last, now, half_life) + n, now, reads + n))

        self.engine.transact(add, tick=True)
