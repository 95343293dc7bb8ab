"""Rows a write transaction may assume instead of reading them first (PostgreSQL engine).

A namespace change on a database server costs two round trips: one to read the
entries and inodes it changes (`ReadTxn.read_ahead`), one to send its writes and
COMMIT. The rows it reads have nearly always just been read by this process (the
kernel looks a name up right before it renames or removes it) or written by it.
`Guesses` keeps those rows for `GUESS_AGE` seconds; a write transaction whose walks
it knows whole takes them as read and sends, with its writes and COMMIT, one guard
statement (`guard_text`) that reads the same rows in the transaction's snapshot,
locks them as a read would (FOR KEY SHARE) and fails (division by zero) unless
each equals what was assumed. A transaction whose guard passes is the one that
would have read those values: nothing about its isolation changes. One whose guard
fails changed nothing; its assumed rows are forgotten and it runs again, reading.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

from psycopg import sql

#: Seconds a row read or written here may be assumed by a write transaction.
GUESS_AGE = 2.0
#: Rows kept at most (the oldest are dropped first).
GUESS_ROWS = 8192
#: Tables whose rows are kept: (table, key column names, value column).
GUESSED = {"inodes": (("ino",), "rec"), "dirents": (("parent", "name"), "ino")}

#: (table, key)
Key = tuple[str, tuple[Any, ...]]


class Guesses:
    """Rows of `GUESSED` tables as last read or committed by this process (thread-safe:
    every change is one dict operation, atomic in CPython)."""

    def __init__(self, age: float = GUESS_AGE, limit: int = GUESS_ROWS) -> None:
        self.age = age
        self.limit = limit
        self._rows: dict[Key, tuple[Any, float]] = {}
        #: guards sent and guards that failed (for tests and stats)
        self.guarded = 0
        self.stale = 0

    def note(self, table: str, key: tuple[Any, ...], value: Any) -> None:
        """Row `key` of `table` holds `value` (None: no such row), as just read or
        committed."""
        if table not in GUESSED:
            return
        # no lock: each dict operation is atomic, and a row noted twice at once or
        # dropped early only costs a read (a lock here was 7% of a stat-bound mount's
        # CPU, contended by its lookup threads)
        rows, k = self._rows, (table, key)
        rows.pop(k, None)  # re-inserted last: the dict stays in time order
        rows[k] = (value, time.monotonic())
        while len(rows) > self.limit:
            with contextlib.suppress(KeyError, StopIteration, RuntimeError):
                del rows[next(iter(rows))]

    def get(self, table: str, key: tuple[Any, ...]) -> tuple[bool, Any]:
        """(known, value) of a row noted less than `age` seconds ago."""
        got = self._rows.get((table, key))
        if got is None or time.monotonic() - got[1] >= self.age:
            return False, None
        return True, got[0]

    def clear(self) -> None:
        """Forget every row."""
        self._rows.clear()

    def forget(self, keys: Iterable[Key]) -> None:
        """Drop rows (a guard found one of them changed)."""
        for k in keys:
            self._rows.pop(k, None)


def guard_text(t: Any, keys: list[Key]) -> sql.Composable:
    """The guard of rows `keys` (in this order): one statement that locks each row
    and divides by zero unless every row equals its parameter. Parameters: each
    row's key columns, then its assumed value (NULL: no such row). `t(table)` is the
    table's qualified name."""
    conds: list[sql.Composable] = []
    for table, _ in keys:
        cols, value = GUESSED[table]
        conds.append(sql.SQL("(SELECT {} FROM {} WHERE {} FOR KEY SHARE) "
                             "IS NOT DISTINCT FROM %s").format(
            sql.Identifier(value), t(table), sql.SQL(" AND ").join(
                sql.SQL("{} = %s").format(sql.Identifier(c)) for c in cols)))
    return sql.SQL("SELECT 1 / (CASE WHEN {} THEN 1 ELSE 0 END)").format(
        sql.SQL(" AND ").join(conds))


def guard_params(keys: list[Key], values: dict[Key, Any]) -> list[Any]:
    """The parameters of `guard_text(keys)`."""
    out: list[Any] = []
    for k in keys:
        out += [*k[1], values[k]]
    return out


__all__ = ["GUESS_AGE", "Guesses", "guard_params", "guard_text"]
