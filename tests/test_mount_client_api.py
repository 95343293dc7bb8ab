"""The client API the mount and gfs:// build on: pinned versions, per-inode lookups,
truncate / append / write_at that keep the untouched chunks, xattr clean-up hooks."""

from __future__ import annotations

import random

import pytest

from gfs import namespace
from gfs.client import Client
from gfs.errors import IsADirError, NotFoundError
from gfs.store import release


def test_pinned_version_survives_a_replace(fs: Client) -> None:
    fs.write_bytes("/v", b"one" * 1000)
    m = fs.manifest("/v")
    assert fs.manifest("/v", version=m.version) == m
    fs.write_bytes("/v", b"two")
    with pytest.raises(NotFoundError, match="not the committed one"):
        fs.manifest("/v", version=m.version)
    with fs.open_version("/v", m) as f:
        assert f.read() == b"one" * 1000
    assert fs.read_bytes("/v") == b"two"
    fs.mkdir("/d")
    with pytest.raises(IsADirError):
        fs.manifest("/d")


def test_per_inode_lookups(fs: Client) -> None:
    fs.mkdir("/a/b", parents=True)
    fs.write_bytes("/a/b/f", b"x" * 10)
    ino = fs.stat("/a/b/f").ino
    assert fs.path_of(ino) == "/a/b/f"
    assert fs.stat_ino(ino).path == "/a/b/f" and fs.stat_ino(ino).size == 10
    assert fs.manifest_ino(ino) == fs.manifest("/a/b/f")
    fs.mv("/a/b/f", "/a/g")
    assert fs.path_of(ino) == "/a/g"
    with pytest.raises(IsADirError):
        fs.manifest_ino(fs.stat("/a").ino)
    with pytest.raises(NotFoundError):
        fs.stat_ino(10_000)


def test_edits_match_a_byte_model_and_keep_untouched_chunks(fs: Client) -> None:
    rnd = random.Random(7)
    model = bytearray(rnd.randbytes(1_500_000))
    fs.write_bytes("/e", bytes(model))
    for step in range(24):
        before = fs.manifest("/e").chunks
        op = step % 4
        if op == 0:
            off = rnd.randrange(len(model) + 1000)
            data = rnd.randbytes(rnd.randrange(1, 5000))
            fs.write_at("/e", off, data)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
            ends = 0
            kept = 0
            for ref in before:  # the chunks wholly before the write are kept
                ends += ref.length
                if ends > off:
                    break
                kept += 1
            assert fs.manifest("/e").chunks[:kept] == before[:kept]
        elif op == 1:
            size = rnd.randrange(len(model) + 200_000)
            fs.truncate("/e", size)
            if size <= len(model):
                del model[size:]
            else:
                model.extend(bytes(size - len(model)))
        elif op == 2:
            data = rnd.randbytes(rnd.randrange(0, 100_000))
            fs.append("/e", data)
            model.extend(data)
            if len(before) > 1:
                assert fs.manifest("/e").chunks[:len(before) - 1] == before[:-1]
        else:
            off = rnd.randrange(max(len(model), 1))
            data = rnd.randbytes(300)
            fs.write_at("/e", off, data)
            model[off:off + len(data)] = data
            after = fs.manifest("/e").chunks
            assert after[-1] == before[-1] or off + 300 > len(model) - 300_000
        assert fs.read_bytes("/e") == bytes(model), f"step {step}"
        assert fs.stat("/e").size == len(model)
    fs.append("/new", b"created")
    assert fs.read_bytes("/new") == b"created"
    fs.truncate("/new", 0)
    assert fs.read_bytes("/new") == b"" and fs.manifest("/new").chunks == ()
    assert fs.fsck().ok


def test_remove_and_rename_hooks_drop_xattrs(fs: Client) -> None:
    fs.mkdir("/t/u", parents=True)
    fs.write_bytes("/t/u/f", b"1")
    fs.write_bytes("/t/g", b"2")
    fs.write_bytes("/h", b"3")
    inos = {p: fs.stat(p).ino for p in ("/t", "/t/u", "/t/u/f", "/t/g", "/h")}
    with fs.engine.write() as txn:
        for ino in inos.values():
            txn.put_value("xattrs", ino.to_bytes(8, "big") + b"user.k", b"\x01v")
    with fs.engine.write() as txn:  # /h replaced by /t/g: the xattrs of /h go
        release(txn, namespace.rename(txn, "/t/g", "/h"))
    with fs.engine.write() as txn:
        release(txn, namespace.remove(txn, "/t", recursive=True))
    with fs.engine.read() as txn:
        left = [k for k, _ in txn.iter_values("xattrs")]
    assert left == [inos["/t/g"].to_bytes(8, "big") + b"user.k"]  # moved, kept
    assert fs.read_bytes("/h") == b"2"
