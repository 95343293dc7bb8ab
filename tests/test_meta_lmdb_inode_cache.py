"""The LMDB engine's decoded-inode cache: a repeated read skips decoding, a change
is never answered from it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gfs.meta import ROOT_INO, Kind, LmdbEngine, lmdb_engine
from gfs.meta import encoding as enc
from gfs.meta.records import Inode


@pytest.fixture
def engine(tmp_path: Path) -> LmdbEngine:
    eng = LmdbEngine(str(tmp_path / "meta"), sync=False)
    with eng.write() as w:
        ino = w.alloc_ino()
        w.put_inode(Inode(ino, ROOT_INO, Kind.FILE, 0o644, 1000, 1000, 5, 1, 2, 3))
        w.link(ROOT_INO, "f", ino)
    return eng


def test_a_repeated_read_is_not_decoded_again(engine: LmdbEngine,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with engine.read() as r:
        ino = r.lookup(ROOT_INO, "f")
        assert ino is not None
        first = r.get_inode(ino)
    decoded: list[int] = []
    real = enc.decode_inode

    def counting(n: int, data: bytes) -> Inode:
        decoded.append(n)
        return real(n, data)
    monkeypatch.setattr(enc, "decode_inode", counting)
    with engine.read() as r:  # another transaction, the same record
        assert r.get_inode(ino) is first
    assert decoded == []
    engine.close()


def test_a_changed_inode_is_read_anew(engine: LmdbEngine) -> None:
    with engine.read() as r:
        ino = r.lookup(ROOT_INO, "f")
        assert ino is not None
        old = r.get_inode(ino)
    assert old is not None
    with engine.write() as w:
        w.put_inode(replace(old, size=7, mtime_ns=old.mtime_ns + 1))
    with engine.read() as r:
        new = r.get_inode(ino)
    assert new is not None and (new.size, new.mtime_ns) == (7, old.mtime_ns + 1)
    with engine.write() as w:  # back to the first record: equal to it again
        w.put_inode(old)
    with engine.read() as r:
        assert r.get_inode(ino) == old
    engine.close()


def test_the_cache_is_bounded() -> None:
    info = lmdb_engine._decode_inode_cached.cache_info()
    assert info.maxsize == lmdb_engine.INODE_CACHE <= 1 << 14
