"""Chunk mover: real servers on loopback, transfers, resume, and every fault of issue 3."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs import _mover, mover
from gfs.cli import main as cli_main
from gfs.client import Client
from gfs.meta import ChunkRecord
from gfs.packs import pack_key
from tests.mover_peer import RawClient, Relay, assert_clean, frame, read_plain_frame, small_store

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))


_store = small_store  # small packs: every transfer fills several spools


@pytest.fixture(autouse=True)
def _small_spools() -> Iterator[None]:
    """Spools as small as the stores' 1 MiB packs: every transfer commits several."""
    saved = mover.TUNING.spool_min
    mover.TUNING.spool_min = 0
    try:
        yield
    finally:
        mover.TUNING.spool_min = saved


@pytest.fixture(params=[True, False], ids=["direct", "buffered"])
def spool_io(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Receivers write spools with O_DIRECT from aligned buffers, or buffered."""
    saved = mover.TUNING.direct
    mover.TUNING.direct = request.param
    try:
        yield request.param
    finally:
        mover.TUNING.direct = saved


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Client]:
    c = _store(tmp_path / "src")
    rnd = random.Random(7)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for i in range(12):
        blob = rnd.randbytes(rnd.randrange(50_000, 400_000))
        if i % 3 == 0:
            blob += (f"text line {i}\n" * 5000).encode()
        (data / ("sub" if i % 2 else "") / f"f{i}").write_bytes(blob)
    (data / "link").symlink_to("f0")
    c.put(str(data), "/data")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def dst(tmp_path: Path) -> Iterator[Client]:
    c = _store(tmp_path / "dst")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def server(src: Client) -> Iterator[mover.MoverServer]:
    with mover.MoverServer(src, SECRET, timeout=2.0) as srv:
        yield srv


def _temporaries(c: Client) -> list[str]:
    return os.listdir(c.state / "pools" / "default" / "tmp")


_assert_clean = assert_clean


# -- transfers ------------------------------------------------------------------------


def test_hmac_matches_hashlib() -> None:
    rnd = random.Random(1)
    for n in (0, 1, 55, 56, 64, 65, 1000):
        for key in (b"k" * 16, rnd.randbytes(64), rnd.randbytes(100)):
            msg = rnd.randbytes(n)
            assert _mover.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@pytest.mark.parametrize("streams", [1, 4])
def test_fetch_roundtrip_and_resume(spool_io: bool, src: Client, dst: Client,
                                    server: mover.MoverServer, streams: int) -> None:
    ids = mover.tree_chunks(src, "/data")
    assert len(ids) > 500
    seen: list[int] = []
    stats = mover.fetch(dst, server.address, ids, SECRET, streams=streams,
                        progress=seen.append)
    assert stats.chunks == stats.committed == len(ids)
    assert stats.streams == streams and stats.retries == 0 and stats.rejected == 0
    assert sum(seen) == stats.bytes > 0
    for cid in ids[:: max(1, len(ids) // 50)]:
        assert dst.store.read_chunk(cid) == src.store.read_chunk(cid)
    again = mover.fetch(dst, server.address, ids, SECRET, streams=streams)
    assert again.chunks == 0 and again.skipped == len(ids) and again.bytes == 0
    assert _temporaries(dst) == []


def test_partial_then_resume_moves_only_the_rest(src: Client, dst: Client,
                                                 server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")
    half = ids[: len(ids) // 2]
    first = mover.fetch(dst, server.address, half, SECRET)
    rest = mover.fetch(dst, server.address, ids, SECRET)
    assert first.chunks == len(half)
    assert rest.chunks == len(ids) - len(half) and rest.skipped == len(half)


def test_more_ids_than_one_batch(tmp_path: Path) -> None:
    n = _mover.MAX_BATCH + 500
    with _store(tmp_path / "a") as a, _store(tmp_path / "b") as b:
        with a.store.writer() as w:
            refs = w.store_buffer(random.Random(3).randbytes(n * 6000))
            w.add_file(refs, lambda txn, r: mover.namespace.write_file(txn, "/big", r))
        ids = list(dict.fromkeys(r.id for r in refs))
        with mover.MoverServer(a, SECRET) as srv:
            stats = mover.fetch(b, srv.address, ids, SECRET, streams=1)
        assert len(ids) > _mover.MAX_BATCH and stats.committed == len(ids)


@pytest.mark.parametrize("sendfile", [True, False, None])
def test_send_roundtrip_and_resume(spool_io: bool, src: Client, dst: Client,
                                   sendfile: bool | None) -> None:
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(dst, SECRET) as srv:
        stats = mover.send(src, srv.address, ids, SECRET, streams=3, sendfile=sendfile)
        assert stats.committed == stats.chunks == len(ids)
        again = mover.send(src, srv.address, ids, SECRET)
        assert again.chunks == 0 and again.skipped == len(ids)
        assert srv.counters()["chunks_received"] == len(ids)
    for cid in ids[:20]:
        assert dst.store.read_chunk(cid) == src.store.read_chunk(cid)


def test_copy_cli_copies_tree_and_resumes(src: Client, dst: Client,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src_state, dst_state = str(src.state), str(dst.state)
    assert cli_main(["--state", src_state, "copy", "--to-state", dst_state, "/data",
                     "/copied"]) == 0
    out = capsys.readouterr().out
    assert "0 already there" in out
    for st in src.walk("/data"):
        rel = st.path.removeprefix("/data")
        other = dst.stat("/copied" + rel)
        assert other.kind == st.kind and other.mode == st.mode
        if st.kind == "file":
            assert dst.read_bytes("/copied" + rel) == src.read_bytes(st.path)
            assert other.mtime_ns == st.mtime_ns
    assert dst.readlink("/copied/link") == "f0"
    assert cli_main(["--state", src_state, "copy", "--to-state", dst_state, "/data",
                     "/copied"]) == 0
    assert " 0 moved" in capsys.readouterr().out
    _assert_clean(dst)


# -- bad input and faults ----------------------------------------------------------------------


def test_wrong_secret_is_refused(src: Client, dst: Client, server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")[:10]
    with pytest.raises(mover.MoverAuthError, match="secret"):
        mover.fetch(dst, server.address, ids, b"x" * 32)
    assert server.counters()["auth_failures"] == 0  # the client refused the server first
    assert dst.store.engine.read().__enter__().get_chunk(ids[0]) is None


_frame = frame


def _expect_error(sock: socket.socket, code: int) -> str:
    ftype, payload = read_plain_frame(sock)
    assert ftype == 12, ftype
    assert struct.unpack_from("<I", payload)[0] == code, payload
    assert sock.recv(1) == b""  # then the server closes
    sock.close()
    return payload[4:].decode()


def test_replayed_handshake_is_refused(server: mover.MoverServer) -> None:
    peer = RawClient(server.port, SECRET)
    assert peer.last == 4  # READY
    peer.close()
    # The same AUTH against a fresh challenge: refused.
    assert RawClient(server.port, SECRET, auth=peer.proof).last == 12
    # A reused client nonce: refused before any challenge.
    cn = os.urandom(32)
    RawClient(server.port, SECRET, cn=cn).close()
    assert RawClient(server.port, SECRET, cn=cn).last == 12
    assert server.counters()["auth_failures"] == 2


@pytest.mark.parametrize("bad, code", [
    (b"XXXX" + bytes(8), _mover.ERR_PROTOCOL),                       # bad magic
    (b"HTMV\x03\x05" + bytes(6), _mover.ERR_PROTOCOL),               # bad version
    (b"HTMV\x02\x63" + bytes(6), _mover.ERR_PROTOCOL),               # unknown type
    (_frame(5, struct.pack("<I", 5000) + bytes(16 * 5000))[:12], _mover.ERR_LIMIT),
    (_frame(5, struct.pack("<I", 3) + bytes(16)), _mover.ERR_PROTOCOL),  # count mismatch
    (b"HTMV\x02\x06\x00\x00" + struct.pack("<I", (1 << 32) - 1), _mover.ERR_LIMIT),
    (_frame(9, struct.pack("<I", 1) + bytes(16)), _mover.ERR_PROTOCOL),  # OFFER in a fetch
])
def test_malformed_frames_close_the_stream(server: mover.MoverServer, bad: bytes,
                                           code: int) -> None:
    peer = RawClient(server.port, SECRET)
    assert peer.last == 4
    peer.send(bad)  # sealed in a valid record: the frame parser must refuse it
    assert peer.expect_error(code)


def test_garbage_before_handshake(server: mover.MoverServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    _expect_error(sock, _mover.ERR_PROTOCOL)


def test_unknown_chunk_id(src: Client, dst: Client, server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")[:5]
    ghost = os.urandom(16)
    with pytest.raises(mover.ChunksUnavailableError) as info:
        mover.fetch(dst, server.address, [*ids, ghost], SECRET)
    assert info.value.ids == [ghost]
    stats = mover.fetch(dst, server.address, [*ids, ghost], SECRET, strict=False)
    assert stats.missing == [ghost] and stats.skipped == 5


def test_stalled_server_times_out(dst: Client) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # accept, never answer
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    start = time.monotonic()
    try:
        with pytest.raises(mover.MoverTimeoutError, match="stalled"):
            mover.fetch(dst, listener.getsockname(), [os.urandom(16)], SECRET, timeout=0.5,
                        retries=1)
    finally:
        listener.close()
        for c in held:
            c.close()
    assert time.monotonic() - start < 5


def test_stalled_client_is_dropped(src: Client) -> None:
    with mover.MoverServer(src, SECRET, timeout=0.5) as srv:
        peer = RawClient(srv.port, SECRET)
        assert peer.last == 4
        start = time.monotonic()
        peer.expect_error(_mover.ERR_TIMEOUT)
        assert time.monotonic() - start < 4


def test_cut_mid_chunk_leaves_nothing_partial_and_retry_completes(
        spool_io: bool, src: Client, dst: Client, server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")
    proxy = Relay(server.address, budget=1_500_000 + 777)
    try:
        with pytest.raises(mover.MoverError, match="resume"):
            mover.fetch(dst, proxy.address, ids, SECRET, streams=1, retries=0)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    with dst.engine.read() as txn:
        have = [cid for cid in ids if txn.get_chunk(cid) is not None]
    assert 0 < len(have) < len(ids)  # complete chunks before the cut were kept
    _assert_clean(dst)  # every recorded chunk verifies; no temporaries
    stats = mover.fetch(dst, server.address, ids, SECRET)
    assert stats.chunks == len(ids) - len(have) and stats.skipped == len(have)
    _assert_clean(dst)


def test_retry_after_cut_within_one_call(src: Client, dst: Client,
                                         server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")
    proxy = Relay(server.address, budget=300_000)
    try:
        with pytest.raises(mover.MoverError):
            mover.fetch(dst, proxy.address, ids, SECRET, streams=2, retries=1)
        # each attempt moves a little more: with enough retries the transfer completes
        stats = mover.fetch(dst, proxy.address, ids, SECRET, streams=2, retries=200)
    finally:
        proxy.close()
    assert stats.retries > 0 and not stats.missing
    _assert_clean(dst)


def _corrupt_one(c: Client, cid: bytes) -> None:
    with c.engine.read() as txn:
        rec = txn.get_chunk(cid)
    assert rec is not None
    loc = rec.locations[0]
    path = c.store.pool(loc.pool).local_path(pack_key(loc.pack))
    assert path is not None
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length - 1)
        last = f.read(1)
        f.seek(loc.offset + loc.length - 1)
        f.write(bytes([last[0] ^ 0xFF]))


def test_chunk_not_matching_its_id_is_rejected_on_fetch(
        spool_io: bool, src: Client, dst: Client, server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")[:40]
    bad = ids[17]
    _corrupt_one(src, bad)
    with pytest.raises(mover.ChunksUnavailableError) as info:
        mover.fetch(dst, server.address, ids, SECRET, retries=0)
    assert info.value.ids == [bad]
    with dst.engine.read() as txn:
        assert txn.get_chunk(bad) is None
        assert all(txn.get_chunk(cid) is not None for cid in ids if cid != bad)
    _assert_clean(dst)


def test_chunk_not_matching_its_id_is_rejected_on_send(spool_io: bool, src: Client,
                                                       dst: Client) -> None:
    ids = mover.tree_chunks(src, "/data")[:40]
    bad = ids[3]
    _corrupt_one(src, bad)
    with mover.MoverServer(dst, SECRET) as srv:
        stats = mover.send(src, srv.address, ids, SECRET)
    assert stats.rejected == 1 and stats.committed == len(ids) - 1
    with dst.engine.read() as txn:
        assert txn.get_chunk(bad) is None
    _assert_clean(dst)


def test_cancel_from_progress_callback(src: Client, dst: Client,
                                       server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")

    class Stop(Exception):
        pass

    def progress(_n: int) -> None:
        raise Stop

    proxy = Relay(server.address, budget=1 << 40)
    try:
        with pytest.raises(Stop):
            # the proxy slows nothing; a callback raising cancels all streams
            mover.fetch(dst, proxy.address, ids, SECRET, streams=2, progress=progress)
    finally:
        proxy.close()
    _assert_clean(dst)


def test_limits_and_arguments(dst: Client) -> None:
    with pytest.raises(ValueError, match="secret"):
        mover.MoverServer(dst, b"short")
    with pytest.raises(ValueError, match="streams"):
        mover.fetch(dst, ("127.0.0.1", 1), [os.urandom(16)], SECRET, streams=0)
    with pytest.raises(ValueError, match="16 bytes"):
        mover.fetch(dst, ("127.0.0.1", 1), [b"short"], SECRET)


def test_check_frames_parser() -> None:
    ok = _frame(5, struct.pack("<I", 2) + bytes(32)) + _frame(8, bytes(8)) + _frame(13)
    assert _mover.check_frames(ok) == (0, 3, "")
    status, n, msg = _mover.check_frames(ok[:-1])
    assert status == _mover.ERR_CLOSED and n == 2 and "truncated" in msg
    status, _, msg = _mover.check_frames(_frame(6, bytes(100)), 50)
    assert status == _mover.ERR_LIMIT and "length" in msg


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fuzz_frame_parser_bounded() -> None:
    """Random mutations of valid frame streams: the parser never crashes or over-reads."""
    rnd = random.Random(12345)
    seeds = [
        _frame(5, struct.pack("<I", 2) + bytes(32)) + _frame(8, bytes(8)) + _frame(13),
        _frame(6, bytes(16) + bytes(36)) + _frame(12, struct.pack("<I", 4) + b"oops"),
        _frame(9, struct.pack("<I", 1) + bytes(16)),
    ]
    deadline = time.monotonic() + 20
    runs = 0
    while time.monotonic() < deadline and runs < 300_000:
        buf = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 6)):
            op = rnd.randrange(4)
            if op == 0 and buf:
                buf[rnd.randrange(len(buf))] = rnd.randrange(256)
            elif op == 1:
                buf[rnd.randrange(len(buf) + 1):] = b""
            elif op == 2:
                buf += rnd.randbytes(rnd.randrange(20))
            elif buf:
                pos = rnd.randrange(len(buf))
                buf[pos:pos] = rnd.choice(seeds)
        status, n, msg = _mover.check_frames(bytes(buf), rnd.choice([0, 64, 1 << 20]))
        assert 0 <= status <= _mover.ERR_REKEY and n >= 0 and (status == 0) == (msg == "")
        runs += 1
    assert runs > 1000


def test_receiver_verifies_raw_blobs_in_c(src: Client, server: mover.MoverServer,
                                          tmp_path: Path) -> None:
    """Raw blobs arrive flagged ENTRY_VERIFIED; zstd and damaged ones are left to Python."""
    ids = mover.tree_chunks(src, "/data")
    with src.engine.read() as txn:
        codecs = {cid: txn.get_chunk(cid).codec for cid in ids}  # type: ignore[union-attr]
    raw = [cid for cid in ids if codecs[cid] == 0]
    packed = [cid for cid in ids if codecs[cid] != 0]
    assert raw and packed
    bad = raw[len(raw) // 2]
    _corrupt_one(src, bad)
    flags: dict[bytes, int] = {}

    def keep(path: str, entries: bytes) -> tuple[int, int]:
        for k in range(0, len(entries), _mover.ENTRY_LEN):
            cid, _off, _length, flag = struct.unpack_from("<16sQII", entries, k)
            flags[cid] = flag
        os.unlink(path)
        return 0, 0

    spool = tmp_path / "spool"
    spool.mkdir()
    res = _mover.transfer(_mover.OP_FETCH, "127.0.0.1", server.port, SECRET,
                          [b"".join(dict.fromkeys(ids))], spool=keep, spool_dir=str(spool))
    assert res[0][0] == _mover.OK, res
    assert all(flags[cid] == _mover.ENTRY_VERIFIED for cid in raw if cid != bad)
    assert flags[bad] == 0
    assert all(flags[cid] == 0 for cid in packed)


def test_large_spools_commit_as_few_packs(spool_io: bool, src: Client, dst: Client) -> None:
    mover.TUNING.spool_min = 64 << 20  # the default: one pack per stream here
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET) as srv:
        stats = mover.fetch(dst, srv.address, ids, SECRET, streams=2)
    assert stats.committed == len(set(ids)) and not stats.missing
    packs = {rec.locations[0].pack for rec in _records(dst, ids)}
    assert 1 <= len(packs) <= 2  # one per stream that got ids (a late stream may get none)
    _assert_clean(dst)


def _records(c: Client, ids: list[bytes]) -> list[ChunkRecord]:
    with c.engine.read() as txn:
        recs = [txn.get_chunk(cid) for cid in ids]
    assert all(r is not None for r in recs)
    return [r for r in recs if r is not None]


def test_streams_share_one_queue_of_ids(src: Client, server: mover.MoverServer,
                                        tmp_path: Path) -> None:
    ids = list(dict.fromkeys(mover.tree_chunks(src, "/data")))
    seen: list[bytes] = []
    lock = threading.Lock()

    def keep(path: str, entries: bytes) -> tuple[int, int]:
        with lock:
            seen.extend(entries[k : k + 16] for k in range(0, len(entries), _mover.ENTRY_LEN))
        os.unlink(path)
        return 0, 0

    spool = tmp_path / "spool"
    spool.mkdir()
    res = _mover.transfer(_mover.OP_FETCH, "127.0.0.1", server.port, SECRET, [b"".join(ids)],
                          spool=keep, spool_dir=str(spool), streams=3, batch=5)
    assert len(res) == 3 and all(r[0] == _mover.OK for r in res), res
    assert sorted(seen) == sorted(ids)  # every id once, whichever stream took it
    assert sum(r[3] for r in res) == len(ids)
    with pytest.raises(ValueError, match="shares one bytes"):
        _mover.transfer(_mover.OP_FETCH, "127.0.0.1", server.port, SECRET, [ids[0], ids[1]],
                        spool=keep, spool_dir=str(spool), streams=2)


def test_congestion_control_is_checked(src: Client, dst: Client) -> None:
    with pytest.raises(ValueError, match="tcp_allowed_congestion_control"):
        mover.MoverServer(src, SECRET, congestion="no-such-cc")
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    if not allowed:
        pytest.skip("no TCP congestion control is allowed to this process")
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET, congestion=allowed[0]) as srv:
        stats = mover.fetch(dst, srv.address, ids, SECRET)
    assert stats.committed == len(set(ids))


def _not_local(c: Client) -> None:
    """Make the store's pools answer like object stores: no local paths, only `get`."""
    for rec in c.store.pool_records():
        pool = c.store.pool(rec.id)
        pool.local_path = lambda key: None  # type: ignore[method-assign]


def test_non_local_pool_serves_fetch_and_send(src: Client, dst: Client,
                                              tmp_path: Path) -> None:
    ids = mover.tree_chunks(src, "/data")
    _not_local(src)
    with mover.MoverServer(src, SECRET) as srv:
        stats = mover.fetch(dst, srv.address, ids, SECRET, streams=2)
        assert srv._source.staged >= len(set(ids))
    assert stats.committed == len(set(ids)) and not stats.missing
    assert list((src.state / "tmp").glob("mover-stage-*")) == []
    with Client.init(tmp_path / "third") as third, mover.MoverServer(third, SECRET) as srv:
        sent = mover.send(src, srv.address, ids, SECRET)
        assert sent.committed == len(set(ids)) and not sent.missing
    assert list((src.state / "tmp").glob("mover-stage-*")) == []
    _assert_clean(dst)


def test_fetched_chunks_are_pinned_against_gc(src: Client, dst: Client,
                                              server: mover.MoverServer) -> None:
    ids = mover.tree_chunks(src, "/data")[:40]
    mover.fetch(dst, server.address, ids, SECRET)
    report = dst.fsck()
    assert report.ok and report.pinned_chunks == len(set(ids))
    assert dst.gc().chunks_removed == 0  # no manifest names them yet, the pin keeps them
    with dst.engine.read() as txn:
        assert all(txn.has_chunk(c) for c in ids)


# -- O_DIRECT spools ---------------------------------------------------------------------


def _spools(port: int, ids: list[bytes], spool: Path, direct: bool,
            limit: int) -> list[tuple[bytes, list[tuple[bytes, int, int, int]]]]:
    """(bytes, entries) of every spool a fetch of `ids` hands over."""
    got: list[tuple[bytes, list[tuple[bytes, int, int, int]]]] = []

    def keep(path: str, entries: bytes) -> tuple[int, int]:
        got.append((Path(path).read_bytes(),
                    [struct.unpack_from("<16sQII", entries, k)
                     for k in range(0, len(entries), _mover.ENTRY_LEN)]))
        os.unlink(path)
        return 0, 0

    spool.mkdir()
    res = _mover.transfer(_mover.OP_FETCH, "127.0.0.1", port, SECRET, [b"".join(ids)],
                          spool=keep, spool_dir=str(spool), spool_limit=limit, direct=direct)
    assert res[0][0] == _mover.OK, res
    assert os.listdir(spool) == []
    return got


def test_direct_spools_hold_the_same_bytes_as_buffered(tmp_path: Path) -> None:
    """Spools crossing several aligned buffers, cut at any length: identical files."""
    big = Client.init(tmp_path / "big", min_size=16384, avg_size=65536, max_size=262144,
                      pack_size=4 << 20)
    try:
        data = tmp_path / "bigdata"
        data.mkdir()
        rnd = random.Random(11)
        for i in range(3):
            (data / f"b{i}").write_bytes(rnd.randbytes(5_000_000 + 4321 * i))
        big.put(str(data), "/big")
        ids = list(dict.fromkeys(mover.tree_chunks(big, "/big")))
        with mover.MoverServer(big, SECRET) as srv:
            # one spool of ~15 MB (4 buffers and a tail), then spools of ~6 MB
            for limit in (64 << 20, 6 << 20):
                direct = _spools(srv.port, ids, tmp_path / f"d{limit}", True, limit)
                buffered = _spools(srv.port, ids, tmp_path / f"b{limit}", False, limit)
                assert direct == buffered
                for blob, entries in direct:
                    _cid, off, length, _flags = entries[-1]
                    assert len(blob) == off + length  # padding cut off
                    assert blob[: _mover.SPOOL_RESERVE] == bytes(_mover.SPOOL_RESERVE)
                    assert all(e[3] == _mover.ENTRY_VERIFIED for e in entries)
                assert sum(len(e) for _, e in direct) == len(ids)
                assert sum(len(b) for b, _ in direct) > 15_000_000
    finally:
        big.close()


def test_direct_spool_that_cannot_be_created_fails_the_stream(
        src: Client, server: mover.MoverServer, tmp_path: Path) -> None:
    ids = mover.tree_chunks(src, "/data")[:20]
    gone = tmp_path / "no-such-dir"
    res = _mover.transfer(_mover.OP_FETCH, "127.0.0.1", server.port, SECRET,
                          [b"".join(ids)], spool=lambda p, e: (0, 0),
                          spool_dir=str(gone), direct=True)
    assert res[0][0] == _mover.ERR_IO and "O_DIRECT" in res[0][1] and str(gone) in res[0][1]


def test_receiver_chooses_direct_spools_where_possible(dst: Client) -> None:
    assert mover.Receiver(dst.store).direct  # tmp_path: a disk file system here
    saved = mover.TUNING.direct
    mover.TUNING.direct = False
    try:
        assert not mover.Receiver(dst.store).direct
    finally:
        mover.TUNING.direct = saved


@pytest.mark.parametrize("sendfile", [True, False, None])
def test_server_sends_with_each_mode(src: Client, dst: Client, sendfile: bool | None) -> None:
    """sendfile, pread + send, and the default (pread + send to this host's clients)."""
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET, sendfile=sendfile) as srv:
        stats = mover.fetch(dst, srv.address, ids, SECRET, streams=2)
    assert stats.committed == len(set(ids)) and not stats.missing
    _assert_clean(dst)


def test_sendfile_mode_is_checked(server: mover.MoverServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sendfile"):
        _mover.transfer(_mover.OP_FETCH, "127.0.0.1", server.port, SECRET, [bytes(16)],
                        spool=lambda p, e: (0, 0), spool_dir=str(tmp_path), sendfile=3)


_FSIZE_CHILD = """
import os, resource, signal, struct, sys
from gfs import _mover
from gfs.codec import decode_blob
port, spool, ids, direct = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
handed = []

def keep(path, entries):
    data = open(path, "rb").read()
    for k in range(0, len(entries), _mover.ENTRY_LEN):
        cid, off, length, _ = struct.unpack_from("<16sQII", entries, k)
        decode_blob(data[off : off + length], expect_id=cid)  # every entry handed over is whole
        handed.append(cid)
    os.unlink(path)
    return 0, 0

res = _mover.transfer(_mover.OP_FETCH, "127.0.0.1", port, bytes(range(32)), [ids],
                      spool=keep, spool_dir=spool, spool_limit=64 << 20, direct=direct == "1")
print(res[0][0], len(handed), res[0][1])
"""


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_spool_write_error_fails_the_stream_and_leaves_nothing(
        src: Client, server: mover.MoverServer, tmp_path: Path, direct: bool) -> None:
    """A spool write that fails (here: past RLIMIT_FSIZE) ends the stream with ERR_IO
    naming the spool and leaves no spool file. Buffered, the blobs completed before
    the failed write are handed over (whole, verified here); with O_DIRECT, where a
    failed write may hold earlier blobs, the spool is dropped."""
    ids = list(dict.fromkeys(mover.tree_chunks(src, "/data")))
    spool = tmp_path / "spool"
    spool.mkdir()
    out = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(server.port), str(spool),
                          b"".join(ids).hex(), "1" if direct else "0"],
                         capture_output=True, text=True, timeout=60, check=True)
    status, handed, message = out.stdout.split(" ", 2)
    assert int(status) == _mover.ERR_IO and "write spool" in message, out.stdout
    assert int(handed) == 0 if direct else 0 < int(handed) < len(ids)
    assert os.listdir(spool) == []
