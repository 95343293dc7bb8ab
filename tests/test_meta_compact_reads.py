"""Read-mostly commands never compact the LMDB metadata at close (their only writes
are read bookkeeping: heat, access times), while changes still do; the pages that
bookkeeping frees are reused, so repeated reads do not grow the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.meta import compact as compaction
from tests.test_mount_helpers import init_store, mount, needs_fuse

GETS = 20


def _tree(root: Path) -> None:
    for d in range(4):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(150):
            (root / f"d{d}" / f"f{i}").write_bytes(b"file %d %d\n" % (d, i) * (i % 5 + 1))


def _heat_rows(fs: Client) -> int:
    with fs.engine.read() as txn:
        return sum(1 for _ in txn.iter_values("heat"))


def test_reads_leave_a_compacted_store_alone_and_changes_still_compact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compaction, "MIN_BYTES", 0)  # a small store is worth compacting
    src, state = tmp_path / "src", tmp_path / "state"
    _tree(src)
    data = state / "meta" / "data.mdb"
    fs = Client.init(state)
    fs.put(src, "/src")
    before_close = os.stat(data).st_ino
    fs.close()
    ino = os.stat(data).st_ino
    assert ino != before_close  # the put's close compacted (the policy holds for changes)
    sizes = []
    for n in range(GETS):
        fs = Client(state)
        try:
            r = fs.get("/src", tmp_path / f"out{n}")
            assert (r.files, r.dirs) == (600, 5)
            assert fs.read_bytes("/src/d1/f3") == b"file 1 3\n" * 4
            assert len(fs.ls("/src/d2")) == 150
            assert fs.stat("/src/d3/f7").size == len(b"file 3 7\n") * 3
            assert fs.du("/src").files == 600
            assert fs.fsck().ok
        finally:
            fs.close()
        assert os.stat(data).st_ino == ino, f"get {n} compacted the store"
        sizes.append(os.path.getsize(data))
    fs = Client(state)
    try:
        assert _heat_rows(fs) >= 600  # the reads did write (heat), yet nothing compacted
        # LMDB reuses a page once no snapshot can see it (the last two commits keep
        # theirs), so the file settles within three gets and then stays put.
        assert sizes[3:] == [sizes[3]] * (GETS - 3), sizes
        fs.rm("/src/d0", recursive=True)
    finally:
        fs.close()
    assert os.stat(data).st_ino != ino  # a change compacts again
    assert os.path.getsize(data) < sizes[-1]
    fs = Client(state)
    try:
        assert fs.fsck().ok and len(fs.ls("/src")) == 3
    finally:
        fs.close()


@needs_fuse
def test_a_read_only_mount_leaves_a_compacted_store_alone(tmp_path: Path) -> None:
    """Reading every file through `hutong mount` records heat and access times at the
    unmount but does not compact (the store is at least MIN_BYTES, so it would)."""
    src, state = tmp_path / "src", tmp_path / "state"
    for d in range(72):  # 32 read, the rest keep the packed store over MIN_BYTES
        (src / f"d{d}").mkdir(parents=True)
        for i in range(250):
            (src / f"d{d}" / f"f{i}").write_bytes(b"%d/%d\n" % (d, i))
    init_store(state)
    with Client(state) as fs:
        fs.put(src, "/src")
    data = state / "meta" / "data.mdb"
    assert os.path.getsize(data) >= compaction.MIN_BYTES
    ino = os.stat(data).st_ino
    with Client(state) as fs:
        atime = fs.stat("/src/d5/f9").atime_ns
        assert _heat_rows(fs) == 0
    with mount(state, tmp_path / "mnt") as mm:
        for d in range(32):
            names = os.listdir(mm.mnt / "src" / f"d{d}")
            assert len(names) == 250
            for name in names:
                assert (mm.mnt / "src" / f"d{d}" / name).read_bytes() == \
                    b"%d/%s\n" % (d, name[1:].encode())
    assert mm.proc.returncode == 0, mm.log_text()
    assert os.stat(data).st_ino == ino, mm.log_text()
    with Client(state) as fs:
        assert fs.stat("/src/d5/f9").atime_ns > atime and _heat_rows(fs) >= 8000
