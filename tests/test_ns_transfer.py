"""Tree put/get through the Namespace API alone (gfs.ns_transfer, the federation's `hutong
put/get`), run on the embedded store's Namespace so it is checked against `Client.put`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.errors import IsADirError, NotADirError
from gfs.ns_transfer import get_tree, put_tree
from tests.conftest import make_tree, tree_digest


def test_a_tree_round_trips_with_modes_times_and_links(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=4, files=40)
    moved: list[int] = []
    r = put_tree(fs, src, "/t", progress=moved.append)
    assert r.files > 0 and r.symlinks == 2 and sum(moved) == r.bytes
    ref = tmp_path / "ref-store"
    with Client.init(ref) as other:  # the batched embedded put gives the same tree
        other.put(src, "/t")
        assert {(s.path, s.kind, s.size, s.mode, s.mtime_ns, s.target)
                for s in other.walk("/t")} == {
            (s.path, s.kind, s.size, s.mode, s.mtime_ns, s.target) for s in fs.walk("/t")}
    out = tmp_path / "out"
    got = get_tree(fs, "/t", out)
    assert got.files == r.files and got.bytes == r.bytes
    assert tree_digest(out) == tree_digest(src)
    f = next(p for p in src.rglob("*.bin") if p.stat().st_size)
    rel = f.relative_to(src)
    assert (out / rel).stat().st_mtime_ns == f.stat().st_mtime_ns
    assert not [p for p in out.rglob("*") if ".part" in p.name]


def test_a_repeated_put_resumes(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=5, files=20)
    first = put_tree(fs, src, "/t")
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    fs.rm("/t/" + str(files[0].relative_to(src)))  # as if the first put was interrupted
    again = put_tree(fs, src, "/t")
    assert again.files == 1 and again.unchanged == first.files - 1 + first.symlinks


def test_destination_rules_and_conflicts(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=6, files=5)
    fs.mkdir("/into")
    put_tree(fs, src, "/into/")  # "DEST/": inside it, under the source's name
    assert fs.stat("/into/src").is_dir
    one = tmp_path / "one.txt"
    one.write_bytes(b"one")
    with pytest.raises(IsADirError):
        put_tree(fs, one, "/into/src")  # a file onto a directory
    fs.write_bytes("/plain", b"p")
    with pytest.raises(NotADirError):
        put_tree(fs, src, "/plain")  # a directory onto a file
    assert fs.read_bytes("/plain") == b"p"
    out = tmp_path / "outdir"
    out.mkdir()
    get_tree(fs, "/plain", out)  # into an existing directory, under its name
    assert (out / "plain").read_bytes() == b"p"
    (out / "x" / "plain").mkdir(parents=True)  # a local directory where the file goes
    with pytest.raises(IsADirError):
        get_tree(fs, "/plain", out / "x")
    assert os.listdir(out / "x" / "plain") == []
