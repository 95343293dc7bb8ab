"""A get's plan spills its entries as marshal blocks and reads them back whole: every
inode field and manifest chunk comes back equal, extreme values included, without
decoding the store's record forms a second time."""

from __future__ import annotations

import marshal
import os
from pathlib import Path
from typing import Any

import pytest

from gfs import get_plan, namespace
from gfs.client import Client
from gfs.meta import Inode, Kind, Manifest
from gfs.meta.records import ChunkRef

U64 = (1 << 64) - 1


@pytest.mark.parametrize(("node", "m"), [
    (Inode(U64, U64, Kind.FILE, 0o107777, (1 << 32) - 1, 0, U64, -(1 << 63), (1 << 63) - 1,
           0, U64, "", (1 << 32) - 1, 0),
     Manifest(U64, (ChunkRef(b"\x00" * 16, 0), ChunkRef(b"\xff" * 16, (1 << 32) - 1)))),
    (Inode(7, 1, Kind.FILE, 0o100644, 1, 2, 0, 1, 2, 3, 1), Manifest(1, ())),
    (Inode(8, 1, Kind.SYMLINK, 0o120777, 1, 2, 9, 1, 2, 3, 1, "../é/ziel 字"), None),
    (Inode(9, 1, Kind.CHARDEV, 0o20600, 0, 0, 0, 5, 6, 7, 2, "", 1, U64), None),
    (Inode(10, 1, Kind.DIR, 0o40755, 0, 0, 0, 5, 6, 7, 2, "", 5), None),
])
def test_a_plan_record_keeps_every_field(node: Inode, m: Manifest | None) -> None:
    entries = None if m is None else (m.version, tuple((c.id, c.length) for c in m.chunks))
    spilled = marshal.loads(marshal.dumps(get_plan._fields(node, entries)))
    got, gm = get_plan._entry(node.ino, spilled)
    assert (got, gm) == (node, m)
    assert type(got.kind) is Kind


def test_a_plan_gives_back_the_snapshot_without_decoding_records_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(os.urandom(i * 300))
    (src / "d" / "e" / "big").write_bytes(os.urandom(300_000))
    os.symlink("d/f3", src / "ln")
    import gfs.meta.encoding as enc

    decoded: list[Any] = []
    for name in ("decode_inode", "decode_manifest", "decode_compact"):
        real = getattr(enc, name, None)
        if real is not None:  # every stored-record decoder, counted and still working
            monkeypatch.setattr(enc, name, lambda *a, _real=real: (decoded.append(a),
                                                                    _real(*a))[1])
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        with get_plan.GetPlan() as plan:
            with fs.engine.read() as txn:
                top = namespace.resolve(txn, "/t")
                plan.read(txn, top, str(tmp_path / "out"), check=False)
                want = [(leaving, p, node, txn.get_manifest(node.ino)
                         if node.kind == Kind.FILE else None)
                        for leaving, p, node in get_plan.walk_ns(txn, top,
                                                                 str(tmp_path / "out"))]
            decoded.clear()
            got = list(plan.entries())
    assert got == want
    assert len(got) == 2 * 3 + 21 + 1  # 3 directories (in and out), files, symlink
    assert decoded == []


def test_a_plan_is_blocks_in_an_unlinked_file_not_a_sqlite_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries go to an unlinked temporary file PLAN_BATCH at a time (a SQLite table's
    inserts and reads were a quarter of a get's walk) and come back in walk order
    across the blocks; a closed plan leaves nothing open."""
    from gfs import spill

    def refused(*a: Any, **k: Any) -> None:
        raise AssertionError("a get's plan made a SQLite table")

    monkeypatch.setattr(spill, "SpillTable", refused)
    monkeypatch.setattr(get_plan, "SpillTable", refused, raising=False)
    monkeypatch.setattr(get_plan, "PLAN_BATCH", 4)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(9):
        (src / f"f{i}").write_bytes(b"%d" % i)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        plan = get_plan.GetPlan()
        with plan, fs.engine.read() as txn:
            top = namespace.resolve(txn, "/t")
            plan.read(txn, top, str(tmp_path / "out"), check=False)
            assert plan.rows == 11 and os.fstat(plan._file.fileno()).st_nlink == 0
            names = [os.path.basename(p) for _, p, _, _ in plan.entries()]
            assert os.fstat(plan._file.fileno()).st_size > 0  # on disk, not in memory
            assert names == ["out", *(f"f{i}" for i in range(9)), "out"]
            assert names == [os.path.basename(p) for _, p, _, _ in plan.entries()]  # again
        assert plan._file.closed


def test_a_plan_block_is_bounded_by_chunks_as_well_as_entries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block holds at most PLAN_CHUNKS chunks' worth of manifests, not only PLAN_BATCH
    entries (a chunk costs ~140 bytes buffered: 1,000 files of 1 GiB made one 2.3 GB
    block); every entry still comes back in walk order."""
    monkeypatch.setattr(get_plan, "PLAN_CHUNKS", 8)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(400_000))
    blocks: list[int] = []
    flush = get_plan.GetPlan._flush

    def counted(self: get_plan.GetPlan) -> None:
        chunks = [len(f[-1]) for _, _, _, f in self._buffer if f[-1] is not None]
        if self._buffer:
            blocks.append(sum(chunks))
            assert sum(chunks) - max(chunks, default=0) < 8  # one file past the bound
        flush(self)

    monkeypatch.setattr(get_plan.GetPlan, "_flush", counted)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        with get_plan.GetPlan() as plan:  # this module's plan (not via Client.get: a
            # test that re-imports gfs may leave Client with another copy of the module)
            with fs.engine.read() as txn:
                top = namespace.resolve(txn, "/t")
                per_file = [len(txn.get_manifest(namespace.resolve(txn, f"/t/f{i}").ino)
                                .chunks) for i in range(6)]
                plan.read(txn, top, str(tmp_path / "out"), check=False)
            got = [(leaving, os.path.basename(p)) for leaving, p, _, _ in plan.entries()]
    assert min(per_file) >= 3 and sum(blocks) == sum(per_file)
    # a block is cut once it holds 8 chunks: at most 7 + one file's chunks each
    assert len(blocks) >= -(-sum(per_file) // (7 + max(per_file))) >= 3
    assert got == [(False, "out"), *((False, f"f{i}") for i in range(6)), (True, "out")]


def test_a_get_does_not_write_through_a_link_below_its_destination(tmp_path: Path) -> None:
    """A symbolic link in the destination where the namespace has a directory is
    refused before anything is written (followed, the get wrote outside the
    destination); the destination itself may be a link."""
    src, elsewhere, out = tmp_path / "src", tmp_path / "elsewhere", tmp_path / "out"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    (src / "g").write_bytes(b"y")
    elsewhere.mkdir()
    (out / "t").mkdir(parents=True)
    (out / "t" / "d").symlink_to(elsewhere)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        with pytest.raises(NotADirectoryError, match="symbolic link"):
            fs.get("/t", str(out))  # into out/t
        assert os.listdir(elsewhere) == [] and os.listdir(out / "t") == ["d"]
        (tmp_path / "root").mkdir()
        (tmp_path / "via").symlink_to(tmp_path / "root")
        fs.get("/", str(tmp_path / "via"))  # the destination itself is a link
        assert (tmp_path / "root" / "t" / "d" / "f").read_bytes() == b"x"
