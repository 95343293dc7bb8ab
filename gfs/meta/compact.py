"""Compaction of an LMDB metadata environment: rewrite it packed, swap it in.

LMDB never shrinks its file: pages freed by copy-on-write stay in it as free
pages, and a table that grows in the middle (directory entries, chunk ids)
splits pages in half and leaves them part full. `compact` writes every table
into a new environment in key order (append mode, so leaf pages are full),
checks its entry counts, fsyncs it and renames its data file over the old one:
until the rename the old file is the store, and the rename is atomic, so a
crash (kill -9) at any instant leaves one complete environment.

It runs only when no engine has the environment open: every `LmdbEngine`
holds a shared flock on `open.lock` in the environment's directory while it
is open, and compaction takes it exclusive without waiting (it does nothing
when it cannot). An engine that opens meanwhile waits for it to finish.
`LmdbEngine.close` compacts after a writer's last close when the file is at
least `MIN_BYTES`, at most `AUTO_MAX_BYTES` (a larger copy would stall the
closing command for seconds) and at least `MIN_FREE` of it is free pages or
pages added since the open. `compact_now` (`hutong meta compact`) compacts
a store of any size on demand (docs/format.md, "Compaction").
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import lmdb

from gfs import _rowpack, detach
from gfs.errors import FormatError, StateError
from gfs.meta import block_dicts, blocks
from gfs.meta.encoding import PACKED_FORMAT
from gfs.meta.residency import MapTrimmer

__all__ = ["AUTO_MAX_BYTES", "MIN_BYTES", "MIN_FREE", "OPEN_LOCK", "Compacted", "auto_compact",
           "compact", "compact_now", "free_share", "hold_open"]

#: The lock file every open engine holds shared.
OPEN_LOCK = "open.lock"
#: The directory the packed copy is written in (removed before and after).
_TMP = "compact.tmp"
#: Compact at close only a file at least this large ...
MIN_BYTES = 1 << 20
#: ... and at most this large (policy): the copy's time grows with the file (a 397 MB
#: file took 4.8 s, load 14) and lands on whichever close crosses MIN_FREE; larger
#: files compact on demand (`hutong meta compact`).
AUTO_MAX_BYTES = 64 << 20
#: ... with at least this share of free pages and pages added since the open.
MIN_FREE = 0.1
#: Rows per write transaction of the copy (bounds its dirty pages in memory).
_BATCH = 20000
#: Rows appended between two ticks of the maps' trimmers (a row is at most about a page:
#: ~1 MiB of either map between ticks). One tick per commit of _BATCH rows let the
#: close of a put of 10^5 files hold 22 MiB of the source map (the put's peak RSS in
#: the scale bench: 73 MiB, 56 with these ticks).
_TICK_ROWS = 256
_MAX_DBS = 64
#: Hot rows a step of the dictionary's sampling takes from a cursor.
_SAMPLE_BATCH = 1024
#: Rows as (keys, values), in key order.
_RowBatch = tuple[Sequence[bytes], Sequence[bytes]]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compacted:
    """What a compaction did: the file's size before and after, and its seconds."""

    before: int
    after: int
    seconds: float


class _Busy(Exception):
    """An engine has the environment open (open.lock is held shared)."""


def hold_open(path: str) -> int | None:
    """A descriptor of `path`/open.lock holding a shared flock (waits while a compaction
    runs), or None where the lock file cannot be made (a read-only directory: nothing
    can compact it either). The caller closes it when the environment is closed."""
    lock = os.path.join(path, OPEN_LOCK)
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            fd = os.open(lock, flags | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # no flock on this file system: compaction cannot lock it either
            os.close(fd)
            return None
        return fd
    return None


def free_share(env: lmdb.Environment) -> float:
    """The share of `env`'s file that is free pages (cheap: page counts only)."""
    info = env.info()
    total = info["last_pgno"] + 1
    used = 2  # the two meta pages
    with env.begin() as txn:
        for s in [env.stat(), *(txn.stat(env.open_db(k, txn=txn, create=False))
                                for k, _ in txn.cursor())]:
            used += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
    return max(0.0, (total - used) / total)


def compact(path: str, *, min_bytes: int = 0, max_bytes: int | None = None,
            min_free: float = 0.0, grown_pages: int = 0) -> Compacted | None:
    """Rewrite the LMDB environment in directory `path` packed, if no engine has it open
    and its data file is at least `min_bytes` (and at most `max_bytes`) with at least
    `min_free` of it free pages or new pages (`grown_pages`: the file grew by so many
    pages since the caller opened it; new pages of keys written in no order are part
    full); None when it did nothing. Raises FormatError (changing nothing) if the
    copy's entry counts differ from the original's."""
    before = _size_within(path, min_bytes, max_bytes)
    if before is None:
        return None
    try:
        return _compact_exclusive(path, before, min_free, grown_pages)
    except _Busy:
        return None  # open elsewhere: try again at a later close


def _size_within(path: str, min_bytes: int, max_bytes: int | None) -> int | None:
    """The size of `path`/data.mdb if it is within [min_bytes, max_bytes], else None
    (None also when there is no such file)."""
    try:
        size = os.path.getsize(os.path.join(path, "data.mdb"))
    except OSError:
        return None
    if size < min_bytes or (max_bytes is not None and size > max_bytes):
        return None
    return size


def compact_now(path: str, *, min_free: float = 0.0) -> Compacted | None:
    """Compact the LMDB environment in directory `path` whatever its size (`hutong meta
    compact`); None when less than `min_free` of it is free or part-full pages would
    go. Raises StateError (changing nothing) when there is no environment there or
    another engine, in any process, has it open."""
    try:
        before = os.path.getsize(os.path.join(path, "data.mdb"))
    except FileNotFoundError:
        raise StateError(f"no LMDB metadata environment at {path}; pass the --state of a "
                         "store that keeps its metadata embedded") from None
    try:
        return _compact_exclusive(path, before, min_free, 0)
    except _Busy:
        raise StateError(f"the metadata at {path} is open in another process (a put, "
                         "a mount, a site); compact once it has closed") from None


#: Environments whose compaction this process left to its exit, with the pages the
#: closes since grew their files by: one entry however often a process closes one.
_left: dict[str, int] = {}


def auto_compact(path: str, grown_pages: int) -> None:
    """The compaction a writer's last close asks for (`MIN_BYTES`, `AUTO_MAX_BYTES`,
    `MIN_FREE`): left to the command's exit, which runs it in a detached child
    (`gfs.detach`), where the process allows that, else done now. A failure is logged
    and changes nothing."""
    if path in _left:
        _left[path] += grown_pages
    elif detach.leave(lambda: _prepare_auto(path)):
        _left[path] = grown_pages
    else:
        _logged(lambda: compact(path, min_bytes=MIN_BYTES, max_bytes=AUTO_MAX_BYTES,
                                min_free=MIN_FREE, grown_pages=grown_pages), path)


def _prepare_auto(path: str) -> detach.Work | None:
    """In the exiting process: None when the file is out of the automatic range or an
    engine has it open, else the compaction, with open.lock already held exclusive (an
    engine opened from now on waits for it)."""
    grown_pages = _left.pop(path, 0)
    before = _size_within(path, MIN_BYTES, AUTO_MAX_BYTES)
    if before is None:
        return None
    try:
        held = _lock_exclusive(path)
    except (OSError, _Busy):
        return None

    def work() -> None:
        try:
            _logged(lambda: _compact_locked(held.path, before, MIN_FREE, grown_pages), path)
        finally:
            held.release()
    return work


def _logged(fn: Callable[[], object], path: str) -> None:
    """`fn()`, an error of the copy logged as a warning (the store is unchanged)."""
    try:
        fn()
    except (OSError, lmdb.Error, FormatError) as e:
        _log.warning("metadata %s: compaction skipped: %s", path, e)


@dataclass(frozen=True)
class _Held:
    """The environment's directory, open, with its open.lock held exclusive. `path`
    names that directory through the descriptor (/proc/self/fd/N) where the system
    has it: the copy and its swap stay in the directory that was locked even if the
    store is moved or removed and another put at its path meanwhile (the other's
    open.lock is another file, so its engines would not wait for this copy)."""

    dirfd: int
    lockfd: int
    path: str

    def release(self) -> None:
        """Drop the lock and close the directory."""
        os.close(self.lockfd)
        os.close(self.dirfd)


def _lock_exclusive(path: str) -> _Held:
    """`path`'s directory with its open.lock held exclusive; `_Busy` when an engine
    holds it."""
    dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(OPEN_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=dirfd)
    except BaseException:
        os.close(dirfd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as e:
        os.close(fd)
        os.close(dirfd)
        if isinstance(e, BlockingIOError):
            raise _Busy from None
        raise
    anchored = f"/proc/self/fd/{dirfd}"
    return _Held(dirfd, fd, anchored if os.path.isdir(anchored) else path)


def _compact_exclusive(path: str, before: int, min_free: float,
                       grown_pages: int) -> Compacted | None:
    """`_compact_locked` under open.lock held exclusive; `_Busy` when an engine holds it."""
    held = _lock_exclusive(path)
    try:
        return _compact_locked(held.path, before, min_free, grown_pages)
    finally:
        held.release()


def _compact_locked(path: str, before: int, min_free: float,
                    grown_pages: int) -> Compacted | None:
    import shutil  # here: the copy runs after the command, in its detached child

    start = time.perf_counter()
    tmp = Path(path) / _TMP
    shutil.rmtree(tmp, ignore_errors=True)  # a copy a crash left
    src = lmdb.open(path, readonly=True, max_dbs=_MAX_DBS, readahead=False)
    try:
        total = src.info()["last_pgno"] + 1
        if min_free and free_share(src) + grown_pages / total < min_free:
            return None
        tmp.mkdir()
        # room for the copy's own churn: a packed source can sit at its map size
        room = max(src.info()["map_size"], 2 * os.path.getsize(os.path.join(path, "data.mdb"))
                   + (64 << 20))
        dst = lmdb.open(str(tmp), map_size=room, max_dbs=_MAX_DBS,
                        sync=False, metasync=False, readahead=False)
        try:
            _copy_packed(src, dst)
            dst.sync(True)
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(tmp / "data.mdb", Path(path) / "data.mdb")
    dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    shutil.rmtree(tmp, ignore_errors=True)
    return Compacted(before, os.path.getsize(os.path.join(path, "data.mdb")),
                     time.perf_counter() - start)


_PACKED = {t.encode(): t for t in blocks.PACKED_TABLES}
_BLOCK_DBS = {blocks.block_db(t) for t in blocks.PACKED_TABLES}


class _Dest:
    """The copy's write transaction, shared by every table and committed every `_BATCH`
    rows: a store smaller than that is copied in one transaction, so the copy frees
    no pages (each commit frees the pages it copied on write: a transaction per
    table left a packed smallfiles file 6 free pages of 210)."""

    def __init__(self, env: lmdb.Environment, trims: tuple[MapTrimmer, ...]) -> None:
        self.env = env
        self.trims = trims
        self.rows = 0
        self.txn: Any = env.begin(write=True)

    def open_db(self, name: bytes) -> Any:
        return self.env.open_db(name, txn=self.txn, create=True)

    def append(self, db: Any, rows: Iterator[tuple[bytes, bytes]]) -> int:
        """Append `rows` (ascending keys) to `db`; how many."""
        n = 0
        while True:
            batch = list(islice(rows, min(_TICK_ROWS, _BATCH - self.rows)))
            if not batch:
                return n
            self.txn.cursor(db=db).putmulti(batch, append=True)
            n += len(batch)
            self.rows += len(batch)
            for t in self.trims:
                t.tick(len(batch))
            if self.rows >= _BATCH:
                self.txn.commit()
                self.txn, self.rows = self.env.begin(write=True), 0

    def entries(self, db: Any) -> int:
        return int(self.txn.stat(db)["entries"])


def _copy_packed(src: lmdb.Environment, dst: lmdb.Environment) -> None:
    """Every named database of `src` into empty `dst`, rows in key order appended, the
    packed tables' rows (hot and packed, merged) as blocks (gfs.meta.blocks); both
    maps trimmed as it goes (gfs.meta.residency), so the copy does not leave the whole
    file resident."""
    out = _Dest(dst, (MapTrimmer(src), MapTrimmer(dst)))
    trained: dict[bytes, bytes] = {}  # the tables' new block dictionaries (b"": none)
    try:
        with src.begin() as rtxn:
            names = [bytes(k) for k, _ in rtxn.cursor()]
            for name in names:
                if name in _BLOCK_DBS:
                    continue  # copied with its table
                sdb = src.open_db(name, txn=rtxn, create=False)
                ddb = out.open_db(name)
                table = _PACKED.get(name)
                if table is None:
                    out.append(ddb, rtxn.cursor(db=sdb).iternext())
                    got, want = out.entries(ddb), rtxn.stat(sdb)["entries"]
                else:
                    got, want, decided = _copy_blocks(src, rtxn, sdb, table, out)
                    if decided is not None:
                        trained[block_dicts.meta_key(table)] = decided
                if got != want:
                    raise FormatError(f"metadata compaction of database {name!r}: the copy "
                                      f"has {got} entries for {want}; the store is "
                                      "unchanged, run `hutong fsck`")
        meta = out.open_db(b"meta")
        for key, raw in trained.items():  # after the copy of `meta` (appended in order)
            out.txn.put(key, raw, db=meta)
        out.txn.put(b"format", PACKED_FORMAT, db=meta)
        out.txn.commit()
    except BaseException:
        out.txn.abort()
        raise


def _copy_blocks(src: lmdb.Environment, rtxn: Any, sdb: Any, table: str,
                 out: _Dest) -> tuple[int, int, bytes | None]:
    """The current rows of packed `table` (hot rows merged into its blocks; blocks no
    hot row falls in copied as they are) into `dst`'s block database, its table left
    empty; (rows the copy's blocks hold, current rows of the source: hot and packed
    rows less the packed rows hot ones replace, the table's block dictionary if this
    copy decided it: its bytes, or b"" for none)."""
    bname = blocks.block_db(table)
    try:
        sbdb: Any = src.open_db(bname, txn=rtxn, create=False)
    except lmdb.NotFoundError:  # made before packed blocks
        sbdb = None
    stored = rtxn.get(block_dicts.meta_key(table), db=src.open_db(b"meta", txn=rtxn,
                                                                  create=False))
    decided = None
    try:
        dictionary = block_dicts.BlockDict.load(stored, table)
    except ValueError as e:
        raise FormatError(f"metadata compaction: {e}; the store is unchanged, run "
                          "`hutong fsck`") from None
    if stored is None and sbdb is not None and (last := _last_key(rtxn, sbdb)) is not None:
        # tried on the rows past every packed one: rows of new keys (a hot row of a
        # packed key, such as a chunk's new refcount, repeats what it is trained on)
        cur = rtxn.cursor(db=sdb)
        new = _samples(_hot_rows(cur.iternext()) if cur.set_range(last + b"\0")
                       else iter(()))
        if sum(map(len, new)) >= block_dicts.EVAL_MIN_RAW:
            old = _samples(_packed_rows(rtxn, sbdb, table))
            if sum(map(len, old)) >= block_dicts.TRAIN_MIN_RAW:
                dictionary = block_dicts.train(old, new)
                decided = dictionary.raw if dictionary is not None else b""
    rows = rtxn.stat(sdb)["entries"]  # the hot rows (a generator counting them cost a
    # Python frame a row: ~10% of a later put's compaction)

    def packed() -> Iterator[tuple[bytes, bytes]]:
        nonlocal rows
        for bkey, data in ([] if sbdb is None else rtxn.cursor(db=sbdb).iternext()):
            rows += blocks.block_rows(data)
            yield bkey, data

    dbdb = out.open_db(bname)
    count = blocks.RepackCount()
    # a new dictionary: every block is encoded with it, the packed ones again too
    out.append(dbdb, blocks.repack(table, rtxn.cursor(db=sdb).iternext(), packed(), count,
                                   dictionary, recode=bool(decided)))
    got = sum(blocks.block_rows(data) for _, data in out.txn.cursor(db=dbdb).iternext())
    return got, rows - count.shadowed, decided  # a hot row over a packed one is one row


def _last_key(rtxn: Any, sbdb: Any) -> bytes | None:
    """The last block key of a block database (its last packed row's), or None."""
    cur = rtxn.cursor(db=sbdb)
    return bytes(cur.key()) if cur.last() else None


def _packed_rows(rtxn: Any, sbdb: Any, table: str) -> Iterator[_RowBatch]:
    """The rows of `table`'s blocks (it has no dictionary yet), in key order: (keys,
    values) a block."""
    for bkey, data in rtxn.cursor(db=sbdb).iternext():
        yield blocks.decode_block(table, bytes(bkey), bytes(data), cached=False)


def _hot_rows(cursor: Any) -> Iterator[_RowBatch]:
    """The rows of an LMDB cursor's iterator, as (keys, values) of up to _SAMPLE_BATCH
    rows (taken in C: a Python step per row was ~3/4 of the sampling)."""
    while True:
        keys: list[bytes] = []
        values: list[bytes] = []
        if not _rowpack.take(cursor, _SAMPLE_BATCH, keys, values):
            return
        yield keys, values


def _samples(rows: Iterator[_RowBatch]) -> list[bytes]:
    """`rows` ((keys, values) batches, in key order) as raw blocks cut once they hold
    `blocks.TARGET_RAW` bytes (a row counts its key, value and 6 bytes of lengths), up
    to `TRAIN_SAMPLE` bytes: what a block dictionary is trained or tried on."""
    samples: list[bytes] = []
    keys: list[bytes] = []
    values: list[bytes] = []
    ends, body_ends = [0], [0]  # ends[i]: the bytes of rows 0..i-1 (the packer's sums)
    lo = total = 0
    for ks, vs in rows:
        _rowpack.sums(ks, vs, body_ends, ends, keys[-1] if keys else None)
        keys += ks
        values += vs
        while (hi := bisect_left(ends, ends[lo] + blocks.TARGET_RAW, lo + 1)) < len(ends):
            samples.append(_rowpack.body(keys, values, lo, hi))
            total += ends[hi] - ends[lo]
            lo = hi
            if total >= block_dicts.TRAIN_SAMPLE:
                return samples
    if lo < len(keys):
        samples.append(_rowpack.body(keys, values, lo, len(keys)))
    return samples
