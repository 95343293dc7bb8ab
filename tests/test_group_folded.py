"""Folded group members (docs/format.md "Group blobs", format 4): a member's chunk
record names its group and offset, with no member blob and no `deltas` entry. Writers
write them; stores of format 3 (member blobs recorded like deltas) are made here by
unfolding members, and both forms read, pass fsck and gc together."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from gfs import delta, groups
from gfs.client import Client
from gfs.codec import CODEC_MEMBER, decode_blob, parse_blob_header
from gfs.errors import CorruptChunkError
from gfs.gc import collect
from gfs.meta import Location, PackRecord
from gfs.packs import pack_key
from gfs.read import local as local_read
from gfs.read.local import LocalSource
from gfs.testing.faults import flip_byte
from tests.test_group_blobs import _files, _members, _put


def _unfold(fs: Client, cids: list[bytes]) -> None:
    """Rewrite folded members `cids` as format 3 member blobs (one new pack) with their
    `deltas` entries: the form an old store holds."""
    store = fs.store
    builder = store.new_pack()
    with fs.engine.read() as txn:
        recs = [txn.get_chunk(c) for c in cids]
    placed = []
    for rec in recs:
        assert rec is not None and rec.group
        placed.append((rec, builder.add(*groups.member_blob(rec.id, rec.raw_len, rec.group,
                                                            rec.group_offset))))
    store.pool(0).put(pack_key(builder.pack_id), builder.parts())
    with fs.engine.write() as txn:
        for rec, (offset, length) in placed:
            txn.put_chunk(replace(rec, stored_len=length - 36, group=b"", group_offset=0,
                                  locations=(Location(0, builder.pack_id, offset, length),)))
            txn.put_value(delta.DELTAS, rec.id, rec.group)  # the same one reference
        txn.put_pack(PackRecord(builder.pack_id, 0, builder.size, builder.nblobs,
                                builder.nblobs, sum(n for _, (_, n) in placed), 0))


def _old_store(state: Path, files: dict[str, bytes]) -> dict[bytes, bytes]:
    """A format 3 store at `state` holding `files` under /s, every member a member blob;
    its members (id -> group)."""
    with Client.init(state, pack_size=1 << 20, workers=2, delta=True) as fs:
        _put(fs, state.parent / "src", files, "/s")
        members = _members(fs)
        _unfold(fs, sorted(members))
        with fs.engine.write() as txn:
            txn.set_meta("format", b"3")
    return members


def _shift(fs: Client, cid: bytes, shift: int) -> None:
    with fs.engine.write() as txn:
        rec = txn.get_chunk(cid)
        assert rec is not None and rec.group
        txn.put_chunk(replace(rec, group_offset=rec.group_offset + shift))


def _blob_codecs(fs: Client) -> Counter[int]:
    with fs.engine.read() as txn:
        return Counter(r.codec for r in txn.iter_chunks() if r.locations)


def test_folded_members_read_back(dfs: Client, tmp_path: Path) -> None:
    files = _files(120, 21)
    _put(dfs, tmp_path / "src", files, "/s")
    members = list(_members(dfs))
    assert len(members) >= 100
    assert CODEC_MEMBER not in _blob_codecs(dfs)  # no member blob written
    with dfs.engine.read() as txn:
        assert all((r := txn.get_chunk(c)) is not None and r.group for c in members)
        assert not any(txn.get_value(delta.DELTAS, c) for c in members)
    for name, data in files.items():  # one by one, through the group cache
        assert dfs.read_bytes(f"/s/{name}") == data
    out = tmp_path / "out"
    dfs.get("/s", out)  # restore batches
    assert all((out / n).read_bytes() == d for n, d in files.items())
    blob = dfs.store.read_blob(members[0])  # leaves the store whole
    assert parse_blob_header(blob).codec != CODEC_MEMBER
    assert decode_blob(blob, expect_id=members[0])


def test_a_restore_batch_reads_its_groups_on_the_worker_threads(
        dfs: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's groups are read (and decompressed) on the store's workers, together,
    not one after another on the thread that fetches the batch."""
    files = _files(120, 23)
    monkeypatch.setattr(groups, "GROUP_BYTES", 64 << 10)  # several groups
    _put(dfs, tmp_path / "src", files, "/s")
    gids = set(_members(dfs).values())
    assert len(gids) >= 3
    dfs.store.source.close()  # no group cached
    threads: list[tuple[str, bytes]] = []
    real = LocalSource._group

    def spy(self: LocalSource, cid: bytes) -> bytes:
        threads.append((threading.current_thread().name, cid))
        return real(self, cid)

    monkeypatch.setattr(LocalSource, "_group", spy)
    out = tmp_path / "out"
    dfs.get("/s", out)
    assert {cid for _, cid in threads} == gids and len(threads) == len(gids)
    assert all(name.startswith("hutong_") for name, _ in threads), threads
    assert all((out / n).read_bytes() == d for n, d in files.items())


def test_a_restore_batch_holds_few_groups_at_once(
        dfs: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's groups are read at most as many at a time as the store has threads,
    each cut into its members and dropped before the next is read: a batch of 2,000
    files can use 2,000 groups of up to 4 MiB (all read at once, a get of a tree
    spread over 68 groups peaked at 215 MB against 123)."""
    files = _files(200, 24)
    monkeypatch.setattr(groups, "GROUP_BYTES", 16 << 10)  # many small groups
    _put(dfs, tmp_path / "src", files, "/s")
    gids = set(_members(dfs).values())
    threads = dfs.store.config.threads
    assert len(gids) > 3 * threads
    dfs.store.source.close()  # no group cached
    lock, read, cut, most = threading.Lock(), set(), set(), [0]
    real_group, real_slice = LocalSource._group, local_read.member_slice

    def group(self: LocalSource, cid: bytes) -> bytes:
        with lock:  # groups read, and not yet being cut into members
            read.add(cid)
            most[0] = max(most[0], len(read - cut))
        return real_group(self, cid)

    def member(cid: bytes, raw_len: int, group: bytes, offset: int, raw: bytes) -> bytes:
        with lock:
            cut.add(group)
        return real_slice(cid, raw_len, group, offset, raw)

    monkeypatch.setattr(LocalSource, "_group", group)
    monkeypatch.setattr(local_read, "member_slice", member)
    out = tmp_path / "out"
    dfs.get("/s", out)
    assert all((out / n).read_bytes() == d for n, d in files.items())
    assert 0 < most[0] <= threads, (most[0], threads)


def test_a_folded_member_with_a_wrong_offset_is_refused(dfs: Client, tmp_path: Path) -> None:
    files = _files(40, 22)
    _put(dfs, tmp_path / "src", files, "/s")
    cid = next(iter(_members(dfs)))
    _shift(dfs, cid, 1)
    dfs.store.source.close()
    with pytest.raises(CorruptChunkError, match="member of group"):
        dfs.store.source.get(cid)
    with pytest.raises(CorruptChunkError, match=cid.hex()):
        dfs.store.source.get_many([cid])


def test_fsck_verifies_folded_members(dfs: Client, tmp_path: Path) -> None:
    files = _files(150, 23)
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    report = dfs.fsck()
    assert report.ok, report.problems
    assert report.chunks_verified >= len(members)


def _damage_largest_group(fs: Client, names: Iterable[str]
                          ) -> tuple[bytes, set[bytes], set[str]]:
    """Flip a byte of the group with the most members; returns (its id, its members,
    the files of `names` under /s naming a member or a delta based on one)."""
    members = _members(fs)
    gid = Counter(members.values()).most_common(1)[0][0]
    on_gid = {c for c, g in members.items() if g == gid}
    with fs.engine.read() as txn:
        needs = on_gid | {c for c, b in txn.iter_values(delta.DELTAS) if b in on_gid}
        owners = {f"/s/{n}" for n in names
                  if any(r.id in needs for r in txn.get_manifest(  # type: ignore[union-attr]
                      fs.stat(f"/s/{n}").ino).chunks)}
        grec = txn.get_chunk(gid)
    assert grec is not None and len(owners) > 10
    loc = grec.locations[0]
    flip_byte(fs.store.pool(loc.pool), pack_key(loc.pack), loc.offset + loc.length // 2)
    fs.store.source.close()
    return gid, on_gid, owners


def test_a_damaged_group_is_reported_against_every_file_with_a_folded_member(
        dfs: Client, tmp_path: Path) -> None:
    files = _files(150, 24)
    _put(dfs, tmp_path / "src", files, "/s")
    _, _, owners = _damage_largest_group(dfs, files)
    report = dfs.fsck()
    assert not report.ok
    assert set(report.damaged_files) == owners


def test_gc_drops_folded_members_and_their_group_with_the_last(dfs: Client,
                                                               tmp_path: Path) -> None:
    files = _files(120, 25)
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    names = sorted(files)
    for n in names[: len(names) // 2]:
        dfs.rm(f"/s/{n}")
    dfs.gc()
    dfs.store.source.close()
    assert all(dfs.read_bytes(f"/s/{n}") == files[n] for n in names[len(names) // 2:])
    assert dfs.fsck().ok
    for n in names[len(names) // 2:]:
        dfs.rm(f"/s/{n}")
    dfs.gc()
    with dfs.engine.read() as txn:
        assert not [r for r in txn.iter_chunks() if r.group]
        assert all(txn.get_chunk(g) is None for g in set(members.values()))
    assert dfs.fsck().ok


def test_du_counts_each_folded_members_share_of_its_group(dfs: Client,
                                                          tmp_path: Path) -> None:
    files = _files(200, 26)
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    with dfs.engine.read() as txn:
        used = sum(p.live_bytes for p in txn.iter_packs())
    report = dfs.du("/s")
    assert used - len(members) <= report.stored_bytes <= used


def test_member_blobs_and_folded_members_of_one_group_read_together(
        dfs: Client, tmp_path: Path) -> None:
    """An old store upgraded member by member: both forms on one group read, pass
    fsck, and gc drops the group only with its last member of either form."""
    files = _files(120, 27)
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    gid = Counter(members.values()).most_common(1)[0][0]
    on_gid = sorted(c for c, g in members.items() if g == gid)
    assert len(on_gid) >= 4
    _unfold(dfs, on_gid[::2])
    dfs.store.source.close()
    out = tmp_path / "out"
    dfs.get("/s", out)
    assert all((out / n).read_bytes() == d for n, d in files.items())
    assert dfs.fsck().ok
    for n in files:
        dfs.rm(f"/s/{n}")
    dfs.gc()
    with dfs.engine.read() as txn:
        assert txn.get_chunk(gid) is None
        assert not [r for r in txn.iter_chunks() if r.codec == CODEC_MEMBER]
    assert dfs.fsck().ok


def test_gc_regroups_member_blobs_of_an_old_store_into_folded_members(
        tmp_path: Path) -> None:
    """A format 3 store reads as it is and is marked format 4 when opened; its sparse
    groups of member blobs are re-grouped as folded members: their blobs and `deltas`
    entries go, the old group goes, everything reads back."""
    state = tmp_path / "state"
    files = _files(200, 28)
    members = _old_store(state, files)
    dfs = Client(state)
    try:
        _old_store_regrouped(dfs, files, members)
    finally:
        dfs.close()


def test_gc_folds_the_member_blobs_of_an_old_store_in_place(dfs: Client,
                                                           tmp_path: Path) -> None:
    """gc upgrades a format 3 store's member blobs of live groups: each record is folded
    on the same group and offset (read from its verified blob), its `deltas` entry goes,
    the group keeps one reference per member, and no data is written."""
    files = _files(200, 34)
    _put(dfs, tmp_path / "src", files, "/s")
    members = _members(dfs)
    with dfs.engine.read() as txn:
        folded = {c: txn.get_chunk(c) for c in members}
        refs = {g: txn.get_chunk(g).refcount for g in set(members.values())}  # type: ignore[union-attr]
    _unfold(dfs, sorted(members))
    with dfs.engine.read() as txn:
        packs_before = {p.id for p in txn.iter_packs()}
    report = dfs.gc()
    assert report.members_folded == len(members) and report.groups_regrouped == 0
    with dfs.engine.read() as txn:
        assert {c: txn.get_chunk(c) for c in members} == folded  # the records as written
        assert not [c for c in members if txn.get_value(delta.DELTAS, c) is not None]
        assert {g: txn.get_chunk(g).refcount for g in refs} == refs  # type: ignore[union-attr]
        assert {p.id for p in txn.iter_packs()} < packs_before  # the blobs' pack emptied
    assert CODEC_MEMBER not in _blob_codecs(dfs)
    dfs.store.source.close()
    assert all(dfs.read_bytes(f"/s/{n}") == d for n, d in files.items())
    assert dfs.fsck().ok
    assert dfs.gc().members_folded == 0


def _old_store_regrouped(dfs: Client, files: dict[str, bytes],
                         members: dict[bytes, bytes]) -> None:
    with dfs.engine.read() as txn:
        assert txn.get_meta("format") == b"4"
    assert _blob_codecs(dfs)[CODEC_MEMBER] == len(members)
    assert all(dfs.read_bytes(f"/s/{n}") == d for n, d in files.items())
    assert dfs.fsck().ok
    names = sorted(files)
    keep = names[::4]
    for n in set(names) - set(keep):
        dfs.rm(f"/s/{n}")
    report = dfs.gc()
    assert report.groups_regrouped >= 1
    assert CODEC_MEMBER not in _blob_codecs(dfs)  # every live member folded
    live = _members(dfs)
    with dfs.engine.read() as txn:
        assert not [c for c in live if txn.get_value(delta.DELTAS, c) is not None]
        assert all(txn.get_chunk(g) is None for g in set(members.values()))
    dfs.store.source.close()
    assert all(dfs.read_bytes(f"/s/{n}") == files[n] for n in keep)
    assert dfs.fsck().ok


def test_folded_members_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The PostgreSQL engine stores the folded records (format 4): they read back, gc
    re-groups them and drops a group with its last member, fsck is clean."""
    files = _files(200, 29)
    with Client.init(tmp_path / "state", meta=pg_url, pack_size=1 << 20, workers=2,
                     delta=True) as fs:
        _put(fs, tmp_path / "src", files, "/s")
        members = _members(fs)
        assert len(members) >= 150 and CODEC_MEMBER not in _blob_codecs(fs)
        with fs.engine.read() as txn:
            assert txn.get_meta("format") == b"4"
        names = sorted(files)
        for n in names[len(names) // 4:]:
            fs.rm(f"/s/{n}")
        assert collect(fs.store, grace=0).groups_regrouped >= 1  # no multi-host grace
        live = _members(fs)
        assert live and not set(live.values()) & set(members.values())
        fs.store.source.close()
        assert all(fs.read_bytes(f"/s/{n}") == files[n] for n in names[:len(names) // 4])
        assert fs.fsck().ok
        for n in names[:len(names) // 4]:
            fs.rm(f"/s/{n}")
        collect(fs.store, grace=0)
        with fs.engine.read() as txn:
            assert not [r for r in txn.iter_chunks() if r.group or r.codec == CODEC_MEMBER]
        assert fs.fsck().ok


def test_repair_leaves_folded_members_of_a_sound_group_alone(dfs: Client,
                                                            tmp_path: Path) -> None:
    """A folded member has no copy of its own: a repair of a sound store neither marks
    it lost nor rewrites its record."""
    from gfs.repair import repair

    files = _files(120, 30)
    _put(dfs, tmp_path / "src", files, "/s")
    with dfs.engine.read() as txn:
        before = [r for r in txn.iter_chunks() if r.group]
    assert len(before) >= 100
    report = repair(dfs.store)
    assert report.lost == [] and report.repaired == 0 and report.dropped_copies == 0
    with dfs.engine.read() as txn:
        assert [r for r in txn.iter_chunks() if r.group] == before
    assert dfs.fsck().ok


def test_repair_marks_the_members_of_a_damaged_group_lost_and_a_put_heals_them(
        dfs: Client, tmp_path: Path) -> None:
    """With no other store to restore from, the members of a damaged group are lost:
    their files are reported and read with a clear error; putting them again heals
    them, and the group goes with the last member that needed it."""
    from gfs.repair import repair

    files = _files(120, 31)
    _put(dfs, tmp_path / "src", files, "/s")
    gid, on_gid, owners = _damage_largest_group(dfs, files)
    report = repair(dfs.store)
    assert on_gid <= {bytes.fromhex(c) for c in report.lost}
    # the files naming a member; a delta based on one heals with it (never dropped)
    assert set(report.damaged_files) <= owners and len(report.damaged_files) > 10
    hit = {p.removeprefix("/s/") for p in report.damaged_files}
    with dfs.engine.read() as txn:  # the records stay folded, still pinning the group
        assert all((r := txn.get_chunk(c)) is not None and r.group == gid for c in on_gid)
    name = sorted(hit)[0]
    with pytest.raises(CorruptChunkError, match=gid.hex()):
        dfs.read_bytes(f"/s/{name}")
    _put(dfs, tmp_path / "again", {n: files[n] for n in hit}, "/again")
    dfs.store.source.close()
    assert all(dfs.read_bytes(f"/s/{n}") == files[n] for n in files)
    dfs.gc()
    with dfs.engine.read() as txn:
        assert txn.get_chunk(gid) is None
    assert dfs.fsck().ok


@pytest.mark.timeout(120)
def test_folded_members_leave_the_store_whole_through_the_mover_and_a_site(
        dfs: Client, tmp_path: Path) -> None:
    """The mover (fetch and send) and a site's `/v1/chunks/get` blobs carry a folded
    member whole: the receiver verifies and keeps it whole, never the group."""
    import struct

    from gfs import mover
    from gfs.read.served import stored_blob, stored_frames

    secret = bytes(range(32))
    files = _files(150, 32)
    _put(dfs, tmp_path / "src", files, "/s")
    members = sorted(_members(dfs))
    ids = mover.tree_chunks(dfs, "/s")
    assert set(members) <= set(ids)
    for cid in members[:20]:
        blob = stored_blob(dfs.store, cid)
        assert blob is not None and parse_blob_header(blob).codec != CODEC_MEMBER
        assert decode_blob(blob, expect_id=cid)
    assert stored_frames(dfs.store, members[:5], struct.Struct("<I")) is None  # one by one
    for how in ("fetch", "send"):
        with Client.init(tmp_path / how, pack_size=1 << 20, workers=2, delta=True) as dst:
            if how == "fetch":
                with mover.MoverServer(dfs, secret, timeout=5.0) as srv:
                    stats = mover.fetch(dst, srv.address, ids, secret)
            else:
                with mover.MoverServer(dst, secret, timeout=5.0) as srv:
                    stats = mover.send(dfs, srv.address, ids, secret)
            assert stats.committed == len(ids) and stats.rejected == 0
            with dst.engine.read() as txn:
                got = [txn.get_chunk(c) for c in members]
            assert all(r is not None and r.locations and r.codec != CODEC_MEMBER for r in got)
            assert all(dst.store.read_chunk(c) == dfs.store.read_chunk(c) for c in members)


_REGROUP_KILLER = """
import os, signal, sys
from gfs import relocate
from gfs.client import Client
from gfs.gc import collect
relocate.MAX_FOLDS = 16  # many switches of folds
def hook(name, n):
    if name == sys.argv[2] and n >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
with Client(sys.argv[1]) as fs:
    collect(fs.store, hook=hook)
print("finished without reaching the step", flush=True)
"""


def _gc_killed(state: Path, step: str, after: int) -> None:
    """Run gc on `state` in a child killed -9 at `step` once `after` chunks switched."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _REGROUP_KILLER, str(state), step,
                           str(after)], capture_output=True, text=True, timeout=90,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == -9, proc.stdout + proc.stderr


@pytest.mark.timeout(120)
def test_kill9_while_folding_an_old_stores_member_blobs_loses_nothing(
        tmp_path: Path) -> None:
    """gc killed -9 between the switches that fold a format 3 store's member blobs:
    some records folded, the rest still blobs; all read, fsck is clean, and the next
    gc folds the rest."""
    state = tmp_path / "state"
    files = _files(200, 35)
    members = _old_store(state, files)
    _gc_killed(state, "switched", 32)
    with Client(state) as fs:
        left = _blob_codecs(fs)[CODEC_MEMBER]
        assert 0 < left <= len(members) - 32
        assert all(fs.read_bytes(f"/s/{n}") == d for n, d in files.items())
        report = fs.fsck()
        assert report.ok, report.problems
        assert fs.gc().members_folded == left
        assert CODEC_MEMBER not in _blob_codecs(fs) and _members(fs) == members
        final = fs.fsck()
        assert final.ok and final.orphan_packs == 0 and final.unreferenced_chunks == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", ["written", "switched"])
def test_kill9_while_regrouping_folded_members_loses_nothing(tmp_path: Path,
                                                             step: str) -> None:
    """gc killed -9 after writing a new group's pack, or after switching a group and
    its folded members (small packs: one group each): every live file reads back,
    fsck is clean, and the next gc finishes the re-grouping and leaves no orphan."""
    state = tmp_path / "state"
    files = _files(600, 33)
    with Client.init(state, pack_size=1 << 16, workers=2, delta=True) as fs:
        _put(fs, tmp_path / "src", files, "/s")
        old = set(_members(fs).values())
        kept = dict(list(files.items())[::4])
        for name in files.keys() - kept.keys():
            fs.rm(f"/s/{name}")
    _gc_killed(state, step, 0)
    with Client(state) as fs:
        assert all(fs.read_bytes(f"/s/{n}") == d for n, d in kept.items())
        report = fs.fsck()
        assert report.ok, report.problems
        fs.gc()
        final = fs.fsck()
        assert final.ok and final.orphan_packs == 0 and final.unreferenced_chunks == 0
        live = _members(fs)
        assert live and not set(live.values()) & old  # every sparse group re-grouped
        with fs.engine.read() as txn:
            assert all((r := txn.get_chunk(c)) is not None and r.group for c in live)
        fs.store.source.close()
        assert all(fs.read_bytes(f"/s/{n}") == d for n, d in kept.items())
