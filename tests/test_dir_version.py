"""A directory's change version moves on every change of its entries (the federation's
listing cache revalidates by it): through the namespace functions and the tree import
(entries made without touching times)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gfs import namespace
from gfs.client import Client


@pytest.fixture
def c(tmp_path: Path) -> Iterator[Client]:
    Client.init(tmp_path / "s").close()
    with Client(tmp_path / "s") as client:
        client.mkdir("/d")
        client.write_bytes("/d/f", b"1")
        yield client


def test_every_entry_change_moves_the_version(c: Client) -> None:
    changes: list[Callable[[], object]] = [
        lambda: c.write_bytes("/d/g", b"new"),
        lambda: c.write_bytes("/d/g", b"replaced content"),
        lambda: c.mv("/d/g", "/d/h"),
        lambda: c.mv("/d/h", "/elsewhere"),
        lambda: c.symlink("/d/l", "f"),
        lambda: c.mkdir("/d/sub"),
        lambda: c.chmod("/d/f", 0o600),
        lambda: c.utime("/d/f", None, 5),
        lambda: c.link("/d/f", "/d/f2"),
        lambda: c.rm("/d/f2"),
        lambda: c.rm("/d/sub"),
    ]
    seen = {c.stat("/d").version}
    for change in changes:
        change()
        v = c.stat("/d").version
        assert v not in seen, change
        seen.add(v)
    # reading changes nothing
    c.ls("/d")
    c.read_bytes("/d/f")
    assert c.stat("/d").version in seen and c.stat("/d").version == max(seen)


def test_tree_import_moves_the_version_of_the_directories_it_fills(c: Client,
                                                                   tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a").write_bytes(b"a")
    c.put(src, "/imp")
    before = c.stat("/imp/sub").version
    (src / "sub" / "b").write_bytes(b"b")
    os.symlink("a", src / "sub" / "l")
    c.put(src, "/imp")                       # merges: entries made without touching times
    assert {s.name for s in c.ls("/imp/sub")} == {"a", "b", "l"}
    assert c.stat("/imp/sub").version != before


def test_entries_changed_on_engine_primitives(c: Client) -> None:
    before = c.stat("/d").version
    with c.engine.write() as txn:
        node = namespace.resolve(txn, "/d/f")
        txn.link(namespace.resolve(txn, "/d").ino, "raw", node.ino)
        namespace.entries_changed(txn, namespace.resolve(txn, "/d").ino)
        namespace.entries_changed(txn, node.ino)   # not a directory: left alone
    assert c.stat("/d").version == before + 1
    assert c.stat("/d/f").version == 1
