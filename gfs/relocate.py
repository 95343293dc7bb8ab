"""Pack relocation: the one way live blobs move to a new pack.

gc's repack, the tierer's moves and repair (`ChunkStore.replace_copies`) all
call `relocate`. Each new pack is written durably first; then one metadata
transaction points the chunks at it and moves the live counters from the old
packs to the new one; only after that commit are old packs left with nothing
live deleted (docs/format.md, "Relocating blobs"). A crash before the switch
leaves an orphan pack that gc reclaims; after it, dead bytes that gc repacks.
The caller holds the store's gc lock (shared through `ChunkStore.writer`, or
exclusive), so gc does not take a pack being written for an orphan.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gfs import delta
from gfs.codec import BASED_CODECS, BLOB_HEADER_LEN, CODEC_MEMBER, Buffer, parse_blob_header
from gfs.meta import ChunkRecord, Location, PackRecord, WriteTxn
from gfs.packs import PackBuilder, pack_key

if TYPE_CHECKING:  # the store calls relocate for repairs
    from gfs.store import ChunkStore


@dataclass(frozen=True, slots=True)
class Move:
    """One blob to relocate: chunk `cid`'s verified `blob`, replacing the copy at `old`
    (None: replacing every recorded copy, as a repair does). With `new`, the chunk has
    no record yet and gets one (refcount 0: a group whose members follow, gfs.regroup).
    With `member` (group id, offset), no blob is written: the chunk becomes a folded
    member of that group (which a move before it recorded), every copy replaced."""

    cid: bytes
    old: Location | None
    blob: Buffer
    new: bool = False
    member: tuple[bytes, int] | None = None


#: (chunk id, blob) -> the blob to write instead (e.g. recompressed for a cold pool).
Transform = Callable[[bytes, Buffer], Buffer]
#: Folded members switched in one transaction at most (a relocation of nothing but
#: folds, as gc's upgrade of an old store's member blobs, writes no pack).
MAX_FOLDS = 4096

#: Bytes of a finished pack -> the id of the pool to write it to.
Placement = Callable[[int], int]
#: Called with a step ("written", "switched", "released") and the chunks switched so
#: far (plus, at "written", the pack's); fault tests use it to stop a relocation there.
Hook = Callable[[str, int], None]


@dataclass
class Relocated:
    """What a relocation did."""

    switched: int = 0
    skipped: int = 0  # chunks removed or moved meanwhile: their new copy is dead
    packs_written: int = 0
    bytes_written: int = 0
    live_bytes: int = 0
    packs_deleted: int = 0
    bytes_freed: int = 0
    not_owned: int = 0


@dataclass(slots=True)
class _Staged:
    cid: bytes
    old: Location | None
    offset: int
    length: int
    codec: int
    base: bytes | None  # the blob's base when it is a delta
    raw_len: int
    new: bool
    member: tuple[bytes, int] | None = None


def relocate(store: ChunkStore, moves: Iterable[Move], pool: int | Placement,
             transform: Transform | None = None, *, hook: Hook | None = None) -> Relocated:
    """Write the blobs of `moves` (through `transform`) into new packs in `pool` (a pool
    id, or a placement called with each pack's size) and switch the chunks to them.

    A pack is written and switched once it reaches the store's pack size, before
    the next blob is added (folded members switch with the group moved before
    them), so `moves` may be a lazy iterable of any length. A move whose chunk is gone, or
    whose `old` copy is no longer recorded, is skipped. A relocated base keeps its
    dependents readable (they name it by id); a blob that becomes, or stops being,
    a delta moves its `deltas` entry and the reference on its base with it.
    """
    out = Relocated()
    builder = store.new_pack()
    staged: list[_Staged] = []
    for m in moves:
        if m.member is not None:  # no blob: switched with the group staged before it
            staged.append(_Staged(m.cid, None, 0, 0, CODEC_MEMBER, None, 0, False, m.member))
            if len(staged) >= MAX_FOLDS:
                _write_and_switch(store, builder, staged, pool, out, hook)
                builder, staged = store.new_pack(), []
            continue
        if builder.size >= store.config.pack_size:  # full: closed before the next blob,
            _write_and_switch(store, builder, staged, pool, out, hook)  # so a group and
            builder, staged = store.new_pack(), []  # its members switch together
        blob = m.blob if transform is None else transform(m.cid, m.blob)
        head = parse_blob_header(blob)
        base = delta.base_of(blob) if head.codec in BASED_CODECS else None
        offset, length = builder.add(blob[:BLOB_HEADER_LEN], blob[BLOB_HEADER_LEN:])
        staged.append(_Staged(m.cid, m.old, offset, length, head.codec, base, head.raw_len,
                              m.new))
    if staged:
        _write_and_switch(store, builder, staged, pool, out, hook)
    return out


def _write_and_switch(store: ChunkStore, builder: PackBuilder, staged: list[_Staged],
                      pool: int | Placement, out: Relocated, hook: Hook | None) -> None:
    pool_id = pool if isinstance(pool, int) else pool(builder.size)
    if builder.nblobs:  # none when only folded members are left to switch
        store.pool(pool_id).put(pack_key(builder.pack_id), builder.parts())  # durable first
        out.packs_written += 1
        out.bytes_written += builder.size
        if hook:
            hook("written", out.switched + len(staged))
    now = time.time_ns()

    def switch(txn: WriteTxn) -> tuple[int, int, list[PackRecord]]:
        """Returns (switched, live bytes, emptied packs); derives all from `txn`."""
        n = folded = live = 0
        dead: dict[bytes, list[int]] = defaultdict(lambda: [0, 0])
        refs: Counter[bytes] = Counter()
        for s in staged:
            current = txn.get_chunk(s.cid)
            if s.member is not None:
                if current is not None and _fold(txn, current, *s.member, dead, refs):
                    folded += 1
                continue
            if current is None and s.new:
                current = ChunkRecord(s.cid, s.raw_len, 0, s.codec, 0, ())
            if current is None or (s.old is not None and s.old not in current.locations):
                continue
            replaced = current.locations if s.old is None else (s.old,)
            kept = tuple(loc for loc in current.locations if loc not in replaced)
            recorded = txn.get_value(delta.DELTAS, s.cid)
            if recorded != s.base:
                if kept or (s.base is not None and txn.get_chunk(s.base) is None):
                    continue  # another copy still needs the recorded base; or no base
                _rebase(txn, s.cid, recorded, s.base, refs)
            if current.group:  # a folded member given a blob of its own (a repair)
                refs[current.group] -= 1
            new = Location(pool_id, builder.pack_id, s.offset, s.length)
            locs = (new, *kept) if s.old is None else tuple(
                new if loc == s.old else loc for loc in current.locations)
            txn.put_chunk(ChunkRecord(current.id, current.raw_len, s.length - BLOB_HEADER_LEN,
                                      s.codec, current.refcount, locs))
            for loc in replaced:
                dead[loc.pack][0] += 1
                dead[loc.pack][1] += loc.length
            n += 1
            live += s.length
        txn.add_refcounts(refs)
        if builder.nblobs:
            txn.put_pack(PackRecord(builder.pack_id, pool_id, builder.size, builder.nblobs,
                                    n, live, now))
        emptied: list[PackRecord] = []
        for pid, (gone, nbytes) in dead.items():
            p = txn.get_pack(pid)
            if p is None:
                continue
            if p.live_chunks - gone <= 0:
                txn.delete_pack(pid)
                emptied.append(p)
            else:
                txn.put_pack(PackRecord(p.id, p.pool, p.size, p.nchunks, p.live_chunks - gone,
                                        p.live_bytes - nbytes, p.created_ns))
        return n + folded, live, emptied

    n, live, emptied = store.engine.transact(switch)
    out.switched += n
    out.skipped += len(staged) - n
    out.live_bytes += live
    if hook:
        hook("switched", out.switched)
    for p in emptied:  # nothing refers to them any more: the commit above is durable
        outcome = store.delete_pack_object(p)  # never another store's pack
        if outcome == "deleted":
            out.packs_deleted += 1
            out.bytes_freed += p.size
        elif outcome == "not owned":
            out.not_owned += 1
    if hook:
        hook("released", out.switched)


def _fold(txn: WriteTxn, current: ChunkRecord, group: bytes, offset: int,
          dead: dict[bytes, list[int]], refs: Counter[bytes]) -> bool:
    """Make `current` a folded member of `group` at `offset`: its copies are dead, its
    `deltas` entry (a member blob's) or its old group gives up its reference, and
    `group` takes one. False (nothing changed) if `group` has no record."""
    if txn.get_chunk(group) is None:
        return False
    for loc in current.locations:
        dead[loc.pack][0] += 1
        dead[loc.pack][1] += loc.length
    _rebase(txn, current.id, txn.get_value(delta.DELTAS, current.id), None, refs)
    if current.group:
        refs[current.group] -= 1
    refs[group] += 1
    txn.put_chunk(ChunkRecord(current.id, current.raw_len, 0, CODEC_MEMBER, current.refcount,
                              (), group, offset))
    return True


def _rebase(txn: WriteTxn, cid: bytes, old: bytes | None, new: bytes | None,
            refs: Counter[bytes]) -> None:
    """Move chunk `cid`'s `deltas` entry, and the reference it holds, from base `old`
    to base `new` (either may be None: stored whole)."""
    if old is not None:
        txn.delete_value(delta.DELTAS, cid)
        refs[old] -= 1
    if new is not None:
        txn.put_value(delta.DELTAS, cid, new)
        refs[new] += 1
