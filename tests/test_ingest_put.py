"""The put path's per-file costs: the local tree is listed once (real LMDB, real pools)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gfs import client as client_mod
from gfs.client import Client


def _tree(root: Path, dirs: int, files: int) -> dict[str, bytes]:
    out = {}
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(files):
            data = f"{d}/{f} ".encode() * (f + 1)
            (sub / f"f{f}.txt").write_bytes(data)
            out[f"d{d}/f{f}.txt"] = data
    return out


@pytest.mark.parametrize("kept", [50_000, 5])
def test_put_lists_each_local_directory_once(fs: Client, tmp_path: Path, kept: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The conflict check's walk is reused; past PUT_WALK_KEPT entries the put walks again
    (bounded memory) and stores the same tree."""
    src = tmp_path / "src"
    want = _tree(src, 4, 6)
    listed: list[str] = []
    real = client_mod._list_local

    def counting(entry: client_mod._LocalEntry) -> list[client_mod._LocalEntry]:
        listed.append(entry.path)
        return real(entry)

    monkeypatch.setattr(client_mod, "_list_local", counting)
    monkeypatch.setattr(client_mod, "PUT_WALK_KEPT", kept)
    report = fs.put(src, "/dst")
    assert report.files == len(want)
    dirs = 1 + 4
    assert len(listed) == (dirs if kept > 100 else 2 * dirs)
    for rel, data in want.items():
        assert fs.read_bytes(f"/dst/{rel}") == data
        assert fs.stat(f"/dst/{rel}").mtime_ns == os.stat(src / rel).st_mtime_ns
