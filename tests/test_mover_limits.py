"""The mover server against idle and slow peers (issue 13, V9): a bounded number of
connections and threads, a deadline to authenticate, and a floor on the rate a frame
arrives at once begun. Each attack is one the old server fell to: 4,000 idle
connections made 4,005 threads, and a peer sending 1 byte per 20 s held a stream."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs import _mover, mover
from gfs.client import Client
from tests.mover_peer import RawClient, frame, store_with

pytestmark = pytest.mark.timeout(120)

SECRET = bytes(range(7, 39))


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Client]:
    with store_with(tmp_path, "src", {f"f{i}": os.urandom(200_000) for i in range(4)}) as c:
        yield c


@pytest.fixture
def dst(tmp_path: Path) -> Iterator[Client]:
    with store_with(tmp_path, "dst") as c:
        yield c


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _idle(port: int, n: int, source: str) -> list[socket.socket]:
    """`n` connections from `source` that never say a word."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    """Whether the server closes `s` within `within` seconds (we send nothing; what
    it sends first, such as an ERROR frame, is read and dropped)."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            if s.recv(4096) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def test_idle_connections_are_bounded_and_a_real_transfer_still_runs(
        src: Client, dst: Client) -> None:
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET, max_conns=8, handshake_timeout=60) as srv:
        before = _threads()
        idle = _idle(srv.port, 200, "127.0.0.3")
        try:
            # the server sheds the oldest silent connections as new ones come
            assert all(_closed_by_peer(s, 10) for s in idle[:150])
            deadline = time.monotonic() + 10
            while _threads() > before + 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _threads() <= before + 8
            stats = mover.fetch(dst, srv.address, ids, SECRET, streams=2, retries=0)
            assert stats.chunks == len(ids)
            assert srv.counters()["dropped"] >= 190
        finally:
            for s in idle:
                s.close()
    with dst.engine.read() as txn:
        assert all(txn.get_chunk(cid) is not None for cid in ids)


def test_a_flood_from_one_address_does_not_starve_another(src: Client, dst: Client) -> None:
    """While one address opens silent connections as fast as it can, transfers from
    another still authenticate: the flood only displaces its own connections."""
    ids = mover.tree_chunks(src, "/data")
    stop = threading.Event()
    opened = [0]

    def flood(port: int) -> None:
        held: list[socket.socket] = []
        try:
            while not stop.is_set() and opened[0] < 20_000:
                held += _idle(port, 1, "127.0.0.3")
                opened[0] += 1
                if len(held) > 64:
                    held.pop(0).close()
        finally:
            for s in held:
                s.close()

    with mover.MoverServer(src, SECRET, max_conns=16, handshake_timeout=60) as srv:
        t = threading.Thread(target=flood, args=(srv.port,), daemon=True)
        t.start()
        try:
            deadline = time.monotonic() + 30
            while opened[0] < 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            for cid in ids:  # one fresh connection per chunk
                stats = mover.fetch(dst, srv.address, [cid], SECRET, streams=1, retries=0)
                assert stats.chunks == 1
        finally:
            stop.set()
            t.join(30)
        # the flood reached the cap (the server dropped some of it; the flood also
        # closes its own oldest connections, so not every one it opened was dropped)
        assert opened[0] >= 200 and srv.counters()["dropped"] > 0
    with dst.engine.read() as txn:
        assert all(txn.get_chunk(cid) is not None for cid in ids)


def test_a_peer_that_does_not_authenticate_in_time_is_dropped(src: Client) -> None:
    """A silent connection is cut at the handshake deadline (1 s here), long before
    the socket timeout (30 s) would end it; so is one that stops after its HELLO."""
    with mover.MoverServer(src, SECRET, timeout=30, handshake_timeout=1.0) as srv:
        silent = socket.create_connection(("127.0.0.1", srv.port))
        assert _closed_by_peer(silent, 10)
        halfway = socket.create_connection(("127.0.0.1", srv.port))
        halfway.sendall(frame(1, os.urandom(32) + bytes([1, 1, 0, 0]) + os.urandom(32)))
        halfway.settimeout(10)
        assert halfway.recv(4096)  # the CHALLENGE (or an error): then no AUTH from us
        assert _closed_by_peer(halfway, 10)
        silent.close()
        halfway.close()
        assert srv.counters()["dropped"] == 2


def test_a_frame_trickled_after_the_handshake_is_cut(src: Client) -> None:
    """An authenticated peer that trickles a record a byte per 0.2 s (each byte inside
    the 1 s socket timeout) is cut at the frame's deadline, not held for as long as
    it trickles."""
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET, timeout=1.0, min_rate=1 << 20) as srv:
        peer = RawClient(srv.port, SECRET)
        assert peer.last == 4 and peer.tx is not None
        sealed = peer.tx.seal(frame(5, struct.pack("<I", 1) + ids[0]))
        peer.sock.settimeout(0.2)
        cut = False
        for b in sealed[:-1]:  # never the whole record: any answer is the cut
            try:
                peer.sock.sendall(bytes([b]))
                peer.sock.recv(4096)
                cut = True
                break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
        peer.close()
        assert cut, "the server kept a peer trickling one frame"
        assert srv.counters()["dropped"] == 1


def test_limits_must_be_positive(src: Client) -> None:
    for bad in ({"max_conns": 0}, {"handshake_timeout": 0.0}, {"min_rate": 0}):
        with pytest.raises(ValueError, match="must be positive"):
            mover.MoverServer(src, SECRET, **bad)  # type: ignore[arg-type]
    assert _mover.DEFAULT_MAX_CONNS >= 64
