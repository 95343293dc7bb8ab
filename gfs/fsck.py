"""fsck: verify the namespace, the index, the packs and (optionally) every chunk.

Damage (a broken invariant of docs/format.md, a chunk that does not verify,
a missing pack) is reported with the paths of the files it touches and makes
the report not ok. Garbage that gc reclaims (unreferenced chunks, orphan
packs) is counted but is not damage.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from gfs import delta, namespace
from gfs.codec import BASED_CODECS, CHUNK_ID_LEN
from gfs.errors import (
    ChunkMissingError,
    CorruptChunkError,
    MetadataDamagedError,
    PoolObjectMissingError,
)
from gfs.gc import local_backend, state_temporaries
from gfs.meta import ROOT_INO, ChunkRecord, Inode, Kind, Location, PackRecord, ReadTxn
from gfs.packs import PACK_HEADER_LEN, parse_pack_key
from gfs.spill import SpillTable, merge_outer
from gfs.store import ChunkStore, pinned_chunks
from gfs.tiering import heat


@dataclass
class FsckReport:
    """The outcome of one fsck run."""

    problems: list[str] = field(default_factory=list)
    damaged_files: list[str] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    chunks: int = 0
    packs: int = 0
    chunks_verified: int = 0
    bytes_verified: int = 0
    unreferenced_chunks: int = 0
    orphan_packs: int = 0
    #: unknown packs of a shared pool that another store wrote (neither garbage of
    #: this store nor damage: their owner's gc reclaims them)
    foreign_packs: int = 0
    #: files of interrupted writes: pool temporaries (a killed put, a receiver's spool
    #: after kill -9) and STATE/tmp (mover staging); gc and `fsck --repair` remove them
    temporaries: int = 0
    pinned_chunks: int = 0
    #: appended packs (gfs.pack_tail) longer than their record: bytes of an append
    #: whose commit never happened (never referenced, never read; not damage)
    uncommitted_tails: int = 0
    #: metadata records do not decode: `problems` lists them and the other checks
    #: did not run
    metadata_damaged: bool = False
    #: chunks whose reference count is below the references found: (id hex, count,
    #: references); gc would drop them while files name them (`fsck --repair` raises them)
    low_refcounts: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(store: ChunkStore, *, verify_data: bool = True,
          progress: Callable[[int], None] | None = None) -> FsckReport:
    """Check `store`; with `verify_data`, read and verify every stored chunk.

    Memory stays flat as the store grows: the sets fsck needs (directory
    entries naming each file, references to each chunk, copies in each pack)
    are spilled to temporary tables and merge-joined, in key order, with the
    engine's sorted scans of inodes and chunks (gfs.spill).

    A metadata record that does not decode stops those checks (they need every
    record); the report then lists every damaged record, not only the first.
    """
    try:
        return _check(store, verify_data, progress)
    except MetadataDamagedError as e:
        return _damaged_metadata(store, e)


#: Damaged metadata records listed by name at most (the rest are counted).
LISTED_RECORDS = 1000


def _damaged_metadata(store: ChunkStore, first: MetadataDamagedError) -> FsckReport:
    report = FsckReport(metadata_damaged=True)
    with store.engine.read() as txn:
        found = txn.damaged_records()
        report.problems += itertools.islice(found, LISTED_RECORDS)
        more = sum(1 for _ in found)
    if more:
        report.problems.append(f"... and {more} more damaged metadata records")
    if not report.problems:  # a record outside the record tables (a shared body, a delta)
        report.problems.append(str(first))
    return report


def _check(store: ChunkStore, verify_data: bool,
           progress: Callable[[int], None] | None) -> FsckReport:
    report = FsckReport()
    bad_chunks: set[bytes] = set()
    with SpillTable(COPY_COLUMNS) as copies:
        with store.engine.read() as txn:
            _check_tree(txn, report)
            with SpillTable("id BLOB") as refs:
                _check_manifests(txn, report, bad_chunks, refs)
                report.problems += txn.manifest_problems()  # shared bodies' refcounts
                refs.add_many((base,) for base in delta.base_refs(txn))  # each delta
                # chunk pins its base
                packs = {p.id: p for p in txn.iter_packs()}
                pinned = pinned_chunks(txn)
                _check_index(txn, packs, refs, report, bad_chunks, pinned,
                             copies if verify_data else None)
            _check_deltas(txn, report)
            _check_heat(txn, report)
        report.packs = len(packs)
        _check_pools(store, packs, report)
        if verify_data:
            _verify_chunks(store, copies, packs, report, bad_chunks, progress)
            _verify_folded(store, report, bad_chunks)
    if bad_chunks:
        with store.engine.read() as txn:
            report.damaged_files = sorted(owners(txn, bad_chunks))
    return report


def _check_tree(txn: ReadTxn, report: FsckReport) -> None:
    root = txn.get_inode(ROOT_INO)
    if root is None or root.kind != Kind.DIR:
        report.problems.append("root directory (inode 1) is missing or not a directory")
        return
    reached = {ROOT_INO}  # directories (one link each; few next to the files)
    with SpillTable("ino INTEGER, dir INTEGER") as links:  # entries naming non-directories
        stack = [root]
        while stack:
            node = stack.pop()
            report.dirs += 1
            subdirs = 0
            for name, ino in txn.list_dir(node.ino):
                kid = txn.get_inode(ino)
                if kid is None:
                    report.problems.append(f"directory entry {name!r} in inode {node.ino} "
                                           f"names missing inode {ino}")
                    continue
                if kid.kind != Kind.DIR:  # hard links: counted, checked against nlink below
                    links.add((ino, node.ino))
                    continue
                if ino in reached:
                    report.problems.append(f"directory inode {ino} is linked more than once")
                    continue
                reached.add(ino)
                subdirs += 1
                if kid.parent != node.ino:
                    report.problems.append(f"inode {ino} ({name!r}) records parent "
                                           f"{kid.parent}, but is linked from {node.ino}")
                stack.append(kid)
            if node.nlink != 1 and node.nlink != 2 + subdirs:  # 1: made before link counts
                report.problems.append(f"directory inode {node.ino} has link count "
                                       f"{node.nlink}, but {subdirs} subdirectories")
        groups = links.query("SELECT ino, count(*), min(dir) FROM t GROUP BY ino ORDER BY ino")
        for ino, kid, group in merge_outer(txn.iter_inodes(), _ino, groups, _first):
            if kid is None:
                continue  # entries naming missing inodes are reported above
            if group is None:
                if kid.kind != Kind.DIR or ino not in reached:
                    report.problems.append(f"inode {ino} is not reachable from the root")
                continue
            n, linked_from = group[1], group[2]
            if kid.kind == Kind.FILE:
                report.files += 1
            if kid.nlink != n:
                report.problems.append(f"inode {ino} has link count {kid.nlink}, but {n} "
                                       "directory entries name it")
            # one link: its directory, or 0 once it has had more; several: always 0
            if kid.parent not in ((0, linked_from) if n == 1 else (0,)):
                report.problems.append(f"inode {ino} records parent {kid.parent}, but is "
                                       f"linked from {linked_from}")


def _ino(node: Inode) -> int:
    return node.ino


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _chunk_id(rec: ChunkRecord) -> bytes:
    return rec.id


def _check_manifests(txn: ReadTxn, report: FsckReport, bad: set[bytes],
                     refs: SpillTable) -> None:
    for ino, m in txn.iter_manifests():
        node = txn.get_inode(ino)
        if node is None or node.kind != Kind.FILE:
            report.problems.append(f"manifest of inode {ino} belongs to no file")
            continue
        refs.add_many((r.id,) for r in m.chunks)
        if m.size != node.size:
            report.problems.append(f"{namespace.path_of(txn, ino)}: size {node.size} but "
                                   f"manifest holds {m.size} bytes")
        for r in m.chunks:
            rec = txn.get_chunk(r.id)
            if rec is None or not (rec.locations or rec.group):
                bad.add(r.id)
            elif rec.raw_len != r.length:
                report.problems.append(f"{namespace.path_of(txn, ino)}: chunk {r.id.hex()} "
                                       f"length {r.length} but index says {rec.raw_len}")


#: Columns of the spilled chunk copies to verify (read back grouped by pack).
COPY_COLUMNS = "pack BLOB, pool INTEGER, off INTEGER, len INTEGER, id BLOB"


def _check_index(txn: ReadTxn, packs: dict[bytes, PackRecord], refs: SpillTable,
                 report: FsckReport, bad: set[bytes], pinned: set[bytes],
                 copies: SpillTable | None) -> None:
    """Merge the chunk index (in id order) with the counted references; spill the
    copies to verify into `copies`."""
    for cid in bad:
        report.problems.append(f"chunk {cid.hex()} is referenced but has no stored copy")
    live: dict[bytes, list[int]] = defaultdict(lambda: [0, 0])
    counted = refs.query("SELECT id, count(*) FROM t GROUP BY id ORDER BY id")
    for cid, rec, group in merge_outer(txn.iter_chunks(), _chunk_id, counted, _first):
        if rec is None:
            continue  # referenced without a record: in `bad`, reported above
        report.chunks += 1
        want = group[1] if group is not None else 0
        if rec.refcount != want:
            report.problems.append(f"chunk {cid.hex()} refcount {rec.refcount}, "
                                   f"but {want} manifest entries, delta chunks and group members "
                                   "name it")
            if rec.refcount < want:
                report.low_refcounts.append((cid.hex(), rec.refcount, want))
        if rec.refcount == 0 and cid in pinned:
            report.pinned_chunks += 1
        elif rec.refcount == 0:
            report.unreferenced_chunks += 1
        for loc in rec.locations:
            p = packs.get(loc.pack)
            if p is None:
                report.problems.append(f"chunk {cid.hex()} located in unknown pack "
                                       f"{loc.pack.hex()}")
                bad.add(cid)
                continue
            if loc.offset < PACK_HEADER_LEN or loc.offset + loc.length > p.size:
                report.problems.append(f"chunk {cid.hex()} location lies outside pack "
                                       f"{loc.pack.hex()}")
                bad.add(cid)
            elif copies is not None:
                copies.add((loc.pack, loc.pool, loc.offset, loc.length, cid))
            live[loc.pack][0] += 1
            live[loc.pack][1] += loc.length
    for pid, p in packs.items():
        n, nbytes = live.get(pid, [0, 0])
        if (n, nbytes) != (p.live_chunks, p.live_bytes):
            report.problems.append(f"pack {pid.hex()} counts {p.live_chunks} live chunks / "
                                   f"{p.live_bytes} bytes, index has {n} / {nbytes}")


def _check_deltas(txn: ReadTxn, report: FsckReport) -> None:
    """Merge the chunk index with the `deltas` table (both in id order): each chunk
    stored against a base has an entry naming a base in the index, and each entry
    belongs to such a chunk. gc releases a base through these entries, so a wrong one
    would let it delete a base still needed (or keep one for ever)."""
    entries = txn.iter_values(delta.DELTAS)
    for cid, rec, entry in merge_outer(txn.iter_chunks(), _chunk_id, entries, _first):
        # stored against a base: a delta or member blob (a lost one has no copy left,
        # and keeps its entry until it is healed; a folded member's group pins it)
        based = rec is not None and rec.codec in BASED_CODECS and not rec.group
        if entry is None:
            if based and rec is not None and rec.locations:
                report.problems.append(f"chunk {cid.hex()} is stored against a base but "
                                       f"the deltas table has no entry for it")
            continue
        base = entry[1]
        if rec is None:
            report.problems.append(f"deltas entry of chunk {cid.hex()}, which is not in "
                                   f"the index")
        elif not based:
            report.problems.append(f"deltas entry of chunk {cid.hex()}, which is not stored "
                                   f"against a base")
        if len(base) != CHUNK_ID_LEN:
            report.problems.append(f"deltas entry of chunk {cid.hex()} is damaged: "
                                   f"{len(base)} bytes, a chunk id has {CHUNK_ID_LEN}")
        elif base == cid:
            report.problems.append(f"deltas entry of chunk {cid.hex()} names the chunk "
                                   f"itself as its base")
        elif txn.get_chunk(base) is None:
            report.problems.append(f"deltas entry of chunk {cid.hex()} names base "
                                   f"{base.hex()}, which is not in the index")


def _check_heat(txn: ReadTxn, report: FsckReport) -> None:
    """Each chunk's heat record decodes (the tierer reads them all)."""
    for cid, value in txn.iter_values("heat", heat.CHUNK_PREFIX):
        try:
            heat.decode(value)
        except MetadataDamagedError:
            report.problems.append(f"heat record of chunk {cid[len(heat.CHUNK_PREFIX):].hex()}"
                                   f" is damaged: {len(value)} bytes, not "
                                   f"{heat.VALUE_LEN}")


def _check_pools(store: ChunkStore, packs: dict[bytes, PackRecord], report: FsckReport) -> None:
    with store.engine.read() as txn:
        pools = [p.id for p in txn.iter_pools()]
    present: set[bytes] = set()
    for pool_id in pools:
        pool = store.pool(pool_id)
        private = store.is_private(pool_id)
        for key in pool.list("packs/"):
            pid = parse_pack_key(key)
            if pid is None:
                continue
            present.add(pid)
            p = packs.get(pid)
            if p is None:
                try:  # in a shared pool, only packs with this store's tag are its orphans
                    ours = private or store.owns(pool_id, store.pack_owner(pool_id, pid),
                                                 referenced=False)
                except PoolObjectMissingError:
                    continue  # deleted meanwhile by its owner
                if ours:
                    report.orphan_packs += 1
                else:
                    report.foreign_packs += 1
                continue
            size = pool.size(key)
            if size > p.size:  # an append that was not committed (gfs.pack_tail)
                report.uncommitted_tails += 1
            elif size != p.size:  # a cut between two blobs still parses: compare sizes
                report.problems.append(f"pack {pid.hex()} has {size} bytes in pool {pool_id}, "
                                       f"its record says {p.size}")
        backend = local_backend(pool)
        if backend is not None:
            report.temporaries += len(backend.temporaries())
    report.temporaries += len(state_temporaries(store))
    for pid, p in packs.items():
        if pid not in present:
            report.problems.append(f"pack {pid.hex()} is missing from pool {p.pool}")


@dataclass
class CopyScan:
    """Every stored copy of every chunk read back and verified."""

    bad: dict[bytes, list[Location]] = field(default_factory=dict)  # chunk -> bad copies
    #: delta chunks that failed only because their base is unreadable (their own
    #: copies are not dropped: repairing the base heals them)
    base_damaged: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    copies_verified: int = 0
    bytes_verified: int = 0


PackCopies = tuple[bytes, list[tuple[bytes, Location]]]


def copies_by_pack(copies: SpillTable) -> Iterator[PackCopies]:
    """(pack id, [(chunk id, location)] in offset order) for each pack of spilled
    `copies` (COPY_COLUMNS), one pack at a time."""
    rows = copies.query("SELECT pack, pool, off, len, id FROM t ORDER BY pack, off")
    for pid, group in itertools.groupby(rows, key=_first):
        yield pid, [(cid, Location(pool, pid, off, length)) for _, pool, off, length, cid
                    in group]


def scan_copies(store: ChunkStore, by_pack: Iterable[PackCopies],
                packs: dict[bytes, PackRecord],
                progress: Callable[[int], None] | None = None) -> CopyScan:
    """Read each pack of `by_pack` once and verify each chunk copy in it against its id.

    A bounded number of packs is in flight at once, so memory does not grow with
    the number of packs.
    """
    scan = CopyScan()

    def verify(pid: bytes, copies: list[tuple[bytes, Location]],
               ) -> tuple[list[tuple[bytes, Location]], list[str]]:
        p = packs[pid]
        try:
            checked = store.source.read_span(p.pool, pid, copies, whole=True)
        except PoolObjectMissingError:
            return list(copies), []  # reported by _check_pools
        bad, problems = [], []
        for c in checked:
            if isinstance(c.error, delta.BaseChunkError):
                scan.base_damaged.add(c.cid)  # a set: adding is atomic across threads
                problems.append(f"chunk {c.cid.hex()} in pack {pid.hex()}: delta whose "
                                f"{c.error.filename}: {c.error.strerror}")
            elif c.error is not None:
                bad.append((c.cid, c.loc))
                problems.append(f"chunk {c.cid.hex()} in pack {pid.hex()} at offset "
                                f"{c.loc.offset}: {c.error.strerror}")
        return bad, problems

    def finish(pid: bytes, n: int,
               fut: Future[tuple[list[tuple[bytes, Location]], list[str]]]) -> None:
        bad, problems = fut.result()
        scan.problems.extend(problems)
        for cid, loc in bad:
            scan.bad.setdefault(cid, []).append(loc)
        scan.copies_verified += n
        size = packs[pid].size
        scan.bytes_verified += size
        if progress is not None:
            progress(size)

    window = 2 * store.config.threads
    inflight: deque[tuple[bytes, int, Future[tuple[list[tuple[bytes, Location]],
                                                   list[str]]]]] = deque()
    for pid, copies in by_pack:
        if pid not in packs:
            continue
        inflight.append((pid, len(copies), store.executor.submit(verify, pid, copies)))
        if len(inflight) >= window:
            finish(*inflight.popleft())
    while inflight:
        finish(*inflight.popleft())
    return scan


def _verify_chunks(store: ChunkStore, copies: SpillTable, packs: dict[bytes, PackRecord],
                   report: FsckReport, bad: set[bytes],
                   progress: Callable[[int], None] | None) -> None:
    scan = scan_copies(store, copies_by_pack(copies), packs, progress)
    report.problems.extend(scan.problems)
    report.chunks_verified += scan.copies_verified
    report.bytes_verified += scan.bytes_verified
    if scan.bad:
        with store.engine.read() as txn:
            records = txn.get_chunks(scan.bad)
        for cid, locs in scan.bad.items():
            rec = records.get(cid)
            if rec is None or len(locs) >= len(rec.locations):  # no good copy left
                bad.add(cid)
    bad.update(scan.base_damaged)


def _verify_folded(store: ChunkStore, report: FsckReport, bad: set[bytes]) -> None:
    """Reconstruct every folded group member from its group (read once, through the
    readers' group cache) and verify it; a damaged or missing group fails each of its
    members, so the files naming any of them are reported."""
    with store.engine.read() as txn:  # group by group: each read once through the cache
        folded = sorted((rec.group, rec.group_offset, rec.id) for rec in txn.iter_chunks()
                        if rec.group)
    for _, _, cid in folded:
        try:
            raw = store.source.get(cid)
        except (CorruptChunkError, ChunkMissingError) as e:
            report.problems.append(f"chunk {cid.hex()}: {e.strerror}")
            bad.add(cid)
            continue
        report.chunks_verified += 1
        report.bytes_verified += len(raw)


def owners(txn: ReadTxn, cids: set[bytes]) -> set[str]:
    """Paths of the files whose manifests name any of `cids`."""
    out = set()
    for ino, m in txn.iter_manifests():
        if any(r.id in cids for r in m.chunks):
            out.add(namespace.path_of(txn, ino))
    return out
