"""Pools encrypted at rest (issue 13 item 3): the pool contract holds, no plaintext byte
reaches the backend, the key is needed and checked, and gc, fsck and the tierer work
across an encrypted pool."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs import _sealed
from gfs.client import Client
from gfs.errors import ConfigError, CorruptChunkError, PoolObjectMissingError, StateError
from gfs.pools import LocalPool, Pool
from gfs.pools.sealed import HEAD_LEN, SEGMENT, SealedPool
from gfs.testing.pool_suite import PoolConformance
from gfs.tiering.policy import TierPolicy
from gfs.tiering.tierer import run, tier_usage


class TestSealedPool(PoolConformance):
    @pytest.fixture
    def pool(self, tmp_path: Path) -> Iterator[Pool]:
        with SealedPool(LocalPool(str(tmp_path / "pool")), os.urandom(32)) as p:
            yield p

    def temporaries(self, pool: Pool) -> list[str]:
        assert isinstance(pool, SealedPool) and isinstance(pool.inner, LocalPool)
        return pool.inner.temporaries()

    def test_usage(self, pool: Pool) -> None:
        """Usage counts what the backend stores: each object adds a header and a tag per
        64 KiB segment (capacity is about stored bytes)."""
        before = pool.usage()
        pool.put("u/1", [b"x" * 1000])
        pool.put("u/2", [b"y" * 24])
        after = pool.usage()
        assert after.used_bytes - before.used_bytes == 1024 + 2 * (HEAD_LEN + 16)


def test_large_ranges_across_read_groups(tmp_path: Path) -> None:
    """Ranges longer than one backend read (16 segments), cut anywhere, read exactly."""
    pool = SealedPool(LocalPool(str(tmp_path / "p")), os.urandom(32))
    data = os.urandom(40 * SEGMENT + 123)
    pool.put("packs/a", [data])
    n = len(data)
    for a, b in [(0, None), (1, n - 1), (SEGMENT - 1, 17 * SEGMENT + 1), (5, 33 * SEGMENT),
                 (16 * SEGMENT, n), (3 * SEGMENT + 9, n + 100)]:
        assert pool.get("packs/a", a, b) == data[a:b], (a, b)


def test_sealed_pool_inside_another(tmp_path: Path) -> None:
    """Each pool reads through its own buffers: one sealed inside another reads right."""
    pool = SealedPool(SealedPool(LocalPool(str(tmp_path / "p")), os.urandom(32)),
                      os.urandom(32))
    data = os.urandom(20 * SEGMENT + 5)
    pool.put("packs/a", [data])
    assert pool.get("packs/a") == data
    assert pool.get("packs/a", SEGMENT + 3, 3 * SEGMENT) == data[SEGMENT + 3:3 * SEGMENT]


def test_object_replaced_by_another_writer_is_read_afresh(tmp_path: Path) -> None:
    """A pool remembers each object's header for the reads that follow; an object another
    process replaced (new salt, other size) or cut meanwhile is read afresh, never stale."""
    key = os.urandom(32)
    reader, writer = (SealedPool(LocalPool(str(tmp_path / "p")), key) for _ in range(2))
    old, new = os.urandom(3 * SEGMENT), os.urandom(SEGMENT + 7)
    writer.put("packs/a", [old])
    assert reader.get("packs/a", 10, 20) == old[10:20]  # remembered from here on
    writer.put("packs/a", [new])
    assert reader.get("packs/a", 10, 20) == new[10:20]
    assert reader.get("packs/a") == new
    assert reader.get("packs/a", SEGMENT, 3 * SEGMENT) == new[SEGMENT:]
    writer.delete("packs/a")
    with pytest.raises(PoolObjectMissingError):
        reader.get("packs/a", 0, 10)
    with pytest.raises(PoolObjectMissingError):
        reader.get("packs/a", 5, 5)  # an empty range of a missing object too


def test_ranges_across_segments_and_tampering(tmp_path: Path) -> None:
    inner = LocalPool(str(tmp_path / "p"))
    pool = SealedPool(inner, os.urandom(32))
    data = os.urandom(3 * SEGMENT + 123)
    pool.put("packs/a", [data[:1000], data[1000:]])
    assert pool.size("packs/a") == len(data)
    rnd = random.Random(3)
    for _ in range(50):
        a = rnd.randrange(len(data) + 10)
        b = rnd.randrange(a, len(data) + 20)
        assert pool.get("packs/a", a, b) == data[a:b]
    stored = inner.get("packs/a")
    assert data[:64] not in stored and data[-64:] not in stored
    # another key, a swapped object, a flipped bit and a cut at a segment boundary all fail
    with pytest.raises(CorruptChunkError, match="another at-rest key"):
        SealedPool(inner, os.urandom(32)).get("packs/a", 0, 10)
    inner.put("packs/b", [stored])
    with pytest.raises(CorruptChunkError):
        pool.get("packs/b", 0, 10)  # keys are bound to the object's name
    flipped = bytearray(stored)
    flipped[HEAD_LEN + 5] ^= 1
    inner.put("packs/c", [bytes(flipped)])
    with pytest.raises(CorruptChunkError, match="segment 0"):
        pool.get("packs/c", 0, 10)
    cut = stored[:HEAD_LEN + 2 * (SEGMENT + 16)]
    inner.put("packs/a", [cut])
    with pytest.raises(CorruptChunkError, match="segment 1"):  # a reader that opens it now
        SealedPool(inner, pool._key).get("packs/a", SEGMENT, SEGMENT + 10)  # not the last
    inner.put("packs/d", [data[:100]])
    with pytest.raises(CorruptChunkError):
        pool.get("packs/d")  # a plaintext object in an encrypted pool


def _files(n: int, size: int) -> dict[str, bytes]:
    rnd = random.Random(11)
    out = {}
    for i in range(n):
        words = " ".join(f"secret{rnd.randrange(100000)}" for _ in range(size // 10)).encode()
        out[f"/d/f{i}"] = words[:size]
    return out


@pytest.fixture
def sealed_fs(tmp_path: Path) -> Client:
    fs = Client.init(tmp_path / "state", pack_size=1 << 20)
    fs.add_pool("vault", str(tmp_path / "hot"), tier="hot", encrypt=True)
    fs.add_pool("archive", str(tmp_path / "cold"), tier="cold", encrypt=True)
    with fs.engine.write() as txn:
        TierPolicy(write_tier="hot").save(txn)
    return fs


def _pool_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_no_plaintext_in_pool_and_key_required(sealed_fs: Client, tmp_path: Path) -> None:
    files = _files(6, 150_000)
    sealed_fs.mkdir("/d")
    for p, data in files.items():
        sealed_fs.write_bytes(p, data)
    stored = _pool_bytes(tmp_path / "hot")
    assert len(stored) > 100_000 and not any((tmp_path / "state" / "pools").rglob("packs/*/*"))
    for data in files.values():  # no window of any file, compressed or not
        for at in range(0, len(data) - 32, 4096):
            assert data[at:at + 32] not in stored
    assert b"secret" not in stored and b"HTCB" not in stored  # no blob header either
    assert sealed_fs.encrypted_pools() == {1, 2}
    sealed_fs.close()
    state = tmp_path / "state"
    key = (state / "at-rest.key").read_bytes()
    assert (state / "at-rest.key").stat().st_mode & 0o777 == 0o600
    (state / "at-rest.key").unlink()
    with Client(state) as fs, pytest.raises(StateError, match=r"pool vault is encrypted at "
                                            r"rest and its key .*at-rest.key is missing"):
        fs.read_bytes("/d/f0")
    (state / "at-rest.key").write_bytes(os.urandom(32))
    with Client(state) as fs, pytest.raises(StateError, match="is not its key"):
        fs.read_bytes("/d/f0")
    elsewhere = tmp_path / "usb" / "k"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(key)
    os.environ["HUTONG_AT_REST_KEY"] = str(elsewhere)
    try:
        with Client(state) as fs:
            assert fs.read_bytes("/d/f0") == files["/d/f0"]
    finally:
        del os.environ["HUTONG_AT_REST_KEY"]


def test_gc_fsck_tierer_across_encrypted_pools(sealed_fs: Client, tmp_path: Path) -> None:
    files = _files(8, 200_000)
    sealed_fs.mkdir("/d")
    for p, data in files.items():
        sealed_fs.write_bytes(p, data)
    report = sealed_fs.fsck()
    assert report.ok, report.problems
    # the tierer moves everything idle from the encrypted hot pool to the encrypted cold one
    with sealed_fs.engine.write() as txn:
        TierPolicy(write_tier="hot", demote_idle=1e-3, cold_level=19).save(txn)
    moved = run(sealed_fs.store)
    assert moved.directions.get("hot->cold", 0) > 0
    usage = tier_usage(sealed_fs.store)
    assert usage["cold"] > 0 and usage["hot"] == 0
    assert b"secret" not in _pool_bytes(tmp_path / "cold")
    for p, data in files.items():
        assert sealed_fs.read_bytes(p) == data
    # gc reclaims deleted files' packs in the encrypted pool, and fsck verifies every copy
    for p in list(files)[:5]:
        sealed_fs.rm(p)
    before = len(list((tmp_path / "cold").rglob("packs/*/*")))
    sealed_fs.gc()
    assert len(list((tmp_path / "cold").rglob("packs/*/*"))) <= before
    report = sealed_fs.fsck()
    assert report.ok and report.chunks_verified > 0, report.problems
    for p in list(files)[5:]:
        assert sealed_fs.read_bytes(p) == files[p]
    # a damaged sealed object is found by fsck
    victim = next((tmp_path / "cold").rglob("packs/*/*"))
    raw = bytearray(victim.read_bytes())
    raw[HEAD_LEN + 10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert not sealed_fs.fsck().ok


def test_encrypted_pool_must_start_empty_and_changes_nothing(sealed_fs: Client,
                                                             tmp_path: Path) -> None:
    full = tmp_path / "full"
    LocalPool(str(full)).put("packs/x", [b"old"])
    before = sealed_fs.pools()
    with pytest.raises(ConfigError, match="must start empty"):
        sealed_fs.add_pool("late", str(full), encrypt=True)
    assert sealed_fs.pools() == before


def test_init_encrypt_and_copy_between_encrypted_stores(tmp_path: Path) -> None:
    """`hutong init --encrypt` seals the default pool; the mover reads from and writes to
    sealed pools (no zero-copy path to ciphertext, a receiver that cannot rename a spool
    in place) and nothing lands in clear."""
    import subprocess
    import sys

    from gfs import mover

    src, dst = tmp_path / "src", tmp_path / "dst"
    for state in (src, dst):
        subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), "init", "-q",
                        "--encrypt"], check=True, timeout=60)
    files = _files(4, 120_000)
    with Client(src) as s, Client(dst) as d:
        assert s.encrypted_pools() == d.encrypted_pools() == {0}
        s.mkdir("/d")
        for p, data in files.items():
            s.write_bytes(p, data)
        report = mover.copy_tree(s, d, "/d", streams=2)
        assert report.transfer.chunks > 0
        for p, data in files.items():
            assert d.read_bytes(p) == data
        assert d.fsck().ok
    for state in (src, dst):
        stored = _pool_bytes(state / "pools" / "default")
        assert len(stored) > 100_000 and b"secret" not in stored


def test_reads_into_a_buffer_and_large_reads(tmp_path: Path) -> None:
    """Reads decrypt straight into a caller's buffer (`readinto`) or the bytes returned;
    a bad segment anywhere fails the read and a caller's buffer then holds none of the
    plaintext."""
    inner = LocalPool(str(tmp_path / "p"))
    pool = SealedPool(inner, os.urandom(32))
    data = os.urandom(100 * SEGMENT + 77)
    pool.put("packs/a", [data])
    n = len(data)
    for a, b in [(0, n), (7, n - 9), (SEGMENT, 70 * SEGMENT), (3, 40 * SEGMENT + 1)]:
        assert pool.get("packs/a", a, b) == data[a:b], (a, b)
        buf = bytearray(b - a + 5)
        assert pool.readinto("packs/a", a, buf) == min(b - a + 5, n - a)
        assert buf[:b - a] == data[a:b]
    tail = memoryview(bytearray(100))
    assert pool.readinto("packs/a", n - 10, tail) == 10 and tail[:10] == data[-10:]
    assert pool.readinto("packs/a", n + 5, tail) == 0
    stored = bytearray(inner.get("packs/a"))
    stored[HEAD_LEN + 90 * (SEGMENT + 16) + 3] ^= 1  # segment 90, read by the last thread
    inner.put("packs/a", [bytes(stored)])  # keys are bound to the name: the same one
    with pytest.raises(CorruptChunkError, match="segment 90"):
        pool.get("packs/a")
    buf = bytearray(n)
    with pytest.raises(CorruptChunkError, match="segment 90"):
        pool.readinto("packs/a", 0, buf)
    assert buf == bytearray(n)
    assert pool.get("packs/a", 0, 90 * SEGMENT) == data[:90 * SEGMENT]  # the rest is good


def test_filled_bytes_hands_out_only_what_fill_wrote_whole() -> None:
    """The C helper behind large reads: a bytes object filled in place, handed out only
    if `fill` wrote all of it; fill's own error comes through unchanged."""

    def fill(view: memoryview) -> int:
        view[:] = b"ab" * (len(view) // 2)
        return len(view)

    assert _sealed.filled_bytes(6, fill) == b"ababab"
    assert _sealed.filled_bytes(0, lambda v: 0) == b""
    with pytest.raises(ValueError, match="wrote 3 of 6 bytes"):
        _sealed.filled_bytes(6, lambda v: 3)

    def fail(view: memoryview) -> int:
        raise CorruptChunkError("packs/x", "segment 2 fails authentication")

    with pytest.raises(CorruptChunkError, match="segment 2"):
        _sealed.filled_bytes(6, fail)
    with pytest.raises(ValueError, match="negative"):
        _sealed.filled_bytes(-1, fill)
