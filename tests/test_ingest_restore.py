"""The get path of a tree: small files written on several threads (real LMDB, real pools)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gfs import client as client_mod
from gfs.client import Client
from gfs.meta import Inode


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for d in range(3):
        for f in range(8):
            rel = f"d{d}/f{f}.txt"
            data = f"{d}-{f} ".encode() * (50 + f)
            (root / f"d{d}").mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            out[rel] = data
    for d in range(3):
        os.utime(root / f"d{d}", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000 + d))
    return out


def test_small_files_are_written_on_writer_threads_and_dirs_get_their_times(
        fs: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    want = _tree(src)
    fs.put(src, "/t")
    threads: set[str] = set()
    real = client_mod._write_local

    def spy(path: str, node: Inode, data: object) -> int:
        threads.add(threading.current_thread().name)
        return real(path, node, data)  # type: ignore[arg-type]

    monkeypatch.setattr(client_mod, "_write_local", spy)
    out = tmp_path / "out"
    report = fs.get("/t", out)
    assert report.files == len(want) and report.bytes == sum(map(len, want.values()))
    assert threads and all(t.startswith("hutong-restore") for t in threads)
    for rel, data in want.items():
        assert (out / rel).read_bytes() == data
    for d in range(3):  # set after the files inside were written
        assert os.stat(out / f"d{d}").st_mtime_ns == os.stat(src / f"d{d}").st_mtime_ns


def test_a_failed_write_fails_the_get_after_the_other_writes_end(
        fs: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    _tree(src)
    fs.put(src, "/t")
    real = client_mod._write_local
    ended: list[str] = []

    def failing(path: str, node: Inode, data: object) -> int:
        if path.endswith("d1/f3.txt"):
            raise OSError(28, "No space left on device", path)
        n = real(path, node, data)  # type: ignore[arg-type]
        ended.append(path)
        return n

    monkeypatch.setattr(client_mod, "_write_local", failing)
    with pytest.raises(OSError, match="No space left"):
        fs.get("/t", tmp_path / "out")
    assert len(ended) == 23  # the batch's other writes ended, complete
    assert not (tmp_path / "out" / "d1" / "f3.txt").exists()
    assert list((tmp_path / "out").rglob(".*hutong-*")) == []
