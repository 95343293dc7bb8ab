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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from gfs import namespace
from gfs import relocate as relocation
from gfs.codec import (
    BASED_CODECS,
    CODEC_ZSTD,
    Buffer,
    decode_blob,
    encode_blob,
    parse_blob_header,
)
from gfs.env import TIERS
from gfs.errors import CorruptChunkError, NotADirError, NotFoundError, PoolError
from gfs.meta import ChunkRecord, Kind, ReadTxn
from gfs.store import ChunkStore
from gfs.tiering.heat import iter_chunk_heat
from gfs.tiering.planner import ChunkState, Move, plan
from gfs.tiering.policy import TierPolicy

log = logging.getLogger("hutong.tier")

STATS_KEY = b"tier-stats"

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
    policy = TierPolicy.current(store.engine)
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

    def copies(group: list[Move]) -> Iterator[relocation.Move]:
        """The verified blobs of `group`, paced to the policy's rate."""
        for n, m in enumerate(group, 1):
            rec = records[m.id]
            old = min(rec.locations, key=lambda x: store.tier_rank(x.pool))
            try:
                blob, _ = store.source.blob_at(old, rec.id)  # verified before copying
            except (CorruptChunkError, PoolError) as e:
                log.error("not moving chunk %s: %s (run `hutong fsck`)", rec.id.hex(), e)
                report.skipped += 1
                continue
            yield relocation.Move(rec.id, old, blob)
            if hook:
                hook("copied", report.moved + n)
            report.bytes_moved += len(blob)
            if policy.rate:
                ahead = report.bytes_moved / policy.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if progress is not None:
                progress(m.size)

    for dst, group in by_dst.items():
        def place(size: int, dst: str = dst) -> int:
            pool_id = store.choose_pool(dst, size, used)
            used[pool_id] = used.get(pool_id, 0) + size
            return pool_id

        bytes_before = report.bytes_moved
        done = relocation.relocate(store, copies(group), place,
                                   _recompress(policy) if dst == "cold" else None,
                                   hook=_offset_hook(hook, report.moved))
        report.moved += done.switched
        report.skipped += done.skipped
        report.bytes_moved = bytes_before + done.live_bytes
        report.packs_written += done.packs_written
        report.packs_deleted += done.packs_deleted


def _recompress(policy: TierPolicy) -> relocation.Transform:
    """Re-encode a whole chunk at the policy's `cold_level` on its way to cold. A delta
    moves as it is: its base stays pinned by its `deltas` entry."""
    def transform(cid: bytes, blob: Buffer) -> Buffer:
        head = parse_blob_header(blob)
        if head.codec in BASED_CODECS or (head.codec == CODEC_ZSTD and policy.cold_level <= 3):
            return blob
        header, payload = encode_blob(decode_blob(blob, expect_id=cid), policy.cold_level, cid)
        return header + payload
    return transform


def _offset_hook(hook: Hook | None, before: int) -> Hook | None:
    """`hook`, with the chunks moved by earlier destinations added to its counts."""
    if hook is None:
        return None
    return lambda step, n: hook(step, before + n)
