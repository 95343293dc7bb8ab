"""Repair: restore damaged chunks from good copies, mark the rest lost.

`hutong fsck --repair` first raises reference counts below the references fsck
counts (a PostgreSQL store before 2026-12 could leave them low: see docs/format.md,
"Metadata (PostgreSQL engine)"), so that gc keeps what files name; a count above
them is left (a leak, not a loss). It then reads every stored copy once (the same
scan as fsck).
A chunk with a bad copy and a good one keeps the good one (the bad copy's bytes
become dead and gc reclaims them). A chunk with no good copy is restored from
another store that has it (`--from STATE`, e.g. a copy made by `hutong copy`):
the blob is verified against the chunk id before it is written. A folded group
member is as good as its group: the members of a group with no good copy are
restored whole from another store (groups are local to a store), and the
group, once no member needs it, is garbage. A chunk that
no source has is marked lost: its record stays, without locations, so that the
files naming it read as damaged with a clear error, gc and the tierer skip it,
and putting the same content again heals every file that names it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from gfs import delta
from gfs.errors import ChunkMissingError, CorruptChunkError, PoolError
from gfs.fsck import check, owners, scan_copies
from gfs.gc import remove_temporaries
from gfs.meta import Location, PackRecord, WriteTxn
from gfs.store import ChunkStore, lost_chunks, set_lost_chunks

log = logging.getLogger("gfs.repair")


@dataclass
class RepairReport:
    """What a repair did."""

    copies_verified: int = 0
    dropped_copies: int = 0  # bad copies of chunks that kept a good one
    repaired: int = 0  # chunks restored from another store
    lost: list[str] = field(default_factory=list)  # ids (hex) of chunks with no good copy
    damaged_files: list[str] = field(default_factory=list)  # files naming a lost chunk
    temporaries_removed: int = 0  # files of interrupted writes (gfs.gc.remove_temporaries)
    refcounts_raised: int = 0  # chunks whose count was below the references to them


def repair(store: ChunkStore, sources: Sequence[ChunkStore] = ()) -> RepairReport:
    """Verify every copy in `store`; restore or drop bad ones; mark unrecoverable chunks lost.

    Runs under the gc lock, so no gc or repack moves blobs meanwhile.
    """
    report = RepairReport()
    with store.gc_exclusive():
        report.temporaries_removed = remove_temporaries(store, store.config.gc_grace)
        report.refcounts_raised = raise_low_refcounts(store)
        with store.engine.read() as txn:
            chunks = {rec.id: rec for rec in txn.iter_chunks()}
            packs = {p.id: p for p in txn.iter_packs()}
        by_pack: dict[bytes, list[tuple[bytes, Location]]] = defaultdict(list)
        for cid, rec in chunks.items():
            for loc in rec.locations:
                by_pack[loc.pack].append((cid, loc))
        scan = scan_copies(store, by_pack.items(), packs)
        report.copies_verified = scan.copies_verified
        # copies in unknown packs, or chunks with no location at all, are bad too
        for cid, rec in chunks.items():
            unknown = [loc for loc in rec.locations if loc.pack not in packs]
            if unknown:
                scan.bad.setdefault(cid, []).extend(unknown)
        keep_one = {cid: locs for cid, locs in scan.bad.items()
                    if len(set(locs)) < len(chunks[cid].locations)}
        if keep_one:
            report.dropped_copies += store.engine.transact(
                lambda txn: sum(_drop_copies(txn, cid, set(locs))
                                for cid, locs in keep_one.items()))
        hopeless = {cid for cid in scan.bad if cid not in keep_one}
        hopeless |= {cid for cid, rec in chunks.items()
                     if not rec.locations and not rec.group and rec.refcount}
        # a folded member has no copy of its own: it is as good as its group
        hopeless |= {cid for cid, rec in chunks.items() if rec.group in hopeless}
    blobs = _from_sources(hopeless, sources)
    blobs.update(_dependents_whole(store, hopeless - blobs.keys(), blobs.keys(), sources))
    if blobs:
        report.repaired = store.replace_copies(blobs)
    with store.gc_exclusive():
        def mark_lost(txn: WriteTxn) -> set[bytes]:
            lost: set[bytes] = set()
            for cid in hopeless:
                current = txn.get_chunk(cid)
                if current is None or cid in blobs:
                    continue
                _drop_copies(txn, cid, set(current.locations))  # a folded member keeps its
                # record (and its reference on its group): it reads as damaged until put again
                if current.refcount == 0:
                    continue  # garbage (a group whose members were restored): gc drops it
                lost.add(cid)
            if lost:
                set_lost_chunks(txn, lost_chunks(txn) | lost)
            return lost

        lost = store.engine.transact(mark_lost)
        if lost:
            with store.engine.read() as txn:
                report.damaged_files = sorted(owners(txn, lost))
            log.error("%d chunks have no good copy anywhere; files marked damaged: %s",
                      len(lost), ", ".join(report.damaged_files) or "none")
    report.lost = sorted(cid.hex() for cid in lost)
    return report


def raise_low_refcounts(store: ChunkStore) -> int:
    """Raise each chunk's reference count that fsck finds below the references to it
    (manifest entries, delta chunks, group members); returns how many. Call under the
    gc lock (no local writer commits meanwhile); a count that changed since fsck read
    it (a writer on another host) is left for the next run."""
    low = check(store, verify_data=False).low_refcounts
    if not low:
        return 0

    def raise_(txn: WriteTxn) -> int:
        raised = 0
        for hex_id, had, want in low:
            cid = bytes.fromhex(hex_id)
            rec = txn.get_chunk(cid)
            if rec is not None and rec.refcount == had:
                txn.add_refcounts({cid: want - had})
                raised += 1
        return raised

    raised = store.engine.transact(raise_)
    log.warning("raised the reference counts of %d chunks to the references fsck found",
                raised)
    return raised


def _drop_copies(txn: WriteTxn, cid: bytes, bad: set[Location]) -> int:
    """Remove `bad` locations of chunk `cid`, and their bytes from their packs' live counts."""
    rec = txn.get_chunk(cid)
    if rec is None:
        return 0
    dropped = 0
    for loc in rec.locations:
        if loc not in bad:
            continue
        dropped += 1
        p = txn.get_pack(loc.pack)
        if p is not None:
            txn.put_pack(PackRecord(p.id, p.pool, p.size, p.nchunks, p.live_chunks - 1,
                                    p.live_bytes - loc.length, p.created_ns))
    if dropped:
        txn.put_chunk(replace(rec, locations=tuple(x for x in rec.locations if x not in bad)))
    return dropped


def _dependents_whole(store: ChunkStore, bases: set[bytes], have: Iterable[bytes],
                      sources: Sequence[ChunkStore]) -> dict[bytes, bytes]:
    """Whole blobs, from `sources`, of the chunks based on `bases` that no source has
    (a group is local to its store: its members are restored whole instead)."""
    if not bases:
        return {}
    with store.engine.read() as txn:
        deps = {cid for cid, base in txn.iter_values(delta.DELTAS) if base in bases}
    return _from_sources(deps - set(have), sources)


def _from_sources(cids: set[bytes], sources: Sequence[ChunkStore]) -> dict[bytes, bytes]:
    """Verified blobs of `cids` from the first source that has a good copy of each."""
    found: dict[bytes, bytes] = {}
    for source in sources:
        for cid in sorted(cids - found.keys()):
            try:
                found[cid] = source.source.get_blob(cid)
            except (ChunkMissingError, CorruptChunkError, PoolError):
                continue
    return found
