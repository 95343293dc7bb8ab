"""Group blobs (docs/format.md "Group blobs"): small chunks compressed together, read
back by id, verified, kept by gc while any member lives, moved by relocation, reported
by fsck against every file with a member, and safe against a writer killed midway."""

from __future__ import annotations

import errno
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs import delta, groups
from gfs.client import Client
from gfs.codec import (
    CODEC_MEMBER,
    BlobHeader,
    chunk_id,
    decode_blob,
    encode_blobs,
    parse_blob_header,
)
from gfs.errors import CorruptChunkError, NoSpaceError
from gfs.packs import pack_key
from gfs.testing.faults import FaultyPool, flip_byte
from tests.similar_data import count_reads, text
from tests.test_faults import kill_put_midway


def _files(n: int, seed: int, lo: int = 300, hi: int = 6000) -> dict[str, bytes]:
    """Small files of one vocabulary (the sources of one project)."""
    rng = random.Random(seed)
    corpus = text(rng, 1 << 20)
    out = {}
    for i in range(n):
        at, size = rng.randrange(len(corpus) - hi), rng.randrange(lo, hi)
        out[f"f{i:04d}"] = corpus[at:at + size] + rng.randbytes(8)  # distinct contents
    return out


def _put(fs: Client, root: Path, files: dict[str, bytes], dest: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    fs.put(str(root), dest)


def _members(fs: Client) -> dict[bytes, bytes]:
    """member id -> group id, for every member recorded (folded, or a member blob)."""
    with fs.engine.read() as txn:
        deps = dict(txn.iter_values(delta.DELTAS))
        out = {rec.id: rec.group for rec in txn.iter_chunks() if rec.group}
        return out | {cid: g for cid, g in deps.items()
                      if (rec := txn.get_chunk(cid)) is not None and rec.codec == CODEC_MEMBER}


# -- the blobs --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=2, max_size=40, unique=True))
def test_any_chunks_grouped_read_back_by_id(raws: list[bytes]) -> None:
    ids = [chunk_id(r) for r in raws]
    group = groups.encode_group(raws, ids, 3)
    group_raw = decode_blob(group.header + bytes(group.payload), expect_id=group.id)
    assert group_raw == b"".join(raws) and group.id == chunk_id(group_raw)
    for rec, raw, cid in zip(group.records(), raws, ids, strict=True):
        assert (rec.id, rec.codec, rec.group, rec.locations) == (cid, CODEC_MEMBER, group.id, ())
        assert groups.member_slice(cid, rec.raw_len, group.id, rec.group_offset,
                                   group_raw) == raw
        h, p = groups.member_blob(cid, rec.raw_len, group.id, rec.group_offset)  # format 3
        assert decode_blob(h + p, expect_id=cid, base={group.id: group_raw}.__getitem__) == raw


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=500), min_size=2, max_size=12, unique=True),
       st.data())
def test_a_damaged_group_fails_every_member(raws: list[bytes], data: st.DataObject) -> None:
    """Any one flipped byte of the group's raw bytes is caught by the member it falls in;
    a wrong group (or one cut short) fails every member, naming the group."""
    ids = [chunk_id(r) for r in raws]
    group = groups.encode_group(raws, ids, 3)
    gid = group.id
    group_raw = bytearray(b"".join(raws))
    at = data.draw(st.integers(0, len(group_raw) - 1))
    group_raw[at] ^= 1 << data.draw(st.integers(0, 7))
    damaged, short = bytes(group_raw), bytes(group_raw[:-1])
    for cid, n, start in group.members:
        blob = b"".join(groups.member_blob(cid, n, gid, start))  # format 3 member blobs
        for whole in (damaged, short):
            if start <= at < start + n or (whole is short and start + n == len(damaged)):
                with pytest.raises(CorruptChunkError, match=gid.hex()):
                    groups.member_slice(cid, n, gid, start, whole)
                with pytest.raises(CorruptChunkError, match=gid.hex()):
                    decode_blob(blob, expect_id=cid, base=lambda _, w=whole: w)


def test_group_compressed_at_store_level_plus_step() -> None:
    """A group is one zstd frame at the store's level + GROUP_LEVEL_STEP (level 7 for
    the default 3) with the whole group's window: byte for byte `encode_blobs` at that
    level and window, not at level 8 (whose 0.9% smaller groups cost 1.18x the workers'
    CPU, the first snapshot's put being bound by CPU)."""
    raws = list(_files(400, 5).values())
    ids = [chunk_id(r) for r in raws]
    group = groups.encode_group(raws, ids, 3)
    raw = b"".join(raws)
    ((header, payload),) = encode_blobs([raw], [group.id], 7, groups.GROUP_WINDOW_LOG)
    assert (group.header, bytes(group.payload)) == (header, bytes(payload))
    ((_, eight),) = encode_blobs([raw], [group.id], 8, groups.GROUP_WINDOW_LOG)
    assert bytes(eight) != bytes(payload)  # the data tells the levels apart


def test_a_group_matches_across_its_whole_length() -> None:
    """Members that repeat ones 2.5 MiB before them in the group (past level 7's own
    2 MiB window) are stored as matches, not again; the group decodes whole."""
    first = random.Random(5).randbytes(5 << 19)  # 2.5 MiB, incompressible
    step = (64 << 10) - 1
    raws = [first[i:i + step] for i in range(0, len(first), step)]
    raws += [b"\0" + r[1:] for r in raws[:20]]  # 1.25 MiB, each 2.5 MiB after its like
    ids = [chunk_id(r) for r in raws]
    group = groups.encode_group(raws, ids, 3)
    joined = b"".join(raws)
    assert decode_blob(group.header + bytes(group.payload), expect_id=group.id) == joined
    assert len(group.payload) < len(first) + (64 << 10)
    ((_, own_window),) = encode_blobs([joined], [group.id], 7)  # level 7's 2 MiB window
    assert len(own_window) > len(first) + (1 << 20)


def test_member_blob_checks() -> None:
    cid = chunk_id(b"x" * 100)
    h, p = groups.member_blob(cid, 100, b"\2" * 16, 0)
    with pytest.raises(CorruptChunkError, match="without its base"):
        decode_blob(h + p)
    with pytest.raises(CorruptChunkError, match="member blob with payload length"):
        decode_blob(BlobHeader(CODEC_MEMBER, 0, 100, 21, cid).to_bytes() + p + b"\0")
    with pytest.raises(ValueError, match="member of itself"):
        groups.member_blob(cid, 100, cid, 0)


# -- the store --------------------------------------------------------------------------

def test_small_files_are_grouped_and_read_back(dfs: Client, tmp_path: Path) -> None:
    files = _files(400, 1)
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    assert len(members) >= 350  # the small files, but deltas and a group's leftover
    with dfs.engine.read() as txn:
        named = {r.id for _, m in txn.iter_manifests() for r in m.chunks}
        for gid, n in Counter(members.values()).items():
            rec = txn.get_chunk(gid)
            assert rec is not None and rec.refcount == n and gid not in named
            assert rec.raw_len <= groups.GROUP_BYTES + groups.MEMBER_MAX
    stored = sum(r.stored_len for r in _records(dfs))
    assert stored < sum(map(len, files.values())) // 3  # compressed together
    for name, data in files.items():
        assert dfs.read_bytes(f"/s/{name}") == data
    out = tmp_path / "out"
    dfs.get("/s", out)
    assert all((out / n).read_bytes() == d for n, d in files.items())
    assert dfs.fsck().ok


def test_small_files_share_frames_of_up_to_4_mib(dfs: Client, tmp_path: Path) -> None:
    """About 2.8 MiB of small files without resembling bases make one group, so a file
    compresses against files met up to 4 MiB earlier (1 MiB groups split them in three)."""
    rng = random.Random(11)
    files = {f"r{i:04d}": rng.randbytes(4096) for i in range(700)}
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    assert len(members) == len(files)
    assert len(set(members.values())) == 1
    gid = next(iter(members.values()))
    with dfs.engine.read() as txn:
        rec = txn.get_chunk(gid)
        assert rec is not None and rec.raw_len == 700 * 4096
    assert all(dfs.read_bytes(f"/s/{n}") == d for n, d in files.items())


def _records(fs: Client) -> list:  # type: ignore[type-arg]
    with fs.engine.read() as txn:
        return list(txn.iter_chunks())


def test_member_reads_decompress_their_group_once(dfs: Client, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One by one (the mount's random reads) and as a restore batch, the members of a
    group cost one read and decompression of the group, not one per member."""
    files = _files(300, 2)
    _put(dfs, tmp_path / "src", files, "/s")
    gids = set(_members(dfs).values())
    source = dfs.store.source
    reads = count_reads(source, monkeypatch)
    for name in random.Random(3).sample(sorted(files), len(files)):
        assert dfs.read_bytes(f"/s/{name}") == files[name]
    with dfs.engine.read() as txn:  # a delta whose base is a member reads it in its batch
        on_members = Counter(_members(dfs).get(b) for _, b in txn.iter_values(delta.DELTAS))
    assert all(1 <= reads[g] <= 1 + on_members[g] for g in gids)
    assert sum(on_members[g] for g in gids) < len(files) // 10
    source.close()  # drops the group cache
    reads.clear()
    got = source.get_many(list(_members(dfs)))
    assert len(got) == len(_members(dfs))
    assert all(reads[g] <= 2 for g in gids)  # once per batch (two threads may race)


def test_a_member_leaves_the_store_whole(dfs: Client, tmp_path: Path) -> None:
    files = _files(50, 4)
    _put(dfs, tmp_path / "src", files, "/s")
    cid = next(iter(_members(dfs)))
    blob = dfs.store.read_blob(cid)
    assert parse_blob_header(blob).codec != CODEC_MEMBER
    assert decode_blob(blob, expect_id=cid)  # no base needed at the receiver


def test_a_damaged_group_is_reported_against_every_file_with_a_member(
        dfs: Client, tmp_path: Path) -> None:
    files = _files(200, 5)
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    gid = Counter(members.values()).most_common(1)[0][0]
    with dfs.engine.read() as txn:
        rec = txn.get_chunk(gid)
        assert rec is not None
        loc = rec.locations[0]
        deps = dict(txn.iter_values(delta.DELTAS))
        needs = {c for c, g in members.items() if g == gid}
        needs |= {c for c, b in deps.items() if b in needs}  # deltas based on a member
        owners = {f"/s/{n}" for n in files
                  if any(r.id in needs
                         for r in txn.get_manifest(dfs.stat(f"/s/{n}").ino).chunks)}  # type: ignore[union-attr]
    flip_byte(dfs.store.pool(loc.pool), pack_key(loc.pack), loc.offset + loc.length // 2)
    report = dfs.fsck()
    assert not report.ok and gid.hex() in " ".join(report.problems)
    assert set(report.damaged_files) == owners and len(owners) > 10
    victim = sorted(owners)[0]
    with pytest.raises(CorruptChunkError, match=gid.hex()):
        dfs.read_bytes(victim)
    bystanders = [f"/s/{n}" for n in files if f"/s/{n}" not in owners]
    for p in bystanders:
        assert dfs.read_bytes(p) == files[p.rsplit("/", 1)[1]]


def test_repair_restores_members_of_a_lost_group_whole(dfs: Client, tmp_path: Path) -> None:
    """A group exists in one store only: repair takes its members from another store,
    whole, and the damaged group becomes garbage (not lost)."""
    files = _files(120, 6)
    _put(dfs, tmp_path / "src", files, "/s")
    gid = Counter(_members(dfs).values()).most_common(1)[0][0]
    with dfs.engine.read() as txn:
        loc = txn.get_chunk(gid).locations[0]  # type: ignore[union-attr]
    flip_byte(dfs.store.pool(loc.pool), pack_key(loc.pack), loc.offset + loc.length // 2)
    from gfs.repair import repair

    other = Client.init(tmp_path / "other", pack_size=1 << 20, workers=2)
    try:
        _put(other, tmp_path / "src2", files, "/s")
        report = repair(dfs.store, [other.store])
    finally:
        other.close()
    assert report.lost == [] and report.repaired > 10
    for name, data in files.items():
        assert dfs.read_bytes(f"/s/{name}") == data
    dfs.gc()
    assert dfs.fsck().ok
    with dfs.engine.read() as txn:
        assert txn.get_chunk(gid) is None


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.lists(st.booleans(), min_size=60, max_size=60))
def test_gc_never_loses_a_live_member(tmp_path_factory: pytest.TempPathFactory,
                                      keep: list[bool]) -> None:
    """Whatever subset of files is removed, gc keeps every group a live member needs,
    and drops a group with its last member."""
    tmp = tmp_path_factory.mktemp("gc")
    fs = Client.init(tmp / "state", pack_size=1 << 18, workers=2, delta=True)
    try:
        files = _files(60, 7)
        _put(fs, tmp / "src", files, "/s")
        for (name, _), k in zip(files.items(), keep, strict=True):
            if not k:
                fs.rm(f"/s/{name}")
        fs.gc()
        for (name, data), k in zip(files.items(), keep, strict=True):
            if k:
                assert fs.read_bytes(f"/s/{name}") == data
        members = _members(fs)
        with fs.engine.read() as txn:
            named = {r.id for _, m in txn.iter_manifests() for r in m.chunks}
            unnamed = {r.id: r.refcount for r in txn.iter_chunks() if r.id not in named}
            based = Counter(delta.base_refs(txn))
        # what no file names is a group (referenced once by each live member) or the
        # base of a live delta; every live member's group is there
        assert unnamed == {c: n for c, n in based.items() if c not in named}
        assert set(members.values()) <= set(unnamed)
        report = fs.fsck()
        assert report.ok and report.unreferenced_chunks == 0
    finally:
        fs.close()


def test_relocation_keeps_members_readable(dfs: Client, tmp_path: Path) -> None:
    """gc's repack of a sparse pack and the tierer's move to cold move groups (folded
    members have no blob to move); every member still reads back and fsck is clean."""
    from gfs.tiering.policy import TierPolicy
    from gfs.tiering.tierer import run, tier_usage

    files = _files(300, 8)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a_junk").write_bytes(random.Random(8).randbytes(600_000))
    _put(dfs, tmp_path / "src", files, "/s")  # the junk and the first group share a pack
    before = {r.id: r.locations for r in _records(dfs)}
    dfs.rm("/s/a_junk")
    assert dfs.gc().packs_repacked >= 1
    after = {r.id: r.locations for r in _records(dfs)}
    moved = {cid for cid, locs in before.items() if cid in after and after[cid] != locs}
    members = _members(dfs)
    assert moved & set(members.values()) and not moved & set(members)
    dfs.add_pool("archive", str(tmp_path / "cold"), tier="cold")
    with dfs.engine.write() as txn:
        TierPolicy(demote_idle=1e-3, cold_level=19).save(txn)
    deadline = time.monotonic() + 60
    while tier_usage(dfs.store)["warm"] and time.monotonic() < deadline:
        assert run(dfs.store).skipped == 0
    assert tier_usage(dfs.store)["warm"] == 0
    assert all(r.codec == CODEC_MEMBER for r in _records(dfs) if r.id in _members(dfs))
    dfs.store.source.close()
    for name, data in files.items():
        assert dfs.read_bytes(f"/s/{name}") == data
    assert dfs.fsck().ok


# -- crashes ------------------------------------------------------------------------------

@pytest.mark.parametrize("after", [0, 1, 2])
def test_a_failed_group_write_commits_nothing(tmp_path: Path, after: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack write failing with a group's blob written and its members not (packs of
    64 KiB: a group's blob fills one alone; groups of 256 KiB, so there are several)
    leaves nothing visible and nothing pointing into a pack that was not written."""
    monkeypatch.setattr(groups, "GROUP_BYTES", 256 << 10)
    fs = Client.init(tmp_path / "state", pack_size=1 << 16, workers=2, delta=True)
    try:
        fs.write_bytes("/existing", b"committed before" * 1000)
        files = _files(400, 9)
        inner = fs.store.pool(0)
        faulty = FaultyPool(inner, "put", after=after,
                            error=OSError(errno.ENOSPC, "No space left on device"))
        fs.store._pools[0] = faulty
        try:
            with pytest.raises((NoSpaceError, OSError)):
                _put(fs, tmp_path / "src", files, "/s")
        finally:
            fs.store._pools[0] = inner
        assert faulty.failures == 1
        assert not fs.exists("/s") or not list(fs.walk("/s"))
        assert fs.read_bytes("/existing") == b"committed before" * 1000
        assert _members(fs) == {}
        assert fs.fsck().ok
        fs.gc()
        after_gc = fs.fsck()
        assert after_gc.ok and after_gc.orphan_packs == 0 and after_gc.unreferenced_chunks == 0
        _put(fs, tmp_path / "src", files, "/s")  # the same put works once there is space
        for name, data in files.items():
            assert fs.read_bytes(f"/s/{name}") == data
    finally:
        fs.close()


def test_kill9_mid_put_of_small_files(tmp_path: Path) -> None:
    """A writer killed -9 while grouping: every visible file reads back whole, every
    member's group is recorded with a copy, fsck is clean, gc leaves no orphan."""
    state = tmp_path / "state"
    Client.init(state, delta=True).close()
    files = _files(3000, 10, 200, 3000)
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    kill_put_midway(state, src)  # into /big, committing every 5 files
    fs = Client(state)
    try:
        assert fs.fsck().ok
        members = _members(fs)
        assert members  # some commits landed before the kill
        with fs.engine.read() as txn:
            assert all((m := txn.get_chunk(c)) is not None and m.group == g
                       for c, g in members.items())  # folded: no blob, no `deltas` entry
            for gid in set(members.values()):
                rec = txn.get_chunk(gid)
                assert rec is not None and rec.locations
                assert all(txn.get_pack(loc.pack) is not None for loc in rec.locations)
        visible = [s.path for s in fs.walk("/") if s.kind == "file"]
        assert 0 < len(visible) < len(files)
        for p in visible:
            assert fs.read_bytes(p) == files[p.rsplit("/", 1)[1]]
        fs.gc()
        after = fs.fsck()
        assert after.ok and after.orphan_packs == 0 and after.unreferenced_chunks == 0
    finally:
        fs.close()


def test_du_counts_each_members_share_of_its_group(dfs: Client, tmp_path: Path) -> None:
    """`du` stored bytes: the groups' bytes are shared out among their members, so the
    whole tree's figure is what its blobs take in the packs."""
    files = _files(300, 11)
    _put(dfs, tmp_path / "src", files, "/s")
    with dfs.engine.read() as txn:  # every chunk here is named by a file, or a group
        used = sum(p.live_bytes for p in txn.iter_packs())
    report = dfs.du("/s")
    # members' shares of their groups round down: within a byte per member
    assert used - len(_members(dfs)) <= report.stored_bytes <= used


def test_gc_regroups_the_live_members_of_mostly_dead_groups(dfs: Client,
                                                            tmp_path: Path) -> None:
    """With most of a group's members gone, gc writes the live ones into a new group,
    drops the old group, and frees the bytes; everything left reads back."""
    files = _files(600, 12)
    _put(dfs, tmp_path / "src", files, "/s")
    old_groups = set(_members(dfs).values())
    kept = dict(list(files.items())[::5])
    for name in files:
        if name not in kept:
            dfs.rm(f"/s/{name}")
    with dfs.engine.read() as txn:
        before = sum(p.live_bytes for p in txn.iter_packs())
    report = dfs.gc()
    assert report.groups_regrouped >= 1
    members = _members(dfs)
    assert members and not set(members.values()) & old_groups
    with dfs.engine.read() as txn:
        assert all(txn.get_chunk(g) is None for g in old_groups)
        after = sum(p.live_bytes for p in txn.iter_packs())
    assert after < before * 0.5
    dfs.store.source.close()  # no group from the cache
    for name, data in kept.items():
        assert dfs.read_bytes(f"/s/{name}") == data
    final = dfs.fsck()
    assert final.ok and final.unreferenced_chunks == 0 and final.orphan_packs == 0
    assert dfs.gc().groups_regrouped == 0  # the new groups are all live


class _Stop(Exception):
    pass


@pytest.mark.parametrize("step", ["written", "switched"])
def test_a_regroup_stopped_midway_loses_nothing(tmp_path: Path, step: str) -> None:
    """gc stopped after writing a new group's pack (not yet switched), or after its
    first switch: every live file reads back, fsck is clean, the next gc finishes."""
    fs = Client.init(tmp_path / "state", pack_size=1 << 16, workers=2, delta=True)
    try:
        files = _files(600, 13)
        _put(fs, tmp_path / "src", files, "/s")
        kept = dict(list(files.items())[::4])
        for name in files:
            if name not in kept:
                fs.rm(f"/s/{name}")

        def stop(at: str, n: int) -> None:
            if at == step:
                raise _Stop(at)

        from gfs.gc import collect
        with pytest.raises(_Stop):
            collect(fs.store, hook=stop)
        fs.store.source.close()
        for name, data in kept.items():
            assert fs.read_bytes(f"/s/{name}") == data
        assert fs.fsck().ok
        fs.gc()
        report = fs.fsck()
        assert report.ok and report.unreferenced_chunks == 0 and report.orphan_packs == 0
        fs.store.source.close()
        for name, data in kept.items():
            assert fs.read_bytes(f"/s/{name}") == data
    finally:
        fs.close()


def test_groups_in_a_pool_encrypted_at_rest(tmp_path: Path) -> None:
    """In a sealed pool a group is sealed with its pack: no member's bytes and no blob
    header are in the pool's files, and everything reads back, fsck and gc included."""
    from gfs.tiering.policy import TierPolicy

    fs = Client.init(tmp_path / "state", pack_size=1 << 20, workers=2, delta=True)
    try:
        fs.add_pool("vault", str(tmp_path / "hot"), tier="hot", encrypt=True)
        with fs.engine.write() as txn:
            TierPolicy(write_tier="hot").save(txn)
        files = _files(200, 14)
        _put(fs, tmp_path / "src", files, "/s")
        assert len(_members(fs)) > 150
        stored = b"".join(p.read_bytes() for p in sorted((tmp_path / "hot").rglob("*"))
                          if p.is_file())
        assert b"HTCB" not in stored
        assert not any(data[:32] in stored for data in files.values())
        fs.store.source.close()
        for name, data in files.items():
            assert fs.read_bytes(f"/s/{name}") == data
        for name in list(files)[40:]:
            fs.rm(f"/s/{name}")
        fs.gc()
        for name, data in list(files.items())[:40]:
            assert fs.read_bytes(f"/s/{name}") == data
        assert fs.fsck().ok
    finally:
        fs.close()


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.lists(st.booleans(), min_size=81, max_size=81))
def test_relocating_any_members_or_groups_keeps_them_readable(
        tmp_path_factory: pytest.TempPathFactory, pick: list[bool]) -> None:
    """Any subset of groups and of the other chunks, moved by `relocate` to a new pack
    (folded members have no blob to move): every file reads back and fsck is clean."""
    from gfs.relocate import Move, relocate

    tmp = tmp_path_factory.mktemp("reloc")
    fs = Client.init(tmp / "state", pack_size=1 << 20, workers=2, delta=True)
    try:
        files = _files(80, 15) | {f"big{k}": v for k, v in  # chunks stored whole or as
                                  _files(3, 151, 150_000, 300_000).items()}  # deltas
        _put(fs, tmp / "src", files, "/s")
        with fs.engine.read() as txn:
            stored = sorted(r.id for r in txn.iter_chunks() if r.locations)
        assert len(stored) >= 5 and set(_members(fs).values()) <= set(stored)
        chosen = [cid for cid, k in zip(stored, pick, strict=False) if k]
        with fs.engine.read() as txn:
            locs = {cid: txn.get_chunk(cid).locations[0] for cid in chosen}  # type: ignore[union-attr]
        moves = [Move(cid, loc, fs.store.source.blob_at(loc, cid)[0])
                 for cid, loc in locs.items()]
        with fs.store.gc_exclusive():
            done = relocate(fs.store, moves, 0)
        assert done.switched == len(moves)
        fs.store.source.close()
        for name, data in files.items():
            assert fs.read_bytes(f"/s/{name}") == data
        assert fs.fsck().ok
    finally:
        fs.close()


def test_gc_groups_small_files_written_one_by_one(dfs: Client) -> None:
    """Files committed one at a time (write_bytes, the mount) are stored whole; gc puts
    them into groups once there are enough, and stores fewer bytes; all read back."""
    files = _files(150, 16)
    for name, data in files.items():
        dfs.write_bytes(f"/{name}", data)
    assert not _members(dfs)
    with dfs.engine.read() as txn:
        before = sum(p.live_bytes for p in txn.iter_packs())
    report = dfs.gc()
    assert report.chunks_grouped >= 140
    assert len(_members(dfs)) == report.chunks_grouped
    with dfs.engine.read() as txn:
        after = sum(p.live_bytes for p in txn.iter_packs())
    assert after < before * 0.7
    dfs.store.source.close()
    for name, data in files.items():
        assert dfs.read_bytes(f"/{name}") == data
    assert dfs.fsck().ok
    again = dfs.gc()
    assert again.chunks_grouped == 0 and again.groups_regrouped == 0
