"""The chunk store: deduplicated, compressed chunks in packs over pools.

`ChunkStore` reads chunks (verified, falling back to other copies) and opens
`WriteSession`s. A write session holds the gc lock shared, compresses new
chunks on worker threads, appends them to a pack, writes the pack durably to
the pool, and then commits files in batches: one metadata transaction records
the packs, the new chunks, the refcounts and the namespace changes
(docs/format.md, "Writers and gc").
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from gfs import chunking, delta, groups, namespace, pool_keys
from gfs.codec import (
    BASED_CODECS,
    CHUNK_ID_LEN,
    CODEC_DELTA,
    CODEC_MEMBER,
    Buffer,
    decode_blob,
    encode_blobs,
    parse_blob_header,
)
from gfs.config import StoreConfig
from gfs.env import TIERS
from gfs.errors import (
    FormatError,
    MetadataDamagedError,
    NoSpaceError,
    PoolObjectMissingError,
    StateError,
)
from gfs.meta import (
    ChunkRecord,
    ChunkRef,
    Location,
    Manifest,
    MetaEngine,
    PackRecord,
    PoolRecord,
    ReadTxn,
    WriteTxn,
)
from gfs.meta.records import chunk_record, with_refcount
from gfs.pack_tail import TailPack, TailPackGoneError
from gfs.packs import NO_OWNER, PACK_HEADER_LEN, PackBuilder, owner_tag, pack_key, parse_pack_head
from gfs.pools import Pool, open_pool
from gfs.pools.local import LocalPool, StagedPut
from gfs.read.local import LocalSource
from gfs.state import is_private_url, pool_location

log = logging.getLogger("hutong.store")

_ref_length = attrgetter("length")

#: Files up to this size are read whole; larger ones are chunked as a stream.
WHOLE_READ_LIMIT = 8 << 20
#: A file larger than that is read, cut and hashed in blocks of this many bytes.
STREAM_BLOCK_BYTES = 8 << 20
#: New chunks compressed together by one worker task (at most this many, or bytes).
ENCODE_GROUP = 64
ENCODE_GROUP_BYTES = 1 << 20
#: A group this small with nothing else in flight is encoded by the writing thread.
INLINE_ENCODE_BYTES = 64 << 10

#: A commit comes once the queued files reference this many chunks, however few files
#: they are. In a big chunk table each chunk record a commit adds or counts a
#: reference to lands on its own leaf page, and LMDB keeps every page a write
#: transaction dirtied in malloc'd memory for the rest of the process's life
#: (measured: one transaction of 8,000 random inserts into a table of 10^6 rows kept
#: 25 MiB, of 2,000 kept 7 MiB; put's heap at 10^6 one-chunk files was 33 MiB).
COMMIT_CHUNKS = 2048
#: An overlapping session (`ChunkStore.writer(overlap=True)`) gathers the next batch
#: while at most this many sealed batches wait for or run their commit.
SEALED_BATCHES = 2
#: ... and at most this many raw bytes are handed to its workers and not yet appended
#: to a pack: enough to keep the workers busy through a commit (a count of encodings,
#: as a session that does not overlap bounds them, filled up during each commit and
#: stalled the workers again).
OVERLAP_BYTES = 32 << 20
#: A pack's blobs are written to its pool's temporary (`LocalPool.stage`, unsynced)
#: each time this many bytes of it are not written yet, so that the commit making it
#: durable writes at most this much, then fsyncs and renames: writing a whole pack
#: into fresh page-cache pages at the final commit held a put's end ~0.1 s per 16 MiB.
#: 1 MiB, not 4: the main thread's wait at a releases-quick put's final commit was
#: 0.136 s against 0.183 (v1), 0.091 against 0.122 (v2; medians of 6 pairs).
STAGE_BYTES = 1 << 20

#: Called inside the commit transaction with the file's new manifest; returns
#: the manifest it replaced (whose references are then released), if any.
CommitAction = Callable[[WriteTxn, list[ChunkRef]], Manifest | None]


class RunAction:
    """A `CommitAction` applied together with the consecutive actions of its own class
    and an equal `run` key (a put's files in one directory): `apply_run` gets them
    all, with their refs, and returns what each one's call would have."""

    __slots__ = ("run",)

    def __init__(self, run: object) -> None:
        self.run = run

    def __call__(self, txn: WriteTxn, refs: list[ChunkRef]) -> Manifest | None:
        return self.apply_run(txn, [(refs, self)])[0]

    def apply_run(self, txn: WriteTxn, items: Sequence[tuple[list[ChunkRef], CommitAction]],
                  ) -> list[Manifest | None]:
        """Apply the actions of `items` (this one first, all of its class and run)."""
        raise NotImplementedError


def apply_actions(txn: WriteTxn, files: Sequence[tuple[list[ChunkRef], CommitAction]],
                  ) -> Iterator[Manifest]:
    """Apply each action of `files` to its refs, in order (a run of `RunAction`s in
    one `apply_run`); the manifests they replaced."""
    i, n = 0, len(files)
    while i < n:
        refs, action = files[i]
        if not isinstance(action, RunAction):
            old = action(txn, refs)
            if old is not None:
                yield old
            i += 1
            continue
        kind, run, j = type(action), action.run, i + 1
        while j < n and isinstance(nxt := files[j][1], kind) and nxt.run == run:
            j += 1
        for old in action.apply_run(txn, files[i:j]):
            if old is not None:
                yield old
        i = j


class ReadObserver(Protocol):
    """Told of every chunk read and every file opened for reading (the tierer's heat)."""

    def record(self, cids: Iterable[bytes]) -> None:
        """Count one read of each chunk in `cids`."""

    def record_file(self, ino: int) -> None:
        """Count one open-for-read of file `ino`."""

    def flush(self) -> None:
        """Record what was counted (called when the store closes)."""


class _Unobserved:
    """The observer of a store nobody watches: reads count nothing."""

    def record(self, cids: Iterable[bytes]) -> None:
        pass

    def record_file(self, ino: int) -> None:
        pass

    def flush(self) -> None:
        pass


#: Placement: the tier new packs go to, asked at each write session and repair
#: (the tiering policy's write tier; pools of the tier are chosen by `choose_pool`).
Placement = Callable[[], str]


@dataclass(slots=True)
class _NewChunk:
    pack: bytes
    offset: int
    blob_len: int
    raw_len: int
    stored_len: int
    codec: int
    member: ChunkRecord | None = None  # a folded group member: its record, no blob

_Blobs = list[tuple[bytes, Buffer]]
#: Chunks handed to a worker: their ids (none for a group), the encoding, the
#: resemblance index keys of those that have them (of a group: its members'), and
#: their raw bytes.
_Item = tuple[list[bytes], Future[_Blobs] | Future[groups.Group], dict[bytes, list[bytes]],
              int]


@dataclass(slots=True, eq=False)
class _Batch:
    """Files sealed for one commit, with what the committer needs beside its blobs."""

    files: list[tuple[list[ChunkRef], CommitAction]]
    walks: tuple[tuple[int, Sequence[str]], ...]
    dict_added: bytes | None  # a dictionary chunk first stored in this batch
    ids: set[bytes]  # the new chunks the batch adds (dedup of later files until visible)
    done: Future[None] = field(default_factory=Future)
    #: set by the committer once `done` is: read at every file's dedup lookup, where
    #: `done.done()` took the future's lock each time (~4% of a put's main thread)
    finished: bool = False


@dataclass(slots=True)
class WriteStats:
    """What a write session did."""

    files: int = 0
    logical_bytes: int = 0
    new_chunks: int = 0
    new_raw_bytes: int = 0
    new_stored_bytes: int = 0
    dedup_chunks: int = 0
    delta_chunks: int = 0
    group_members: int = 0
    groups: int = 0
    packs: int = 0
    commits: int = 0
    seconds: float = 0.0


class ChunkStore:
    """Chunks of one store (one dedup domain): reading, and write sessions."""

    def __init__(self, engine: MetaEngine, state: Path, config: StoreConfig, *,
                 observer: ReadObserver | None = None,
                 placement: Placement | None = None) -> None:
        self.engine = engine
        self.state = state
        self.config = config
        self.params = chunking.ChunkParams(config.min_size, config.avg_size, config.max_size)
        self._pools: dict[int, Pool] = {}
        self._pools_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._lock_path = state / "locks" / "gc.lock"
        self.observer: ReadObserver = observer or _Unobserved()
        """Told of every read (heat); see ReadObserver."""
        self.placement: Placement = placement or (lambda: "warm")
        """The tier new packs go to; see Placement."""
        self._tier_rank: dict[int, int] | None = None
        self._owner: bytes | None = None
        self._source: LocalSource | None = None

    # -- pools and workers ---------------------------------------------------
    def pool(self, pool_id: int) -> Pool:
        """The open pool numbered `pool_id`."""
        with self._pools_lock:
            pool = self._pools.get(pool_id)
            if pool is None:
                with self.engine.read() as txn:
                    rec = txn.get_pool(pool_id)
                    sealed, check = pool_keys.sealed_pools(txn)
                if rec is None:
                    raise StateError(f"pool {pool_id} is not registered in {self.state}")
                key = pool_keys.load(self.state, rec.name, check) if pool_id in sealed else None
                pool = open_pool(pool_location(self.state, rec.url))
                if key is not None:
                    from gfs.pools.sealed import SealedPool  # loads cryptography

                    pool = SealedPool(pool, key)
                self._pools[pool_id] = pool
            return pool

    # -- ownership (docs/format.md, "Ownership of packs") ----------------------
    @property
    def owner(self) -> bytes:
        """The owner tag this store writes into its packs."""
        if self._owner is None:
            with self.engine.read() as txn:
                sid = txn.get_meta("store_id")
            if sid is None:
                raise StateError(f"the metadata of {self.state} has no store id; "
                                 "run `hutong fsck`")
            self._owner = owner_tag(sid)
        return self._owner

    def new_pack(self) -> PackBuilder:
        """A pack builder whose header names this store as the owner."""
        return PackBuilder(owner=self.owner)

    def is_private(self, pool_id: int) -> bool:
        """Whether pool `pool_id` lies inside the state directory (only this store uses it)."""
        with self.engine.read() as txn:
            rec = txn.get_pool(pool_id)
        return rec is not None and is_private_url(rec.url)

    def pack_owner(self, pool_id: int, pack_id: bytes) -> bytes | None:
        """The owner tag in a pack's header (NO_OWNER for a version 1 pack), or None
        when the object has no valid pack header. A missing object raises
        PoolObjectMissingError."""
        head = self.pool(pool_id).get(pack_key(pack_id), 0, PACK_HEADER_LEN)
        try:
            pid, tag = parse_pack_head(head)
        except FormatError:
            return None
        return tag if pid == pack_id else None

    def owns(self, pool_id: int, tag: bytes | None, *, referenced: bool) -> bool:
        """Whether this store may delete a pack of pool `pool_id` whose header holds
        `tag`: every pack of a private pool, packs with this store's tag, and version 1
        packs that this store's index references (`referenced`)."""
        if self.is_private(pool_id):
            return True
        return tag == self.owner or (tag == NO_OWNER and referenced)

    def delete_pack_object(self, rec: PackRecord) -> Literal["deleted", "missing", "not owned"]:
        """Delete the object of a pack whose record was just dropped, if this store owns
        it; a pack another store owns is left alone and logged."""
        try:
            tag = self.pack_owner(rec.pool, rec.id)
        except PoolObjectMissingError:
            return "missing"
        if not self.owns(rec.pool, tag, referenced=True):
            log.warning("pack %s in pool %d belongs to another store (owner tag %s): "
                        "left in place", rec.id.hex(), rec.pool, tag.hex() if tag else "?")
            return "not owned"
        self.pool(rec.pool).delete(pack_key(rec.id))
        return "deleted"

    def pool_records(self) -> list[PoolRecord]:
        """Every pool of the store, in id order."""
        with self.engine.read() as txn:
            return list(txn.iter_pools())

    def usage(self) -> dict[int, int]:
        """Bytes of committed packs in each pool (pools with none are absent)."""
        used: dict[int, int] = defaultdict(int)
        with self.engine.read() as txn:
            for p in txn.iter_packs():
                used[p.pool] += p.size
        return dict(used)

    def choose_pool(self, tier: str, nbytes: int, used: dict[int, int]) -> int:
        """A pool of `tier` with room for `nbytes` more (given `used`), else one of the
        next cheaper tiers, else of a faster one; a fallback is logged as a warning.
        Raises NoSpaceError when every pool is full."""
        pools = self.pool_records()
        start = TIERS.index(tier) if tier in TIERS else 1
        order = [*TIERS[start:], *reversed(TIERS[:start])]
        for t in order:
            for rec in pools:
                if rec.tier == t and (rec.capacity == 0
                                      or used.get(rec.id, 0) + nbytes <= rec.capacity):
                    if t != tier:
                        log.warning("every %s pool is full: writing %d bytes to pool %r "
                                    "(tier %s) instead; add capacity or run `hutong tier run`",
                                    tier, nbytes, rec.name, t)
                    return rec.id
        raise NoSpaceError(str(self.state), f"every pool is full ({nbytes} bytes to place); "
                           "add a pool or free space with `hutong rm` and `hutong gc`")

    @property
    def write_pool(self) -> int:
        """The pool new chunks go to now: one of the policy's write tier with room left."""
        return self.choose_pool(self.placement(), 0, self.usage())

    def tier_rank(self, pool_id: int) -> int:
        """0 for a hot pool, 1 warm, 2 cold: reads prefer the lowest."""
        if self._tier_rank is None or pool_id not in self._tier_rank:
            self._tier_rank = {r.id: TIERS.index(r.tier) if r.tier in TIERS else 1
                               for r in self.pool_records()}
        return self._tier_rank.get(pool_id, 1)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The store's worker threads (compression, decompression, restore)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.config.threads, thread_name_prefix="hutong")
        return self._executor

    def sync_puts(self) -> None:
        """Make the packs written by sessions with `durable=False` durable."""
        with self._pools_lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.sync_puts()

    def close(self) -> None:
        """Record pending heat, stop the workers and close the pools."""
        self.observer.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._pools_lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()

    # -- locking -------------------------------------------------------------
    @contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def gc_exclusive(self) -> AbstractContextManager[None]:
        """Hold the gc lock exclusively: no writer is between writing a pack and committing it."""
        return self._gc_lock(fcntl.LOCK_EX)

    # -- reading -------------------------------------------------------------
    @property
    def source(self) -> LocalSource:
        """The store's chunks as a verified chunk source (gfs.read): every read of a
        stored blob goes through it."""
        if self._source is None:
            self._source = LocalSource(self)
        return self._source

    def read_chunk(self, cid: bytes, path: str = "") -> bytes:
        """The verified raw bytes of chunk `cid`; `path` names the file in errors."""
        return self.source.get(cid, path=path)

    def read_blob(self, cid: bytes, path: str = "") -> bytes:
        """The verified blob of chunk `cid` as another store takes it (a delta whole)."""
        return self.source.get_blob(cid, path=path)

    def replace_copies(self, blobs: dict[bytes, bytes]) -> int:
        """Repair chunks whose recorded copies all fail verification.

        For each chunk id in `blobs` (blob bytes, verified here first) that has
        a record but no copy that verifies, the blob is written to a new pack
        and becomes the chunk's only location; the bad copies become dead
        bytes that gc repacks. Chunks with a good copy, or without a record,
        are left alone. Returns the number of chunks repaired.
        """
        fix = {}
        for cid, blob in blobs.items():
            decode_blob(blob, expect_id=cid, base=self.read_chunk)  # never "repair" with bad bytes
            with self.engine.read() as txn:
                known = txn.has_chunk(cid)
            if known and self.source.good_copies(cid) == 0:
                fix[cid] = blob
        if not fix:
            return 0
        from gfs.relocate import Move, relocate  # here: only a repair moves chunks

        with self.writer():  # gc must not take the new pack for an orphan
            write_tier = self.placement()
            repaired = relocate(self, (Move(cid, None, blob) for cid, blob in fix.items()),
                                lambda size: self.choose_pool(write_tier, size, self.usage())
                                ).switched
        log.warning("repaired %d chunks whose every copy was damaged", repaired)
        return repaired

    # -- writing -------------------------------------------------------------
    @contextmanager
    def writer(self, *, durable: bool = True, tail: TailPack | None = None,
               overlap: bool = False, gate: Callable[[], None] | None = None,
               ) -> Iterator[WriteSession]:
        """A write session; committed files stay committed even if the block raises.
        With `durable=False` its packs are written without fsync (`Pool.put_unsynced`)
        and become durable at the next `sync_puts`; the metadata commit is durable
        either way. With `tail`, small commits append to the pack the previous
        session of the same tail committed (gfs.pack_tail). With `overlap`, batches
        commit on a thread of the session while the next one is gathered (see
        WriteSession). `gate` is called, on the committing thread, before the
        session's first commit (before its first pack is written out): it may wait,
        and what it raises fails the session with nothing committed."""
        if overlap and tail is not None:
            raise ValueError("a write session cannot both overlap commits and continue a tail")
        with self._gc_lock(fcntl.LOCK_SH):
            session = WriteSession(self, durable=durable, tail=tail, overlap=overlap,
                                   gate=gate)
            try:
                yield session
                session.commit()
            finally:
                session.abandon()


@dataclass(slots=True)
class Prepared:
    """A buffer cut into chunks and hashed: the part of a write any thread can do."""

    refs: list[ChunkRef]
    pieces: list[memoryview]
    consumed: int


def prepare(data: Buffer, params: chunking.ChunkParams, *, eof: bool = True) -> Prepared:
    """Cut `data` into chunks and name them (see WriteSession.store_prefix for `eof`)."""
    view = memoryview(data)
    cuts = chunking.cut_points(view, params, eof=eof)
    return _prepared(view, cuts, chunking.chunk_ids(view, cuts))


def _prepared(view: memoryview, cuts: list[int], ids: bytes) -> Prepared:
    refs: list[ChunkRef] = []
    pieces: list[memoryview] = []
    start = 0
    for k, end in enumerate(cuts):
        pieces.append(view[start:end])
        refs.append(ChunkRef(ids[16 * k:16 * k + 16], end - start))
        start = end
    return Prepared(refs, pieces, start)


def read_many(paths: list[str], params: chunking.ChunkParams, budget: int,
              ) -> list[tuple[bytes, list[int], bytes] | OSError | None]:
    """`chunking.load_chunked_many` of local files, each read whole up to
    WHOLE_READ_LIMIT and at most `budget` bytes in all (past either: None, store it
    with WriteSession.store_file, which streams); each result becomes a `Prepared`
    by `prepared_of`."""
    return chunking.load_chunked_many(paths, params, WHOLE_READ_LIMIT, budget)


def prepared_of(loaded: tuple[bytes, list[int], bytes] | None) -> Prepared | None:
    """A `Prepared` of a file `read_many` read; None for one too big."""
    if loaded is None:
        return None
    data, cuts, ids = loaded
    return _prepared(memoryview(data), cuts, ids)


def read_pieces(reads: Iterable[tuple[Buffer, list[int], bytes] | OSError | None],
                least: int = 0) -> Iterator[tuple[bytes, memoryview]]:
    """(id, bytes) of each chunk of at least `least` bytes of the files `read_many`
    read (no `Prepared` made: the look-ahead wants the few large chunks of a batch of
    mostly small files, each of which `prepared_of` cuts again at its turn)."""
    for loaded in reads:
        if isinstance(loaded, tuple):
            data, cuts, ids = loaded
            view, start = None, 0
            for k, end in enumerate(cuts):
                if end - start >= least:
                    if view is None:
                        view = memoryview(data)
                    yield ids[CHUNK_ID_LEN * k:CHUNK_ID_LEN * (k + 1)], view[start:end]
                start = end


def read_ids(reads: Iterable[tuple[Buffer, list[int], bytes] | OSError | None]) -> list[bytes]:
    """The chunk ids of the files `read_many` read, or of a streamed block (for
    `WriteSession.look_ahead`)."""
    joined = b"".join([loaded[2] for loaded in reads if isinstance(loaded, tuple)])
    return [joined[k:k + CHUNK_ID_LEN] for k in range(0, len(joined), CHUNK_ID_LEN)]


class WriteSession:
    """Stores chunks and commits files in batches. One thread uses a session.

    A batch's chunks are compressed on the store's workers and appended to packs in
    order; at a commit the packs are written durably, then one transaction records
    them with the batch's files. An overlapping session (`overlap`) does the
    appending, the pack writes and the commits on its own committer thread, batch
    after batch in the order they were sealed, while the calling thread gathers the
    next batch and keeps the workers busy: at most SEALED_BATCHES sealed batches wait
    or commit, and OVERLAP_BYTES of chunks wait for a worker or the committer. After a failure in
    a worker or a commit nothing later commits; the batches before it stay committed.
    """

    def __init__(self, store: ChunkStore, *, durable: bool = True,
                 tail: TailPack | None = None, overlap: bool = False,
                 gate: Callable[[], None] | None = None) -> None:
        self.store = store
        self._gate = gate  # called before the first commit (ChunkStore.writer)
        self.durable = durable
        self._tail = tail
        self._resumed: bytes | None = None  # the tail's pack, if this session continues it
        self.stats = WriteStats()
        self._started = time.monotonic()
        self._level = store.config.zstd_level
        self._tier = store.placement()
        # -- the committer's (the calling thread's unless overlapping) --------------
        self._used: dict[int, int] | None = None  # pool usage, read at the first pack
        self._pack_pool: dict[bytes, int] = {}
        self._pack: PackBuilder | None = None
        self._staged: tuple[StagedPut, int] | None = None  # the pack's temporary, its pool
        self._pack_writer: ThreadPoolExecutor | None = None  # writes and puts staged packs
        self._pack_writes: list[Future[None]] = []  # those in flight, for the next commit
        self._unstaged = False  # packs are written whole at their commit (`_stage`)
        self._limited = False  # a pool has a capacity (known once `_used` is)
        self._new: dict[bytes, _NewChunk] = {}  # appended to a pack, not committed
        self._flushed: list[PackBuilder] = []
        self._delta_meta: dict[bytes, tuple[bytes | None, list[bytes]]] = {}
        self._flush_due = False  # a pack filled up: commit at the next file
        # -- the calling thread's ----------------------------------------------------
        self._inflight: deque[_Item] = deque()  # encodings not yet appended (not overlapping)
        self._max_inflight = 4 * store.config.threads
        self._lookup: tuple[AbstractContextManager[ReadTxn], ReadTxn] | None = None
        self._pending: set[bytes] = set()  # new chunks the dedup snapshot does not show
        self._batch_ids: set[bytes] = set()  # those of the batch being gathered
        self._unseen: deque[_Batch] = deque()  # sealed batches the snapshot may not show
        self._ahead: frozenset[bytes] = frozenset()  # the ids of `look_ahead`
        self._ahead_present: set[bytes] | None = None  # which the snapshot has (None: not asked)
        self._ahead_pieces: Callable[[int], Iterable[tuple[bytes, Buffer]]] | None = None
        self._group: list[tuple[bytes, Buffer]] = []
        self._group_bytes = 0
        self._files: list[tuple[list[ChunkRef], CommitAction]] = []
        self._queued_files = 0  # files in `_files` (the rest are directory actions)
        self._queued_refs = 0  # chunk references of those files
        # Delta chunks (docs/format.md "Resemblance and delta chunks"), when enabled.
        self._plans: list[delta.Plan | None] = []
        self._dict_added: bytes | None = None  # a dictionary chunk of this batch
        # Small chunks gathered for the next group (docs/format.md "Group blobs").
        self._members: list[tuple[bytes, Buffer]] = []
        self._members_bytes = 0
        self._member_keys: dict[bytes, list[bytes]] = {}
        with store.engine.read() as txn:  # chunks marked lost by a repair heal when put again
            self._lost = lost_chunks(txn)
            dictionary = delta.current_dictionary(txn) if store.config.delta else None
        # bases read once per session (a group holding many bases is decompressed once)
        self._planner = (delta.DeltaPlanner(store.source.batch_reader(), dictionary)
                         if store.config.delta else None)
        # -- overlapping: the hand-over to the committer thread ---------------------
        self._pipe: queue.SimpleQueue[_Item | _Batch | None] | None = None
        self._room = threading.Condition()  # for the raw bytes handed over (`_queued`)
        self._queued = 0
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None  # the committer's first failure
        self._sealed = 0  # batches handed over
        self._committed = 0  # batches the committer finished (the next one is assembling)
        self._stopping = False
        if overlap:
            self._pipe = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="hutong-commit",
                                            daemon=True)
            self._thread.start()

    # -- adding data -----------------------------------------------------------
    def store_buffer(self, data: Buffer) -> list[ChunkRef]:
        """Chunk `data`, store the chunks this store lacks, and return the refs."""
        return self.store_prefix(data, eof=True)[0]

    def store_prefix(self, data: Buffer, *, eof: bool) -> tuple[list[ChunkRef], int]:
        """Store the chunks of `data` that are final; returns (refs, bytes consumed).

        With `eof=False` the tail that could still grow into a longer chunk is
        left unconsumed, so feeding a stream piecewise gives the same chunks as
        feeding it whole. `data` must not change while the session is open.
        """
        prepared = prepare(data, self.store.params, eof=eof)
        return self.store_prepared(prepared), prepared.consumed

    def held_refs(self, loaded: tuple[Buffer, list[int], bytes]) -> list[ChunkRef] | None:
        """The refs of a file `read_many` read, when it is one chunk that needs no storing
        (the snapshot or this session already has it), counted as `store_prepared`
        counts it; else None: store it with `store_prepared(prepared_of(loaded))`.

        The put's common case after a first snapshot (a small file that did not change),
        without the `Prepared`, the views and the general path of `_store_new`: a put of
        the second small-files snapshot (10,462 files) took 0.79 s against 0.83 s, and
        1.00 s of CPU against 1.06 s (medians of 8 alternating runs)."""
        cuts = loaded[1]
        if len(cuts) != 1:
            return None
        cid = loaded[2]
        if cid in self._pending:  # stored by this session, not yet in the snapshot
            self.stats.dedup_chunks += 1
            return [ChunkRef(cid, cuts[0])]
        txn = self._reader()  # renewed: what it now shows left `_pending`
        if cid not in self._ahead:
            return None
        present: AbstractSet[bytes] | None = self._ahead_present
        if present is None:
            present = self._present(txn, [cid])  # the whole read batch's, once
        if cid not in present or cid in self._lost:
            return None
        self.stats.dedup_chunks += 1
        return [ChunkRef(cid, cuts[0])]

    def store_prepared(self, prepared: Prepared) -> list[ChunkRef]:
        """Store the chunks of a `prepare`d buffer that this store lacks; returns the refs."""
        self._store_new(prepared.refs, prepared.pieces)
        return prepared.refs

    def store_stream(self, f: BinaryIO) -> list[ChunkRef]:
        """Like store_buffer, for a stream of any length (bounded memory).

        The stream is read in blocks (`chunking.iter_stream_blocks`), each cut and hashed
        in C without the GIL and its chunks stored as slices of it (no copy of each),
        with its dedup lookups and resemblance keys looked up together (`look_ahead`);
        the read batch announced before is announced again afterwards."""
        ahead, pieces_of = self._ahead, self._ahead_pieces
        refs: list[ChunkRef] = []
        try:
            for block, cuts in chunking.iter_stream_blocks(f, self.store.params,
                                                           STREAM_BLOCK_BYTES):
                loaded: list[tuple[Buffer, list[int], bytes]] = [
                    (block, cuts, chunking.chunk_ids(block, cuts))]
                self.look_ahead(read_ids(loaded), partial(read_pieces, loaded))
                refs += self.store_prepared(_prepared(block, cuts, loaded[0][2]))
        finally:
            self.look_ahead(ahead, pieces_of)
        return refs

    def store_file(self, path: str | os.PathLike[str]) -> list[ChunkRef]:
        """Chunk and store a local file's content."""
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size <= WHOLE_READ_LIMIT:
                data = f.read()
                return self.store_buffer(data) if data else []
            return self.store_stream(f)

    def look_ahead(self, ids: Iterable[bytes],
                   pieces: Callable[[int], Iterable[tuple[bytes, Buffer]]] | None = None) -> None:
        """Announce the chunk ids the next stores will bring (a read batch's): the first
        of them that needs a dedup lookup looks all of them up in one `present_chunks`,
        and so does the first after the snapshot is renewed. Keys of one metadata block
        then cost one seek and decode; looking each file up alone was 13-15% of the main
        thread of a put whose chunks the store mostly has. `pieces(least)` gives those
        chunks' (id, bytes), of those of at least `least` bytes: the resemblance index
        keys of the ones the store lacks are then looked up together too
        (`DeltaPlanner.look_ahead`)."""
        self._ahead = frozenset(ids)
        self._ahead_pieces = pieces
        self._ahead_present = None

    def _present(self, txn: ReadTxn, ids: list[bytes]) -> AbstractSet[bytes]:
        """Which of `ids` snapshot `txn` (the current `_reader`) has."""
        ahead = self._ahead
        if not ahead or not ahead.issuperset(ids):
            return txn.present_chunks(ids)
        if self._ahead_present is None:
            present = self._ahead_present = txn.present_chunks(ahead)
            if self._planner is not None and self._ahead_pieces is not None:
                pieces = self._ahead_pieces(self._planner.min_chunk)
                self._planner.look_ahead(txn, ((cid, piece) for cid, piece in pieces
                                               if cid not in present))
        return self._ahead_present

    def _store_new(self, refs: Sequence[ChunkRef], pieces: Sequence[Buffer]) -> None:
        todo: list[tuple[ChunkRef, Buffer]] = []
        for ref, piece in zip(refs, pieces, strict=True):
            if ref.id in self._pending:
                self.stats.dedup_chunks += 1
            else:
                todo.append((ref, piece))
        if not todo:
            return
        txn = self._reader()
        present = self._present(txn, [r.id for r, _ in todo])
        missing = [(r, p) for r, p in todo if r.id not in present or r.id in self._lost]
        self.stats.dedup_chunks += len(todo) - len(missing)
        for ref, piece in missing:
            if ref.id in self._pending:  # repeated within this batch
                self.stats.dedup_chunks += 1
                continue
            self._pending.add(ref.id)
            self._batch_ids.add(ref.id)
            if self._planner is not None:
                lost = ref.id in self._lost  # a lost chunk is healed whole
                plan = None if lost else self._planner.plan(txn, ref.id, piece)
                trained = self._planner.take_dictionary()
                if trained is not None:
                    self._add_dictionary(txn, *trained)
                if not lost and groups.groupable(len(piece), plan):
                    self._add_member(ref.id, piece, plan.keys if plan is not None else [])
                    continue
                self._plans.append(plan)
            self._group.append((ref.id, piece))
            self._group_bytes += len(piece)
            if len(self._group) >= ENCODE_GROUP or self._group_bytes >= ENCODE_GROUP_BYTES:
                self._submit()

    def _add_member(self, cid: bytes, piece: Buffer, keys: list[bytes]) -> None:
        """Gather a small chunk for the next group; a full group goes to a worker."""
        self._members.append((cid, piece))
        self._members_bytes += len(piece)
        self._member_keys[cid] = keys
        if self._members_bytes >= groups.GROUP_BYTES:
            self._submit_members()

    def _submit_members(self) -> None:
        """Encode the gathered small chunks as one group on a worker."""
        members, self._members, self._members_bytes = self._members, [], 0
        if len(members) == 1:  # a group of one saves nothing: stored as any chunk
            cid, piece = members[0]
            one = self._member_keys.pop(cid, [])
            self._group.append((cid, piece))
            self._group_bytes += len(piece)
            self._plans.append(delta.Plan(one) if one else None)
            self._submit()
            return
        if not members:
            return
        fut = self.store.executor.submit(groups.encode_group, [p for _, p in members],
                                         [cid for cid, _ in members], self._level)
        keys = {cid: k for cid, _ in members if (k := self._member_keys.pop(cid, []))}
        self._emit(([], fut, keys, sum(len(p) for _, p in members)))

    def _add_dictionary(self, txn: ReadTxn, cid: bytes, raw: bytes) -> None:
        """Store a dictionary the planner trained, as a whole chunk that no manifest
        names: the deltas against it hold its references (gc drops it with the last)."""
        if cid in self._pending or txn.present_chunks([cid]):
            return
        self._dict_added = cid
        self._pending.add(cid)
        self._batch_ids.add(cid)
        self._group.append((cid, raw))
        self._plans.append(None)
        self._group_bytes += len(raw)

    def _submit(self) -> None:
        """Compress the gathered new chunks on a worker: one hand-over per group, across
        files, so small files do not each pay a trip between threads."""
        group, self._group, self._group_bytes = self._group, [], 0
        plans, self._plans = self._plans, []
        if not group:
            return
        pieces, ids = [piece for _, piece in group], [cid for cid, _ in group]
        keys: dict[bytes, list[bytes]] = {}
        fut: Future[_Blobs]
        if self._planner is not None:
            keys = {cid: plan.keys for cid, plan in zip(ids, plans, strict=True)
                    if plan is not None}
            fut = self.store.executor.submit(self._planner.encode, pieces, ids, plans,
                                             self._level)
        elif (self._pipe is None and not self._inflight
              and sum(len(p) for p in pieces) <= INLINE_ENCODE_BYTES):
            # a small write alone (a small file's commit): encoding it here costs less
            # than the trip to a worker and back
            fut = Future()
            fut.set_result(encode_blobs(pieces, ids, self._level))
        else:
            fut = self.store.executor.submit(encode_blobs, pieces, ids, self._level)
        self._emit((ids, fut, keys, sum(len(p) for p in pieces)))

    def _emit(self, item: _Item) -> None:
        """Hand an encoding to the committer: bounded, in order."""
        if self._pipe is None:
            self._inflight.append(item)
            if len(self._inflight) > self._max_inflight:
                self._drain(self._max_inflight // 2)
            return
        with self._room:  # bounded: waits while OVERLAP_BYTES are handed over
            while self._queued >= OVERLAP_BYTES and self._failed is None:
                self._room.wait()
            self._queued += item[3]
        self._raise_failed()
        self._pipe.put(item)

    def _reader(self) -> ReadTxn:
        """A read snapshot for dedup lookups: renewed at every commit (overlapping: once
        the oldest sealed batch has committed, so its chunks leave `_pending`)."""
        unseen = self._unseen
        if unseen and unseen[0].finished:
            self._end_reader()
        if self._lookup is None:
            seen: list[_Batch] = []
            while unseen and unseen[0].finished:
                seen.append(unseen.popleft())
                seen[-1].done.result()  # a failed commit: raised here
            cm = self.store.engine.read()
            self._lookup = (cm, cm.__enter__())
            for b in seen:  # committed before this snapshot began: it shows them
                self._pending -= b.ids
                if self._planner is not None:
                    self._planner.forget(b.ids)
        return self._lookup[1]

    def _end_reader(self) -> None:
        self._ahead_present = None  # found in the snapshot ending
        if self._lookup is not None:
            cm, self._lookup = self._lookup[0], None
            cm.__exit__(None, None, None)

    def _drain(self, keep: int = 0) -> None:
        """Append finished blobs to the pack in order until `keep` remain in flight
        (a session that does not overlap)."""
        if keep == 0:
            self._submit()
            self._submit_members()
        while len(self._inflight) > keep:
            self._append(self._inflight.popleft())

    # -- the committer: appending blobs, writing packs, committing --------------
    def _append(self, item: _Item) -> None:
        """Append an encoding's blobs to the pack (written when full)."""
        cids, fut, keys, _ = item
        blobs = fut.result()
        if isinstance(blobs, groups.Group):  # the group chunk; members folded
            self._add_folded(blobs, keys)
            cids, blobs = [blobs.id], [(blobs.header, blobs.payload)]
        for cid, (header, payload) in zip(cids, blobs, strict=True):
            if self._pack is None:
                self._pack = self._start_pack()
            offset, blob_len = self._pack.add(header, payload)
            head = parse_blob_header(header)
            if head.codec == CODEC_DELTA:
                base = bytes(payload[:CHUNK_ID_LEN])
                # a delta against the dictionary may be a base itself: keep its keys
                dictionary = self._planner.dictionary_id if self._planner else None
                self._delta_meta[cid] = (base, keys.get(cid, []) if base == dictionary
                                         else [])
                self.stats.delta_chunks += 1
            elif cid in keys:
                self._delta_meta[cid] = (None, keys[cid])
            self._new[cid] = _NewChunk(self._pack.pack_id, offset, blob_len, head.raw_len,
                                       head.payload_len, head.codec)
            self.stats.new_chunks += 1
            self.stats.new_raw_bytes += head.raw_len
            self.stats.new_stored_bytes += blob_len
            if self._pack.size >= self.store.config.pack_size:
                self._flush_pack()
                self._flush_due = True
        pack = self._pack
        if pack is not None and pack.size - pack.written >= STAGE_BYTES:
            self._stage(pack)

    def _add_folded(self, group: groups.Group, keys: dict[bytes, list[bytes]]) -> None:
        """Note the members of `group` as folded records, to commit with the group
        (its blob goes to the pack like any chunk's); each keeps its index keys, as
        a base of later deltas."""
        new, meta, raw = self._new, self._delta_meta, 0
        records = group.records()
        for rec in records:  # (a group holds hundreds: the stats are added once)
            cid = rec.id
            new[cid] = _NewChunk(b"", 0, 0, rec.raw_len, 0, CODEC_MEMBER, rec)
            if found := keys.get(cid):
                meta[cid] = (None, found)
            raw += rec.raw_len
        stats = self.stats
        stats.groups += 1
        stats.group_members += len(records)
        stats.new_chunks += len(records)
        stats.new_raw_bytes += raw
    def _start_pack(self) -> PackBuilder:
        """The pack new blobs go to: the tail's, if it can be continued, else a new one."""
        if self._tail is not None:
            resumed = self._tail.resume(self._reader())
            if resumed is not None:
                self._resumed = resumed.pack_id
                return resumed
        return self.store.new_pack()

    def _pool_usage(self) -> dict[int, int]:
        """The bytes of packs in each pool, counted only when a pool has a capacity
        (else empty: placement does not depend on it)."""
        if self._used is None:
            self._limited = any(r.capacity for r in self.store.pool_records())
            self._used = self.store.usage() if self._limited else {}
        return self._used

    def _stage(self, pack: PackBuilder) -> None:
        """Write the pack's unwritten blobs to its pool's temporary ahead of its commit,
        where `_flush_pack` writes the rest and puts it. Only a new pack placed in a
        local pool whatever its size is (no pool has a capacity: else its final size
        places it; a tail's pack is appended in place at the commit)."""
        if self._staged is None:
            if self._unstaged:
                return
            self._pool_usage()
            if self._tail is not None or self._limited:
                self._unstaged = True  # for the whole session
                return
            pool_id = self.store.choose_pool(self._tier, pack.size, {})
            pool = self.store.pool(pool_id)
            if not isinstance(pool, LocalPool):  # (an encrypted one, for one)
                self._unstaged = True
                return
            self._staged = (pool.stage(pack_key(pack.pack_id)), pool_id)
        self._write_staged(self._staged[0].write, pack.unwritten())
        pack.wrote()

    def _write_staged(self, write: Callable[..., None], parts: list[Buffer], **kw: bool) -> None:
        """Run a staged pack's `write` or `finish` on the session's pack writer thread, in
        order: faulting in fresh page-cache pages (~6 ms a MiB here) and the fsyncs are
        not the committer's; the next commit waits for them before it commits."""
        for done in self._pack_writes:  # a failed one fails the session now
            if done.done() and (failed := done.exception()) is not None:
                raise failed
        if self._pack_writer is None:
            self._pack_writer = ThreadPoolExecutor(1, thread_name_prefix="hutong-pack")
        self._pack_writes.append(self._pack_writer.submit(write, parts, **kw))

    def _flush_pack(self) -> None:
        pack, staged = self._pack, self._staged
        if pack is None or pack.nblobs == 0 or (pack.size == pack.written and staged is None):
            return
        used = self._pool_usage()
        tail = self._tail
        if staged is not None:  # its first bytes are in its pool's temporary
            self._staged = None
            stage, pool_id = staged
            # the rest, the fsyncs and the rename run beside the commit's transaction,
            # which waits for them before it commits (`_commit_batch`)
            self._write_staged(stage.finish, pack.unwritten(), durable=self.durable)
            pack.release()
            grown = pack.size
        else:
            grown = pack.size - pack.written
            if tail is not None and tail.holds(pack) and tail.pool_id is not None:
                pool_id = tail.pool_id
            else:
                pool_id = self.store.choose_pool(self._tier, pack.size, used)
            self._write_pack(pack, pool_id)
        used[pool_id] = used.get(pool_id, 0) + grown
        self._pack_pool[pack.pack_id] = pool_id
        self._flushed.append(pack)
        self._pack = None
        self.stats.packs += 1

    def _write_pack(self, pack: PackBuilder, pool_id: int) -> None:
        """Write the pack (its unwritten part, appended, for a tail's) to pool `pool_id`."""
        pool, tail = self.store.pool(pool_id), self._tail
        if tail is not None and isinstance(pool, LocalPool):
            try:
                pool.append(pack_key(pack.pack_id), pack.unwritten(), pack.written,
                            durable=self.durable)
            except PoolObjectMissingError:
                if pack.pack_id == self._resumed:  # emptied and deleted by a tier move
                    raise TailPackGoneError(pack.pack_id) from None
                raise
            pack.wrote()
            if pack.size < self.store.config.pack_size:
                tail.keep(pack, pool_id)  # the next session continues it
            else:
                tail.forget()
        else:
            (pool.put if self.durable else pool.put_unsynced)(pack_key(pack.pack_id),
                                                              pack.parts())
            pack.release()  # written: a long write must not hold every pack until its commit

    # -- committing ------------------------------------------------------------
    def add_file(self, refs: list[ChunkRef], action: CommitAction) -> None:
        """Queue a file for the next commit; `action` applies it to the namespace."""
        self.stats.files += 1
        self.stats.logical_bytes += sum(map(_ref_length, refs))
        self._queued_files += 1
        self._queued_refs += len(refs)
        self.add_action(action, refs)

    def add_action(self, action: CommitAction, refs: list[ChunkRef] | None = None) -> None:
        """Queue a namespace change (mkdir, symlink, attributes) for the next commit.

        Actions run in the order they were added, inside the commit transaction. A
        commit comes after `commit_files` files, however many directory actions are
        queued with them: each commit leaves the pages it copied free in the LMDB
        file, and counting a tree's directories twice (entering, leaving) made 5
        commits of 3,656 files and a metadata file 13% larger (smallfiles --quick).
        A commit also comes once the queued files hold COMMIT_CHUNKS chunk references
        (the memory LMDB keeps of the pages one transaction dirtied), and once a pack
        filled up. An overlapping session seals the batch for its committer instead.
        """
        self._files.append((refs or [], action))
        if (self._flush_due or self._queued_files >= self.store.config.commit_files
                or self._queued_refs >= COMMIT_CHUNKS):
            if self._pipe is None:
                self.commit()
            else:
                self._hand_over(self._seal(()))

    def commit(self, walks: Iterable[tuple[int, Sequence[str]]] = ()) -> None:
        """Make every queued file visible, in one metadata transaction (overlapping:
        the last of the batches still committing).

        The packs holding their new chunks are written durably first. `walks`: the
        entries the files' actions will look up, read ahead with the new chunks and
        the packs this commit checks (`ReadTxn.read_ahead`: one round trip on a
        database server).
        """
        batch = self._seal(walks)
        if self._pipe is not None:
            self._hand_over(batch)
            for b in self._unseen:
                b.done.result()  # a failed commit: raised here
        else:
            self._drain()
            self._end_reader()  # later lookups must see this commit
            self._commit_batch(batch)
        self._end_reader()
        self._unseen.clear()
        self._pending.clear()
        if self._planner is not None:
            self._planner.clear()

    def _seal(self, walks: Iterable[tuple[int, Sequence[str]]]) -> _Batch:
        """End the batch being gathered: every chunk of it goes to the workers."""
        self._submit()
        self._submit_members()
        batch = _Batch(self._files, tuple(walks), self._dict_added, self._batch_ids)
        self._files, self._batch_ids, self._dict_added = [], set(), None
        self._queued_files = self._queued_refs = 0
        self._flush_due = False
        return batch

    def _hand_over(self, batch: _Batch) -> None:
        """Give a sealed batch to the committer thread, once fewer than SEALED_BATCHES
        wait for or run their commit."""
        assert self._pipe is not None
        self._raise_failed()
        self._reader()  # committed batches leave `_unseen` (their files are not held)
        while True:
            waiting = [b for b in self._unseen if not b.done.done()]
            if len(waiting) < SEALED_BATCHES:
                break
            waiting[0].done.result()
        self._unseen.append(batch)
        self._sealed += 1
        self._pipe.put(batch)

    def _raise_failed(self) -> None:
        """Raise the committer's failure: nothing after it commits."""
        if self._failed is not None:
            raise self._failed

    def _run(self) -> None:
        """The committer thread: blobs appended and batches committed in order. After a
        failure it only empties the hand-over (each later batch gets the failure)."""
        assert self._pipe is not None
        while True:
            item = self._pipe.get()
            if item is None:
                return
            if isinstance(item, _Batch):
                if self._failed is None:
                    try:
                        self._commit_batch(item)
                    except BaseException as e:  # handed to the calling thread
                        self._failed = e
                    item.files = []  # committed or failed: not needed again
                if self._failed is not None:
                    item.done.set_exception(self._failed)
                else:
                    self._committed += 1
                    item.done.set_result(None)
                item.finished = True
            else:
                if self._failed is not None or (self._stopping
                                                and self._committed >= self._sealed):
                    item[1].cancel()  # after a failure, or of a batch never sealed
                else:
                    try:
                        self._append(item)
                    except BaseException as e:  # handed to the calling thread
                        self._failed = e
                with self._room:
                    self._queued -= item[3]
                    self._room.notify()

    def _commit_batch(self, batch: _Batch) -> None:
        """Write the pack durably, then commit the batch's files and new chunks (a
        staged pack's fsyncs overlap the transaction's work, not its commit)."""
        if self._gate is not None:
            self._gate()  # what it raises, it raises again at any later commit
            self._gate = None
        self._flush_pack()
        if not batch.files and not self._flushed:
            return
        now = time.time_ns()
        walks, files, ref_id = batch.walks, batch.files, attrgetter("id")

        def apply(txn: WriteTxn) -> None:  # run again on a lost conflict: derives all from txn
            live: dict[bytes, list[int]] = {p.pack_id: [0, 0] for p in self._flushed}
            records: dict[bytes, ChunkRecord] = {}
            recorded: dict[bytes, tuple[bytes | None, list[bytes]]] = {}
            healed: set[bytes] = set()
            pins: Counter[bytes] = Counter()  # references of folded members on groups
            txn.read_ahead(walks, chunks=self._new, packs=[p.pack_id for p in self._flushed]
                           if self._tail is not None else ())
            present = txn.present_chunks(self._new)
            for cid, nc in self._new.items():
                if nc.member is not None:  # a folded member: one reference on its group
                    if cid not in present:
                        records[cid] = nc.member
                        recorded[cid] = self._delta_meta.get(cid, (None, []))
                        pins[nc.member.group] += 1
                    continue
                location = Location(self._pack_pool[nc.pack], nc.pack, nc.offset, nc.blob_len)
                lost = txn.get_chunk(cid) if cid in self._lost else None
                if lost is not None and not lost.locations:  # a lost chunk put again
                    txn.put_chunk(ChunkRecord(cid, lost.raw_len, nc.stored_len, nc.codec,
                                              lost.refcount, (location,)))
                    if lost.group:  # a lost folded member: it no longer needs its group
                        pins[lost.group] -= 1
                    base = txn.get_value(delta.DELTAS, cid)
                    if base is not None and nc.codec not in BASED_CODECS:
                        txn.delete_value(delta.DELTAS, cid)  # a lost delta, healed whole:
                        pins[base] -= 1  # it no longer needs its base
                    healed.add(cid)
                elif cid in present:
                    continue  # committed meanwhile by another writer: our blob is dead
                else:
                    records[cid] = chunk_record(cid, nc.raw_len, nc.stored_len, nc.codec, 0,
                                                (location,))
                    if cid in self._delta_meta:
                        recorded[cid] = self._delta_meta[cid]
                counters = live[nc.pack]
                counters[0] += 1
                counters[1] += nc.blob_len
            for p in self._flushed:
                n, nbytes = live[p.pack_id]
                created = now
                prev = txn.get_pack(p.pack_id) if self._tail is not None else None
                if prev is None and p.pack_id == self._resumed:
                    raise TailPackGoneError(p.pack_id)
                if prev is not None:  # an appended pack: its earlier blobs count too
                    n, nbytes, created = n + prev.live_chunks, nbytes + prev.live_bytes, \
                        prev.created_ns
                txn.put_pack(PackRecord(p.pack_id, self._pack_pool[p.pack_id], p.size, p.nblobs,
                                        n, nbytes, created))
            deltas: Counter[bytes] = Counter()
            with namespace.versions_coalesced(txn):
                for old in apply_actions(txn, files):
                    deltas.subtract(r.id for r in old.chunks)
            # the files' references counted in one pass, not one Counter.update a file
            deltas.update(map(ref_id, chain.from_iterable([refs for refs, _ in files])))
            deltas.update(delta.commit_records(txn, recorded))  # each delta pins its base
            deltas.update(pins)
            if batch.dict_added is not None:
                delta.set_dictionary(txn, batch.dict_added)
            apply_refcounts(txn, deltas, records)
            if healed:
                set_lost_chunks(txn, lost_chunks(txn) - healed)
                log.warning("healed %d lost chunks that were put again", len(healed))
            for put in self._pack_writes:  # the packs are durable before the commit
                put.result()

        self.store.engine.transact(apply)
        self._pack_writes.clear()
        self._new.clear()
        self._flushed.clear()
        self._delta_meta.clear()
        self.stats.commits += 1
        self.stats.seconds = time.monotonic() - self._started

    def abandon(self) -> None:
        """Drop what was not committed (its packs become orphans that gc reclaims; an
        appended pack's bytes past its record, an uncommitted tail). An overlapping
        session's committer first commits the batches sealed before, unless one failed."""
        if self._thread is not None:
            assert self._pipe is not None
            self._stopping = True
            self._pipe.put(None)
            interrupted: KeyboardInterrupt | None = None
            while True:  # the committer must be gone before the gc lock is released
                try:
                    self._thread.join()
                    break
                except KeyboardInterrupt as e:  # a second Ctrl-C: still wait for it
                    interrupted = e
            self._thread = None
            if interrupted is not None:
                raise interrupted
        if self._tail is not None and (self._tail.holds(self._pack) or any(
                self._tail.holds(p) for p in self._flushed)):
            self._tail.forget()
        self._end_reader()
        self._group, self._group_bytes, self._plans = [], 0, []
        self._members, self._members_bytes = [], 0
        self._member_keys.clear()
        self._delta_meta.clear()
        self._dict_added = None
        if self._planner is not None:
            self._planner.clear()
        for _, fut, _, _ in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._unseen.clear()
        self._pack = None
        self._end_pack_writes()
        if self._staged is not None:
            self._staged[0].discard()
            self._staged = None
        self._new.clear()
        self._pending.clear()
        self._batch_ids.clear()
        self._flushed.clear()
        self._files.clear()
        self._queued_files = self._queued_refs = 0

    def _end_pack_writes(self) -> None:
        """Wait for the staged packs' writes (no pool write after the session) and stop
        their thread; a pack put for a batch that did not commit is an orphan."""
        wait(self._pack_writes)  # a failure was the commit's: a failed write discards
        self._pack_writes.clear()
        if self._pack_writer is not None:
            self._pack_writer.shutdown()
            self._pack_writer = None


def apply_refcounts(txn: WriteTxn, deltas: Counter[bytes],
                    fresh: dict[bytes, ChunkRecord] | None = None) -> None:
    """Store the `fresh` records (new chunks, refcount 0), then add `deltas` to refcounts.

    A fresh record is written once, with its delta already in it: adding the delta
    afterwards read, decoded and wrote each new chunk's record a second time (a
    sixth of a small-file put's commit). A refcount that would go below zero, or a
    referenced chunk without a record, means the index is damaged: the FormatError
    aborts the transaction, so nothing changes.
    """
    rest = deltas
    if fresh:
        rest = Counter({cid: n for cid, n in deltas.items() if cid not in fresh})
        put, get = txn.put_chunk, deltas.get
        for cid, rec in fresh.items():
            count = rec.refcount + get(cid, 0)
            if count < 0:
                raise MetadataDamagedError(f"chunk {cid.hex()}: refcount would fall below zero; "
                                           "run `hutong fsck`")
            put(rec if count == rec.refcount else with_refcount(rec, count))
    txn.add_refcounts(rest)


#: meta key: ids of chunks a repair found with no good copy (their records stay,
#: without locations, so that manifests keep naming them until they are put again)
LOST_CHUNKS_KEY = "lost_chunks"


def lost_chunks(txn: ReadTxn) -> frozenset[bytes]:
    """Ids of chunks marked lost by `hutong fsck --repair`."""
    raw = txn.get_meta(LOST_CHUNKS_KEY) or b""
    return frozenset(raw[i:i + 16] for i in range(0, len(raw), 16))


def set_lost_chunks(txn: WriteTxn, ids: Iterable[bytes]) -> None:
    """Record the set of lost chunks (see `lost_chunks`)."""
    txn.set_meta(LOST_CHUNKS_KEY, b"".join(sorted(ids)))


def pin_chunks(txn: WriteTxn, cids: Iterable[bytes], seconds: float) -> None:
    """Keep chunks from gc for `seconds` although no manifest names them yet (chunks
    fetched ahead of the file that will use them). A later pin of a chunk extends it."""
    until = time.time_ns() + int(seconds * 1e9)
    for cid in cids:
        old = txn.get_value("pins", cid)
        if old is None or int.from_bytes(old, "big") < until:
            txn.put_value("pins", cid, until.to_bytes(8, "big"))


def pinned_chunks(txn: ReadTxn, now_ns: int | None = None) -> set[bytes]:
    """Ids of the chunks whose pin has not expired."""
    now = time.time_ns() if now_ns is None else now_ns
    return {cid for cid, v in txn.iter_values("pins") if int.from_bytes(v, "big") > now}


def release(txn: WriteTxn, manifests: Iterable[Manifest]) -> None:
    """Drop the references of removed manifests (their chunks may become garbage)."""
    deltas: Counter[bytes] = Counter()
    for m in manifests:
        deltas.subtract(r.id for r in m.chunks)
    apply_refcounts(txn, deltas)

