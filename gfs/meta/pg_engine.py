"""The PostgreSQL metadata engine (docs/format.md, "Metadata (PostgreSQL engine)").

Tables in one schema of a PostgreSQL database hold the same records as the
LMDB engine, encoded by `gfs.meta.encoding` into `bytea` values. Selected by
URL: ``postgresql://USER@HOST:PORT/DB?schema=NAME`` (schema default `hutong`).

Concurrency: every transaction works on a snapshot (REPEATABLE READ; reads are
read only). A write transaction locks each row it reads by key against deletion
(`FOR KEY SHARE`), and the database refuses it when a row it reads, locks,
changes or inserts was changed by a writer that committed after its snapshot
began (first updater wins). Every namespace change rewrites the inode of each
directory whose entries it changes, so two changes that depend on one directory
meet on that row; an invariant no row carries (no directory moved inside
itself) is guarded by `WriteTxn.serialize_on`. This is snapshot isolation with
explicit row locks, not SERIALIZABLE: PostgreSQL's serialisable mode tracks
reads by index page, so two clients creating files in their own directories
conflicted on shared index pages (16 clients exhausted every retry). A lost
conflict surfaces as `MetaConflictError` (nothing changed);
`MetaEngine.transact` runs the work again. Threads of one process take turns at
writing (as with LMDB), so conflicts happen only between processes and hosts.
Writes are buffered in the transaction and sent with COMMIT (or the next scan);
BEGIN goes with the first query, a read's ROLLBACK with the next transaction's first
message (`_Txn`, `PgEngine._park`: few round trips per operation). A chunk's
reference count changes are rows of their own (`refdelta`) that concurrent
writers of identical content insert without conflict (`_PgWrite.add_refcounts`).
Inode numbers are handed out from blocks reserved in a short transaction of
their own, so no row is updated by every write.

Portability: plain tables of `bigint`, `text` and `bytea`, primary keys,
`INSERT ... ON CONFLICT DO UPDATE`, `= ANY(array)`, `FOR KEY SHARE` and
`ORDER BY ... LIMIT` (scans page by key), which CockroachDB and YugabyteDB (YSQL) also implement.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg_pool import ConnectionPool

from gfs.errors import MetaConflictError, MetadataDamagedError, StateError
from gfs.meta import encoding as enc
from gfs.meta import record_check
from gfs.meta.engine import VALUE_TABLES, CommitWatcher, MetaEngine, ReadTxn, WriteTxn
from gfs.meta.pg_guess import Guesses, Key, guard_params, guard_text
from gfs.meta.records import (
    ROOT_INO,
    ChunkRecord,
    Inode,
    Kind,
    Manifest,
    PackRecord,
    PendingPack,
    PoolRecord,
)

__all__ = ["SCHEMA_VERSION", "PgEngine", "is_pg_url"]

log = logging.getLogger("hutong.meta")

#: Inode numbers reserved per trip to the allocation row.
INO_BLOCK = 1024
#: Names of one walk `_PgRead.read_ahead` looks up at once (deeper ones: one by one).
AHEAD_NAMES = 8
#: Walks `_PgRead.read_ahead` sends in one query (more: one query per this many).
AHEAD_WALKS = 16
#: Rows fetched per round trip by the iterators.
FETCH = 2000
#: Rows per INSERT or DELETE statement when buffered writes are sent.
WRITE_ROWS = 500
#: Statements of up to this many rows have their text composed once (`_Txn._writes`).
CACHED_WRITE_ROWS = 16
#: Guards of up to this many rows have their text composed once: a group commit of a
#: few renames guards 20-30 rows, and composing the text was about 7% of a renaming
#: mount's CPU; by table the shapes are (dirents, inodes) counts, at most ~1,200.
CACHED_GUARD_ROWS = 48
#: A chunk's reference count changes kept as rows of their own before a writer folds
#: them into its record (in 1 of FOLD_EVERY commits that add such rows).
FOLD_AT = 32
FOLD_EVERY = 256
#: Rows a transaction keeps of what it read by key (beyond, it reads them again).
SEEN_ROWS = 4096
#: `_Txn.known`'s answer when only the server knows a row's value.
_UNKNOWN: Any = object()
#: Seconds a version of the pool records seen by one transaction serves another that
#: has not begun (pool records change rarely; see `_PgRead.iter_pools`).
POOLS_FRESH = 1.0
#: Seconds a read transaction's connection may stay parked with its transaction open,
#: waiting to send its ROLLBACK with the next transaction's first message (see
#: `PgEngine._park`); older ones are rolled back on their own.
PARK_MAX = 0.5
#: meta row rewritten with a new random value whenever a pool record or a rarely
#: changed value (_CACHED) is written.
_POOLS_VERSION = "pools.version"
#: Rows read on every write that rarely change, cached by the engine against
#: _POOLS_VERSION as the pool records are (the tier policy and placement rules,
#: the lost-chunk list, the store's id): (table, key) of `one`.
_CACHED_META = frozenset({"lost_chunks", "store_id"})
_CACHED_KV = frozenset({"rules"})
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_NEXT_INO = "next_ino"
#: Prefix of the meta rows `serialize_on` rewrites.
_SERIALIZE = "serialize."
_SHIFT = 1 << 63

#: The schema, step by step: version N is reached by running MIGRATIONS[N - 1].
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key text PRIMARY KEY, value bytea NOT NULL)",
        "CREATE TABLE ino_alloc (id int PRIMARY KEY, next bigint NOT NULL)",
        "CREATE TABLE inodes (ino bigint PRIMARY KEY, rec bytea NOT NULL)",
        "CREATE TABLE dirents (parent bigint NOT NULL, name bytea NOT NULL, "
        "ino bigint NOT NULL, PRIMARY KEY (parent, name))",
        "CREATE TABLE manifests (ino bigint PRIMARY KEY, rec bytea NOT NULL)",
        "CREATE TABLE chunks (id bytea PRIMARY KEY, rec bytea NOT NULL)",
        "CREATE TABLE packs (id bytea PRIMARY KEY, rec bytea NOT NULL)",
        "CREATE TABLE pending (id bytea PRIMARY KEY, rec bytea NOT NULL)",
        "CREATE TABLE pools (id int PRIMARY KEY, rec bytea NOT NULL)",
        "CREATE TABLE kv (tbl text NOT NULL, key bytea NOT NULL, value bytea NOT NULL, "
        "PRIMARY KEY (tbl, key))",
    ),
    (  # 2: reference count changes as rows of their own (see `_PgWrite.add_refcounts`)
        "CREATE TABLE refdelta (id bytea NOT NULL, tx bigint NOT NULL, "
        "delta bigint NOT NULL, PRIMARY KEY (id, tx))",
    ),
    (  # 3: record format 2 (narrow inode records); format-1 records read as they are
        "UPDATE meta SET value = convert_to('2', 'UTF8') WHERE key = 'format'",
    ),
    (  # 4: record format 3 (compact inode records); older records read as they are
        "UPDATE meta SET value = convert_to('3', 'UTF8') WHERE key = 'format'",
    ),
    (  # 5: record format 4 (folded group members); member blobs read as they are
        "UPDATE meta SET value = convert_to('4', 'UTF8') WHERE key = 'format'",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

#: table -> (key columns, value columns)
_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "meta": (("key",), ("value",)),
    "inodes": (("ino",), ("rec",)),
    "dirents": (("parent", "name"), ("ino",)),
    "manifests": (("ino",), ("rec",)),
    "chunks": (("id",), ("rec",)),
    "packs": (("id",), ("rec",)),
    "pending": (("id",), ("rec",)),
    "pools": (("id",), ("rec",)),
    "kv": (("tbl", "key"), ("value",)),
    "refdelta": (("id", "tx"), ("delta",)),
}


class _StaleGuess(Exception):
    """A write transaction's guard found a row it assumed changed (`gfs.meta.pg_guess`):
    nothing was changed; it runs again, reading."""


_CONFLICTS = (pgerr.SerializationFailure, pgerr.DeadlockDetected, _StaleGuess)
_IDLE = psycopg.pq.TransactionStatus.IDLE
_BEGIN = {False: b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
          True: b"BEGIN ISOLATION LEVEL REPEATABLE READ"}
_LOCK = {False: sql.SQL(""), True: sql.SQL(" FOR KEY SHARE")}
#: The text of queries used on every operation, built once (composing a query costs
#: more than sending it): (schema, what, ...) -> bytes.
_QUERIES: dict[tuple[Any, ...], bytes] = {}
_INTRANS = psycopg.pq.TransactionStatus.INTRANS
#: psycopg prepares a query on the server after this many runs: never, only those
#: asked with `prepare=True` (`_Txn._alone`)
_PREPARE_NEVER = 1 << 30


def _s(ino: int) -> int:
    """An inode number (u64) as a bigint, keeping the order: shifted by 2**63."""
    if not 0 <= ino < 1 << 64:
        raise ValueError(f"inode number {ino} is not a u64")
    return ino - _SHIFT


def _u(value: int) -> int:
    return int(value) + _SHIFT


def _ino_bytes(value: int) -> bytes:
    return enc.encode_ino(_u(value))


def _decode_manifest_row(key: bytes, value: bytes) -> Manifest:
    return enc.decode_manifest(enc.decode_ino(key), value)


def is_pg_url(url: str) -> bool:
    """Whether `url` selects this engine."""
    return url.startswith(("postgresql://", "postgres://"))


#: libpq settings by which a client notices a database server gone silent (its host
#: cut off) within about 30 s, instead of TCP's retransmissions (about 15 min): probes
#: on idle connections, and a bound on unacknowledged data. Unix sockets ignore them.
LIVENESS = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
            "keepalives_count": "3", "tcp_user_timeout": "30000"}


#: Seconds a pooled connection may sit unused before it is checked at its next use.
IDLE_CHECK = 5.0


def _split_url(url: str) -> tuple[str, str, int]:
    """(conninfo URL without our parameters, schema name, pool size)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "hutong")
    if not _NAME_RE.fullmatch(schema):
        raise StateError(f"metadata URL: schema {schema!r} must be lower-case letters, "
                         "digits and '_' (at most 63)")
    size = query.pop("pool_size", "16")
    if not size.isdigit() or not 1 <= int(size) <= 256:
        raise StateError(f"metadata URL: pool_size must be 1 to 256, got {size!r}")
    for key, value in LIVENESS.items():  # the URL may set its own
        query.setdefault(key, value)
    rest = urlencode(query)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"  # keeps an empty host ("///db")
    return base + (f"?{rest}" if rest else ""), schema, int(size)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class _Txn:
    """State shared by the read and write views of one transaction.

    Round trips are what a metadata operation costs on a server, so the transaction
    sends as few as it can: BEGIN, the buffered writes and the first query go out in
    one message (several statements, parameters bound client-side), as do the last
    writes and COMMIT; a row read by key is kept for the rest of the transaction (its
    snapshot does not change, and the transaction's own writes are kept over it).
    """

    __slots__ = ("_tx", "assumed", "begin", "begun", "buf", "bumped", "clear_refs", "conn",
                 "cur", "dirents_sent", "engine", "inodes_sent", "lock", "once", "parked_at",
                 "pools_version", "present", "ranges", "schema", "seen", "stale", "write", "wrote")

    def __init__(self, conn: psycopg.Connection[Any], schema: str, *,
                 write: bool = False, engine: PgEngine | None = None,
                 parked_at: float | None = None, once: bool = False) -> None:
        self.conn = conn
        #: the first query is a statement of its own, outside a transaction
        #: (`PgEngine.read_once`); cleared once sent
        self.once = once
        #: when the connection's previous read transaction ended, still open on the
        #: server: its ROLLBACK goes first in this transaction's first message
        self.parked_at = parked_at
        self.cur = psycopg.ClientCursor(conn)
        self.schema = schema
        self.write = write
        #: None while migrating (no meta table to read the pool version from yet)
        self.engine = engine
        self.begin = _BEGIN[write]
        self.begun = False
        #: the pool records' version in this transaction's snapshot (once begun)
        self.pools_version: bytes | None = None
        #: rows a write transaction reads by key are locked against deletion
        self.lock = _LOCK[write]
        self.buf: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...] | None] = {}
        #: (value table, key prefix) of buffered deletions of a range of `kv` rows, sent
        #: before the buffered rows (which were written after them)
        self.ranges: list[tuple[str, bytes]] = []
        #: tables of the writes sent so far (a scan sends them before COMMIT)
        self.wrote: set[str] = set()
        #: inode rows written so far (bigint key -> record, None: deleted), for the
        #: engine's watcher (`PgEngine.watch_inodes`)
        self.inodes_sent: dict[int, bytes | None] = {}
        #: directory entries written so far ((bigint parent, name) -> bigint inode,
        #: None: removed), for the same watcher
        self.dirents_sent: dict[tuple[int, bytes], int | None] = {}
        #: (table, key) -> value column of rows read by key (None: no such row)
        self.seen: dict[tuple[str, tuple[Any, ...]], Any] = {}
        #: chunk id -> whether its record exists, as read ahead (`_PgRead.read_ahead`)
        self.present: dict[bytes, bool] = {}
        #: chunks whose record this transaction rewrote whole: their `refdelta` rows
        #: (those it sees) are folded in, so they are deleted with the write
        self.clear_refs: set[bytes] = set()
        self._tx: int | None = None
        #: wrote the pool records' version row: the engine's cached copies go at commit
        self.bumped = False
        #: rows taken from the engine's guesses, not yet checked by a guard (a write's
        #: `_PgRead.read_ahead`; see gfs.meta.pg_guess)
        self.assumed: dict[Key, Any] = {}
        #: a guard failed: the server aborted the transaction, nothing more is sent
        self.stale = False

    @property
    def tx(self) -> int:
        """This transaction's key in `refdelta` (random, drawn when first needed)."""
        if self._tx is None:
            self._tx = int.from_bytes(os.urandom(8), "big") - _SHIFT
        return self._tx

    def t(self, table: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(table))

    def query(self, key: tuple[Any, ...], build: Callable[[], sql.Composable]) -> bytes:
        """The text of the query `build` makes, built once per schema and `key`."""
        k = (self.schema, self.write, *key)
        text = _QUERIES.get(k)
        if text is None:
            text = _QUERIES[k] = build().as_bytes(self.conn)
        return text

    def remember(self, table: str, key: tuple[Any, ...], value: Any) -> None:
        k = (table, key)
        if k in self.seen or len(self.seen) < SEEN_ROWS:
            self.seen[k] = value
        if not self.write and self.engine is not None:  # a write's rows: once committed
            self.engine._guesses.note(table, key, value)

    def run(self, query: sql.Composable | bytes | None, params: Sequence[Any] = (), *,
            flush: bool = False, end: str | None = None) -> list[tuple[Any, ...]]:
        """One round trip: BEGIN (first time), the buffered writes if `flush` (a scan
        must see them; a read by key looks in the buffer first, and writes sent late
        hold their row locks briefly), then `query` (its rows are returned) or `end`
        (COMMIT)."""
        if self.stale:  # (the work caught the first _StaleGuess and went on)
            raise _StaleGuess(f"metadata {self.engine}: a row assumed changed")
        if self.once and query is not None and not flush and end is None:
            return self._alone(query, params)
        parts: list[bytes] = []
        args: list[Any] = []
        # the version row, read by a read transaction as it begins (a write trusts no
        # cached copy, so it reads none)
        probe = not self.begun and self.engine is not None and not self.write
        parked = not self.begun and self.parked_at is not None
        if parked:
            parts.append(b"ROLLBACK")
        if not self.begun:
            parts.append(self.begin)
            if probe:
                parts.append(self.query(("probe",), lambda: sql.SQL(
                    "SELECT value FROM {} WHERE key = %s").format(self.t("meta"))))
                args.append(_POOLS_VERSION)
        # by table: the statement's text depends on how many rows of each (few shapes)
        guarded = sorted(self.assumed, key=lambda k: k[0])
        if guarded:  # the rows assumed so far, checked in this snapshot before any write
            shape = ("guard", *(table for table, _ in guarded))
            parts.append(self.query(shape, lambda: guard_text(self.t, guarded))
                         if len(guarded) <= CACHED_GUARD_ROWS else
                         guard_text(self.t, guarded).as_bytes(self.conn))
            args += guard_params(guarded, self.assumed)
        if flush:
            self._writes(parts, args)
        if query is not None:
            parts.append(query if isinstance(query, bytes) else query.as_bytes(self.conn))
            args.extend(params)
        if end is not None:
            parts.append(end.encode())
        if not parts:
            return []
        cur = self.cur
        ok = False
        try:
            cur.execute(b"; ".join(parts), args)
            ok = True
        except pgerr.DivisionByZero as e:
            if not guarded or self.engine is None:
                raise
            self.stale = True
            self.engine._guesses.stale += 1
            self.engine._guesses.forget(guarded)
            raise _StaleGuess(f"metadata {self.engine}: a row assumed changed") from e
        finally:  # begun as the server says: a message not sent began nothing (the
            # next sends BEGIN again, no statement runs outside the transaction); on a
            # parked connection, one not sent left the old transaction open (INTRANS:
            # any statement that reached the server and failed leaves it INERROR)
            status = self.conn.info.transaction_status
            if parked and (ok or status != _INTRANS):
                self.parked_at = None
                self.begun = True
            elif not parked:
                self.begun = self.begun or status != _IDLE
        if guarded:
            self.assumed = {}
            assert self.engine is not None
            self.engine._guesses.guarded += 1
        if flush:
            self._sent()
        if parked:
            cur.nextset()  # past ROLLBACK's reply to BEGIN's
        if probe:
            cur.nextset()
            row = cur.fetchone()
            self.pools_version = None if row is None else bytes(row[0])
            assert self.engine is not None
            self.engine._saw_pools_version(self.pools_version)
        while cur.nextset():
            pass
        return cur.fetchall() if query is not None and cur.description is not None else []

    def _alone(self, query: sql.Composable | bytes, params: Sequence[Any]
               ) -> list[tuple[Any, ...]]:
        """`query` as a statement of its own (its own snapshot, no BEGIN, no ROLLBACK):
        prepared on the server (parsed and planned once per connection), or after
        the ROLLBACK of a parked connection's transaction in one message."""
        self.once = False
        text = query if isinstance(query, bytes) else query.as_bytes(self.conn)
        if self.parked_at is not None:
            self.cur.execute(b"ROLLBACK; " + text, params)
            self.parked_at = None
            self.cur.nextset()
            return self.cur.fetchall()
        return self.conn.cursor().execute(text, params, prepare=True).fetchall()

    def _writes(self, parts: list[bytes], args: list[Any]) -> None:
        """Statements for the buffered writes (upserts, then deletes; a multi-row
        statement per table, its text composed once per shape: `_write_text`); `_sent`
        empties the buffer once they went."""
        if self.clear_refs:
            parts.append(self.query(("clear refs",), lambda: sql.SQL(
                "DELETE FROM {} WHERE id = ANY(%s)").format(self.t("refdelta"))))
            args.append(sorted(self.clear_refs))
        for table, prefix in self.ranges:
            end = _prefix_end(prefix)
            parts.append(self.query(("range", end is None),
                                    partial(self._range_text, end is None)))
            args += [table, prefix] if end is None else [table, prefix, end]
        if not self.buf:
            return
        groups: dict[tuple[str, bool], list[tuple[Any, ...]]] = {}
        for (table, key), vals in self.buf.items():
            groups.setdefault((table, vals is None), []).append(key + (vals or ()))
        for (table, delete), rows in groups.items():
            for i in range(0, len(rows), WRITE_ROWS):
                batch = rows[i:i + WRITE_ROWS]
                n = len(batch)
                parts.append(self.query(("write", table, delete, n),
                                        partial(self._write_text, table, delete, n))
                             if n <= CACHED_WRITE_ROWS else
                             self._write_text(table, delete, n).as_bytes(self.conn))
                for r in batch:
                    args.extend(r)

    def _range_text(self, to_end: bool) -> sql.Composable:
        """The statement deleting the `kv` rows of a key prefix (`to_end`: no key above)."""
        return sql.SQL("DELETE FROM {} WHERE tbl = %s AND key >= %s{}").format(
            self.t("kv"), sql.SQL("" if to_end else " AND key < %s"))

    def _write_text(self, table: str, delete: bool, n: int) -> sql.Composable:
        """The statement deleting (else upserting) `n` rows of `table`."""
        keys, values = _TABLES[table]
        cols = keys if delete else keys + values
        row = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(cols)))
        tuples = sql.SQL(", ").join([row] * n)
        if delete:
            return sql.SQL("DELETE FROM {} WHERE ({}) IN ({})").format(
                self.t(table), sql.SQL(", ").join(map(sql.Identifier, keys)), tuples)
        # A `refdelta` row buffered is what this transaction added since it last sent
        # its writes (`_sent` empties the buffer): it adds to the row sent before.
        setting = "{1}.{0} + EXCLUDED.{0}" if table == "refdelta" else "EXCLUDED.{0}"
        return sql.SQL("INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) "
                       "DO UPDATE SET {}").format(
            self.t(table), sql.SQL(", ").join(map(sql.Identifier, cols)), tuples,
            sql.SQL(", ").join(map(sql.Identifier, keys)),
            sql.SQL(", ").join(sql.SQL("{0} = " + setting).format(
                sql.Identifier(v), sql.Identifier(table)) for v in values))

    def _sent(self) -> None:
        """The buffered writes reached the server: moved to the rows read."""
        self.clear_refs = set()
        if self.ranges:
            self.ranges = []
            self.wrote.add("kv")
        for (table, key), vals in self.buf.items():
            self.wrote.add(table)
            if table == "refdelta":  # an increment, not the row's value: never read by key
                continue
            self.remember(table, key, None if vals is None else vals[0])
            if table == "inodes":
                self.inodes_sent[key[0]] = None if vals is None else vals[0]
            elif table == "dirents":
                self.dirents_sent[(key[0], key[1])] = None if vals is None else vals[0]
            elif table == "chunks":
                self.present.pop(key[0], None)  # the server knows it now
        self.buf.clear()

    def commit(self) -> None:
        """Send the buffered writes and COMMIT in one round trip (nothing if nothing
        was read or written)."""
        if self.begun or self.buf or self.ranges or self.assumed:
            self.run(None, flush=True, end="COMMIT")

    def known(self, table: str, key: tuple[Any, ...]) -> Any:
        """The value of one row as this transaction knows it without the server: from
        its buffered writes, a range deletion not sent yet (None), or a row it read
        before; `_UNKNOWN` when only the server can tell."""
        if (table, key) in self.buf:
            vals = self.buf[(table, key)]
            return None if vals is None else vals[0]
        if table == "kv" and any(key[0] == t and key[1].startswith(p) for t, p in self.ranges):
            return None  # under a range deletion not sent yet (written after it: in buf)
        return self.seen.get((table, key), _UNKNOWN)

    def one(self, table: str, key: tuple[Any, ...], col: str) -> Any:
        """The value column `col` of one row (buffered writes first), or None."""
        known = self.known(table, key)
        if known is not _UNKNOWN:
            return known
        keys, _ = _TABLES[table]
        q = self.query(("one", table, col), lambda: sql.SQL("SELECT {} FROM {} WHERE {}{}").format(
            sql.Identifier(col), self.t(table), sql.SQL(" AND ").join(
                sql.SQL("{} = %s").format(sql.Identifier(k)) for k in keys), self.lock))
        rows = self.run(q, key)
        value = rows[0][0] if rows else None
        self.remember(table, key, value)
        return value

    def scan(self, table: str, cols: str, where: str = "",
             params: tuple[Any, ...] = (), source: sql.Composable | None = None
             ) -> Iterator[Any]:
        """Rows of `table` (or the join `source`) in the order of its key column, the
        first of `cols`, after sending buffered writes; FETCH rows per query, each page
        starting after the last key of the one before (keyset pagination): a short
        scan is one round trip, a long one holds one page in memory."""
        key = cols.split(",")[0].strip()
        page = f"SELECT {cols} FROM {{}} {{}} ORDER BY {key} LIMIT {FETCH}"
        src = self.t(table) if source is None else source
        first = sql.SQL(page).format(src, sql.SQL(where))
        after = sql.SQL(page).format(src, sql.SQL(
            f"{where} AND {key} > %s" if where else f"WHERE {key} > %s"))
        rows = self.run(first, params, flush=True)
        while rows:
            yield from rows
            if len(rows) < FETCH:
                return
            rows = self.run(after, (*params, rows[-1][0]))


class _PgRead(ReadTxn):
    """A ReadTxn over one PostgreSQL transaction."""

    __slots__ = ("_x",)

    def __init__(self, x: _Txn) -> None:
        self._x = x

    def _scan(self, table: str, cols: str, where: str = "",
              params: tuple[Any, ...] = ()) -> Iterator[Any]:
        return self._x.scan(table, cols, where, params)

    def damaged_records(self) -> Iterator[str]:
        # keys in the embedded engine's byte form, so that both share the decoders and
        # name a record the same way (directory entries are typed columns here)
        decoders = {**record_check.RECORD_DECODERS, "manifests": _decode_manifest_row}
        keys: dict[str, tuple[str, Callable[[Any], bytes]]] = {
            "inodes": ("ino", _ino_bytes), "manifests": ("ino", _ino_bytes),
            "chunks": ("id", bytes), "packs": ("id", bytes), "pending": ("id", bytes),
            "pools": ("id", lambda pool: enc.pool_key(int(pool)))}
        for table, (column, key) in keys.items():
            rows = ((key(k), bytes(rec)) for k, rec in self._scan(table, f"{column}, rec"))
            yield from record_check.damaged_rows(table, rows, decoders[table])

    # -- namespace ----------------------------------------------------------
    def get_inode(self, ino: int) -> Inode | None:
        data = self._x.one("inodes", (_s(ino),), "rec")
        return None if data is None else enc.decode_inode(ino, bytes(data))

    def lookup(self, parent: int, name: str) -> int | None:
        x, key = self._x, (_s(parent), name.encode())
        if ("dirents", key) in x.buf or ("dirents", key) in x.seen:
            ino = x.one("dirents", key, "ino")
            return None if ino is None else _u(ino)
        # the entry and its inode in one round trip: a lookup is nearly always
        # followed by a read of the inode, and in a change by one of the directory
        # (it is rewritten), which comes along unless already read (all rows locked
        # in a write transaction)
        pkey = ("inodes", (key[0],))
        if pkey in x.buf or pkey in x.seen:
            q = x.query(("lookup",), lambda: sql.SQL(
                "SELECT d.ino, i.rec FROM {} d LEFT JOIN LATERAL (SELECT rec FROM {} "
                "WHERE ino = d.ino{}) i ON true WHERE d.parent = %s AND d.name = %s{}"
            ).format(x.t("dirents"), x.t("inodes"), x.lock,
                     sql.SQL(" FOR KEY SHARE OF d" if x.write else "")))
            rows = x.run(q, key)
        else:
            q = x.query(("lookup+dir",), lambda: sql.SQL(
                "SELECT d.ino, i.rec, (SELECT rec FROM {i} WHERE ino = %s{lock}) "
                "FROM (SELECT 1) o LEFT JOIN LATERAL (SELECT ino FROM {d} WHERE parent = %s "
                "AND name = %s{lock}) d ON true LEFT JOIN LATERAL (SELECT rec FROM {i} "
                "WHERE ino = d.ino{lock}) i ON true").format(
                    i=x.t("inodes"), d=x.t("dirents"), lock=x.lock))
            ((ino, rec, dir_rec),) = x.run(q, (key[0], *key))  # one row, always
            x.remember(*pkey, dir_rec)
            rows = [] if ino is None else [(ino, rec)]
        if not rows:
            x.remember("dirents", key, None)
            return None
        ino, rec = rows[0]
        x.remember("dirents", key, ino)
        if ("inodes", (ino,)) not in x.buf:
            x.remember("inodes", (ino,), rec)
        return _u(ino)

    def read_ahead(self, walks: Iterable[tuple[int, Sequence[str]]], *,
                   manifests: bool = False, chunks: Iterable[bytes] = (),
                   packs: Iterable[bytes] = ()) -> None:
        """Every walk, chunk and pack in one query (see `_ahead_query`); the rows are kept
        as read by key (locked in a write transaction), so the lookups, `present_chunks`
        and `get_pack` that follow cost no round trip. What this transaction already
        knows is not asked again."""
        x = self._x
        cids = [c for c in dict.fromkeys(chunks)
                if ("chunks", (c,)) not in x.buf and c not in x.present]
        pids = [p for p in dict.fromkeys(packs)
                if ("packs", (p,)) not in x.buf and ("packs", (p,)) not in x.seen]
        todo: list[tuple[int, list[bytes]]] = []
        for start, names in walks:
            raw = [n.encode() for n in names[:AHEAD_NAMES]]
            cur: int | None = _s(start)
            while raw and cur is not None:  # known steps: walked here
                key = ("dirents", (cur, raw[0]))
                if key in x.buf:
                    vals = x.buf[key]
                    cur = None if vals is None else vals[0]
                elif key in x.seen:
                    cur = x.seen[key]
                else:
                    break
                raw.pop(0)
            if raw and cur is not None:
                todo.append((cur, raw))
        if todo and x.write and not (manifests or cids or pids) and self._assume(todo):
            return  # every row as this process just read or wrote it: checked at COMMIT
        for i in range(0, max(len(todo), 1), AHEAD_WALKS):
            if todo or cids or pids:
                self._walk(todo[i:i + AHEAD_WALKS], manifests, cids if i == 0 else [],
                           pids if i == 0 else [])

    def _assume(self, todo: list[tuple[int, list[bytes]]]) -> bool:
        """Take the rows of walks `todo` from the engine's guesses if it knows them all
        (kept as read, checked by the guard the next message carries); else False and
        nothing taken."""
        x = self._x
        assert x.engine is not None
        guesses = x.engine._guesses
        got: dict[Key, Any] = {}

        def known(table: str, key: tuple[Any, ...]) -> bool:
            k = (table, key)
            if k in x.buf or k in x.seen or k in got:
                return True
            ok, value = guesses.get(table, key)
            if ok:
                got[k] = value
            return ok

        for start, raw in todo:
            if not known("inodes", (start,)):
                return False
            parent = start
            for name in raw:
                key = (parent, name)
                if not known("dirents", key):
                    return False
                k = ("dirents", key)
                if k in x.buf:
                    vals = x.buf[k]
                    ino = None if vals is None else vals[0]
                else:
                    ino = x.seen[k] if k in x.seen else got[k]
                if ino is None:
                    break
                if not known("inodes", (ino,)):
                    return False
                parent = ino
        for (table, key), value in got.items():
            x.remember(table, key, value)
            x.assumed[(table, key)] = value
        return True

    def _walk(self, todo: list[tuple[int, list[bytes]]], manifests: bool,
              cids: list[bytes], pids: list[bytes]) -> None:
        """Walks (start as a bigint, names), chunks and packs in one query; what they
        meet is kept."""
        x = self._x
        shape = tuple(len(raw) for _, raw in todo)
        params: list[Any] = [start for start, _ in todo]
        if cids:
            params.append(cids)
        params += pids
        for start, raw in todo:
            params += [start, *raw]
        (row,) = x.run(x.query(("ahead", shape, manifests, bool(cids), len(pids)),
                               partial(self._ahead_query, shape, manifests, bool(cids),
                                       len(pids))), params)
        walked = len(row) - bool(cids) - len(pids)  # the chunks and packs come last
        extra = iter(row[walked:])
        if cids:
            found = {bytes(c) for c in next(extra)}
            x.present.update((c, c in found) for c in cids)
        for pid in pids:
            self._keep("packs", (pid,), next(extra))
        col = iter(row[:walked])
        for start, raw in todo:
            self._keep("inodes", (start,), next(col))
            parent: int | None = start
            for name in raw:
                ino, rec = next(col), next(col)
                if parent is not None:
                    x.remember("dirents", (parent, name), ino)
                    if ino is not None:
                        self._keep("inodes", (ino,), rec)
                parent = ino
            if manifests:
                mrec = next(col)
                if parent is not None:
                    self._keep("manifests", (parent,), mrec)

    def _keep(self, table: str, key: tuple[Any, ...], value: Any) -> None:
        if (table, key) not in self._x.buf:
            self._x.remember(table, key, value)

    def _ahead_query(self, shape: tuple[int, ...], manifests: bool, chunks: bool = False,
                     packs: int = 0) -> sql.Composable:
        """One row: for walk j of `shape[j]` names, the inode of its start directory,
        then (entry's ino, its inode) for each name, each looked up in the entry before
        (NULL past a missing one), then with `manifests` the last entry's manifest;
        then with `chunks` the ids of the chunks of an array that exist, then the
        records of `packs` packs. Parameters: each walk's start, the chunk id array,
        the pack ids; then per walk its start and names."""
        x = self._x
        lock = x.lock
        cols: list[sql.Composable] = []
        joins: list[sql.Composable] = []
        for j, m in enumerate(shape):
            cols.append(sql.SQL("(SELECT rec FROM {} WHERE ino = %s{})").format(
                x.t("inodes"), lock))
            prev: sql.Composable = sql.Placeholder()
            for t in range(m):
                d, i = sql.Identifier(f"d{j}_{t}"), sql.Identifier(f"i{j}_{t}")
                joins.append(sql.SQL(
                    "LEFT JOIN LATERAL (SELECT ino FROM {} WHERE parent = {} AND name = %s{}) "
                    "{} ON true LEFT JOIN LATERAL (SELECT rec FROM {} WHERE ino = {}.ino{}) "
                    "{} ON true").format(x.t("dirents"), prev, lock, d, x.t("inodes"), d,
                                         lock, i))
                cols += [sql.SQL("{}.ino").format(d), sql.SQL("{}.rec").format(i)]
                prev = sql.SQL("{}.ino").format(d)
            if manifests:
                mf = sql.Identifier(f"m{j}")
                joins.append(sql.SQL("LEFT JOIN LATERAL (SELECT rec FROM {} WHERE ino = {}{}) "
                                     "{} ON true").format(x.t("manifests"), prev, lock, mf))
                cols.append(sql.SQL("{}.rec").format(mf))
        if chunks:
            cols.append(sql.SQL("ARRAY(SELECT id FROM {} WHERE id = ANY(%s){})").format(
                x.t("chunks"), lock))
        cols += [sql.SQL("(SELECT rec FROM {} WHERE id = %s{})").format(x.t("packs"), lock)
                 ] * packs
        return sql.SQL("SELECT {} FROM (SELECT 1) o {}").format(
            sql.SQL(", ").join(cols), sql.SQL(" ").join(joins))

    def list_dir(self, parent: int) -> Iterator[tuple[str, int]]:
        return self.list_dir_after(parent, "")

    def list_dir_after(self, parent: int, after: str) -> Iterator[tuple[str, int]]:
        x = self._x
        # each entry's inode comes along (a listing is nearly always followed by
        # reads of them); a scan locks nothing
        source = sql.SQL("{} d LEFT JOIN {} i ON i.ino = d.ino").format(
            x.t("dirents"), x.t("inodes"))
        where = "WHERE d.parent = %s"
        params: tuple[Any, ...] = (_s(parent),)
        if after:
            where, params = where + " AND d.name > %s", (*params, after.encode("utf-8"))
        for name, ino, rec in x.scan("dirents", "d.name, d.ino, i.rec", where, params,
                                     source):
            if ("inodes", (ino,)) not in x.buf:
                x.remember("inodes", (ino,), rec)
            try:
                text = bytes(name).decode("utf-8")
            except UnicodeDecodeError:
                raise MetadataDamagedError(
                    f"directory entry {bytes(name)!r} of inode {parent}: name "
                    "is not UTF-8; the metadata is damaged, run `hutong fsck`"
                    ) from None
            yield text, _u(ino)

    def iter_inodes(self) -> Iterator[Inode]:
        for ino, rec in self._scan("inodes", "ino, rec"):
            yield enc.decode_inode(_u(ino), bytes(rec))

    def get_manifest(self, ino: int) -> Manifest | None:
        data = self._x.one("manifests", (_s(ino),), "rec")
        return None if data is None else enc.decode_manifest(ino, bytes(data))

    def iter_manifests(self) -> Iterator[tuple[int, Manifest]]:
        for ino, rec in self._scan("manifests", "ino, rec"):
            yield _u(ino), enc.decode_manifest(_u(ino), bytes(rec))

    # -- chunks, packs, pools -------------------------------------------------
    def get_chunk(self, cid: bytes) -> ChunkRecord | None:
        for _, data in self._chunk_recs((cid,), "rec"):
            return enc.decode_chunk(cid, data)
        return None

    def get_chunks(self, cids: Iterable[bytes]) -> dict[bytes, ChunkRecord]:
        return {cid: enc.decode_chunk(cid, data) for cid, data in self._chunk_recs(cids, "rec")}

    def present_chunks(self, cids: Iterable[bytes]) -> set[bytes]:
        return {cid for cid, _ in self._chunk_recs(cids, "id")}

    def _chunk_recs(self, cids: Iterable[bytes], col: str) -> Iterator[tuple[bytes, bytes]]:
        """(id, column `col`) of the chunks of `cids` that exist, buffered writes first;
        a record ("rec") carries its whole reference count: the record's own plus the
        `refdelta` rows this transaction sees plus its own buffered ones."""
        x = self._x
        want: list[bytes] = []
        for cid in cids:
            if ("chunks", (cid,)) in x.buf:
                vals = x.buf[("chunks", (cid,))]
                if vals is not None:
                    yield cid, bytes(vals[0])
            elif col == "id" and cid in x.present:  # read ahead
                if x.present[cid]:
                    yield cid, cid
            else:
                want.append(cid)
        if col == "rec":
            q = sql.SQL("SELECT c.id, c.rec, {} FROM {} c WHERE c.id = ANY(%s){}").format(
                self._delta_sum(), x.t("chunks"), x.lock)
        else:
            q = sql.SQL("SELECT id, {}, 0 FROM {} WHERE id = ANY(%s){}").format(
                sql.Identifier(col), x.t("chunks"), x.lock)
        for i in range(0, len(want), FETCH):
            for cid, data, total in x.run(q, (want[i:i + FETCH],)):
                cid = bytes(cid)
                mine = x.buf.get(("refdelta", (cid, x.tx)))
                total += mine[0] if mine else 0
                yield cid, (enc.with_refcount_delta(cid, bytes(data), total) if total
                            else bytes(data))

    def _delta_sum(self) -> sql.Composed:
        """The sum of the `refdelta` rows of chunk `c` (a column of a query on chunks c)."""
        return sql.SQL("(SELECT COALESCE(SUM(r.delta), 0)::bigint FROM {} r WHERE r.id = c.id)"
                       ).format(self._x.t("refdelta"))

    def iter_chunks(self) -> Iterator[ChunkRecord]:
        x = self._x
        cols = sql.SQL("c.id, c.rec, {}").format(self._delta_sum()).as_string(x.conn)
        for cid, rec, total in x.scan("chunks", cols, source=sql.SQL("{} c").format(
                x.t("chunks"))):
            cid = bytes(cid)
            yield enc.decode_chunk(cid, enc.with_refcount_delta(cid, bytes(rec), total)
                                   if total else bytes(rec))

    def get_pack(self, pack_id: bytes) -> PackRecord | None:
        data = self._x.one("packs", (pack_id,), "rec")
        return None if data is None else enc.decode_pack(pack_id, bytes(data))

    def iter_packs(self) -> Iterator[PackRecord]:
        for pid, rec in self._scan("packs", "id, rec"):
            yield enc.decode_pack(bytes(pid), bytes(rec))

    def iter_pending(self) -> Iterator[PendingPack]:
        for pid, rec in self._scan("pending", "id, rec"):
            yield enc.decode_pending(bytes(pid), bytes(rec))

    def get_pool(self, pool_id: int) -> PoolRecord | None:
        cached = self._cached_pools()
        if cached is not None:
            return next((p for p in cached if p.id == pool_id), None)
        data = self._x.one("pools", (pool_id,), "rec")
        return None if data is None else enc.decode_pool(pool_id, bytes(data))

    def iter_pools(self) -> Iterator[PoolRecord]:
        cached = self._cached_pools()
        if cached is not None:
            yield from cached
            return
        pools = [enc.decode_pool(int(pool_id), bytes(rec))
                 for pool_id, rec in self._scan("pools", "id, rec")]
        x = self._x
        if not x.write and x.engine is not None:
            x.engine._pools = (x.pools_version, tuple(pools))
        yield from pools

    def _cached_pools(self) -> tuple[PoolRecord, ...] | None:
        """The engine's copy of the pool records when `_trusts` its version."""
        eng = self._x.engine
        if eng is None or eng._pools is None:
            return None
        version, pools = eng._pools
        return pools if self._trusts(version) else None

    def _trusts(self, version: bytes | None) -> bool:
        """Whether a copy of the rarely changed rows (pool records, _CACHED values) read
        at `version` is this transaction's: a read transaction whose version row (read
        when it began) matches or, before it begins, when that version was seen less
        than POOLS_FRESH seconds ago by another transaction: every transaction's first
        round trip reads the version at no extra cost."""
        x = self._x
        eng = x.engine
        if x.write or eng is None:
            return False
        if x.begun:
            return version == x.pools_version
        seen, at = eng._pools_seen
        return version == seen and time.monotonic() - at < POOLS_FRESH

    def _rare(self, table: str, key: tuple[Any, ...], col: str) -> Any:
        """`one` for a rarely changed row: from the engine's copy when `_trusts` it;
        what a read transaction reads is kept in that copy."""
        x, eng = self._x, self._x.engine
        if eng is None or x.write:
            return x.one(table, key, col)
        version, values = eng._values
        if (table, key) in values and self._trusts(version):
            return values[(table, key)]
        value = x.one(table, key, col)  # begins the transaction: its version is known
        if version != x.pools_version:
            values = {}
            eng._values = (x.pools_version, values)
        values[(table, key)] = None if value is None else bytes(value)
        return value

    # -- opaque values and store facts -----------------------------------------
    def get_value(self, table: str, key: bytes) -> bytes | None:
        _check_table(table)
        if not key:
            return None
        data = (self._rare if table in _CACHED_KV else self._x.one)("kv", (table, key), "value")
        return None if data is None else bytes(data)

    def get_values(self, table: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """`get_value` of each of `keys`: buffered writes and rows read before answer
        first, the rest in one query per FETCH keys (a restore's heat flush: a key per
        chunk read, one round trip each before)."""
        _check_table(table)
        if table in _CACHED_KV:
            return super().get_values(table, keys)
        x, found, want = self._x, {}, []
        for key in dict.fromkeys(keys):
            known = x.known("kv", (table, key)) if key else None
            if known is _UNKNOWN:
                want.append(key)
            elif known is not None:
                found[key] = bytes(known)
        q = x.query(("values",), lambda: sql.SQL(
            "SELECT key, value FROM {} WHERE tbl = %s AND key = ANY(%s){}").format(
                x.t("kv"), x.lock))
        for i in range(0, len(want), FETCH):
            part = want[i:i + FETCH]
            rows = {bytes(key): value for key, value in x.run(q, (table, part))}
            for key in part:
                value = rows.get(key)
                x.remember("kv", (table, key), value)
                if value is not None:
                    found[key] = bytes(value)
        return found

    def iter_values(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        _check_table(table)
        n = len(prefix)
        for key, value in self._scan("kv", "key, value", "WHERE tbl = %s AND key >= %s",
                                     (table, prefix)):
            key = bytes(key)
            if key[:n] != prefix:
                return
            yield key, bytes(value)

    def get_meta(self, key: str) -> bytes | None:
        if key == _NEXT_INO:
            rows = self._x.run(
                sql.SQL("SELECT next FROM {} WHERE id = 0").format(self._x.t("ino_alloc")))
            return None if not rows else enc.encode_u64(int(rows[0][0]))
        data = (self._rare if key in _CACHED_META else self._x.one)("meta", (key,), "value")
        return None if data is None else bytes(data)


class _PgWrite(_PgRead, WriteTxn):
    """A WriteTxn over one REPEATABLE READ PostgreSQL transaction (writes buffered)."""

    __slots__ = ("_engine",)

    def __init__(self, x: _Txn, engine: PgEngine) -> None:
        super().__init__(x)
        self._engine = engine

    def _put(self, table: str, key: tuple[Any, ...], *values: Any) -> None:
        self._x.buf[(table, key)] = values

    def _del(self, table: str, key: tuple[Any, ...]) -> None:
        self._x.buf[(table, key)] = None

    def alloc_ino(self) -> int:
        return self._engine._alloc_ino()

    def serialize_on(self, key: str) -> None:
        self._put("meta", (f"{_SERIALIZE}{key}",), b"")

    def put_inode(self, inode: Inode) -> None:
        self._put("inodes", (_s(inode.ino),), enc.encode_inode(inode))

    def delete_inode(self, ino: int) -> None:
        self._del("inodes", (_s(ino),))

    def link(self, parent: int, name: str, ino: int) -> None:
        raw = name.encode()
        if not raw or len(raw) > 503:
            raise ValueError(f"directory entry of inode {parent}: name is {len(raw)} bytes "
                             "in UTF-8, 1 to 503 allowed")
        self._put("dirents", (_s(parent), raw), _s(ino))

    def unlink(self, parent: int, name: str) -> None:
        self._del("dirents", (_s(parent), name.encode()))

    def put_manifest(self, ino: int, manifest: Manifest) -> None:
        self._put("manifests", (_s(ino),), enc.encode_manifest(manifest))

    def delete_manifest(self, ino: int) -> None:
        self._del("manifests", (_s(ino),))

    def put_chunk(self, rec: ChunkRecord) -> None:
        # the record's count is the whole count (as read with the deltas): the deltas
        # this transaction sees are folded in and go
        self._x.buf.pop(("refdelta", (rec.id, self._x.tx)), None)
        self._x.clear_refs.add(rec.id)
        self._put("chunks", (rec.id,), enc.encode_chunk(rec))

    def add_refcounts(self, deltas: Mapping[bytes, int]) -> None:
        found = dict(self._chunk_recs(deltas, "rec"))
        for cid, delta in deltas.items():
            data = found.get(cid)
            if data is None:
                raise MetadataDamagedError(f"chunk {cid.hex()} is referenced but not in the chunk "
                                           "index; run `hutong fsck`")
            if not delta:
                continue
            if ("chunks", (cid,)) in self._x.buf:  # written whole by this transaction
                self._put("chunks", (cid,), enc.with_refcount_delta(cid, data, delta))
                continue
            enc.with_refcount_delta(cid, data, delta)  # raises below zero
            # A row of its own instead of a rewrite of the record: writers adding
            # references to one chunk at once (identical contents) insert different
            # rows and do not conflict; each locks the record against deletion. The
            # buffered row holds the change since the writes were last sent (the row
            # upserted then adds it to what was sent before: `_write_text`).
            key = ("refdelta", (cid, self._x.tx))
            mine = self._x.buf.get(key)
            self._put("refdelta", key[1], (mine[0] if mine else 0) + delta)

    def delete_chunk(self, cid: bytes) -> None:
        self._x.buf.pop(("refdelta", (cid, self._x.tx)), None)
        self._x.clear_refs.add(cid)
        self._del("chunks", (cid,))

    def put_pack(self, rec: PackRecord) -> None:
        self._put("packs", (rec.id,), enc.encode_pack(rec))

    def delete_pack(self, pack_id: bytes) -> None:
        self._del("packs", (pack_id,))

    def put_pending(self, rec: PendingPack) -> None:
        self._put("pending", (rec.id,), enc.encode_pending(rec))

    def delete_pending(self, pack_id: bytes) -> None:
        self._del("pending", (pack_id,))

    def put_pool(self, rec: PoolRecord) -> None:
        self._put("pools", (rec.id,), enc.encode_pool(rec))
        self._bump()

    def _bump(self) -> None:
        """Other engines' copies of the rarely changed rows are stale (and ours)."""
        self._put("meta", (_POOLS_VERSION,), os.urandom(8))
        self._x.bumped = True

    def put_value(self, table: str, key: bytes, value: bytes) -> None:
        _check_table(table)
        if not 0 < len(key) <= 511:
            raise ValueError(f"value table {table!r}: key must be 1 to 511 bytes")
        self._put("kv", (table, bytes(key)), bytes(value))
        if table in _CACHED_KV:
            self._bump()

    def delete_value(self, table: str, key: bytes) -> None:
        _check_table(table)
        self._del("kv", (table, bytes(key)))
        if table in _CACHED_KV:
            self._bump()

    def delete_values(self, table: str, prefix: bytes) -> None:
        """Buffered as one range deletion (`_Txn.ranges`); the rows this transaction
        wrote or read under `prefix` are gone from its view at once."""
        _check_table(table)
        if not prefix:
            raise ValueError(f"value table {table!r}: a prefix to delete must not be empty")
        x, n = self._x, len(prefix)
        for rows in (x.buf, x.seen):
            for k in [k for k in rows if k[0] == "kv" and k[1][0] == table
                      and k[1][1][:n] == prefix]:
                rows[k] = None
        x.ranges.append((table, bytes(prefix)))
        if table in _CACHED_KV:
            self._bump()

    def set_meta(self, key: str, value: bytes) -> None:
        if not key:
            raise ValueError("meta key must not be empty")
        if key == _NEXT_INO:  # a restored store: numbers below `value` are taken
            self._x.run(
                sql.SQL("UPDATE {} SET next = GREATEST(next, %s) WHERE id = 0").format(
                    self._x.t("ino_alloc")), (enc.decode_u64("meta next_ino", value),),
                flush=True)
            return
        self._put("meta", (key,), bytes(value))
        if key in _CACHED_META:
            self._bump()


def _prefix_end(prefix: bytes) -> bytes | None:
    """The least key above every key that starts with `prefix` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    return None if not stripped else stripped[:-1] + bytes([stripped[-1] + 1])


def _check_table(table: str) -> None:
    if table not in VALUE_TABLES:
        raise ValueError(
            f"unknown value table {table!r}; use one of {', '.join(sorted(VALUE_TABLES))}"
        )


class _Ctx:
    """`with engine.read()` / `with engine.write()`: one pooled connection, one transaction."""

    __slots__ = ("_conn", "_engine", "_locked", "_once", "_write", "_x")

    def __init__(self, engine: PgEngine, write: bool, once: bool = False) -> None:
        self._engine = engine
        self._write = write
        self._once = once
        self._conn: psycopg.Connection[Any] | None = None
        self._x: _Txn | None = None
        self._locked = False

    def __enter__(self) -> Any:
        eng = self._engine
        pool = eng._live()
        if self._write:
            me = threading.get_ident()
            if eng._writer == me:
                raise StateError(f"metadata {eng}: nested write transaction in one thread "
                                 "would deadlock; do all changes in the outer write() block")
            eng._wlock.acquire()
            eng._writer, self._locked = me, True
        try:
            conn, parked_at = eng._unpark()
            if conn is None:
                conn = pool.getconn()
            self._conn = conn
            self._x = _Txn(conn, eng.schema, write=self._write, engine=eng,
                           parked_at=parked_at, once=self._once)
        except BaseException:
            self._release(None)
            raise
        return _PgWrite(self._x, eng) if self._write else _PgRead(self._x)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        conn, x = self._conn, self._x
        if conn is not None and (conn.broken or isinstance(exc, psycopg.OperationalError)):
            self._engine._lost_at = time.monotonic()  # pooled peers of it are suspect too
        failed: BaseException | None = None
        committing = False  # COMMIT sent, its answer not yet back
        try:
            if conn is not None and x is not None:
                if isinstance(exc, Exception) and x.assumed and \
                        not isinstance(exc, psycopg.Error):
                    x.run(None)  # an error drawn from assumed rows stands once they hold
                if x.stale:  # whatever the work made of it, it ran on rows that changed
                    raise _StaleGuess(f"metadata {self._engine}: a row assumed changed")
                if exc_type is None and self._write:
                    committing = True
                    x.commit()
                    committing = False
                    guesses = self._engine._guesses
                    for (table, key), value in x.seen.items():  # committed: now the rows
                        guesses.note(table, key, value)
                    if self._engine._watch is not None and \
                            (x.inodes_sent or x.dirents_sent):  # (write lock held)
                        self._engine._tell_watcher(x.inodes_sent, x.dirents_sent)
                    if "pools" in x.wrote or x.bumped:  # (sent with COMMIT or a scan)
                        self._engine._pools = None
                        self._engine._values = (None, {})
                    if "refdelta" in x.wrote:
                        self._engine._delta_commits += 1
                if exc_type is None and x.parked_at is not None:
                    # sent nothing: still the old read transaction, parked again as it was
                    self._engine._park(conn, x.parked_at)
                    conn = None
                elif exc_type is None and self._write:
                    pass
                elif exc_type is None and not conn.broken and \
                        conn.info.transaction_status == _INTRANS:
                    # a read ends without its own round trip: its ROLLBACK goes with the
                    # next transaction's first message on this connection
                    self._engine._park(conn, time.monotonic())
                    conn = None
                else:
                    _rollback(conn)
        except _CONFLICTS as e:
            failed = e
            _rollback(conn)
        except psycopg.Error as e:
            _rollback(conn)
            if committing and self._engine._watch is not None:
                self._engine._tell_watcher(None, None)  # committed or not: unknown
            raise StateError(f"metadata {self._engine}: {type(e).__name__}: {e}") from e
        finally:
            self._release(conn)
        eng = self._engine
        if self._write and exc is None and failed is None and \
                eng._delta_commits >= FOLD_EVERY:
            eng._delta_commits = 0
            eng.fold_refcounts()
        if failed is not None:
            raise MetaConflictError(f"metadata {self._engine}: the transaction conflicted "
                                    "with another writer and changed nothing; run it "
                                    "again") from failed
        if isinstance(exc, _CONFLICTS):
            raise MetaConflictError(f"metadata {self._engine}: the transaction conflicted "
                                    "with another writer and changed nothing; run it "
                                    "again") from exc

    def _release(self, conn: psycopg.Connection[Any] | None) -> None:
        eng = self._engine
        self._conn = self._x = None
        if conn is not None and eng._pool is not None:
            if len(eng._returned) > 4096:  # ids of connections long gone: checked once more
                eng._returned.clear()
            eng._returned[id(conn)] = time.monotonic()
            eng._pool.putconn(conn)
        if self._locked:
            self._locked = False
            eng._writer = None
            eng._wlock.release()


def _rollback(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None and not conn.closed and \
            conn.info.transaction_status != _IDLE:
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()  # the pool replaces a closed connection


class PgEngine(MetaEngine):
    """The metadata engine over a PostgreSQL (or compatible) database at `url`.

    The first open of an empty schema creates the tables and the root directory;
    a schema of an older version is migrated, one of a newer version refused
    (StateError). `url` may carry `schema=NAME` and `pool_size=N` (connections).
    """

    MULTI_HOST = True
    REMOTE = True

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self._conninfo, self.schema, size = _split_url(url)
        self._wlock = threading.Lock()
        self._writer: int | None = None
        self._ino_lock = threading.Lock()
        self._ino_next = self._ino_end = 0
        self._ino_conn: psycopg.Connection[Any] | None = None
        self._returned: dict[int, float] = {}  # id(connection) -> when it was last put back
        #: the pool records and the version they were read at; the last version a
        #: transaction saw, and when (see `_PgRead._cached_pools`)
        self._pools: tuple[bytes | None, tuple[PoolRecord, ...]] | None = None
        self._pools_seen: tuple[bytes | None, float] = (None, 0.0)
        #: copies of _CACHED rows ((table, key) -> value) and the version they were read at
        self._values: tuple[bytes | None, dict[tuple[str, tuple[Any, ...]], bytes | None]] = \
            (None, {})
        self._delta_commits = 0  # commits that added `refdelta` rows since the last fold
        #: called with the inodes each write transaction wrote, once committed
        self._watch: CommitWatcher | None = None
        self._lost_at = 0.0  # when a connection was last found lost
        #: rows this process just read or committed, which a write transaction may
        #: assume and check with its COMMIT (gfs.meta.pg_guess)
        self._guesses = Guesses()
        #: connections whose read transaction is still open on the server, newest last,
        #: with when each was parked (see `_park`); the sweeper rolls back old ones
        self._parked: list[tuple[psycopg.Connection[Any], float]] = []
        self._park_cv = threading.Condition()
        self._sweeper: threading.Thread | None = None
        try:
            self._pool: ConnectionPool | None = ConnectionPool(
                self._conninfo, min_size=1, max_size=size, open=True,
                timeout=connect_timeout, kwargs={"autocommit": True,
                                                "prepare_threshold": _PREPARE_NEVER},
                check=self._check_idle)
            self._pool.wait(timeout=connect_timeout)
        except Exception as e:
            raise StateError(f"cannot connect to the metadata database "
                             f"{_redact(url)}: {e}") from None
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- parked read transactions -------------------------------------------------
    def _park(self, conn: psycopg.Connection[Any], at: float) -> None:
        """Keep `conn`, whose read transaction (read only, no row locks) is still open,
        out of the pool: the next transaction takes it and sends the ROLLBACK with its
        first message, so a read costs no round trip of its own to end. A connection
        parked PARK_MAX seconds is rolled back by the sweeper thread (within twice
        that) and goes back to the pool (an open snapshot holds back the server's
        cleanup of old rows). The sweeper looks every PARK_MAX seconds on its own: a
        park wakes no thread (on every read, that cost the reader a thread switch)."""
        with self._park_cv:
            self._parked.append((conn, at))
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, daemon=True,
                                                 name=f"pg-park-{self.schema}")
                self._sweeper.start()

    def _unpark(self) -> tuple[psycopg.Connection[Any] | None, float | None]:
        """The newest parked connection still fresh (not older than PARK_MAX, none lost
        since), else (None, None)."""
        now = time.monotonic()
        with self._park_cv:
            while self._parked:
                conn, at = self._parked.pop()
                if now - at < PARK_MAX and at > self._lost_at and not conn.broken:
                    return conn, at
                self._parked.append((conn, at))
                break
        return None, None

    def _sweep(self) -> None:
        """Roll back parked connections once PARK_MAX old; return them to the pool."""
        while True:
            with self._park_cv:
                while not self._parked:
                    if self._pool is None:
                        self._sweeper = None
                        return
                    self._park_cv.wait(PARK_MAX)  # (a park does not notify)
                now = time.monotonic()
                due = [(c, at) for c, at in self._parked if now - at >= PARK_MAX]
                self._parked = [(c, at) for c, at in self._parked if now - at < PARK_MAX]
                wait = PARK_MAX - (now - self._parked[0][1]) if self._parked else None
                if not due:
                    self._park_cv.wait(wait)
                    continue
            self._unpark_all(due)

    def _unpark_all(self, conns: Sequence[tuple[psycopg.Connection[Any], float]]) -> None:
        """Roll back `conns` and return them to the pool (a broken one is replaced)."""
        for conn, _ in conns:
            _rollback(conn)
            if self._pool is not None:
                self._pool.putconn(conn)
            else:
                conn.close()

    def _drain_parked(self) -> None:
        with self._park_cv:
            parked, self._parked = self._parked, []
            self._park_cv.notify()
        self._unpark_all(parked)

    def _saw_pools_version(self, version: bytes | None) -> None:
        self._pools_seen = (version, time.monotonic())

    def _check_idle(self, conn: psycopg.Connection[Any]) -> None:
        """Before a connection idle for IDLE_CHECK seconds, or put back before another
        was found lost, is used: one empty query. The server may have gone or been cut
        off meanwhile (the pool then drops it and takes another), and a transaction
        should not fail on a connection that died idle."""
        returned = self._returned.get(id(conn), 0.0)
        if returned <= self._lost_at or time.monotonic() - returned > IDLE_CHECK:
            ConnectionPool.check_connection(conn)

    def __repr__(self) -> str:
        return f"PgEngine({_redact(self.url)!r}, schema {self.schema})"

    __str__ = __repr__

    # -- schema -------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION (several processes may race here)."""
        for _ in range(20):
            try:
                if self._migrate_step():
                    return
            except (*_CONFLICTS, pgerr.UniqueViolation, pgerr.DuplicateTable,
                    pgerr.DuplicateSchema, pgerr.DuplicateObject):
                time.sleep(0.05)  # another process migrates: look again
        raise StateError(f"metadata {self}: the schema could not be migrated "
                         f"to version {SCHEMA_VERSION}")

    def _migrate_step(self) -> bool:
        assert self._pool is not None
        with self._pool.connection() as conn:
            conn.autocommit = False  # migrations are transactions of their own
            try:
                return self._migrate_in(conn)
            finally:
                _rollback(conn)
                conn.autocommit = True

    def _migrate_in(self, conn: psycopg.Connection[Any]) -> bool:
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        conn.read_only = False
        s = sql.Identifier(self.schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.schema_version "
                             "(id int PRIMARY KEY, version int NOT NULL)").format(s))
        conn.commit()
        row = conn.execute(sql.SQL("SELECT version FROM {}.schema_version WHERE id = 0")
                           .format(s)).fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StateError(f"metadata {self} has schema version {version}; this "
                             f"version of Hutong reads up to {SCHEMA_VERSION}. Use a "
                             "newer Hutong")
        if version == SCHEMA_VERSION:
            conn.commit()
            return True
        for stmt in MIGRATIONS[version]:
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(s))
            conn.execute(stmt)
        if version == 0:
            self._initialise(conn)
        conn.execute(sql.SQL("INSERT INTO {}.schema_version (id, version) VALUES (0, %s) "
                             "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version")
                     .format(s), (version + 1,))
        conn.commit()
        return False

    def _initialise(self, conn: psycopg.Connection[Any]) -> None:
        now = time.time_ns()
        root = Inode(ROOT_INO, ROOT_INO, Kind.DIR, 0o755, os.getuid(), os.getgid(), 0,
                     now, now, now, nlink=2)  # "." and its entry in itself, as ext4
        x = _Txn(conn, self.schema)
        x.begun = True  # inside the migration's transaction
        x.buf[("meta", ("format",))] = (enc.FORMAT_VERSION,)
        x.buf[("meta", ("store_id",))] = (os.urandom(16),)
        x.buf[("inodes", (_s(ROOT_INO),))] = (enc.encode_inode(root),)
        x.run(None, flush=True)
        x.seen.clear()  # the format is read back from the database
        conn.execute(sql.SQL("INSERT INTO {} (id, next) VALUES (0, %s)").format(
            x.t("ino_alloc")), (ROOT_INO + 1,))
        fmt = x.one("meta", ("format",), "value")
        if bytes(fmt) != enc.FORMAT_VERSION:
            raise StateError(f"metadata {self}: format {fmt!r} is not {enc.FORMAT_VERSION!r}")

    # -- inode numbers --------------------------------------------------------------
    def _alloc_ino(self) -> int:
        with self._ino_lock:
            if self._ino_next >= self._ino_end:
                self._ino_next, self._ino_end = self._reserve(INO_BLOCK)
            ino = self._ino_next
            self._ino_next += 1
            return ino

    def _reserve(self, n: int) -> tuple[int, int]:
        """Reserve `n` inode numbers in a transaction of their own; (first, end).

        It runs on a connection of its own (not the pool's), so a thread that holds
        pooled connections can always reserve. Called with `_ino_lock` held.
        """
        self._live()
        q = sql.SQL("UPDATE {}.ino_alloc SET next = next + %s WHERE id = 0 "
                    "RETURNING next").format(sql.Identifier(self.schema))
        reconnected = False
        for _ in range(50):
            try:
                if self._ino_conn is None or self._ino_conn.closed:
                    self._ino_conn = psycopg.connect(self._conninfo, autocommit=True)
                row = self._ino_conn.execute(q, (n,)).fetchone()
            except _CONFLICTS:
                continue
            except psycopg.Error as e:
                if self._ino_conn is not None:
                    self._ino_conn.close()
                if isinstance(e, psycopg.OperationalError) and not reconnected:
                    reconnected = True  # it died idle: once more on a new connection (a
                    continue            # block reserved twice is only numbers skipped)
                raise StateError(f"metadata {self}: cannot reserve inode numbers: {e}") from e
            if row is None:
                raise StateError(f"metadata {self} has no inode allocator row; run "
                                 "`hutong fsck`")
            end = int(row[0])
            return end - n, end
        raise MetaConflictError(f"metadata {self}: could not reserve inode numbers")

    def fold_refcounts(self, limit: int = 1000) -> int:
        """Fold the `refdelta` rows of up to `limit` chunks that have more than FOLD_AT
        of them into their records; how many chunks. Writers call it now and then; a
        conflict with another writer leaves the rows for a later fold."""
        try:
            with self.write() as w:
                assert isinstance(w, _PgWrite)
                x = w._x
                ids = [bytes(r[0]) for r in x.run(
                    sql.SQL("SELECT id FROM {} GROUP BY id HAVING count(*) > %s LIMIT %s")
                    .format(x.t("refdelta")), (FOLD_AT, limit))]
                for cid, data in list(w._chunk_recs(ids, "rec")):
                    x.clear_refs.add(cid)
                    w._put("chunks", (cid,), data)
                return len(ids)
        except MetaConflictError:
            return 0

    # -- transactions ----------------------------------------------------------------
    def _live(self) -> ConnectionPool:
        if self._pool is None:
            raise StateError(f"metadata engine {self} is closed; open a new one")
        return self._pool

    def note_lookup(self, parent: int, name: str, node: Inode | None) -> None:
        """The entry (and the inode, unless known) as a write may assume them: checked
        by its guard (gfs.meta.pg_guess), so a stale one costs a retry, nothing else."""
        guesses = self._guesses
        guesses.note("dirents", (_s(parent), name.encode()),
                     None if node is None else _s(node.ino))
        if node is not None and not guesses.get("inodes", (_s(node.ino),))[0]:
            guesses.note("inodes", (_s(node.ino),), enc.encode_inode(node))

    def watch_inodes(self, fn: CommitWatcher) -> bool:
        self._watch = fn
        return True

    def _tell_watcher(self, sent: Mapping[int, bytes | None] | None,
                      entries: Mapping[tuple[int, bytes], int | None] | None) -> None:
        """Hand the inodes and entries a committed transaction wrote to the watcher
        (None, None: a commit of unknown outcome; its failure is logged: the
        transaction is committed whatever the watcher does)."""
        assert self._watch is not None
        try:
            if sent is None or entries is None:
                self._watch({}, None)
                return
            self._watch({_u(k): None if rec is None else enc.decode_inode(_u(k), bytes(rec))
                         for k, rec in sent.items()},
                        {(_u(p), bytes(name).decode()): None if ino is None else _u(ino)
                         for (p, name), ino in entries.items()})
        except Exception:
            log.exception("metadata %s: the watcher of committed inodes failed", self)

    def read(self) -> _Ctx:
        """A read-only snapshot transaction."""
        self._live()
        return _Ctx(self, write=False)

    def read_once(self) -> _Ctx:
        """A read whose first query is a prepared statement of its own (no BEGIN, no
        ROLLBACK); later ones begin a snapshot transaction."""
        self._live()
        return _Ctx(self, write=False, once=True)

    def write(self) -> _Ctx:
        """A write transaction (snapshot, row locks); a lost conflict raises
        MetaConflictError."""
        self._live()
        return _Ctx(self, write=True)

    def close(self) -> None:
        """Close the connections; later read() and write() raise StateError. Idempotent."""
        self._drain_parked()
        with self._park_cv:
            pool, self._pool = self._pool, None
            self._park_cv.notify()
        if pool is not None:
            pool.close()
        with self._ino_lock:
            conn, self._ino_conn = self._ino_conn, None
            if conn is not None:
                conn.close()

    def drop(self) -> None:
        """Remove this store's schema and everything in it (tests, `meta load --replace`)."""
        self._drain_parked()  # their open snapshots would make DROP wait
        with self._live().connection() as conn:
            conn.read_only = False
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(self.schema)))
            conn.commit()

