"""Content-addressed manifests (LMDB engine): identical contents share one body with a
reference count; puts, overwrites, removals and gc keep every count right."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs.client import Client
from gfs.meta import ChunkRef, Manifest
from gfs.meta import shared_manifests as shm

#: Contents of several chunks each (shared), and one of a single chunk (inline).
CONTENTS = [random.Random(s).randbytes(n) for s, n in ((1, 40_000), (2, 60_000), (3, 500))]
PATHS = ["/a", "/b", "/d/c", "/d/e"]


def _store(root: Path) -> Client:
    return Client.init(root, min_size=1024, avg_size=4096, max_size=16384, pack_size=1 << 20)


def _multi(data: bytes) -> bool:
    return len(data) > 16384  # more than one chunk: its manifest is shared


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "rm", "gc"]),
                              st.integers(0, len(PATHS) - 1),
                              st.integers(0, len(CONTENTS) - 1)), max_size=14))
def test_any_sequence_of_puts_and_removals_keeps_counts_right(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]]) -> None:
    fs = _store(tmp_path_factory.mktemp("s") / "state")
    files: dict[str, bytes] = {}
    try:
        fs.mkdir("/d")
        for op, p, c in ops:
            path = PATHS[p]
            if op == "put":
                fs.write_bytes(path, CONTENTS[c])
                files[path] = CONTENTS[c]
            elif op == "rm" and path in files:
                fs.rm(path)
                del files[path]
            elif op == "gc":
                fs.gc()
                for q, data in files.items():  # gc kept every shared chunk
                    assert fs.read_bytes(q) == data
        with fs.engine.read() as txn:
            assert txn.shared_manifests() == len({d for d in files.values() if _multi(d)})
        report = fs.fsck()  # chunk refcounts and shared bodies' refcounts
        assert report.ok, report.problems
        fs.gc()
        for q, data in files.items():
            assert fs.read_bytes(q) == data
        assert fs.fsck().ok
    finally:
        fs.close()


def test_identical_files_share_one_body(tmp_path: Path) -> None:
    fs = _store(tmp_path / "state")
    try:
        for i in range(20):
            fs.write_bytes(f"/f{i}", CONTENTS[0])
        with fs.engine.read() as txn:
            assert txn.shared_manifests() == 1
            ms = {ino: m for ino, m in txn.iter_manifests()}
        assert len(ms) == 20 and len({m.chunks for m in ms.values()}) == 1
        assert len(next(iter(ms.values())).chunks) >= 2
        for i in range(19):
            fs.rm(f"/f{i}")
        with fs.engine.read() as txn:
            assert txn.shared_manifests() == 1
        fs.rm("/f19")
        with fs.engine.read() as txn:
            assert txn.shared_manifests() == 0
        assert fs.fsck().ok
    finally:
        fs.close()


def test_a_forged_body_under_the_same_key_is_never_shared(tmp_path: Path) -> None:
    """An attacker who plants a body at the key of a victim's contents (a collision)
    does not change what the victim's file reads: the victim's manifest stays inline."""
    fs = _store(tmp_path / "state")
    try:
        m = Manifest(1, (ChunkRef(b"\x01" * 16, 10), ChunkRef(b"\x02" * 16, 10)))
        forged = Manifest(1, (ChunkRef(b"\x03" * 16, 10), ChunkRef(b"\x04" * 16, 10)))
        with fs.engine.write() as txn:
            raw, dbs = txn._txn, txn._d  # type: ignore[attr-defined]
            key = hashlib.blake2b(_entries(m), digest_size=shm.KEY_LEN).digest()
            raw.put(key, (1).to_bytes(8, "little") + _entries(forged), db=dbs.mbodies)
            txn.put_manifest(7, m)
            assert txn.get_manifest(7) == m
            assert shm.ref_key(bytes(raw.get((7).to_bytes(8, "big"), db=dbs.manifests))) is None
    finally:
        fs.close()


def _entries(m: Manifest) -> bytes:
    return b"".join(c.id + c.length.to_bytes(4, "little") for c in m.chunks)


def test_manifest_bytes_counts_one_body_per_distinct_content() -> None:
    two = Manifest(1, (ChunkRef(b"\x01" * 16, 10), ChunkRef(b"\x02" * 16, 10)))
    one = Manifest(1, (ChunkRef(b"\x03" * 16, 10),))
    inline, shared = shm.manifest_bytes([two] * 10 + [one])
    assert inline == 10 * (8 + 12 + 40) + (8 + 12 + 20)
    assert shared == 10 * (8 + 12 + 16) + (16 + 8 + 40) + (8 + 12 + 20)
