"""A get into a new local directory walks the namespace tree once (no conflict pass:
nothing can exist below a missing destination); into an existing one it still
refuses conflicts before writing anything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs import client as client_module
from gfs.client import Client
from gfs.errors import IsADirError


def test_a_get_into_a_new_directory_walks_the_tree_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        (src / "d" / f"f{i}").write_bytes(b"z" * (i + 1))
    walks: list[str] = []
    real = client_module._walk_ns

    def counted(txn: Any, top: Any, dest: str) -> Iterator[Any]:
        walks.append(dest)
        return real(txn, top, dest)

    monkeypatch.setattr(client_module, "_walk_ns", counted)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        fs.get("/t", str(tmp_path / "new"))
        assert len(walks) == 1
        assert sorted(p.name for p in (tmp_path / "new" / "d").iterdir()) == \
            sorted(f"f{i}" for i in range(30))
        assert (tmp_path / "new" / "d" / "f29").read_bytes() == b"z" * 30
        # an existing destination: conflicts are looked for first, and refused
        walks.clear()
        clash = tmp_path / "old"
        (clash / "t" / "d" / "f3").mkdir(parents=True)
        with pytest.raises(IsADirError):
            fs.get("/t", str(clash))
        assert len(walks) == 1  # the conflict pass; the restore never started
        assert sorted(p.name for p in (clash / "t" / "d").iterdir()) == ["f3"]
