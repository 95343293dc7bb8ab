"""Write transactions of put and of get's heat records touch a bounded number of records.

LMDB keeps every page a write transaction dirtied in malloc'd memory for the rest of
the process's life, and in a big table each record at a random key (a chunk id) lands
on its own leaf page: a put commit of 8,000 one-chunk files, or a heat flush of 8,192
chunks, held 25-33 MiB at 10^6 files. The bounds are proved by counting records per
transaction, not by timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gfs.store as store_mod
from gfs import Client
from gfs.meta import MetaEngine
from gfs.tiering import heat


def _tree(root: Path) -> dict[str, bytes]:
    """35 files in 5 directories: distinct ones, duplicates and a hard link."""
    out: dict[str, bytes] = {}
    for d in range(5):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(6):
            data = b"distinct %d %d " % (d, f) * 20
            (sub / f"f{f}").write_bytes(data)
            out[f"d{d}/f{f}"] = data
        (sub / "same").write_bytes(b"the same bytes in every directory")
        out[f"d{d}/same"] = b"the same bytes in every directory"
    os.link(root / "d0" / "f0", root / "d4" / "linked")
    out["d4/linked"] = out["d0/f0"]
    return out


def test_a_commit_comes_after_commit_chunks_references(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    want = _tree(src)
    monkeypatch.setattr(store_mod, "COMMIT_CHUNKS", 10)
    with Client.init(tmp_path / "s") as fs:  # commit_files (8,000) is never reached
        report = fs.put(str(src), "/t")
        assert report.files == 36
        assert report.write is not None and report.write.commits == 4  # 10, 20, 30, end
        for rel, data in want.items():
            assert fs.read_bytes(f"/t/{rel}") == data
        assert fs.fsck().ok


class _Counting:
    """Wraps a metadata engine: records per write transaction of a value table."""

    def __init__(self, engine: MetaEngine) -> None:
        self.engine = engine
        self.per_txn: list[int] = []

    def tick_rows(self, table: str, rows: int) -> int:
        return self.engine.tick_rows(table, rows)

    def transact(self, fn, *, tick: bool = False):  # type: ignore[no-untyped-def]
        def counted(txn):  # type: ignore[no-untyped-def]
            n = 0
            real = txn.put_value

            def put_value(table: str, key: bytes, value: bytes) -> None:
                nonlocal n
                n += 1
                real(table, key, value)

            txn.put_value = put_value
            try:
                return fn(txn)
            finally:
                del txn.put_value
                self.per_txn.append(n)

        return self.engine.transact(counted, tick=tick)


def test_a_heat_flush_folds_a_bounded_number_of_chunks(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as fs:
        counting = _Counting(fs.engine)
        tracker = heat.HeatTracker(counting, 3600.0)  # type: ignore[arg-type]
        cids = [i.to_bytes(16, "big") for i in range(5000)]
        for cid in cids:
            tracker.record([cid])
        tracker.flush()
        assert sum(counting.per_txn) == 5000
        assert max(counting.per_txn) <= heat.FLUSH_EVERY <= 2048
        with fs.engine.read() as txn:
            got = dict(heat.iter_chunk_heat(txn))
        assert set(got) == set(cids) and all(h.reads == 1 for h in got.values())
