"""`LocalSource`: chunks from the pools of one store, verified — the one place a
blob is read at a location and checked against its id.

Every location of a chunk is tried in tier order (hot first); a corrupt or
missing copy is skipped and reported once, naming the file, when another copy
serves the read (a corrupt copy once reported is tried last afterwards and
not reported again). A pack missing from its pool is looked up once more (gc may
have repacked it meanwhile). `get_many` fetches neighbouring blobs of one pack
with one ranged read and decodes them on the store's worker threads.
`blob_at` and `read_span` are the location-level primitives the tierer, gc,
repair, fsck and the mover use.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gfs.codec import (
    BASED_CODECS,
    BLOB_VERSION,
    CODEC_MEMBER,
    BaseReader,
    decode_blob,
    encode_blob,
    parse_blob_header,
)
from gfs.errors import ChunkMissingError, CorruptChunkError, PoolError, PoolObjectMissingError
from gfs.groups import member_slice
from gfs.meta import ChunkRecord, Location
from gfs.packs import pack_key
from gfs.read.source import PathOf

if TYPE_CHECKING:
    from gfs.read.memory import MemoryTier
    from gfs.store import ChunkStore

log = logging.getLogger("hutong.store")

#: Blobs of one pack closer than this are fetched with one ranged read.
COALESCE_GAP = 256 << 10
#: The longest single ranged read of a pack.
MAX_SPAN = 16 << 20
#: Spans are not cut shorter than this to spread decoding over threads.
MIN_SPLIT = 1 << 20
#: Corrupt copies remembered (tried last, reported once) before the memory is reset.
BAD_COPIES_KEPT = 100_000
#: Bytes of verified bases (groups, the dictionary) single reads keep (docs/format.md,
#: "Group blobs": a member read alone costs its group's decompression once).
BASE_CACHE_BYTES = 32 << 20
#: Bytes of delta bases one `get_many` keeps after reading them once (a restore batch
#: of small files that are deltas against the store's dictionary reads it once, not
#: once per file).
BATCH_BASE_BYTES = 32 << 20


@dataclass(slots=True)
class Checked:
    """One blob of a span read: its bytes, and its raw bytes or why it failed."""

    cid: bytes
    loc: Location
    blob: memoryview
    raw: bytes | None
    error: CorruptChunkError | None


@dataclass(slots=True)
class _Span:
    pool: int
    pack: bytes
    start: int
    end: int
    members: list[tuple[bytes, Location]]


_MEMBER_MARK = bytes((BLOB_VERSION, CODEC_MEMBER))


def _is_member(blob: bytes | memoryview) -> bool:
    """Whether `blob` claims to be a member blob (its header is checked when decoded)."""
    return bytes(blob[4:6]) == _MEMBER_MARK


class _Uncached:
    """A `LocalSource` seen by its base tier: `close` leaves the source open."""

    def __init__(self, source: LocalSource) -> None:
        self.source = source

    def get(self, cid: bytes, *, path: str = "") -> bytes:
        return self.source.get(cid, path=path)

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        return self.source.get_many(cids, path_of=path_of)

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        return self.source.get_blob(cid, path=path)

    def worth_caching(self, cid: bytes) -> bool:
        return False

    def close(self) -> None:
        pass


class LocalSource:
    """Verified chunks of `store` (see the module docstring)."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._local: dict[int, bool] = {}
        self._bad: set[tuple[bytes, bytes]] = set()  # (chunk, pack) copies reported bad
        self._bad_lock = threading.Lock()
        self._bases: MemoryTier | None = None

    def close(self) -> None:
        """Drop the cached bases; the store owns the pools and threads."""
        if self._bases is not None:
            self._bases.close()
            self._bases = None

    def _base(self, cid: bytes) -> bytes:
        """The base of a delta blob, verified; a failure is a BaseChunkError so that fsck
        and repair tell a damaged delta from one whose base is damaged."""
        from gfs.delta import verified_base_reader

        return verified_base_reader(self.get)(cid)

    def _group(self, cid: bytes) -> bytes:
        """The group of a member blob, as `_base`, through a bounded memory tier: the
        members of a group read one by one (the mount's random reads) cost its
        decompression once."""
        from gfs.delta import verified_base_reader

        if self._bases is None:
            from gfs.read.memory import MemoryTier

            with self._bad_lock:
                if self._bases is None:
                    self._bases = MemoryTier(_Uncached(self), BASE_CACHE_BYTES)
        return verified_base_reader(self._bases.get)(cid)

    # -- location-level primitives -------------------------------------------------
    def blob_at(self, loc: Location, cid: bytes, *, base: BaseReader | None = None
                ) -> tuple[bytes, bytes]:
        """(blob, raw bytes) of chunk `cid` at `loc`, verified (a delta's base read
        through `base`, by default `_base`). Raises CorruptChunkError,
        PoolObjectMissingError or PoolError."""
        blob = self.store.pool(loc.pool).get(pack_key(loc.pack), loc.offset,
                                             loc.offset + loc.length)
        if base is None:
            base = self._group if _is_member(blob) else self._base
        return blob, decode_blob(blob, expect_id=cid, base=base)

    def batch_reader(self) -> BaseReader:
        """`_base`, remembering up to BATCH_BASE_BYTES of the bases it read, the base of
        a base too (for one `get_many`, shared by its worker threads, or one write
        session's delta bases); reads from the pools, not the group cache."""
        from gfs.delta import verified_base_reader

        kept: dict[bytes, bytes] = {}
        size = [0]
        lock = threading.Lock()
        fetch = verified_base_reader(
            lambda cid: self.read_verified(cid, base=read, whole_blob=False)[1])

        def read(cid: bytes) -> bytes:
            with lock:
                raw = kept.get(cid)
            if raw is None:
                raw = fetch(cid)
                with lock:
                    if cid not in kept and size[0] + len(raw) <= BATCH_BASE_BYTES:
                        kept[cid] = raw
                        size[0] += len(raw)
            return raw
        return read

    def read_span(self, pool_id: int, pack: bytes, members: list[tuple[bytes, Location]],
                  *, whole: bool = False, base: BaseReader | None = None,
                  cached_groups: bool = False) -> list[Checked]:
        """Blobs `members` (chunk id, location in `pack`) read with one ranged read
        (`whole`: the whole pack object) and each verified (delta bases and groups read
        through `base`, by default from the pools once per call; groups through the
        group cache with `cached_groups`). Raises
        PoolObjectMissingError or PoolError when the read itself fails."""
        if not members:
            return []
        try:
            if whole:
                start, data = 0, self.store.pool(pool_id).get(pack_key(pack))
            else:
                start = min(loc.offset for _, loc in members)
                end = max(loc.offset + loc.length for _, loc in members)
                data = self.store.pool(pool_id).get(pack_key(pack), start, end)
        except CorruptChunkError:  # an encrypted pool refuses a damaged segment: whose?
            return [self._alone(cid, loc) for cid, loc in members]
        view = memoryview(data)
        base = base or self.batch_reader()
        group = self._group if cached_groups else base
        out: list[Checked] = []
        for cid, loc in members:
            blob = view[loc.offset - start:loc.offset - start + loc.length]
            try:
                out.append(Checked(cid, loc, blob,
                                   decode_blob(blob, expect_id=cid,
                                               base=group if _is_member(blob) else base),
                                   None))
            except CorruptChunkError as e:
                out.append(Checked(cid, loc, blob, None, e))
        return out

    def _alone(self, cid: bytes, loc: Location) -> Checked:
        try:
            blob, raw = self.blob_at(loc, cid)
            return Checked(cid, loc, memoryview(blob), raw, None)
        except CorruptChunkError as e:
            return Checked(cid, loc, memoryview(b""), None, e)

    def good_copies(self, cid: bytes) -> int:
        """How many recorded copies of chunk `cid` read back and verify (0 if none)."""
        with self.store.engine.read() as txn:
            rec = txn.get_chunk(cid)
        good = 0
        for loc in rec.locations if rec is not None else ():
            try:
                self.blob_at(loc, cid, base=self._base)  # from the pools, not the cache
                good += 1
            except (CorruptChunkError, PoolError):
                continue
        return good

    # -- the ChunkSource protocol ----------------------------------------------------
    def get(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified raw bytes of chunk `cid`; `path` names the file in errors."""
        return self.read_verified(cid, path, whole_blob=False)[1]

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified blob of chunk `cid` as another store or a cache takes it: a delta
        blob (docs/format.md, "Resemblance and delta chunks") is re-encoded whole, since
        its base may not exist there."""
        blob, raw = self.read_verified(cid, path)
        if parse_blob_header(blob).codec not in BASED_CODECS:
            return blob
        header, payload = encode_blob(raw, self.store.config.zstd_level, cid)
        return header + bytes(payload)

    def worth_caching(self, cid: bytes) -> bool:
        """True when chunk `cid`'s nearest copy is not in a pool on local disk."""
        with self.store.engine.read() as txn:
            rec = txn.get_chunk(cid)
        if rec is None or not rec.locations:
            return False
        loc = min(rec.locations, key=lambda x: self.store.tier_rank(x.pool))
        local = self._local.get(loc.pool)
        if local is None:
            pool = self.store.pool(loc.pool)
            local = self._local[loc.pool] = pool.local_path(pack_key(loc.pack)) is not None
        return not local

    def read_verified(self, cid: bytes, path: str = "", *, base: BaseReader | None = None,
                      whole_blob: bool = True) -> tuple[bytes, bytes]:
        """(blob, raw bytes) of chunk `cid` from the first copy, in tier order, that
        reads and verifies (see `blob_at` for `base`); bad copies skipped are logged
        once. With `whole_blob=False` a folded member's blob is not encoded (b"")."""
        problems: list[str] = []
        corrupt = False
        for attempt in range(2):
            with self.store.engine.read() as txn:
                rec = txn.get_chunk(cid)
            if rec is None:
                raise ChunkMissingError(path, f"chunk {cid.hex()} is not in the chunk index "
                                        "(run `hutong fsck`)")
            if rec.group:
                return self._folded(rec, base, whole_blob)
            if not rec.locations:
                raise ChunkMissingError(path, f"chunk {cid.hex()} is lost: no stored copy is "
                                        "left (`hutong fsck --repair --from STORE` restores it "
                                        "from a store that has it; putting the file again "
                                        "heals it)")
            moved = False
            problems.clear()
            failed: list[Location] = []
            if attempt == 0:
                self.store.observer.record((cid,))
            for loc in sorted(rec.locations, key=lambda x: ((cid, x.pack) in self._bad,
                                                            self.store.tier_rank(x.pool))):
                try:
                    blob, raw = self.blob_at(loc, cid, base=base)
                except CorruptChunkError as e:
                    corrupt = True
                    failed.append(loc)
                    problems.append(f"pack {loc.pack.hex()}: {e.strerror}")
                    continue
                except PoolObjectMissingError:
                    moved = True
                    problems.append(f"pack {loc.pack.hex()} missing from pool {loc.pool}")
                    continue
                if problems and self._first_report(cid, failed):
                    # read from another copy: say so once, the caller has its data
                    log.error("chunk %s (file %s): skipped bad copies (%s); "
                              "`hutong fsck --repair` drops them", cid.hex(), path or "?",
                              "; ".join(problems))
                return blob, raw
            if not moved or attempt:
                break  # a missing pack may have been repacked by gc: look it up once more
        detail = "; ".join(problems)
        if corrupt:
            raise CorruptChunkError(path, f"chunk {cid.hex()} has no valid copy: {detail}")
        raise ChunkMissingError(path, f"chunk {cid.hex()} has no readable copy: {detail}")

    def _folded(self, rec: ChunkRecord, base: BaseReader | None, blob: bool
                ) -> tuple[bytes, bytes]:
        """(whole blob, raw bytes) of the folded group member `rec`, sliced from its
        group (read through `base`, by default the group cache) and verified; a
        folded member has no blob of its own, so the blob is its whole encoding, as
        it leaves the store."""
        raw = member_slice(rec.id, rec.raw_len, rec.group, rec.group_offset,
                           (base or self._group)(rec.group))
        if not blob:
            return b"", raw
        header, payload = encode_blob(raw, self.store.config.zstd_level, rec.id)
        return header + bytes(payload), raw

    def _first_report(self, cid: bytes, failed: list[Location]) -> bool:
        """Remember the corrupt copies of `cid`; True unless all were reported before
        (they are then tried last, and not reported again)."""
        keys = {(cid, loc.pack) for loc in failed}
        with self._bad_lock:
            if keys and keys <= self._bad:
                return False
            if len(self._bad) >= BAD_COPIES_KEPT:
                self._bad.clear()
            self._bad |= keys
        return True

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        """Verified raw bytes of many chunks, by id: neighbouring blobs of one pack in
        one ranged read, decoded on the store's worker threads. A chunk the batch
        cannot give is read again alone with `get` (other copies, then an error
        naming the file `path_of(cid)`)."""
        unique = list(dict.fromkeys(cids))
        with self.store.engine.read() as txn:
            found = txn.get_chunks(unique)
        recs = [(cid, found.get(cid)) for cid in unique]
        self.store.observer.record(unique)
        by_pack: dict[tuple[int, bytes], list[tuple[bytes, Location]]] = defaultdict(list)
        retry: list[bytes] = []
        folded: list[ChunkRecord] = []
        for cid, rec in recs:
            if rec is not None and rec.group:
                folded.append(rec)
                continue
            if rec is None or not rec.locations:
                retry.append(cid)
                continue
            loc = min(rec.locations, key=lambda x: self.store.tier_rank(x.pool))
            by_pack[(loc.pool, loc.pack)].append((cid, loc))
        # spans long enough for few reads, short enough to share the decoding among
        # the worker threads (one span is decoded by one thread)
        total = sum(loc.length for members in by_pack.values() for _, loc in members)
        longest = min(MAX_SPAN, max(MIN_SPLIT, total // max(self.store.config.threads, 1)))
        spans: list[_Span] = []
        for (pool_id, pack), members in by_pack.items():
            members.sort(key=lambda m: m[1].offset)
            for cid, loc in members:
                last = spans[-1] if spans else None
                if (last is not None and last.pack == pack and last.pool == pool_id
                        and loc.offset - last.end <= COALESCE_GAP
                        and loc.offset + loc.length - last.start <= longest):
                    last.end = max(last.end, loc.offset + loc.length)
                    last.members.append((cid, loc))
                else:
                    spans.append(_Span(pool_id, pack, loc.offset, loc.offset + loc.length,
                                       [(cid, loc)]))
        out: dict[bytes, bytes] = {}
        bases = self.batch_reader()
        for results in self.store.executor.map(lambda s: self._fetch_span(s, bases), spans):
            for cid, data in results:
                if data is None:
                    retry.append(cid)
                else:
                    out[cid] = data
        for cid, data in self._folded_members(folded):
            if data is None:
                retry.append(cid)
            else:
                out[cid] = data
        for cid in retry:  # counted once above; get counts its own reads too
            out[cid] = self.get(cid, path=path_of(cid) if path_of else "")
        return out

    def _folded_members(self, folded: list[ChunkRecord]
                        ) -> Iterator[tuple[bytes, bytes | None]]:
        """(id, raw bytes or None: unreadable) of folded members, their groups read
        each once through the group cache on the worker threads, as many groups at a
        time as the store has threads, each cut into its members by the thread that read it and
        dropped (read one after another on the fetching thread, the groups were half a
        release-series get's chunk fetching; all of a batch's groups at once held them
        all: 2,000 files can use 2,000 groups of up to 4 MiB)."""
        by_group: dict[bytes, list[ChunkRecord]] = defaultdict(list)
        for rec in folded:
            by_group[rec.group].append(rec)
        work = list(by_group.values())
        step = max(self.store.config.threads, 1)
        for i in range(0, len(work), step):
            for members in self.store.executor.map(self._cut_group, work[i:i + step]):
                yield from members

    def _cut_group(self, recs: list[ChunkRecord]) -> list[tuple[bytes, bytes | None]]:
        """Members `recs` of one group, cut from it (None: unreadable)."""
        try:
            raw = self._group(recs[0].group)
        except (CorruptChunkError, ChunkMissingError, PoolError):
            return [(rec.id, None) for rec in recs]
        out: list[tuple[bytes, bytes | None]] = []
        for rec in recs:
            try:
                out.append((rec.id, member_slice(rec.id, rec.raw_len, rec.group,
                                                 rec.group_offset, raw)))
            except (CorruptChunkError, ChunkMissingError, PoolError):
                out.append((rec.id, None))
        return out

    def _fetch_span(self, span: _Span, bases: BaseReader) -> list[tuple[bytes, bytes | None]]:
        try:
            checked = self.read_span(span.pool, span.pack, span.members, base=bases,
                                     cached_groups=True)
        except PoolError:
            return [(cid, None) for cid, _ in span.members]
        return [(c.cid, c.raw) for c in checked]  # a failure: `get` reports it, naming the file


__all__ = ["COALESCE_GAP", "MAX_SPAN", "Checked", "LocalSource"]
