"""Every full scan of the LMDB metadata keeps the map's resident part bounded.

fsck, du, get and gc scan whole tables; compaction (after a writer's close) copies
every table. Pages a scan touches stay in the process's RSS unless the map trimmer
hears of them (gfs.meta.residency), so a scan that does not tick leaves the whole
table resident: peak RSS then grows with the store (measured: fsck of 10^6 files
211 MiB against 42 MiB anonymous). Each scan here reads a table of 10+ MiB.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gfs.meta.residency as residency
from gfs.meta import LmdbEngine
from gfs.meta import compact as compaction
from gfs.meta.records import ChunkRef, Manifest
from tests.test_memory_lmdb_map import MIB, _map_rss_kib

#: Resident KiB of the map a scan may leave: trims every 64 ticks, each a row or a
#: random lookup faulting in up to 64 KiB (measured with the trims: 0.4-3.4 MiB; without
#: them the whole table, 40+ MiB).
BOUND_KIB = 8 * 1024
FILES = 12_000
CHUNKS_PER_FILE = 40  # distinct entry lists: each a shared body of ~850 bytes


def _cid(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An environment whose manifest bodies and a value table each take 10+ MiB."""
    path = tmp_path_factory.mktemp("scans") / "meta"
    eng = LmdbEngine(str(path), sync=False, compact_at_close=False)
    try:
        for start in range(0, FILES, 4000):
            with eng.write() as w:
                for i in range(start, start + 4000):
                    ino = 1000 + i
                    w.put_manifest(ino, Manifest(1, tuple(
                        ChunkRef(_cid(i * CHUNKS_PER_FILE + k), 100)
                        for k in range(CHUNKS_PER_FILE))))
                    w.put_value("xattrs", ino.to_bytes(8, "big") + b"user.x", b"v" * 900)
    finally:
        eng.close()
    assert (path / "data.mdb").stat().st_size > 20 * MIB
    return path


@pytest.fixture
def trim_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(residency, "TRIM_TICKS", 64)
    monkeypatch.setattr(residency, "TRIM_INTERVAL", 3600.0)  # only the ticks trim


Scan = Callable[[Any], object]
SCANS: dict[str, Scan] = {
    # a get records the heat of each chunk it reads: a lookup and a write at random keys
    "get_value at random": lambda r: sum(
        r.get_value("xattrs", (1000 + i * 7919 % FILES).to_bytes(8, "big") + b"user.x")
        is not None for i in range(FILES)),
    "manifest_problems": lambda r: r.manifest_problems(),
    "iter_manifests": lambda r: sum(1 for _ in r.iter_manifests()),
    "iter_values": lambda r: sum(1 for _ in r.iter_values("xattrs")),
    "iter_values prefix": lambda r: sum(1 for _ in r.iter_values("xattrs", b"\0")),
}


@pytest.mark.parametrize("name", SCANS)
@pytest.mark.usefixtures("trim_often")
def test_a_scan_leaves_the_map_trimmed(big: Path, name: str) -> None:
    eng = LmdbEngine(str(big), sync=False, readonly=True)
    try:
        with eng.read() as r:
            SCANS[name](r)
            resident = _map_rss_kib(big / "data.mdb")
    finally:
        eng.close()
    assert resident < BOUND_KIB, f"{name} left {resident} KiB of the map resident"


@pytest.mark.usefixtures("trim_often")
def test_compaction_keeps_the_source_map_trimmed(
        big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = compaction._copy_packed

    def measured(src: Any, dst: Any) -> None:
        real(src, dst)
        seen.append(_map_rss_kib(big / "data.mdb"))  # src is still open here
    monkeypatch.setattr(compaction, "_copy_packed", measured)
    assert compaction.compact(str(big)) is not None
    assert seen and seen[0] < BOUND_KIB, f"compaction left {seen} KiB resident"
    eng = LmdbEngine(str(big), sync=False, readonly=True)
    try:  # the packed copy holds every row
        with eng.read() as r:
            assert sum(1 for _ in r.iter_values("xattrs")) == FILES
            assert r.manifest_problems() == []
    finally:
        eng.close()


@pytest.mark.usefixtures("trim_often")
def test_compaction_keeps_the_source_map_trimmed_all_along(
        big: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not only at the end: at every tick of the copy, what the source's map holds stays
    below the bound (the copy ticked once per 20,000 rows appended: the close of a put
    of 10^5 files held 22 MiB of the source map)."""
    copy = tmp_path / "meta"
    shutil.copytree(big, copy)
    most = [0]
    real = residency.MapTrimmer.tick

    def tick(self: residency.MapTrimmer, n: int = 1) -> None:
        most[0] = max(most[0], _map_rss_kib(copy / "data.mdb"))
        real(self, n)
    monkeypatch.setattr(residency.MapTrimmer, "tick", tick)
    assert compaction.compact(str(copy)) is not None
    assert 0 < most[0] < BOUND_KIB, f"the copy held {most[0]} KiB of the source map"
