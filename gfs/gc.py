"""Garbage collection: reclaim unreferenced chunks, sparse packs and orphan packs.

gc holds the store's gc lock exclusively, so no writer of this state directory
is between writing a pack and committing it. It deletes only packs this store
owns, and in a shared pool no unknown pack younger than the grace period
(docs/format.md, "Ownership of packs"). Order (invariant 5): the metadata
transaction that drops every reference to a pack commits before the pack
object is deleted; chunks that a manifest references are never dropped, nor
are chunks pinned in the `pins` table (fetched ahead of the files that will
name them) until their pin expires.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from gfs import delta, regroup
from gfs.errors import FormatError, PoolError, PoolObjectMissingError
from gfs.meta import ChunkRecord, Location, PackRecord, WriteTxn
from gfs.packs import PACK_HEADER_LEN, pack_key, parse_pack_head, parse_pack_key
from gfs.pools import LocalPool, Pool
from gfs.relocate import Hook, Move, relocate
from gfs.store import ChunkStore, pin_chunks, pinned_chunks

log = logging.getLogger("hutong.gc")

#: Temporaries of a shared pool younger than this (seconds) may be another
#: store's put in progress (a put takes seconds).
SHARED_TEMPORARY_AGE = 3600.0
#: A pack is rewritten when less than this share of its bytes is live.
REPACK_LIVE_SHARE = 0.5


@dataclass
class GcReport:
    """What one gc run reclaimed."""

    chunks_removed: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    chunks_moved: int = 0
    groups_regrouped: int = 0
    chunks_grouped: int = 0  # loose small chunks gc put into groups
    members_folded: int = 0  # member blobs of a format 3 store folded into their records
    orphan_packs: int = 0
    pending_cleared: int = 0
    temporaries_removed: int = 0
    not_owned: int = 0
    young_orphans: int = 0
    chunks_waiting: int = 0
    bytes_freed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def note(self, msg: str) -> None:
        """Record why something was left alone (logged as a warning too)."""
        if msg not in self.notes:
            self.notes.append(msg)
            log.warning("%s", msg)


def collect(store: ChunkStore, *, grace: float | None = None,
            hook: Hook | None = None) -> GcReport:
    """Run one full collection on `store` and report what was reclaimed.

    `grace` (seconds, default the store's `gc_grace`): an unknown pack of this
    store in a shared pool is deleted only when older than this; on an engine
    that several hosts write (PostgreSQL) a chunk is deleted only when it has
    been unreferenced for this long (it is pinned when first found dead).
    `hook` is passed to the repack's `relocate` (fault tests stop it there).
    """
    started = time.monotonic()
    report = GcReport()
    wait = store.config.gc_grace if grace is None else grace
    with store.gc_exclusive():
        doomed = _drop_dead_chunks(store, report, wait if store.engine.MULTI_HOST else 0)
        _delete_objects(store, doomed, report)
        if _regroup_sparse(store, report, hook):  # the old groups are dead now
            doomed = _drop_dead_chunks(store, report, wait if store.engine.MULTI_HOST else 0)
            _delete_objects(store, doomed, report)
        _repack_sparse(store, report, hook)
        _delete_orphans(store, report, wait)
    report.seconds = time.monotonic() - started
    return report


def _drop_dead_chunks(store: ChunkStore, report: GcReport, grace: float) -> list[PackRecord]:
    """Delete chunk records with refcount 0 and the pack records left with no live chunk.

    With `grace` > 0 a dead chunk is first pinned for `grace` seconds and deleted by
    a later run if still dead: a writer on another host, which the gc lock does not
    exclude, may have found it by its id and be about to reference it again.
    """
    def drop(txn: WriteTxn) -> tuple[list[PackRecord], int, int, int]:
        now = time.time_ns()
        pinned = pinned_chunks(txn, now)
        expired = set()
        for cid, value in list(txn.iter_values("pins")):
            if int.from_bytes(value, "big") <= now:
                txn.delete_value("pins", cid)  # expired pins
                expired.add(cid)
        dead = []
        waiting: list[bytes] = []
        for rec in txn.iter_chunks():
            if rec.refcount or rec.id in pinned:
                continue
            if grace > 0 and rec.id not in expired:
                waiting.append(rec.id)
            else:
                dead.append(rec)
        pin_chunks(txn, waiting, grace)
        dead += delta.release_chain(txn, [rec.id for rec in dead], pinned)
        packs = {p.id: p for p in txn.iter_packs()}
        live: dict[bytes, list[int]] = {pid: [p.live_chunks, p.live_bytes]
                                        for pid, p in packs.items()}
        for rec in dead:
            for loc in rec.locations:
                if loc.pack in live:
                    live[loc.pack][0] -= 1
                    live[loc.pack][1] -= loc.length
            txn.delete_chunk(rec.id)
        doomed = []
        for pid, (n, nbytes) in live.items():
            p = packs[pid]
            if n <= 0:
                txn.delete_pack(pid)
                doomed.append(p)
            elif (n, nbytes) != (p.live_chunks, p.live_bytes):
                txn.put_pack(PackRecord(p.id, p.pool, p.size, p.nchunks, n, nbytes,
                                        p.created_ns))
        pending = [rec.id for rec in txn.iter_pending()]
        for pid in pending:
            txn.delete_pending(pid)
        return doomed, len(dead), len(waiting), len(pending)

    doomed, removed, report.chunks_waiting, cleared = store.engine.transact(drop)
    report.chunks_removed += removed
    report.pending_cleared += cleared
    return doomed


def _delete_objects(store: ChunkStore, packs: list[PackRecord], report: GcReport) -> None:
    for p in packs:
        outcome = store.delete_pack_object(p)
        if outcome == "deleted":
            report.packs_deleted += 1
            report.bytes_freed += p.size
        elif outcome == "not owned":
            _not_owned(store, p.pool, report)


def _regroup_sparse(store: ChunkStore, report: GcReport, hook: Hook | None) -> int:
    """Re-group the live members of mostly dead groups, and group loose small chunks
    (gfs.regroup); returns how many groups and loose chunks were."""
    with store.engine.read() as txn:
        sparse = regroup.sparse_groups(txn)
        loose = regroup.loose_chunks(txn) if store.config.delta else []
        blobs = regroup.member_blobs(txn, set(sparse))
    if not sparse and not loose and not blobs:
        return 0
    write_tier = store.placement()
    moves = chain(regroup.regroup_moves(store, [*sparse.values(), loose]),
                  regroup.fold_moves(store, blobs))
    done = relocate(store, moves,
                    lambda size: store.choose_pool(write_tier, size, store.usage()), hook=hook)
    report.chunks_moved += done.switched
    report.groups_regrouped += len(sparse)
    report.chunks_grouped += len(loose)
    report.members_folded += len(blobs)
    return len(sparse) + len(loose)


def _repack_sparse(store: ChunkStore, report: GcReport, hook: Hook | None) -> None:
    """Copy the live blobs of sparse packs into new packs, switch locations, delete the old."""
    with store.engine.read() as txn:
        sparse = [p for p in txn.iter_packs()
                  if p.live_bytes < REPACK_LIVE_SHARE * (p.size - PACK_HEADER_LEN)]
        if not sparse:
            return
        ids = {p.id for p in sparse}
        movers: dict[bytes, list[tuple[ChunkRecord, Location]]] = defaultdict(list)
        for rec in txn.iter_chunks():
            for loc in rec.locations:
                if loc.pack in ids:
                    movers[loc.pack].append((rec, loc))
    by_pool: dict[int, list[PackRecord]] = defaultdict(list)
    for p in sparse:
        by_pool[p.pool].append(p)
    for pool_id, group in by_pool.items():
        _repack_group(store, pool_id, group, movers, report, hook)


def _repack_group(store: ChunkStore, pool_id: int, group: list[PackRecord],
                  movers: dict[bytes, list[tuple[ChunkRecord, Location]]],
                  report: GcReport, hook: Hook | None) -> None:
    pool = store.pool(pool_id)

    def moves() -> Iterator[Move]:
        for p in group:
            try:
                checked = store.source.read_span(
                    pool_id, p.id, [(rec.id, loc) for rec, loc in movers.get(p.id, [])],
                    whole=True)
            except PoolObjectMissingError:
                log.error("pack %s is missing from pool %d; run `hutong fsck`",
                          p.id.hex(), pool_id)
                continue
            try:
                tag: bytes | None = parse_pack_head(
                    pool.get(pack_key(p.id), 0, PACK_HEADER_LEN))[1]
            except (FormatError, PoolError):
                tag = None
            if not store.owns(pool_id, tag, referenced=True):
                _not_owned(store, pool_id, report)  # the old pack could not be deleted
                continue
            bad = next((c.error for c in checked if c.error is not None), None)
            if bad is not None:
                log.error("not repacking pack %s: %s", p.id.hex(), bad)
                continue
            for c in checked:
                yield Move(c.cid, c.loc, bytes(c.blob))

    done = relocate(store, moves(), pool_id, hook=hook)
    report.chunks_moved += done.switched
    report.packs_repacked += done.packs_deleted
    report.bytes_freed += done.bytes_freed - done.bytes_written


def _delete_orphans(store: ChunkStore, report: GcReport, grace: float) -> None:
    """Delete pack objects no pack record names, and temporaries of interrupted writes.

    In a private pool every such pack is an orphan (the gc lock excludes every
    writer). In a shared pool only packs with this store's owner tag that are
    older than `grace` seconds are.
    """
    with store.engine.read() as txn:
        known = {p.id for p in txn.iter_packs()}
        pools = [p.id for p in txn.iter_pools()]
    now = time.time()
    report.temporaries_removed += remove_temporaries(store, grace)
    for pool_id in pools:
        pool = store.pool(pool_id)
        private = store.is_private(pool_id)
        for key in list(pool.list("packs/")):
            pid = parse_pack_key(key)
            if pid is None or pid in known:
                continue
            try:
                if not private:
                    if not store.owns(pool_id, store.pack_owner(pool_id, pid), referenced=False):
                        _not_owned(store, pool_id, report)
                        continue
                    stored = pool.modified(key)
                    if stored is None or now - stored < grace:
                        report.young_orphans += 1
                        continue
                size = pool.size(key)
            except PoolObjectMissingError:
                continue  # deleted meanwhile by its owner
            pool.delete(key)
            report.orphan_packs += 1
            report.bytes_freed += size


def local_backend(pool: Pool) -> LocalPool | None:
    """The local pool under `pool` (an encrypted pool's temporaries are its backend's)."""
    backend = getattr(pool, "inner", pool)
    return backend if isinstance(backend, LocalPool) else None


def state_temporaries(store: ChunkStore) -> list[Path]:
    """Files in STATE/tmp: mover staging files and spools for non-local pools."""
    try:
        return sorted(p for p in (store.state / "tmp").iterdir() if p.is_file())
    except FileNotFoundError:
        return []


def remove_temporaries(store: ChunkStore, grace: float) -> int:
    """Remove temporaries of interrupted writes (a killed put, a receiver killed mid-
    transfer); the caller holds the gc lock exclusive. In a private pool no writer of
    this store is mid-put, so all go; in a shared pool (another store's writer may be
    writing) and in STATE/tmp (the mover's sender stages there without the lock) only
    those untouched for max(`grace`, SHARED_TEMPORARY_AGE) seconds. Returns how many."""
    removed = 0
    old = max(grace, SHARED_TEMPORARY_AGE)
    with store.engine.read() as txn:
        pools = [p.id for p in txn.iter_pools()]
    for pool_id in pools:
        backend = local_backend(store.pool(pool_id))
        if backend is not None:
            removed += backend.clean_temporaries(
                older_than=0 if store.is_private(pool_id) else old)
    cutoff = time.time() - old
    for p in state_temporaries(store):
        try:
            if p.stat().st_mtime <= cutoff:
                p.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _not_owned(store: ChunkStore, pool_id: int, report: GcReport) -> None:
    report.not_owned += 1
    report.note(f"pool {pool_id} ({store.pool(pool_id).url}) is shared with another store: "
                "packs this store did not write are left for their owner's gc")
