"""The metadata engine interface.

A metadata engine is a set of typed tables with serialisable transactions. It
knows nothing of paths: namespace logic (resolution, rename rules, refcounts)
lives above it in `gfs.namespace` and `gfs.store`, written once for every
engine. LMDB (`gfs.meta.lmdb_engine`) is the embedded default; a distributed
database engine implements the same interface and runs the same conformance
suite (`gfs.testing.meta_suite`).

Contract for every engine:

* `read()` yields a consistent snapshot; it never sees a half-committed write.
* `write()` yields a transaction that commits when the block exits normally and
  aborts (changes nothing) when it raises. Write transactions are serialisable.
  An engine with optimistic concurrency (PostgreSQL) may abort one of two
  conflicting writers with `MetaConflictError`; `transact(fn)` runs `fn` in a
  write transaction and runs it again on such a conflict, so `fn` must derive
  everything it writes from the transaction (or from state it does not change).
* A committed write is durable when `write()` returns (unless the engine was
  opened with durability off, for tests).
* Iterators are valid only inside their transaction.
* Keys are compared as bytes; `list_dir` yields names in UTF-8 byte order.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TypeVar

from gfs.errors import FormatError, MetaConflictError
from gfs.meta.records import (
    ChunkRecord,
    Inode,
    Kind,
    Manifest,
    ManifestEntries,
    NewFile,
    PackRecord,
    PendingPack,
    PoolRecord,
    new_inode,
)

T = TypeVar("T")

#: Told of each commit (`MetaEngine.watch_inodes`): the inodes it wrote and the
#: directory entries it wrote (None: a commit of unknown outcome).
CommitWatcher = Callable[[Mapping[int, Inode | None],
                          Mapping[tuple[int, str], int | None] | None], None]

#: Tables of opaque values kept for the layers above (heat counters, placement
#: rules, entities, sites, extended attributes, job records, chunk pins, gateway
#: credentials, the resemblance index and the bases of delta chunks).
VALUE_TABLES: frozenset[str] = frozenset(
    {"heat", "rules", "entities", "sites", "xattrs", "jobs", "pins", "credentials",
     "resemblance", "deltas"})


class ReadTxn(ABC):
    """Read access to every table, inside one consistent snapshot."""

    @abstractmethod
    def damaged_records(self) -> Iterator[str]:
        """A line naming each metadata record that does not decode (its table, key and
        the error), reading every record table whole; nothing if all decode. fsck's
        pass after a read raised `FormatError`, so that one damaged record does not
        hide the others (gfs.meta.record_check)."""

    # -- namespace -------------------------------------------------------
    @abstractmethod
    def get_inode(self, ino: int) -> Inode | None:
        """The inode numbered `ino`, or None."""

    def scan_inode(self, ino: int) -> Inode | None:
        """`get_inode` for a walk that reads each inode once (a get's plan): an engine
        may skip what only pays for inodes read again and again (a cache)."""
        return self.get_inode(ino)

    @abstractmethod
    def lookup(self, parent: int, name: str) -> int | None:
        """The inode number of `name` in directory `parent`, or None."""

    @abstractmethod
    def list_dir(self, parent: int) -> Iterator[tuple[str, int]]:
        """(name, ino) of every entry of directory `parent`, in UTF-8 byte order."""

    def list_dir_after(self, parent: int, after: str) -> Iterator[tuple[str, int]]:
        """(name, ino) of the entries of directory `parent` whose names sort after
        `after` (UTF-8 byte order; "" for all): a listing resumed in a later snapshot.
        An engine that can seek to `after` overrides this scan from the start."""
        key = after.encode("utf-8")
        for name, ino in self.list_dir(parent):
            if name.encode("utf-8") > key:
                yield name, ino

    def read_ahead(self, walks: Iterable[tuple[int, Sequence[str]]], *,
                   manifests: bool = False, chunks: Iterable[bytes] = (),
                   packs: Iterable[bytes] = ()) -> None:
        """A hint: the caller is about to look up, for each (directory, names) of
        `walks`, each name below the one before, starting in that directory, and to
        read the inodes met (with `manifests`, also the manifest of each walk's last
        entry), to ask which of `chunks` exist (`present_chunks`) and to read the
        records of `packs`. An engine whose reads cross a network reads them all at
        once; the embedded one does nothing. Changes nothing and raises nothing of its
        own."""
        return None

    @abstractmethod
    def iter_inodes(self) -> Iterator[Inode]:
        """Every inode, in inode-number order."""

    @abstractmethod
    def get_manifest(self, ino: int) -> Manifest | None:
        """The current manifest of file `ino`, or None."""

    def scan_manifest(self, ino: int) -> ManifestEntries | None:
        """`get_manifest` as plain values (`Manifest.entries`), for a walk that keeps
        no Manifest (a get's plan); an engine may decode it faster."""
        m = self.get_manifest(ino)
        return None if m is None else m.entries()

    @abstractmethod
    def iter_manifests(self) -> Iterator[tuple[int, Manifest]]:
        """(ino, manifest) for every file that has one."""

    def manifest_problems(self) -> list[str]:
        """Inconsistencies in how the engine stores manifests (shared bodies whose
        refcount is wrong, for fsck); none by default."""
        return []

    def shared_manifests(self) -> int:
        """How many manifest bodies the engine stores shared by identical contents
        (0 for an engine that stores every manifest whole)."""
        return 0

    # -- chunks, packs, pools ---------------------------------------------
    @abstractmethod
    def get_chunk(self, cid: bytes) -> ChunkRecord | None:
        """The chunk index entry for `cid`, or None."""

    def has_chunk(self, cid: bytes) -> bool:
        """Whether the chunk index has an entry for `cid` (engines may answer faster)."""
        return self.get_chunk(cid) is not None

    def get_chunks(self, cids: Iterable[bytes]) -> dict[bytes, ChunkRecord]:
        """The chunk index entries of those of `cids` that have one (engines may answer
        in one round trip)."""
        found = {}
        for cid in cids:
            rec = self.get_chunk(cid)
            if rec is not None:
                found[cid] = rec
        return found

    def present_chunks(self, cids: Iterable[bytes]) -> set[bytes]:
        """Which of `cids` the chunk index has (engines may answer in one round trip)."""
        return {cid for cid in cids if self.has_chunk(cid)}

    @abstractmethod
    def iter_chunks(self) -> Iterator[ChunkRecord]:
        """Every chunk index entry, in id order."""

    @abstractmethod
    def get_pack(self, pack_id: bytes) -> PackRecord | None:
        """The committed pack `pack_id`, or None."""

    @abstractmethod
    def iter_packs(self) -> Iterator[PackRecord]:
        """Every committed pack."""

    @abstractmethod
    def iter_pending(self) -> Iterator[PendingPack]:
        """Every pack announced by a writer and not yet committed or abandoned."""

    @abstractmethod
    def get_pool(self, pool_id: int) -> PoolRecord | None:
        """The pool numbered `pool_id`, or None."""

    @abstractmethod
    def iter_pools(self) -> Iterator[PoolRecord]:
        """Every pool, in id order."""

    # -- opaque values and store facts --------------------------------------
    @abstractmethod
    def get_value(self, table: str, key: bytes) -> bytes | None:
        """The value under `key` in one of VALUE_TABLES, or None."""

    def get_values(self, table: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The values of those of `keys` that `table` has (engines may answer them in
        key order, or in one round trip)."""
        found = {}
        for key in keys:
            value = self.get_value(table, key)
            if value is not None:
                found[key] = value
        return found

    @abstractmethod
    def iter_values(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of `table` whose key starts with `prefix`, in key order."""

    @abstractmethod
    def get_meta(self, key: str) -> bytes | None:
        """A store-wide fact (format version, store id), or None."""


class WriteTxn(ReadTxn):
    """Read and write access; all changes commit together or not at all."""

    @abstractmethod
    def alloc_ino(self) -> int:
        """A fresh inode number, never handed out before in this store."""

    @abstractmethod
    def put_inode(self, inode: Inode) -> None:
        """Create or replace inode `inode.ino`."""

    @abstractmethod
    def delete_inode(self, ino: int) -> None:
        """Remove inode `ino` (no-op if absent)."""

    @abstractmethod
    def link(self, parent: int, name: str, ino: int) -> None:
        """Create or replace the entry `name` of directory `parent`."""

    @abstractmethod
    def unlink(self, parent: int, name: str) -> None:
        """Remove the entry `name` of directory `parent` (no-op if absent)."""

    @abstractmethod
    def put_manifest(self, ino: int, manifest: Manifest) -> None:
        """Set the current manifest of file `ino`."""

    def add_files(self, parent: int, files: Sequence[tuple[str, Inode, Manifest]]) -> None:
        """Link new file inodes into directory `parent`, each (name, inode, manifest) as
        `link`, `put_inode` and `put_manifest` would, in order; the inodes are fresh
        (`alloc_ino` in this transaction, no manifest yet). An engine may write them
        in one pass (a put commits a directory's new files together)."""
        for name, node, manifest in files:
            self.link(parent, name, node.ino)
            self.put_inode(node)
            self.put_manifest(node.ino, manifest)

    def add_new_files(self, parent: int, files: Sequence[NewFile], now: int) -> None:
        """Link new regular files into directory `parent` (names it does not have), in
        order: each (name, refs, mode, uid, gid, mtime_ns) a fresh inode (`alloc_ino`)
        made at `now` (its atime and ctime), version 1, one link, its mode's permission
        bits and `refs`' total size, with the version-1 manifest of `refs`, written as
        `add_files` writes them. An engine may encode the rows in one call."""
        rows = []
        for name, refs, mode, uid, gid, mtime_ns in files:
            size = 0
            for r in refs:
                size += r.length
            node = new_inode(self.alloc_ino(), parent, Kind.FILE, mode & 0o7777, uid, gid,
                             size, now, mtime_ns, now, 1, "", 1, 0)
            rows.append((name, node, Manifest(1, tuple(refs))))
        self.add_files(parent, rows)

    @abstractmethod
    def delete_manifest(self, ino: int) -> None:
        """Remove the manifest of `ino` (no-op if absent)."""

    @abstractmethod
    def put_chunk(self, rec: ChunkRecord) -> None:
        """Create or replace the chunk index entry `rec.id`."""

    def add_refcounts(self, deltas: Mapping[bytes, int]) -> None:
        """Add each delta to its chunk's refcount (engines may do it without decoding).

        A chunk without a record, or a refcount that would fall below zero, raises
        FormatError (the index is damaged; the transaction aborts).
        """
        for cid, delta in deltas.items():
            rec = self.get_chunk(cid)
            if rec is None:
                raise FormatError(f"chunk {cid.hex()} is referenced but not in the chunk index; "
                                  "run `hutong fsck`")
            if rec.refcount + delta < 0:
                raise FormatError(f"chunk {cid.hex()}: refcount would fall below zero; "
                                  "the index is damaged (run `hutong fsck`)")
            self.put_chunk(replace(rec, refcount=rec.refcount + delta))

    @abstractmethod
    def delete_chunk(self, cid: bytes) -> None:
        """Remove the chunk index entry `cid` (no-op if absent)."""

    @abstractmethod
    def put_pack(self, rec: PackRecord) -> None:
        """Create or replace the pack record `rec.id`."""

    @abstractmethod
    def delete_pack(self, pack_id: bytes) -> None:
        """Remove the pack record (no-op if absent)."""

    @abstractmethod
    def put_pending(self, rec: PendingPack) -> None:
        """Announce a pack a writer is about to write."""

    @abstractmethod
    def delete_pending(self, pack_id: bytes) -> None:
        """Withdraw a pending-pack announcement (no-op if absent)."""

    @abstractmethod
    def put_pool(self, rec: PoolRecord) -> None:
        """Create or replace pool `rec.id`."""

    @abstractmethod
    def put_value(self, table: str, key: bytes, value: bytes) -> None:
        """Set `key` in one of VALUE_TABLES; an unknown table raises ValueError."""

    @abstractmethod
    def delete_value(self, table: str, key: bytes) -> None:
        """Remove `key` from `table` (no-op if absent)."""

    def delete_values(self, table: str, prefix: bytes) -> None:
        """Delete every entry of `table` (one of VALUE_TABLES) whose key starts with
        `prefix` (not empty). An engine on a database server sends it as one statement
        with the commit, without reading the entries first."""
        if not prefix:
            raise ValueError(f"value table {table!r}: a prefix to delete must not be empty")
        for key, _ in list(self.iter_values(table, prefix)):
            self.delete_value(table, key)

    @abstractmethod
    def set_meta(self, key: str, value: bytes) -> None:
        """Set a store-wide fact."""

    def serialize_on(self, key: str) -> None:
        """Make this transaction conflict with every concurrent one that also calls
        `serialize_on(key)`, for an invariant that no single row carries (no directory
        moved inside itself). Engines with one writer at a time need nothing."""


class MetaEngine(ABC):
    """A transactional metadata store. Open one per process and share it between threads."""

    #: How often `transact` tries a function that keeps losing conflicts.
    TRANSACT_ATTEMPTS = 30
    #: Writers on several hosts may share the store (the local gc lock does not
    #: exclude them), so gc deletes dead chunks only after a grace period.
    MULTI_HOST = False
    #: A read waits for a server (a round trip, not microseconds): an event loop hands
    #: reads to a thread instead of running them itself (gfs.mount).
    REMOTE = False

    def transact(self, fn: Callable[[WriteTxn], T], *, tick: bool = False) -> T:
        """Run `fn` in a write transaction and return its result, running it again
        (after a short random back-off) when the transaction loses a serialisation
        conflict. Raises MetaConflictError after TRANSACT_ATTEMPTS conflicts.
        `tick`: `fn` only records reads (heat, access times): see `write_tick`."""
        delay = 0.001
        for attempt in range(self.TRANSACT_ATTEMPTS):
            try:
                with self.write_tick() if tick else self.write() as txn:
                    return fn(txn)
            except MetaConflictError:
                if attempt + 1 == self.TRANSACT_ATTEMPTS:
                    raise
                import random  # here: only a conflict needs it (~1 ms of start-up)

                time.sleep(random.uniform(0, delay))  # back-off between retries, not a sync
                delay = min(delay * 2, 0.2)
        raise AssertionError("unreachable")

    @abstractmethod
    def read(self) -> AbstractContextManager[ReadTxn]:
        """A read-only snapshot transaction."""

    def read_once(self) -> AbstractContextManager[ReadTxn]:
        """A read whose first question to the server stands alone (one entry and its
        inode, one inode): an engine on a server may answer it outside a transaction,
        as one prepared statement; any later question then sees a later snapshot.
        Elsewhere the same as `read()`."""
        return self.read()

    @abstractmethod
    def write(self) -> AbstractContextManager[WriteTxn]:
        """A write transaction: commits on normal exit, aborts on an exception."""

    def tick_rows(self, table: str, rows: int) -> int:
        """How many distinct rows of value table `table` one `write_tick` may change
        for the memory that `rows` rows cost where each lands on a page of its own
        (the default: `rows`). An engine whose write can cost no more than the whole
        table, when that is small, may allow more (LMDB's packed tables)."""
        return rows

    def write_tick(self) -> AbstractContextManager[WriteTxn]:
        """`write()` for bookkeeping of reads only (heat, access times): an engine that
        tidies its storage after changes (LMDB's compaction at close) does not count
        it as a change, so read-mostly commands never pay for that."""
        return self.write()

    def note_lookup(self, parent: int, name: str, node: Inode | None) -> None:
        """A lookup of `name` in directory `parent` was answered from this process's
        own copy (a listing it read): `node`, or None: no such entry. An engine whose
        write transactions assume the rows this process read lately (PostgreSQL's
        guarded guesses) keeps them; the default does nothing."""
        del parent, name, node

    def watch_inodes(self, fn: CommitWatcher) -> bool:
        """Have `fn` called after each write transaction of this engine commits, with the
        inodes it wrote (None: deleted) by number and the directory entries it wrote
        (the inode named, None: removed) by (directory, name), before the next write
        transaction of this process begins (so calls come in commit order); with
        ({}, None) when a commit's outcome is unknown (the connection was lost). False
        if this engine does not (a caller then has nothing to learn: LMDB reads cost
        microseconds)."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Release the engine; later calls raise."""
