"""State that survives being copied, moved and shared (docs/format.md, "Ownership of packs")."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from gfs.cli import main
from gfs.client import Client
from gfs.errors import ChunkMissingError, ConfigError
from gfs.meta import PoolRecord
from gfs.packs import NO_OWNER, PackBuilder, owner_tag, pack_key, parse_pack_head
from gfs.state import STORE_ID
from gfs.tiering.policy import TierPolicy

ROOT = Path(__file__).parent.parent
LEGACY = Path(__file__).parent / "data" / "legacy-store-v1.tar.gz"
LEGACY_PATH = "/tmp/hutong-legacy-fixture/state"  # where the fixture store was made


def _files(seed: int, n: int, prefix: str) -> dict[str, bytes]:
    r = random.Random(seed)
    return {f"{prefix}/f{i}.bin": r.randbytes(r.randrange(1000, 90_000)) for i in range(n)}


def _write(fs: Client, files: dict[str, bytes]) -> None:
    for p, data in files.items():
        fs.mkdir(p.rsplit("/", 1)[0], parents=True, exist_ok=True)
        fs.write_bytes(p, data)


def _check(state: Path, files: dict[str, bytes]) -> None:
    with Client(state) as fs:
        report = fs.fsck()
        assert report.ok, report.problems
        for p, data in files.items():
            assert fs.read_bytes(p) == data, p


def _packs(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.pack")}


def _store_id(state: Path) -> bytes:
    with Client(state) as fs, fs.engine.read() as txn:
        sid = txn.get_meta(STORE_ID)
    assert sid is not None
    return sid


def test_new_store_records_default_pool_relative(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as fs:
        assert [r.url for r in fs.store.pool_records()] == ["pools/default"]
        fs.write_bytes("/a", b"x" * 5000)
        fs.add_pool("inner", str(tmp_path / "s" / "pools" / "inner"), tier="hot")
        fs.add_pool("outer", str(tmp_path / "outer"), tier="cold")
        urls = {r.name: r.url for r in fs.store.pool_records()}
        tag = fs.store.owner
    assert urls["inner"] == "pools/inner"
    assert urls["outer"] == (tmp_path / "outer").as_uri()
    (pack,) = (tmp_path / "s" / "pools" / "default").rglob("*.pack")
    assert parse_pack_head(pack.read_bytes())[1] == tag != NO_OWNER


def test_copied_state_gc_keeps_the_originals_packs(tmp_path: Path) -> None:
    state, copy = tmp_path / "state", tmp_path / "copy"
    first, later = _files(1, 12, "/a"), _files(2, 12, "/b")
    with Client.init(state, pack_size=1 << 16) as fs:
        _write(fs, first)
    subprocess.run(["cp", "-a", str(state), str(copy)], check=True)
    with Client(state, pack_size=1 << 16) as fs:  # the original keeps working
        _write(fs, later)
        fs.rm("/a/f0.bin")
    with Client(copy, gc_grace=0) as fs:  # the copy deletes files and collects
        fs.rm("/a/f1.bin")
        fs.gc()
        report = fs.gc()
        assert report.not_owned == 0  # its pools are its own
    assert _store_id(copy) != _store_id(state)  # the copy forked
    _check(state, {**{k: v for k, v in first.items() if k != "/a/f0.bin"}, **later})
    _check(copy, {k: v for k, v in first.items() if k != "/a/f1.bin"})
    with Client(state, gc_grace=0) as fs:
        fs.gc()
    _check(copy, {k: v for k, v in first.items() if k != "/a/f1.bin"})


def test_moved_state_reads_and_writes_at_the_new_path(tmp_path: Path) -> None:
    state, other = tmp_path / "state", tmp_path / "other"
    files = _files(3, 8, "/m")
    with Client.init(state) as fs:
        _write(fs, files)
        sid = _store_id_of(fs)
    before = _packs(state)
    os.rename(state, other)
    with Client(other) as fs:
        assert _store_id_of(fs) == sid  # moved, not copied: same store
        for p, data in files.items():
            assert fs.read_bytes(p) == data
        fs.write_bytes("/m/new.bin", b"after the move" * 1000)
        files["/m/new.bin"] = b"after the move" * 1000
    assert not state.exists()  # nothing went to the old path
    assert len(_packs(other / "pools" / "default")) == len(before) + 1
    _check(other, files)


def _store_id_of(fs: Client) -> bytes:
    with fs.engine.read() as txn:
        sid = txn.get_meta(STORE_ID)
    assert sid is not None
    return sid


SHARED_WORKER = textwrap.dedent("""
    import json, random, sys
    from gfs.client import Client
    state, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    r = random.Random(seed)
    live = {}
    not_owned = 0
    notes = set()
    with Client(state, gc_grace=0, pack_size=1 << 16) as fs:
        for i in range(rounds):
            for k in range(4):
                p = f"/w{seed}-r{i}k{k}"
                data = r.randbytes(r.randrange(500, 40_000)) + bytes([seed]) * 2000
                fs.write_bytes(p, data)
                live[p] = data.hex()
            for p in r.sample(sorted(live), 2):
                fs.rm(p)
                del live[p]
            rep = fs.gc()
            not_owned += rep.not_owned
            notes.update(rep.notes)
    print(json.dumps({"live": live, "not_owned": not_owned, "notes": sorted(notes)}))
""")


def test_two_stores_on_one_shared_pool_lose_nothing(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    states = [tmp_path / "s1", tmp_path / "s2"]
    for s in states:
        with Client.init(s) as fs:
            fs.add_pool("shared", str(shared), tier="hot")
            with fs.engine.write() as txn:
                TierPolicy(write_tier="hot").save(txn)
    procs = [subprocess.Popen([sys.executable, "-c", SHARED_WORKER, str(s), str(i + 1), "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT)
             for i, s in enumerate(states)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert not list((tmp_path / "s1" / "pools" / "default").rglob("*.pack"))  # all in shared
    for s, res in zip(states, results, strict=True):
        _check(s, {p: bytes.fromhex(h) for p, h in res["live"].items()})
    for s in states:  # a final gc of each sees the other's packs and says why it keeps them
        with Client(s, gc_grace=0) as fs:
            report = fs.gc()
        assert report.not_owned > 0
        assert any("shared with another store" in n for n in report.notes)
    for s, res in zip(states, results, strict=True):
        _check(s, {p: bytes.fromhex(h) for p, h in res["live"].items()})


def test_gc_grace_keeps_young_unknown_packs_of_a_shared_pool(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as fs:
        rec = fs.add_pool("shared", str(tmp_path / "shared"), tier="hot")
        fs.write_bytes("/keep", b"k" * 3000)
        pool = fs.store.pool(rec.id)
        mine, theirs = PackBuilder(owner=fs.store.owner), PackBuilder(owner=owner_tag(b"o" * 16))
        legacy = PackBuilder()
        for b in (mine, theirs, legacy):
            pool.put(pack_key(b.pack_id), b.parts())
        report = fs.gc()
        assert (report.young_orphans, report.not_owned, report.orphan_packs) == (1, 2, 0)
        old = time.time() - 2 * fs.config.gc_grace
        os.utime(pool.local_path(pack_key(mine.pack_id)) or "", (old, old))
        report = fs.gc()
        assert (report.young_orphans, report.not_owned, report.orphan_packs) == (0, 2, 1)
        assert not pool.exists(pack_key(mine.pack_id))
        assert pool.exists(pack_key(theirs.pack_id)) and pool.exists(pack_key(legacy.pack_id))
        assert fs.read_bytes("/keep") == b"k" * 3000


def test_relocate_points_moved_outside_pools_at_their_new_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "s"
    with Client.init(state) as fs:
        fs.add_pool("far", str(tmp_path / "far"), tier="hot")
        with fs.engine.write() as txn:
            TierPolicy(write_tier="hot").save(txn)
        fs.write_bytes("/x", b"far away" * 2000)
    os.rename(tmp_path / "far", tmp_path / "moved")
    with Client(state) as fs, pytest.raises(ChunkMissingError, match="no readable copy"):
        fs.read_bytes("/x")
    with pytest.raises(ConfigError, match="no pool URL"), Client(state) as fs:
        fs.relocate(str(tmp_path / "nowhere"), str(tmp_path / "moved"))
    assert main(["--state", str(state), "state", "relocate", str(tmp_path / "far"),
                 str(tmp_path / "moved")]) == 0
    assert "now at" in capsys.readouterr().out
    with Client(state) as fs:
        assert fs.read_bytes("/x") == b"far away" * 2000
        assert fs.fsck().ok


def _legacy_files() -> dict[str, bytes]:
    """The contents tests/data/legacy_store_v1.py wrote."""
    r = random.Random(15)
    files = {f"/data/f{i}.bin": r.randbytes(3000 + 1000 * i) for i in range(5)}
    files["/data/sub/text.txt"] = b"hutong legacy store\n" * 200
    return files


def test_store_written_by_the_old_format_opens_and_reads(tmp_path: Path) -> None:
    with tarfile.open(LEGACY) as tar:
        tar.extractall(tmp_path, filter="data")
    state = tmp_path / "state"
    packs = sorted((state / "pools" / "default").rglob("*.pack"))
    assert packs and all(parse_pack_head(p.read_bytes())[1] == NO_OWNER for p in packs)
    # it was made elsewhere: its pool URL points where it lived; relocate fixes that
    assert main(["--state", str(state), "state", "relocate", LEGACY_PATH, str(state)]) == 0
    files = _legacy_files()
    with Client(state, gc_grace=0) as fs:
        assert [r.url for r in fs.store.pool_records()] == ["pools/default"]
        assert fs.readlink("/data/link") == "f0.bin"
        for p, data in files.items():
            assert fs.read_bytes(p) == data
        assert fs.fsck().ok
        fs.rm("/data/f1.bin")
        fs.write_bytes("/data/new.bin", b"new" * 3000)
        report = fs.gc()  # version 1 packs its index references are its own
        assert report.packs_deleted >= 1 and report.not_owned == 0
    del files["/data/f1.bin"]
    files["/data/new.bin"] = b"new" * 3000
    _check(state, files)


def test_old_store_with_absolute_url_inside_is_made_relative_on_open(tmp_path: Path) -> None:
    state = tmp_path / "s"
    with Client.init(state) as fs:
        fs.write_bytes("/a", b"abc" * 3000)
        with fs.engine.write() as txn:  # as `init` recorded it before relative URLs
            txn.put_pool(PoolRecord(0, "default", (state / "pools" / "default").as_uri()))
    with Client(state) as fs:
        assert [r.url for r in fs.store.pool_records()] == ["pools/default"]
    shutil.move(state, tmp_path / "t")
    with Client(tmp_path / "t") as fs:
        assert fs.read_bytes("/a") == b"abc" * 3000


def test_state_show_names_private_and_shared_pools(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Client.init(tmp_path / "s") as fs:
        fs.add_pool("far", str(tmp_path / "far"))
        tag = fs.store.owner.hex()
    assert main(["--state", str(tmp_path / "s"), "state", "show"]) == 0
    out = capsys.readouterr().out
    assert f"owner tag {tag}" in out and str((tmp_path / "s").resolve()) in out
    assert "default      private pools/default" in out
    assert f"far          shared  {(tmp_path / 'far').as_uri()}" in out


OPEN_AND_TELL = textwrap.dedent("""
    import sys
    from gfs.client import Client
    with Client(sys.argv[1]) as fs:
        print(fs.store.owner.hex())
""")


def test_processes_opening_a_fresh_copy_at_once_agree_on_its_id(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as fs:
        fs.write_bytes("/a", b"a" * 3000)
    subprocess.run(["cp", "-a", str(tmp_path / "s"), str(tmp_path / "c")], check=True)
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_TELL, str(tmp_path / "c")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT) for _ in range(4)]
    tags = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        tags.add(out.strip())
    with Client(tmp_path / "c") as fs:
        assert tags == {fs.store.owner.hex()}
    assert _store_id(tmp_path / "c") != _store_id(tmp_path / "s")


def test_fsck_of_a_shared_pool_counts_the_other_stores_packs_as_theirs(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    stores = [tmp_path / "s1", tmp_path / "s2"]
    for i, s in enumerate(stores):
        with Client.init(s) as fs:
            fs.add_pool("shared", str(shared), tier="hot")
            with fs.engine.write() as txn:
                TierPolicy(write_tier="hot").save(txn)
            fs.write_bytes(f"/f{i}", bytes([i + 1]) * 5000)
    assert len(list(shared.rglob("*.pack"))) == 2
    with Client(stores[0]) as fs:
        pool = fs.store.pool(1)
        mine = PackBuilder(owner=fs.store.owner)  # an orphan of this store: counted as one
        pool.put(pack_key(mine.pack_id), mine.parts())
        report = fs.fsck()
    assert report.ok, report.problems
    assert (report.orphan_packs, report.foreign_packs) == (1, 1)
