"""Sets and multisets larger than memory: rows in a private temporary SQLite database.

fsck, du and get need "every chunk id referenced", "every directory entry
naming a file" and the like; held in Python sets they grow with the store
(about 100 bytes per id). A `SpillTable` keeps them in an on-disk SQLite
database that SQLite deletes when it is closed (or its process dies), with a
bounded page cache; queries with ORDER BY / GROUP BY come back sorted through
SQLite's external merge sort, so callers merge-join them with the engine's
sorted scans (`iter_chunks`, `iter_inodes`) in bounded memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)
L = TypeVar("L")
R = TypeVar("R")
_END: Any = object()

#: Rows buffered in Python before one `executemany`.
BATCH = 10_000
#: Rows a query fetches from SQLite at a time.
FETCH = 1000
#: SQLite page cache (and sorter memory) per table, KiB.
CACHE_KIB = 4 << 10


def spill_dir() -> str | None:
    """Where a spill file goes: where SQLite puts a SpillTable's database
    ($SQLITE_TMPDIR, $TMPDIR, else /var/tmp: a disk where /tmp is a tmpfs), if
    writable; None lets `tempfile` choose."""
    for d in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return None


class SpillTable:
    """One table `t` with the given columns, in a private temporary database.

        with SpillTable("id BLOB, n INTEGER") as refs:
            refs.add_many((r.id, 1) for r in ...)
            for cid, n in refs.query("SELECT id, sum(n) FROM t GROUP BY id ORDER BY id"):
                ...
    """

    def __init__(self, columns: str, *, cache_kib: int | None = None,
                 batch: int | None = None) -> None:
        cache_kib = CACHE_KIB if cache_kib is None else cache_kib
        self._batch = batch
        import sqlite3  # here: a get imports this module for spill_dir only (~3 ms)

        # "": SQLite's private temporary database, on disk once it outgrows the cache,
        # unlinked at once (nothing is left behind, even by a killed process)
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        for pragma in (f"cache_size=-{cache_kib}", "temp_store=FILE", "journal_mode=OFF",
                       "synchronous=OFF"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(f"CREATE TABLE t ({columns})")
        width = len(columns.split(","))
        self._insert = f"INSERT INTO t VALUES ({', '.join('?' * width)})"
        self._buffer: list[tuple[Any, ...]] = []
        self.rows = 0

    def add(self, row: tuple[Any, ...]) -> None:
        """Add one row."""
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= (BATCH if self._batch is None else self._batch):
            self._flush()

    def add_many(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Add rows."""
        for row in rows:
            self.add(row)

    def _flush(self) -> None:
        if self._buffer:
            self._db.executemany(self._insert, self._buffer)
            self._buffer.clear()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of `sql` (over table `t`), streamed."""
        self._flush()
        cur = self._db.execute(sql, params)
        try:
            while batch := cur.fetchmany(FETCH):
                yield from batch
        finally:
            cur.close()

    def close(self) -> None:
        """Drop the table (its file is deleted)."""
        self._buffer.clear()
        self._db.close()

    def __enter__(self) -> SpillTable:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def merge_outer(left: Iterable[L], left_key: Callable[[L], K], right: Iterable[R],
                right_key: Callable[[R], K]) -> Iterator[tuple[K, L | None, R | None]]:
    """Full outer join of two iterables sorted by unique keys: (key, left item or None,
    right item or None) in key order."""
    lit, rit = iter(left), iter(right)
    lv, rv = next(lit, _END), next(rit, _END)
    while lv is not _END or rv is not _END:
        if rv is _END or (lv is not _END and left_key(lv) < right_key(rv)):
            yield left_key(lv), lv, None
            lv = next(lit, _END)
        elif lv is _END or right_key(rv) < left_key(lv):
            yield right_key(rv), None, rv
            rv = next(rit, _END)
        else:
            yield left_key(lv), lv, rv
            lv, rv = next(lit, _END), next(rit, _END)
