"""LocalPool.put_unsynced and sync_puts: atomic at once, durable in one batch later."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.pools import LocalPool


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths fsynced (files and directories) while the test runs."""
    seen: list[str] = []
    real = os.fsync

    def counting(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", counting)
    yield seen


def test_unsynced_puts_are_visible_at_once_and_durable_at_the_sync(
        tmp_path: Path, fsyncs: list[str]) -> None:
    pool = LocalPool(str(tmp_path / "pool"))
    fsyncs.clear()
    keys = [f"packs/{d}/{n}.pack" for d in ("aa", "bb") for n in range(3)]
    for k in keys:
        pool.put_unsynced(k, [b"head-", k.encode()])
        assert pool.get(k) == b"head-" + k.encode()  # whole at once
    assert fsyncs == [] and pool.temporaries() == []
    pool.sync_puts()
    root = str(tmp_path / "pool")
    objects = {f"{root}/{k}" for k in keys}
    assert set(fsyncs[:6]) == objects  # the objects first
    # then their directories, deepest first (packs/ holds the new fan-out entries)
    assert fsyncs[6:] == [f"{root}/packs/aa", f"{root}/packs/bb", f"{root}/packs", root]
    fsyncs.clear()
    pool.sync_puts()  # nothing left to sync
    assert fsyncs == []


def test_durable_put_is_unchanged_and_close_syncs(tmp_path: Path, fsyncs: list[str]) -> None:
    pool = LocalPool(str(tmp_path / "pool"))
    pool.put("packs/aa/x.pack", [b"x"])
    # the temporary fsynced before its rename, then the directory
    assert any(p.startswith(f"{tmp_path}/pool/tmp/") for p in fsyncs), fsyncs
    assert fsyncs[-1] == f"{tmp_path}/pool/packs/aa"
    fsyncs.clear()
    pool.put_unsynced("packs/aa/y.pack", [b"y"])
    assert fsyncs == []
    pool.close()  # a closed pool leaves nothing unsynced
    assert fsyncs == [f"{tmp_path}/pool/packs/aa/y.pack", f"{tmp_path}/pool/packs/aa"]


def test_an_object_deleted_before_the_sync_is_skipped(tmp_path: Path,
                                                      fsyncs: list[str]) -> None:
    pool = LocalPool(str(tmp_path / "pool"))
    pool.put_unsynced("packs/aa/gone.pack", [b"g"])
    pool.delete("packs/aa/gone.pack")  # gc got there first
    fsyncs.clear()
    pool.sync_puts()
    root = f"{tmp_path}/pool"  # the directories made for it, deepest first
    assert fsyncs == [f"{root}/packs/aa", f"{root}/packs", root]
