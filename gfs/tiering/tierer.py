"""The tierer: carries out a placement plan by moving chunks between pools.

Each move is copy, verify, switch, release: the blob is read from its pool and
verified against its id, re-encoded at the policy's `cold_level` when it goes
to `cold`, appended to a new pack for a pool of the target tier, and the pack
is written durably; then one metadata transaction switches the chunks'
locations to the new pack and lowers the old packs' live counters; only after
that commit are old packs that hold nothing live any more deleted. A crash at
any step leaves every chunk readable: before the switch the new pack is an
orphan that gc reclaims, after it the old copy is dead space that gc repacks.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from gfs import namespace
from gfs.codec import BLOB_HEADER_LEN, CODEC_DELTA, CODEC_ZSTD, encode_blob, parse_blob_header
from gfs.env import TIERS
from gfs.errors import CorruptChunkError, NotADirError, NotFoundError, PoolError
from gfs.meta import ChunkRecord, Kind, Location, PackRecord, ReadTxn, WriteTxn
from gfs.packs import PackBuilder, pack_key
from gfs.store import ChunkStore
from gfs.tiering.heat import iter_chunk_heat
from gfs.tiering.planner import ChunkState, Move, plan
from gfs.tiering.policy import TierPolicy

log = logging.getLogger("hutong.tier")

STATS_KEY = b"tier-stats"

#: A chunk copied into a new pack: its record, its old location, the blob's offset
#: and length in the new pack, and the blob's codec.
_Copied = tuple[ChunkRecord, Location, int, int, int]

#: Called at each step of a run ("copied", "written", "switched", "released") with
#: the number of chunks so far; tests use it to kill the tierer mid-move.
Hook = Callable[[str, int], None]


@dataclass
class TierReport:
    """What one tierer run planned and did."""

    planned: int = 0
    moved: int = 0
    bytes_moved: int = 0
    skipped: int = 0
    packs_written: int = 0
    packs_deleted: int = 0
    directions: dict[str, int] = field(default_factory=dict)
    tier_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    finished_ns: int = 0


def tier_capacity(store: ChunkStore) -> dict[str, int]:
    """Bytes each tier may hold: the sum of its pools' capacities (0 when unlimited)."""
    cap: dict[str, int] = {}
    for rec in store.pool_records():
        if rec.tier in cap and cap[rec.tier] == 0:
            continue
        cap[rec.tier] = 0 if rec.capacity == 0 else cap.get(rec.tier, 0) + rec.capacity
    return cap


def _pinned_chunks(txn: ReadTxn, policy: TierPolicy) -> dict[bytes, str]:
    """Chunk id -> pinned tier, for the files under each pinned path."""
    pins: dict[bytes, str] = {}
    for prefix in sorted(policy.pins, key=len):  # longer prefixes win: applied last
        tier = policy.pins[prefix]
        try:
            top = namespace.resolve(txn, prefix)
        except (NotFoundError, NotADirError):
            continue
        for node in namespace.walk(txn, top):
            if node.kind == Kind.FILE:
                m = txn.get_manifest(node.ino)
                for ref in m.chunks if m is not None else ():
                    pins[ref.id] = tier
    return pins


def survey(store: ChunkStore, policy: TierPolicy,
           now_ns: int | None = None) -> tuple[list[ChunkState], dict[bytes, ChunkRecord]]:
    """Where every referenced chunk is and how hot it is, as the planner wants it."""
    now = time.time_ns() if now_ns is None else now_ns
    tiers = {r.id: r.tier for r in store.pool_records()}
    states: list[ChunkState] = []
    records: dict[bytes, ChunkRecord] = {}
    with store.engine.read() as txn:
        heat = dict(iter_chunk_heat(txn))
        created = {p.id: p.created_ns for p in txn.iter_packs()}
        pins = _pinned_chunks(txn, policy) if policy.pins else {}
        for rec in txn.iter_chunks():
            if rec.refcount == 0 or not rec.locations:
                continue  # garbage: gc's business
            loc = min(rec.locations, key=lambda x: store.tier_rank(x.pool))
            h = heat.get(rec.id)
            last = max(h.last_ns if h else 0, created.get(loc.pack, 0))
            states.append(ChunkState(
                rec.id, loc.length, tiers.get(loc.pool, "warm"),
                h.at(now, policy.window) if h else 0.0,
                max(0.0, (now - last) / 1e9), pins.get(rec.id)))
            records[rec.id] = rec
    return states, records


def run(store: ChunkStore, *, dry_run: bool = False, hook: Hook | None = None,
        progress: Callable[[int], None] | None = None) -> TierReport:
    """Plan and carry out the moves the store's policy asks for."""
    started = time.monotonic()
    policy = store.policy()
    report = TierReport()
    states, records = survey(store, policy)
    capacity = tier_capacity(store)
    # a tier without a pool takes nothing: its chunks stay where they are (planning them
    # anyway moved the same chunks back into the same pool on every run)
    moves = [m for m in plan(states, capacity, policy) if m.dst in capacity]
    report.planned = len(moves)
    for m in moves:
        key = f"{m.src}->{m.dst}"
        report.directions[key] = report.directions.get(key, 0) + 1
    if not dry_run and moves:
        with store.writer():  # holds the gc lock shared: our packs are not orphans to gc
            _execute(store, policy, moves, records, report, hook, progress)
    report.seconds = time.monotonic() - started
    report.finished_ns = time.time_ns()
    report.tier_bytes = tier_usage(store)
    if not dry_run:
        stats = json.dumps(asdict(report)).encode()
        store.engine.transact(lambda txn: txn.put_value("rules", STATS_KEY, stats))
    return report


def tier_usage(store: ChunkStore) -> dict[str, int]:
    """Live blob bytes in each tier."""
    tiers = {r.id: r.tier for r in store.pool_records()}
    out: dict[str, int] = dict.fromkeys(TIERS, 0)
    with store.engine.read() as txn:
        for p in txn.iter_packs():
            t = tiers.get(p.pool, "warm")
            out[t] = out.get(t, 0) + p.live_bytes
    return out


def last_report(store: ChunkStore) -> TierReport | None:
    """The report of the last tierer run, if any."""
    with store.engine.read() as txn:
        data = txn.get_value("rules", STATS_KEY)
    return None if data is None else TierReport(**json.loads(data))


def _execute(store: ChunkStore, policy: TierPolicy, moves: list[Move],
             records: dict[bytes, ChunkRecord], report: TierReport, hook: Hook | None,
             progress: Callable[[int], None] | None) -> None:
    used = store.usage()
    by_dst: dict[str, list[Move]] = defaultdict(list)
    for m in moves:
        by_dst[m.dst].append(m)
    started = time.monotonic()
    for dst, group in by_dst.items():
        builder = store.new_pack()
        batch: list[_Copied] = []
        for m in group:
            rec = records[m.id]
            old = min(rec.locations, key=lambda x: store.tier_rank(x.pool))
            try:
                blob, raw = store.source.blob_at(old, rec.id)  # verified before copying
            except (CorruptChunkError, PoolError) as e:
                log.error("not moving chunk %s: %s (run `hutong fsck`)", rec.id.hex(), e)
                report.skipped += 1
                continue
            head = parse_blob_header(blob)
            # A delta moves as it is: its base stays pinned by its `deltas` entry.
            if dst == "cold" and head.codec != CODEC_DELTA and not (
                    head.codec == CODEC_ZSTD and policy.cold_level <= 3):
                header, payload = encode_blob(raw, policy.cold_level, rec.id)  # recompress
            else:
                header, payload = blob[:BLOB_HEADER_LEN], blob[BLOB_HEADER_LEN:]
            offset, length = builder.add(header, payload)
            batch.append((rec, old, offset, length, parse_blob_header(header).codec))
            if hook:
                hook("copied", report.moved + len(batch))
            if builder.size >= store.config.pack_size:
                _switch(store, dst, builder, batch, used, report, hook)
                builder, batch = store.new_pack(), []
            if policy.rate:
                done = report.bytes_moved + builder.size
                ahead = done / policy.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if progress is not None:
                progress(m.size)
        if batch:
            _switch(store, dst, builder, batch, used, report, hook)


def _switch(store: ChunkStore, dst: str, builder: PackBuilder,
            batch: list[_Copied], used: dict[int, int],
            report: TierReport, hook: Hook | None) -> None:
    """Write the new pack durably, then switch the chunks to it in one transaction."""
    pool_id = store.choose_pool(dst, builder.size, used)
    store.pool(pool_id).put(pack_key(builder.pack_id), builder.parts())
    used[pool_id] = used.get(pool_id, 0) + builder.size
    report.packs_written += 1
    if hook:
        hook("written", report.moved + len(batch))

    def switch(txn: WriteTxn) -> tuple[int, int, list[PackRecord]]:
        """Returns (skipped, live bytes, emptied packs); derives all from `txn`."""
        live_n = live_b = skipped = 0
        emptied: list[PackRecord] = []
        dead: dict[bytes, list[int]] = defaultdict(lambda: [0, 0])
        for rec, old, offset, length, codec in batch:
            current = txn.get_chunk(rec.id)
            if current is None or old not in current.locations:
                skipped += 1  # removed or moved meanwhile: the new copy is dead
                continue
            new = Location(pool_id, builder.pack_id, offset, length)
            locs = tuple(new if loc == old else loc for loc in current.locations)
            txn.put_chunk(ChunkRecord(current.id, current.raw_len, length - BLOB_HEADER_LEN,
                                      codec, current.refcount, locs))
            live_n += 1
            live_b += length
            dead[old.pack][0] += 1
            dead[old.pack][1] += old.length
        txn.put_pack(PackRecord(builder.pack_id, pool_id, builder.size, builder.nblobs,
                                live_n, live_b, time.time_ns()))
        for pid, (n, nbytes) in dead.items():
            p = txn.get_pack(pid)
            if p is None:
                continue
            if p.live_chunks - n <= 0:
                txn.delete_pack(pid)
                emptied.append(p)
            else:
                txn.put_pack(PackRecord(p.id, p.pool, p.size, p.nchunks, p.live_chunks - n,
                                        p.live_bytes - nbytes, p.created_ns))
        return skipped, live_b, emptied

    skipped, moved_bytes, emptied = store.engine.transact(switch)
    report.skipped += skipped
    report.moved += len(batch) - skipped
    report.bytes_moved += moved_bytes
    if hook:
        hook("switched", report.moved)
    for p in emptied:  # nothing refers to them any more: the commit above is durable
        if store.delete_pack_object(p) == "deleted":  # never another store's pack
            report.packs_deleted += 1
    if hook:
        hook("released", report.moved)

