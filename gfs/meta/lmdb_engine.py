"""The embedded metadata engine: one LMDB environment with named databases.

Layout and encodings are in docs/format.md ("Metadata") and
`gfs.meta.encoding`.

Concurrency:

* Readers never block and never wait: each read transaction is an MVCC
  snapshot. Read transactions are not tied to threads (py-lmdb opens the
  environment with MDB_NOTLS), so any thread may use any number of them.
* Writers are serialised by LMDB's single writer lock, a robust process-shared
  mutex in `lock.mdb`: at most one write transaction exists per environment
  across *all* processes, and a writer killed while holding it releases it
  (the next writer recovers the lock; the dead writer's changes are discarded
  because they were never referenced by a committed meta page). Inside one
  process an extra `threading.Lock` orders the threads before they reach
  LMDB's lock, so waiting threads sleep without holding the GIL.
* A write transaction commits on normal exit of `write()`; with `sync=True`
  it is on disk when `write()` returns. A process crash (kill -9) at any
  instant leaves the last committed state; an OS crash may lose the last
  commits only with `sync=False`.
* Open one engine per process per environment (LMDB forbids opening the
  same environment twice in one process) and share it between threads. Do
  not use an engine across fork(); open a new one in the child.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from types import TracebackType
from typing import Any

import lmdb

from gfs.errors import FormatError, MetadataDamagedError, StateError
from gfs.meta import blocks, residency
from gfs.meta import compact as compaction
from gfs.meta import encoding as enc
from gfs.meta import shared_manifests as shm
from gfs.meta.engine import VALUE_TABLES, MetaEngine, ReadTxn, WriteTxn
from gfs.meta.records import (
    ROOT_INO,
    ChunkRecord,
    Inode,
    Kind,
    Manifest,
    ManifestEntries,
    NewFile,
    PackRecord,
    PendingPack,
    PoolRecord,
)
from gfs.meta.residency import MapTrimmer

__all__ = ["LmdbEngine"]

_FORMAT = b"format"
#: Rows one read-bookkeeping write (a heat flush) may change in a small packed table
#: (`LmdbEngine.tick_rows`); it also bounds the reads a tracker counts in memory.
TICK_ROWS_SMALL = 16384
_STORE_ID = b"store_id"
_NEXT_INO = b"next_ino"
_MAX_KEY = 511  # LMDB's default maximum key size
_CORE_TABLES = ("meta", "inodes", "dirents", "manifests", "chunks", "packs", "pending", "pools")

#: Shared manifest bodies (gfs.meta.shared_manifests); absent in environments that
#: predate them (read-only opens treat it as empty).
_BODIES = "mbodies"
#: The block databases of the packed tables (gfs.meta.blocks); absent until the first
#: writable open of this version (read-only opens treat them as empty).
_BLOCK_DBS = tuple(blocks.block_db(t).decode() for t in blocks.PACKED_TABLES)

_ino_key = enc.encode_ino


def _entry_key(parent: int, name: str) -> bytes:
    """The `dirents` key of `name` in `parent`; ValueError for an empty name or one
    too long for an LMDB key."""
    return enc.dirent_key_within(parent, name, _MAX_KEY)


#: Scans note their activity to the map trimmer every this many rows (+1).
_TICK_ROWS = 63

#: Decoded inodes kept, keyed by (number, exact record bytes): a lookup or stat of an
#: inode read before skips decoding its compact record (a hit takes ~0.1 us, a decode
#: ~3-6 us: the mount's stat, ls and rename read the same inodes again and again). The
#: key is the whole record, so a changed inode is a miss, never a stale answer; `Inode`
#: is frozen, so sharing one is safe. About 1.5 MiB when full. Scans decode uncached.
INODE_CACHE = 4096
_decode_inode_cached = lru_cache(maxsize=INODE_CACHE)(enc.decode_inode)


class _Dbs:
    """The database handles of one environment, opened once."""

    __slots__ = (
        "chunks",
        "cold",
        "dirents",
        "inodes",
        "manifests",
        "mbodies",
        "meta",
        "packs",
        "pending",
        "pools",
        "trimmer",
        "values",
    )

    def __init__(self, handles: dict[str, Any], trimmer: MapTrimmer) -> None:
        self.trimmer = trimmer
        self.meta = handles["meta"]
        self.inodes = handles["inodes"]
        self.dirents = handles["dirents"]
        self.manifests = handles["manifests"]
        self.mbodies = handles[_BODIES]
        self.chunks = handles["chunks"]
        self.packs = handles["packs"]
        self.pending = handles["pending"]
        self.pools = handles["pools"]
        self.values: dict[str, Any] = {t: handles[t] for t in VALUE_TABLES}
        #: each packed table's handle -> (its name, its block database handle)
        self.cold: dict[Any, tuple[str, Any]] = {
            handles[t]: (t, handles[t + ".z"]) for t in blocks.PACKED_TABLES
            if handles.get(t) is not _ABSENT and handles.get(t + ".z", _ABSENT) is not _ABSENT}


#: A value table that a read-only environment made by an older version lacks: it
#: reads as empty (a writable open creates it).
_ABSENT = object()


def _value_db(dbs: _Dbs, table: str) -> Any:
    db = dbs.values.get(table)
    if db is None:
        raise ValueError(
            f"unknown value table {table!r}; use one of {', '.join(sorted(VALUE_TABLES))}"
        )
    return db


class _LmdbRead(ReadTxn):
    """A ReadTxn over one py-lmdb transaction."""

    __slots__ = ("_d", "_txn")

    def __init__(self, txn: Any, dbs: _Dbs, *, through: bool = False) -> None:
        # hot rows, then packed blocks; `through`: see blocks.BlockTxn
        self._txn = blocks.BlockTxn(txn, dbs.cold, through=through, meta=dbs.meta)
        self._d = dbs

    def _rows(self, db: Any, rows: Iterator[tuple[bytes, bytes]] | None = None
              ) -> Iterator[tuple[bytes, bytes]]:
        """The rows of `db` (or `rows`, a cursor's iterator over it), in key order,
        noting them to the map trimmer: every scan goes through here or ticks itself,
        so no scan leaves the pages it touched resident (gfs.meta.residency)."""
        tick = self._d.trimmer.tick
        for i, row in enumerate(self._txn.rows(db) if rows is None else rows):
            if not i & _TICK_ROWS:
                tick(_TICK_ROWS + 1)
            yield row

    def damaged_records(self) -> Iterator[str]:
        from gfs.meta import record_check  # only fsck checks records

        raw, d = self._txn.txn, self._d
        decoders = {**record_check.RECORD_DECODERS, "dirents": record_check.DIRENT_DECODER,
                    "manifests": self._decode_manifest_row}
        for table, decode in decoders.items():
            db = getattr(d, table)
            if db is _ABSENT:
                continue
            yield from record_check.damaged_rows(
                table, self._rows(db, raw.cursor(db=db).iternext()), decode)
            pair = d.cold.get(db)
            if pair is not None:  # packed: its dictionary, each block, then its rows
                try:
                    dictionary = self._txn.dictionary(table)
                except FormatError as e:
                    yield f"damaged metadata block dictionary: {record_check.reason(e)}"
                    dictionary = None  # its blocks that need it are listed too
                yield from record_check.damaged_blocks(
                    table, self._rows(pair[1], raw.cursor(db=pair[1]).iternext()), decode,
                    dictionary)

    def _decode_manifest_row(self, key: bytes, value: bytes) -> Manifest:
        return shm.decode(enc.decode_ino(key), value, self._body)

    # -- namespace ----------------------------------------------------------
    def _by_ino(self, db: Any, ino: int) -> bytes | None:
        """The value of inode `ino`'s key in `db` (a lookup at one key, noted)."""
        self._d.trimmer.tick()
        data: bytes | None = self._txn.get(_ino_key(ino), db=db)
        return data

    def get_inode(self, ino: int) -> Inode | None:
        data = self._by_ino(self._d.inodes, ino)
        return None if data is None else _decode_inode_cached(ino, data)

    def scan_inode(self, ino: int) -> Inode | None:
        """`get_inode` without the cache of decoded inodes: a walk's inodes all miss it,
        and each miss evicted an entry (a get's plan of 97,000 inodes spent 0.1-0.2 s
        of its 1.3-1.5 s hashing and evicting)."""
        data = self._by_ino(self._d.inodes, ino)
        return None if data is None else enc.decode_inode(ino, data)

    def lookup(self, parent: int, name: str) -> int | None:
        key = enc.dirent_key(parent, name)
        if len(key) > _MAX_KEY:
            return None
        self._d.trimmer.tick()
        data = self._txn.get(key, db=self._d.dirents)
        return None if data is None else enc.decode_dirent_ino(data)

    def list_dir(self, parent: int) -> Iterator[tuple[str, int]]:
        return self.list_dir_after(parent, "")

    def list_dir_after(self, parent: int, after: str) -> Iterator[tuple[str, int]]:
        prefix = _ino_key(parent)
        start = enc.dirent_key(parent, after) + b"\0" if after else prefix
        from_bytes = int.from_bytes
        for key, val in self._rows(self._d.dirents, self._txn.rows(self._d.dirents, start)):
            if key[:8] != prefix:
                return
            try:
                name = key[8:].decode("utf-8")
            except UnicodeDecodeError:
                raise MetadataDamagedError(
                    f"directory entry key {key!r} of inode {parent}: name is not UTF-8; "
                    "the metadata is damaged, run `hutong fsck`"
                    ) from None
            if not 0 < len(val) <= 8:
                enc.decode_dirent_ino(val)  # raises FormatError
            yield name, from_bytes(val, "big")

    def iter_inodes(self) -> Iterator[Inode]:
        decode, decode_ino = enc.decode_inode, enc.decode_ino
        for key, val in self._rows(self._d.inodes):
            yield decode(decode_ino(key), val)

    def _body(self, key: bytes) -> bytes | None:
        db = self._d.mbodies
        if db is _ABSENT:
            return None
        self._d.trimmer.tick()  # a lookup at a random key, in scans of manifests too
        data: bytes | None = self._txn.get(key, db=db)
        return data

    def get_manifest(self, ino: int) -> Manifest | None:
        data = self._by_ino(self._d.manifests, ino)
        return None if data is None else shm.decode(ino, data, self._body)

    def scan_manifest(self, ino: int) -> ManifestEntries | None:
        data = self._by_ino(self._d.manifests, ino)
        if data is None:
            return None
        if shm.ref_key(data) is not None:  # a shared body: read through it
            return shm.decode(ino, data, self._body).entries()
        return enc.manifest_entries(ino, data)

    def iter_manifests(self) -> Iterator[tuple[int, Manifest]]:
        for key, val in self._rows(self._d.manifests):
            ino = enc.decode_ino(key)
            yield ino, shm.decode(ino, val, self._body)

    def shared_manifests(self) -> int:
        db = self._d.mbodies
        return 0 if db is _ABSENT else int(self._txn.stat(db)["entries"])

    def manifest_problems(self) -> list[str]:
        if self._d.mbodies is _ABSENT:
            return []
        return shm.problems(self._rows(self._d.manifests), self._rows(self._d.mbodies))

    # -- chunks, packs, pools -------------------------------------------------
    def get_chunk(self, cid: bytes) -> ChunkRecord | None:
        self._d.trimmer.tick()
        data = self._txn.get(cid, db=self._d.chunks)
        return None if data is None else enc.decode_chunk(cid, data)

    def has_chunk(self, cid: bytes) -> bool:
        self._d.trimmer.tick()
        return self._txn.get(cid, db=self._d.chunks) is not None

    def get_chunks(self, cids: Iterable[bytes]) -> dict[bytes, ChunkRecord]:
        """`get_chunk` of each of `cids`, looked up as `present_chunks` looks them up:
        in id order, so the ids of one packed block take one seek (a get's batch of
        random ids took a cursor seek each, every one of them dropping the GIL)."""
        ids, step, decode = sorted(set(cids)), residency.PART, enc.decode_chunk
        found: dict[bytes, ChunkRecord] = {}
        for i in range(0, len(ids), step):
            part = ids[i:i + step]
            self._d.trimmer.tick(len(part))
            for cid, data in self._txn.get_many(part, self._d.chunks).items():
                found[cid] = decode(cid, data)
        return found

    def present_chunks(self, cids: Iterable[bytes]) -> set[bytes]:
        """`has_chunk` of each of `cids`: looked up in id order, `residency.PART` at a
        time with a tick before each part, so the map is trimmed between parts as between
        single lookups (one tick for a put's batch of 2,048 ids let each fault its
        pages in: put's peak RSS at 10^6 files went from 71 to 141 MiB)."""
        ids, step = sorted(set(cids)), residency.PART
        found: set[bytes] = set()
        for i in range(0, len(ids), step):
            part = ids[i:i + step]
            self._d.trimmer.tick(len(part))
            found.update(self._txn.get_many(part, self._d.chunks))
        return found

    def iter_chunks(self) -> Iterator[ChunkRecord]:
        decode = enc.decode_chunk
        for key, val in self._rows(self._d.chunks):
            yield decode(key, val)

    def get_pack(self, pack_id: bytes) -> PackRecord | None:
        self._d.trimmer.tick()
        data = self._txn.get(pack_id, db=self._d.packs)
        return None if data is None else enc.decode_pack(pack_id, data)

    def iter_packs(self) -> Iterator[PackRecord]:
        for key, val in self._rows(self._d.packs):
            yield enc.decode_pack(key, val)

    def iter_pending(self) -> Iterator[PendingPack]:
        for key, val in self._rows(self._d.pending):
            yield enc.decode_pending(key, val)

    def get_pool(self, pool_id: int) -> PoolRecord | None:
        data = self._txn.get(enc.pool_key(pool_id), db=self._d.pools)
        return None if data is None else enc.decode_pool(pool_id, data)

    def iter_pools(self) -> Iterator[PoolRecord]:
        for key, val in self._rows(self._d.pools):
            yield enc.decode_pool(enc.decode_pool_key(key), val)

    # -- opaque values and store facts -----------------------------------------
    def get_value(self, table: str, key: bytes) -> bytes | None:
        db = _value_db(self._d, table)
        if db is _ABSENT or not 0 < len(key) <= _MAX_KEY:
            return None
        self._d.trimmer.tick()  # heat records: a lookup per chunk a get reads
        data: bytes | None = self._txn.get(key, db=db)
        return data

    def get_values(self, table: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """`get_value` of each of `keys`, in key order, `residency.PART` at a time with
        a tick before each part (as `present_chunks`): keys in one block of a packed table
        take one seek and a bisect each (a restore's heat flush: a key per chunk read)."""
        db = _value_db(self._d, table)
        if db is _ABSENT:
            return {}
        ids = sorted({k for k in keys if 0 < len(k) <= _MAX_KEY})
        step, found = residency.PART, {}
        for i in range(0, len(ids), step):
            part = ids[i:i + step]
            self._d.trimmer.tick(len(part))
            found.update(self._txn.get_many(part, db))
        return found

    def iter_values(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        db = _value_db(self._d, table)
        if db is _ABSENT:
            return
        if prefix:
            if len(prefix) > _MAX_KEY:
                return
            n = len(prefix)
            for key, val in self._rows(db, self._txn.rows(db, prefix)):
                if key[:n] != prefix:
                    return
                yield key, val
        else:
            yield from self._rows(db)

    def get_meta(self, key: str) -> bytes | None:
        data: bytes | None = self._txn.get(key.encode("ascii"), db=self._d.meta)
        return data


class _LmdbWrite(_LmdbRead, WriteTxn):
    """A WriteTxn over one py-lmdb write transaction."""

    __slots__ = ("_fresh", "_ino_due", "_kids", "_next_ino")

    def __init__(self, txn: Any, dbs: _Dbs, *, through: bool = False) -> None:
        super().__init__(txn, dbs, through=through)
        #: the next inode number as this transaction allocates them (read once: a put
        #: allocates one per file and directory)
        self._next_ino: int | None = None
        #: `_next_ino` is not written yet: it is, once, before anything reads the meta
        #: table and at commit (`_finish`), not once per allocation (a meta row put per
        #: file and directory of a put's commit)
        self._ino_due = False
        #: inodes allocated here that no manifest was put for yet: the first
        #: `put_manifest` has no old one to release (a lookup saved per new file)
        self._fresh: set[int] = set()
        #: by inode allocated here: the entries linked in it (no committed entry can
        #: name an inode number not yet allocated), so a lookup in a directory this
        #: transaction made (a put's new tree: a lookup per entry) reads no table
        self._kids: dict[int, dict[str, int]] = {}

    def lookup(self, parent: int, name: str) -> int | None:
        kids = self._kids.get(parent)
        if kids is None or not name:  # (an empty name raises as before)
            return super().lookup(parent, name)
        return kids.get(name)

    def _peek_ino(self) -> int:
        """The number `alloc_ino` hands out next."""
        ino = self._next_ino
        if ino is None:
            raw = self._txn.get(_NEXT_INO, db=self._d.meta)
            if raw is None:
                raise StateError("metadata has no next_ino; the store is not initialised")
            ino = self._next_ino = enc.decode_u64("meta next_ino", raw)
        return ino

    def alloc_ino(self) -> int:
        ino = self._peek_ino()
        self._next_ino = ino + 1
        self._ino_due = True
        self._fresh.add(ino)
        self._kids[ino] = {}
        return ino

    def _finish(self) -> None:
        """Write what this transaction keeps in memory (the next inode number): before
        it commits, and before the meta table is read."""
        if self._ino_due:
            assert self._next_ino is not None
            self._txn.put(_NEXT_INO, enc.encode_u64(self._next_ino), db=self._d.meta)
            self._ino_due = False

    def get_meta(self, key: str) -> bytes | None:
        self._finish()
        return super().get_meta(key)

    def put_inode(self, inode: Inode) -> None:
        self._d.trimmer.tick()
        self._txn.put(_ino_key(inode.ino), enc.encode_inode(inode), db=self._d.inodes)

    def delete_inode(self, ino: int) -> None:
        self._d.trimmer.tick()
        self._txn.delete(_ino_key(ino), db=self._d.inodes)

    def link(self, parent: int, name: str, ino: int) -> None:
        key = _entry_key(parent, name)
        self._d.trimmer.tick()
        self._txn.put(key, enc.encode_dirent_ino(ino), db=self._d.dirents)
        kids = self._kids.get(parent)
        if kids is not None:
            kids[name] = ino

    def add_files(self, parent: int, files: Sequence[tuple[str, Inode, Manifest]]) -> None:
        """`WriteTxn.add_files` in one loop: one tick, the parent's key prefix encoded
        once, no call per row (a put's committer spent about a third of its time in
        `link`, `put_inode` and `put_manifest` a file)."""
        d, put, fresh = self._d, self._txn.put, self._fresh
        dirents, inodes, manifests, bodies = d.dirents, d.inodes, d.manifests, d.mbodies
        entry, dirent_ino, encode_inode = _entry_key, enc.encode_dirent_ino, enc.encode_inode
        kids = self._kids.get(parent)
        d.trimmer.tick(3 * len(files))
        for name, node, manifest in files:
            ino = node.ino
            put(entry(parent, name), dirent_ino(ino), db=dirents)
            if kids is not None:
                kids[name] = ino
            key = _ino_key(ino)
            put(key, encode_inode(node), db=inodes)
            fresh.discard(ino)
            shm.put(self._txn, manifests, bodies, key, manifest, replaces=False)

    def add_new_files(self, parent: int, files: Sequence[NewFile], now: int) -> None:
        """`WriteTxn.add_new_files` with each file's rows encoded in one C call
        (`enc.new_file_rows`: no Inode, Manifest or key built in Python), then three
        puts a file; a field C leaves to Python takes the reference, which raises."""
        first = self._peek_ino()
        listed = files if type(files) is list else list(files)
        rows = enc.new_file_rows(parent, first, now, listed, shm.SHARE_MIN_CHUNKS, _MAX_KEY)
        if rows is None:
            super().add_new_files(parent, listed, now)
            return
        if not rows:
            return
        self._next_ino, self._ino_due = first + len(rows), True
        d, put, txn = self._d, self._txn.put, self._txn
        dirents, inodes, manifests, bodies = d.dirents, d.inodes, d.manifests, d.mbodies
        kids = self._kids.get(parent)
        d.trimmer.tick(3 * len(rows))
        for ino, (name, refs, *_), (dkey, dval, ikey, ival, mval) in zip(
                range(first, first + len(rows)), listed, rows, strict=True):
            put(dkey, dval, db=dirents)
            if kids is not None:
                kids[name] = ino
            put(ikey, ival, db=inodes)
            if mval is None:  # shared by identical contents (gfs.meta.shared_manifests)
                shm.put(txn, manifests, bodies, ikey, Manifest(1, tuple(refs)), replaces=False)
            else:
                put(ikey, mval, db=manifests)

    def unlink(self, parent: int, name: str) -> None:
        key = enc.dirent_key(parent, name)
        if len(key) <= _MAX_KEY:
            self._d.trimmer.tick()
            self._txn.delete(key, db=self._d.dirents)
            kids = self._kids.get(parent)
            if kids is not None:
                kids.pop(name, None)

    def put_manifest(self, ino: int, manifest: Manifest) -> None:
        self._d.trimmer.tick()
        fresh = ino in self._fresh
        if fresh:
            self._fresh.discard(ino)
        shm.put(self._txn, self._d.manifests, self._d.mbodies, _ino_key(ino), manifest,
                replaces=not fresh)

    def delete_manifest(self, ino: int) -> None:
        key = _ino_key(ino)
        self._d.trimmer.tick()
        shm.release(self._txn, self._d.manifests, self._d.mbodies, key)
        self._txn.delete(key, db=self._d.manifests)

    def put_chunk(self, rec: ChunkRecord) -> None:
        # a write descends the B-tree like a lookup: it touches map pages too
        self._d.trimmer.tick()
        self._txn.put(rec.id, enc.encode_chunk(rec), db=self._d.chunks)

    def add_refcounts(self, deltas: Mapping[bytes, int]) -> None:
        put, db = self._txn.put, self._d.chunks
        ids, step = sorted(deltas), residency.PART
        for i in range(0, len(ids), step):  # a part's reads then its writes, a tick
            part = ids[i:i + step]  # before each: the map is trimmed between parts
            self._d.trimmer.tick(2 * len(part))
            found = self._txn.get_many(part, db)
            for cid in part:
                data = found.get(cid)
                if data is None:
                    raise MetadataDamagedError(f"chunk {cid.hex()} is referenced but not in "
                                               "the chunk index; run `hutong fsck`")
                if delta := deltas[cid]:
                    put(cid, enc.with_refcount_delta(cid, data, delta), db=db)

    def delete_chunk(self, cid: bytes) -> None:
        if cid:
            self._txn.delete(cid, db=self._d.chunks)

    def put_pack(self, rec: PackRecord) -> None:
        self._txn.put(rec.id, enc.encode_pack(rec), db=self._d.packs)

    def delete_pack(self, pack_id: bytes) -> None:
        if pack_id:
            self._txn.delete(pack_id, db=self._d.packs)

    def put_pending(self, rec: PendingPack) -> None:
        self._txn.put(rec.id, enc.encode_pending(rec), db=self._d.pending)

    def delete_pending(self, pack_id: bytes) -> None:
        if pack_id:
            self._txn.delete(pack_id, db=self._d.pending)

    def put_pool(self, rec: PoolRecord) -> None:
        self._txn.put(enc.pool_key(rec.id), enc.encode_pool(rec), db=self._d.pools)

    def put_value(self, table: str, key: bytes, value: bytes) -> None:
        db = _value_db(self._d, table)
        if not 0 < len(key) <= _MAX_KEY:
            raise ValueError(f"value table {table!r}: key must be 1 to {_MAX_KEY} bytes")
        self._d.trimmer.tick()
        self._txn.put(key, value, db=db)

    def delete_value(self, table: str, key: bytes) -> None:
        db = _value_db(self._d, table)
        if 0 < len(key) <= _MAX_KEY:
            self._d.trimmer.tick()
            self._txn.delete(key, db=db)

    def set_meta(self, key: str, value: bytes) -> None:
        if not key:
            raise ValueError("meta key must not be empty")
        if key == "next_ino":
            self._next_ino = None  # read again at the next allocation
            self._ino_due = False  # what the caller sets replaces it
        self._txn.put(key.encode("ascii"), value, db=self._d.meta)


class _ReadCtx:
    """`with engine.read() as r`: begins a snapshot on enter, ends it on exit."""

    __slots__ = ("_dbs", "_env", "_txn")

    def __init__(self, env: Any, dbs: _Dbs) -> None:
        self._env = env
        self._dbs = dbs
        self._txn: Any = None

    def __enter__(self) -> ReadTxn:
        self._dbs.trimmer.tick()
        self._txn = self._env.begin(write=False)
        return _LmdbRead(self._txn, self._dbs)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            txn.abort()


class _WriteCtx:
    """`with engine.write() as w`: takes the writer lock, commits or aborts on exit."""

    __slots__ = ("_engine", "_tick", "_txn", "_w")

    def __init__(self, engine: LmdbEngine, tick: bool = False) -> None:
        self._engine = engine
        self._tick = tick
        self._txn: Any = None
        self._w: _LmdbWrite | None = None

    def __enter__(self) -> WriteTxn:
        eng = self._engine
        shared = eng._live()
        me = threading.get_ident()
        if shared.writer == me:
            raise StateError(
                f"metadata {eng.path}: nested write transaction in one thread would "
                "deadlock; do all changes in the outer write() block"
            )
        shared.dbs.trimmer.tick()
        shared.wlock.acquire()
        try:
            shared.writer = me
            self._txn = shared.env.begin(write=True)
        except BaseException:
            shared.writer = None
            shared.wlock.release()
            raise
        # a write that records reads rewrites packed heat rows in their blocks rather
        # than adding a hot copy of each (a restore would add one per chunk read)
        # (only in a store compaction made packed, format 5 or 6: older code reads no blocks)
        through = self._tick and self._txn.get(_FORMAT, db=shared.dbs.meta) in enc.PACKED_FORMATS
        self._w = _LmdbWrite(self._txn, shared.dbs, through=through)
        return self._w

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shared = self._engine._live()
        txn, self._txn = self._txn, None
        w, self._w = self._w, None
        try:
            if exc_type is None:
                try:
                    if w is not None:
                        w._finish()
                        w._txn.flush()
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()
                shared.wrote = shared.wrote or not self._tick
            else:
                txn.abort()
        finally:
            shared.writer = None
            shared.wlock.release()


class _SharedEnv:
    """One open LMDB environment of this process, shared by every engine on its path.

    LMDB allows a process to open an environment only once, so engines on the
    same directory share it (and its in-process writer lock).
    """

    __slots__ = ("dbs", "env", "lockfd", "readonly", "start_pgno", "users", "wlock", "writer",
                 "wrote")

    def __init__(self, env: Any, dbs: _Dbs, readonly: bool, lockfd: int | None) -> None:
        self.env = env
        self.dbs = dbs
        self.readonly = readonly
        self.users = 0
        self.wlock = threading.Lock()
        self.writer: int | None = None
        #: A write transaction (not a `write_tick`) committed since the open.
        self.wrote = False
        #: The shared flock on open.lock (gfs.meta.compact) held while open.
        self.lockfd = lockfd
        #: The file's last page at the open (the growth since is a reason to compact).
        self.start_pgno: int = env.info()["last_pgno"]


_SHARED: dict[tuple[str, int], _SharedEnv] = {}
_SHARED_LOCK = threading.Lock()


class LmdbEngine(MetaEngine):
    """The metadata engine over an LMDB environment in directory `path`.

    `map_size` bounds the database size (address space, not disk use);
    `sync=False` skips fsync on commit (tests only: a committed write may be
    lost on an OS crash); `metasync=False` keeps the data flush of each commit
    but leaves its meta page to the next commit or `sync()` (LMDB's
    MDB_NOMETASYNC: an OS crash keeps the database intact but may undo the last
    commits); `readonly=True` opens an initialised environment for
    reading only; with `compact_at_close` (default) the close that ends a writer's
    use of the environment in this process compacts it when that pays and no other
    engine has it open (`gfs.meta.compact`). The first writable open initialises an
    empty environment.
    Engines of one process on the same directory share one environment (the
    first open's settings apply). Raises StateError if the environment cannot
    be opened, is not initialised (read-only), or holds another format version.
    """

    def __init__(
        self,
        path: str,
        *,
        map_size: int = 1 << 40,
        sync: bool = True,
        metasync: bool | None = None,
        readonly: bool = False,
        compact_at_close: bool = True,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.compact_at_close = compact_at_close
        self._key = (os.path.realpath(path), os.getpid())
        with _SHARED_LOCK:
            shared = _SHARED.get(self._key)
            if shared is not None and shared.readonly and not readonly:
                raise StateError(f"metadata environment {path} is open read-only in this "
                                 "process; close that engine before opening it writable")
            if shared is None:
                shared = _SHARED[self._key] = self._open(
                    map_size, sync, sync if metasync is None else sync and metasync)
            shared.users += 1
        self._shared: _SharedEnv | None = shared

    def _open(self, map_size: int, sync: bool, metasync: bool) -> _SharedEnv:
        path, readonly = self.path, self.readonly
        if not readonly:
            os.makedirs(path, exist_ok=True)
        lockfd = compaction.hold_open(path) if os.path.isdir(path) else None
        try:
            return self._open_locked(map_size, sync, metasync, lockfd)
        except BaseException:
            if lockfd is not None:
                os.close(lockfd)
            raise

    def _open_locked(self, map_size: int, sync: bool, metasync: bool,
                     lockfd: int | None) -> _SharedEnv:
        path, readonly = self.path, self.readonly
        try:
            env = lmdb.open(
                path,
                map_size=map_size,
                subdir=True,
                readonly=readonly,
                create=not readonly,
                lock=True,
                sync=sync,
                metasync=metasync,
                readahead=False,
                max_dbs=len(_CORE_TABLES) + 1 + len(VALUE_TABLES) + len(_BLOCK_DBS) + 8,
                max_readers=512,
            )
        except lmdb.Error as e:
            raise StateError(
                f"cannot open the metadata environment {path}: {e}"
                + ("; run `hutong init` first" if readonly else "")
            ) from None
        try:
            env.reader_check()  # free reader slots of dead processes
            dbs = self._open_dbs(env)
        except BaseException:
            env.close()
            raise
        return _SharedEnv(env, dbs, readonly, lockfd)

    def _open_dbs(self, env: Any) -> _Dbs:
        names = (*_CORE_TABLES, _BODIES, *sorted(VALUE_TABLES), *_BLOCK_DBS)
        handles: dict[str, Any] = {}
        if self.readonly:
            try:
                # Without a txn argument py-lmdb opens each handle in its own
                # transaction and keeps it for the environment's lifetime.
                for name in _CORE_TABLES:
                    handles[name] = env.open_db(name.encode(), create=False)
                for name in (_BODIES, *sorted(VALUE_TABLES), *_BLOCK_DBS):
                    try:
                        handles[name] = env.open_db(name.encode(), create=False)
                    except lmdb.NotFoundError:
                        handles[name] = _ABSENT
                with env.begin(write=False) as txn:
                    fmt = txn.get(_FORMAT, db=handles["meta"])
            except lmdb.NotFoundError:
                raise StateError(
                    f"metadata environment {self.path} is not initialised; "
                    "open it writable once (`hutong init`)"
                ) from None
            self._check_format(fmt)
            return _Dbs(handles, MapTrimmer(env))
        with env.begin(write=True) as txn:
            for name in names:
                handles[name] = env.open_db(name.encode(), txn=txn, create=True)
            fmt = txn.get(_FORMAT, db=handles["meta"])
            if fmt is None:
                self._initialise(txn, handles)
            else:
                self._check_format(fmt)
                if fmt not in (enc.FORMAT_VERSION, *enc.PACKED_FORMATS):  # its records
                    txn.put(_FORMAT, enc.FORMAT_VERSION, db=handles["meta"])  # read as they are
        return _Dbs(handles, MapTrimmer(env))

    def _check_format(self, fmt: bytes | None) -> None:
        if fmt not in enc.READABLE_FORMATS:
            found = "none" if fmt is None else fmt.decode("ascii", "replace")
            raise StateError(
                f"metadata environment {self.path} has format version {found}; this "
                f"version of Hutong reads formats {b', '.join(enc.READABLE_FORMATS).decode()}. "
                "Use a matching Hutong version or migrate the store"
            )

    def _initialise(self, txn: Any, handles: dict[str, Any]) -> None:
        meta, inodes = handles["meta"], handles["inodes"]
        if txn.stat(inodes)["entries"] or txn.stat(meta)["entries"]:
            raise StateError(
                f"metadata environment {self.path} holds data but no format version; "
                "it is not a Hutong store or it is damaged (run `hutong fsck`)"
            )
        now = time.time_ns()
        root = Inode(
            ino=ROOT_INO,
            parent=ROOT_INO,
            kind=Kind.DIR,
            mode=0o755,
            uid=os.getuid(),
            gid=os.getgid(),
            size=0,
            atime_ns=now,
            mtime_ns=now,
            ctime_ns=now,
            nlink=2,
        )
        txn.put(_FORMAT, enc.FORMAT_VERSION, db=meta)
        txn.put(_STORE_ID, os.urandom(16), db=meta)
        txn.put(_NEXT_INO, enc.encode_u64(ROOT_INO + 1), db=meta)
        txn.put(enc.encode_ino(ROOT_INO), enc.encode_inode(root), db=inodes)

    def _live(self) -> _SharedEnv:
        shared = self._shared
        if shared is None:
            raise StateError(f"metadata engine {self.path} is closed; open a new one")
        return shared

    def read(self) -> _ReadCtx:
        """A read-only snapshot transaction: `with engine.read() as r: ...`."""
        shared = self._live()
        return _ReadCtx(shared.env, shared.dbs)

    def write(self) -> _WriteCtx:
        """A write transaction: commits on normal exit, aborts on an exception."""
        return self._writer(tick=False)

    def tick_rows(self, table: str, rows: int) -> int:
        """`rows`, or TICK_ROWS_SMALL in a packed store (format 5 or 6) whose `table` takes
        at most half as many leaf pages as `rows`, hot and packed: a write-through
        flush rewrites at most the blocks it falls in (the whole table, appended,
        when it falls in most), so its dirty pages stay within the table plus the
        new rows' blocks (16,384 rows: about 100 pages), under the `rows` pages a
        plain table would dirty."""
        shared = self._live()
        db = _value_db(shared.dbs, table)
        pair = shared.dbs.cold.get(db)
        if pair is None or rows >= TICK_ROWS_SMALL:
            return rows
        with shared.env.begin() as txn:
            if txn.get(_FORMAT, db=shared.dbs.meta) not in enc.PACKED_FORMATS:
                return rows
            pages = sum(s["leaf_pages"] + s["branch_pages"] + s["overflow_pages"]
                        for s in (txn.stat(db), txn.stat(pair[1])))
        return TICK_ROWS_SMALL if pages * 2 <= rows else rows

    def write_tick(self) -> _WriteCtx:
        """A write transaction that records reads only: it does not make the close
        compact (the pages it frees are reused by later commits, so the file does not
        grow with repeated reads)."""
        return self._writer(tick=True)

    def _writer(self, tick: bool) -> _WriteCtx:
        self._live()
        if self.readonly:
            raise StateError(f"metadata engine {self.path} was opened read-only")
        return _WriteCtx(self, tick)

    def sync(self) -> None:
        """Flush every committed transaction to disk (after commits with
        `metasync=False` or `sync=False`)."""
        self._live().env.sync(True)

    @property
    def durable_commits(self) -> bool:
        """Whether a commit is durable when it returns (the environment was opened
        with `sync` and `metasync`); if not, `sync()` makes the commits durable."""
        flags = self._live().env.flags()
        return bool(flags["sync"] and flags["metasync"])

    def close(self) -> None:
        """Release the environment (closed when its last engine closes); later read()
        and write() raise StateError. Idempotent."""
        shared, self._shared = self._shared, None
        if shared is None:
            return
        with _SHARED_LOCK:
            shared.users -= 1
            if shared.users:
                return
            _SHARED.pop(self._key, None)
            grown = shared.env.info()["last_pgno"] - shared.start_pgno
            shared.env.close()
            if shared.lockfd is not None:
                os.close(shared.lockfd)
        if shared.wrote and self.compact_at_close:
            compaction.auto_compact(self.path, grown)

    @property
    def _env(self) -> Any:
        """The LMDB environment (None when closed); for tests that damage records."""
        return None if self._shared is None else self._shared.env

    @property
    def _dbs(self) -> _Dbs:
        return self._live().dbs

    def __repr__(self) -> str:
        state = "closed" if self._shared is None else ("read-only" if self.readonly else "open")
        return f"LmdbEngine({self.path!r}, {state})"
