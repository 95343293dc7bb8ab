"""The mover's encrypted streams, from the attacker's side (issue 13).

A relay on loopback sits between the two ends of a real transfer and flips,
replays, drops, reorders, injects or cuts records; every one must fail the
transfer with a clear error and leave nothing it carried committed. The
relay's capture must hold no plaintext of the chunks; the C record layer is
checked against the pure-Python reference (gfs.mover_reference).
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs import _mover, mover
from gfs import mover_reference as ref
from gfs.client import Client
from tests.mover_peer import (
    OP_FETCH,
    RawClient,
    Relay,
    Tamper,
    assert_clean,
    frame,
    read_plain_frame,
    small_store,
    store_with,
)

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(100, 132))
MARKER = b"hutong-mover-marker:" + bytes(range(65, 65 + 44))  # 64 bytes
assert len(MARKER) == 64
CIPHERS = [ref.CIPHER_AES128GCM, ref.CIPHER_AES256GCM, ref.CIPHER_CHACHA20]
BY_NAME = {_mover.cipher_name(c): c for c in CIPHERS}
DEFAULT_IS_AES = _mover.cipher_name(_mover.CIPHER_AUTO) == "aes-128-gcm"


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Client]:
    """About 1.5 MiB of random bytes (stored raw) with MARKER every 16 KiB."""
    rnd = random.Random(13)
    files = {f"f{i}": b"".join(rnd.randbytes(16384 - 64) + MARKER for _ in range(32))
             for i in range(3)}
    with store_with(tmp_path, "src", files) as c:
        yield c


@pytest.fixture
def dst(tmp_path: Path) -> Iterator[Client]:
    with store_with(tmp_path, "dst") as c:
        yield c


def _held(c: Client, ids: list[bytes]) -> list[bytes]:
    with c.engine.read() as txn:
        return [cid for cid in ids if txn.get_chunk(cid) is not None]


_clean = assert_clean


# -- the C record layer against the reference -----------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_keys_match_the_reference_and_differ_per_direction_and_stream(cipher: int) -> None:
    cn, sn, dh = os.urandom(32), os.urandom(32), os.urandom(32)
    keys = _mover.record_keys(SECRET, dh, cn, sn, OP_FETCH, cipher)
    c2s, s2c = ref.record_keys(SECRET, dh, cn, sn, OP_FETCH, cipher)
    assert keys == (c2s.key, c2s.iv, s2c.key, s2c.iv)
    other = _mover.record_keys(SECRET, dh, cn, os.urandom(32), OP_FETCH, cipher)  # stream
    send = _mover.record_keys(SECRET, dh, cn, sn, 2, cipher)
    fresh = _mover.record_keys(SECRET, os.urandom(32), cn, sn, OP_FETCH, cipher)  # exchange
    assert len({k for ks in (keys, other, send, fresh) for k in ks[::2]}) == 8
    assert {len(k) for k in keys[::2]} == {ref.KEY_LEN[cipher]}


def test_no_two_ciphers_share_key_material() -> None:
    """The same handshake under each cipher: no key, key prefix or IV in common."""
    cn, sn, dh = os.urandom(32), os.urandom(32), os.urandom(32)
    derived = [_mover.record_keys(SECRET, dh, cn, sn, OP_FETCH, c) for c in CIPHERS]
    assert len({k[:16] for ks in derived for k in ks[::2]}) == 2 * len(CIPHERS)
    assert len({iv for ks in derived for iv in ks[1::2]}) == 2 * len(CIPHERS)
    # Keys of the wrong length for a cipher are refused, not padded or cut.
    key, iv = os.urandom(32), os.urandom(12)
    with pytest.raises(ValueError, match="key of 16 bytes"):
        _mover.check_records(ref.CIPHER_AES128GCM, key, iv, b"")
    with pytest.raises(ValueError, match="key of 32 bytes"):
        _mover.seal_record(ref.CIPHER_AES256GCM, key[:16], iv, 0, b"x")


def test_record_layer_rate_is_measured_per_cipher() -> None:
    """`cipher_rate` seals real records (the bench's cipher ceiling); none has no rate."""
    for cipher in CIPHERS:
        assert _mover.cipher_rate(cipher, 0.02) > 50e6
    with pytest.raises(ValueError, match="cipher_rate needs a cipher"):
        _mover.cipher_rate(ref.CIPHER_NONE, 0.1)


def test_auto_is_aes_128_gcm_where_the_cpu_has_aes_instructions() -> None:
    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(),
                          re.M).group(1).split())  # type: ignore[union-attr]
    want = "aes-128-gcm" if {"aes", "pclmulqdq"} <= flags else "chacha20-poly1305"
    assert _mover.cipher_name(_mover.CIPHER_AUTO) == want
    assert mover.CIPHERS["aes-128-gcm"] == ref.CIPHER_AES128GCM


@pytest.mark.parametrize("cipher", CIPHERS)
def test_c_opens_reference_records_and_refuses_every_alteration(cipher: int) -> None:
    keys = ref.DirKeys(os.urandom(ref.KEY_LEN[cipher]), os.urandom(12))
    seal = ref.Direction(cipher, keys)
    recs = [seal.seal(os.urandom(n)) for n in (1, 1000, ref.RECORD_MAX, 77)]
    good = b"".join(recs)
    assert _mover.check_records(cipher, keys.key, keys.iv, good) == (0, 4, "")

    def check(buf: bytes) -> tuple[int, int, str]:
        return _mover.check_records(cipher, keys.key, keys.iv, buf)

    flipped = bytearray(good)
    flipped[len(recs[0]) + 16 + 500] ^= 1
    assert check(bytes(flipped))[:2] == (_mover.ERR_RECORD, 1)
    assert "failed authentication" in check(bytes(flipped))[2]
    tag = bytearray(good)
    tag[len(recs[0]) - 1] ^= 0x80  # the first record's tag
    assert check(bytes(tag))[:2] == (_mover.ERR_RECORD, 0)
    for name, buf, opened in (("replayed", recs[0] + recs[0] + recs[1], 1),
                              ("dropped", recs[0] + recs[2], 1),
                              ("reordered", recs[1] + recs[0], 0)):
        status, n, msg = check(buf)
        assert (status, n) == (_mover.ERR_RECORD, opened), name
        assert "dropped, replayed or reordered" in msg
    # The sequence number rewritten to the expected one: the tag still fails.
    moved = bytearray(recs[1])
    moved[8:16] = struct.pack("<Q", 0)
    assert check(bytes(moved))[0] == _mover.ERR_RECORD
    assert check(os.urandom(100))[0] == _mover.ERR_RECORD
    assert check(good[:-1])[:2] == (_mover.ERR_CLOSED, 3)
    other = ref.Direction(cipher, ref.DirKeys(os.urandom(len(keys.key)), keys.iv)).seal(b"x" * 64)
    assert check(other)[0] == _mover.ERR_RECORD  # sealed with another key


@pytest.mark.parametrize("cipher", CIPHERS)
def test_c_seals_what_the_reference_opens_and_stops_at_the_record_limit(cipher: int) -> None:
    keys = ref.DirKeys(os.urandom(ref.KEY_LEN[cipher]), os.urandom(12))
    opener = ref.Direction(cipher, keys)
    for seq, size in ((0, 1), (1, 4096), (2, ref.RECORD_MAX)):
        text = os.urandom(size)
        status, rec, msg = _mover.seal_record(cipher, keys.key, keys.iv, seq, text)
        assert (status, msg) == (0, "") and opener.open(rec) == text
    limit = 1 << 20  # records one key may seal (docs/format.md, "Records")
    assert _mover.seal_record(cipher, keys.key, keys.iv, limit - 1, b"x")[0] == 0
    status, rec, msg = _mover.seal_record(cipher, keys.key, keys.iv, limit, b"x")
    assert status == _mover.ERR_REKEY and rec == b"" and "new stream" in msg
    assert _mover.ERR_REKEY in mover._RETRYABLE  # the transfer resumes on new streams
    assert _mover.seal_record(cipher, keys.key, keys.iv, 0, b"")[0] == _mover.ERR_ARG


def test_record_parser_survives_random_mutations() -> None:
    """Bounded fuzzing of the record opener: a status for any input, no crash."""
    rnd = random.Random(99)
    keys = ref.DirKeys(rnd.randbytes(32), rnd.randbytes(12))
    seal = ref.Direction(ref.CIPHER_AES256GCM, keys)
    seed = b"".join(seal.seal(rnd.randbytes(rnd.randrange(1, 3000))) for _ in range(4))
    for _ in range(3000):
        buf = bytearray(seed)
        for _ in range(rnd.randrange(1, 4)):
            pos = rnd.randrange(len(buf))
            op = rnd.randrange(3)
            if op == 0:
                buf[pos] ^= 1 << rnd.randrange(8)
            elif op == 1:
                del buf[pos:]
            else:
                buf[pos:pos] = rnd.randbytes(rnd.randrange(1, 40))
            if not buf:
                break
        status, n, msg = _mover.check_records(1, keys.key, keys.iv, bytes(buf))
        assert status in (0, _mover.ERR_RECORD, _mover.ERR_CLOSED) and 0 <= n <= 4
        assert (status == 0) == (msg == "")


# -- what crosses the wire ---------------------------------------------------------------


def _handshake_of(relay: Relay, n: int = 0) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(cn, client public key, sn, server public key, server records) of connection n."""
    c2s, s2c = bytes(relay.captures[n, "c2s"]), bytes(relay.captures[n, "s2c"])
    hello = c2s[12:80]
    challenge = s2c[12:12 + struct.unpack_from("<I", s2c, 8)[0]]
    after = 12 + len(challenge) + 12  # CHALLENGE, then READY (empty)
    return hello[:32], hello[36:], challenge[:32], challenge[64:], s2c[after:]


def test_wire_holds_no_chunk_plaintext(src: Client, dst: Client, tmp_path: Path) -> None:
    ids = mover.tree_chunks(src, "/data")
    # Plaintext streams (allowed explicitly): the marker is on the wire...
    with mover.MoverServer(src, SECRET, allow_plaintext=True) as srv:
        relay = Relay(srv.address)
        try:
            plain = mover.fetch(dst, relay.address, ids, SECRET, streams=1, cipher="none")
        finally:
            relay.close()
        assert plain.cipher == "none" and MARKER in relay.capture()
    with small_store(tmp_path / "dst2") as dst2, mover.MoverServer(src, SECRET) as srv:
        relay = Relay(srv.address)
        try:
            stats = mover.fetch(dst2, relay.address, ids, SECRET, streams=1)
        finally:
            relay.close()
        assert stats.committed == len(ids) and stats.cipher == _mover.cipher_name(-1)
        wire = relay.capture()
        # ...and encrypted it is not, anywhere in either direction.
        assert len(wire) > stats.bytes and MARKER not in wire
        assert MARKER[:16] not in wire
        # The server's bytes after the handshake are records, numbered 0, 1, 2, ...
        cn, cpub, sn, spub, records = _handshake_of(relay)
        recs, rest = ref.split_records(records)
        assert rest == b"" and len(recs) > 4
        assert [ref.RECORD_HEADER.unpack_from(r)[2] for r in recs] == list(range(len(recs)))
        # Forward secrecy: the session secret alone does not open them (the keys
        # also come from the ephemeral X25519 exchange, whose private halves are gone).
        cipher = BY_NAME[stats.cipher]
        for dh in (bytes(32), cpub, spub):
            _, s2c = ref.record_keys(SECRET, dh, cn, sn, OP_FETCH, cipher)
            with pytest.raises(ref.RecordError):
                ref.Direction(cipher, s2c).open(recs[0])


def test_each_stream_has_fresh_nonces_and_ephemeral_keys(src: Client, dst: Client) -> None:
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET) as srv:
        relay = Relay(srv.address)
        try:
            mover.fetch(dst, relay.address, ids, SECRET, streams=3)
        finally:
            relay.close()
    streams = {k[0] for k in relay.captures}
    assert len(streams) == 3
    values = [v for n in streams for v in _handshake_of(relay, n)[:4]]
    assert len(set(values)) == 12 and bytes(32) not in values


# -- an attacker on the path ---------------------------------------------------------------

ATTACKS = ["flip", "replay", "drop", "swap", "inject", "forge", "cut"]


@pytest.mark.parametrize("action", ATTACKS)
def test_altered_fetch_fails_and_commits_nothing_it_carried(
        src: Client, dst: Client, action: str) -> None:
    ids = mover.tree_chunks(src, "/data")
    # Replay repeats record 0 after itself: record 0 is genuine, so attack from 1.
    index = 1 if action == "replay" else 0
    with mover.MoverServer(src, SECRET, timeout=5) as srv:
        relay = Relay(srv.address, Tamper("s2c", index, action))  # type: ignore[arg-type]
        try:
            with pytest.raises(mover.MoverError) as info:
                mover.fetch(dst, relay.address, ids, SECRET, streams=1, retries=0,
                            cipher="aes-128-gcm")
        finally:
            relay.close()
    assert relay.hits == 1
    if action == "cut":
        assert "truncated in transit" in str(info.value)
    else:
        assert isinstance(info.value, mover.MoverRecordError), info.value
        assert info.value.status == _mover.ERR_RECORD
        assert "altered in transit" in str(info.value)
    held = _held(dst, ids)
    if index == 0:
        assert held == []  # the first record from the server was the one attacked
    else:
        assert len(held) < len(ids)
    _clean(dst)
    # The same transfer without the attacker completes.
    with mover.MoverServer(src, SECRET) as srv:
        stats = mover.fetch(dst, srv.address, ids, SECRET)
    assert stats.committed == len(ids) - len(held)
    _clean(dst)


@pytest.mark.parametrize("action", ATTACKS)
def test_altered_send_fails_and_the_server_commits_nothing(
        src: Client, dst: Client, action: str) -> None:
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(dst, SECRET, timeout=5) as srv:
        # Record 0 carries the OFFER; records 1.. the DATA frames of the batch.
        relay = Relay(srv.address, Tamper("c2s", 2, action))  # type: ignore[arg-type]
        try:
            with pytest.raises(mover.MoverError) as info:
                mover.send(src, relay.address, ids, SECRET, streams=1, retries=0,
                           cipher="aes-256-gcm")
        finally:
            relay.close()
        if action != "cut":
            # The server refuses the bad record and closes; the sender learns why, or
            # only that the connection was reset when it was still writing (a race).
            assert isinstance(info.value, mover.MoverRecordError) \
                or any(w in str(info.value) for w in ("connection reset", "connection closed")), \
                info.value
            assert srv.counters()["auth_failures"] == 1  # the server saw the bad record
        assert relay.hits == 1
    assert _held(dst, ids) == []
    _clean(dst)


# -- peers without the secret ------------------------------------------------------------


def test_peers_without_the_secret_get_nothing(src: Client, dst: Client) -> None:
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET, timeout=2) as srv:
        with pytest.raises(mover.MoverAuthError, match="secret"):
            mover.fetch(dst, srv.address, ids, os.urandom(32), retries=0)
        # A raw client that cannot prove the secret: a guessed proof is refused.
        peer = RawClient(srv.port, SECRET, auth=os.urandom(32))
        assert peer.last == 12 and b"bad secret" in peer.error
        # One that skips the proof and sends a record instead: refused, unread.
        attacker = RawClient(srv.port, SECRET)  # READY: a genuine session...
        assert attacker.last == 4
        # ...taken over by someone who seals with keys of another secret.
        attacker.tx = ref.Direction(ref.CIPHER_AES256GCM,
                                    ref.DirKeys(os.urandom(32), os.urandom(12)))
        attacker.send(frame(5, struct.pack("<I", 1) + ids[0]))
        assert "failed authentication" in attacker.expect_error(_mover.ERR_RECORD)
        # Frames in the clear after the handshake: not a record.
        bare = RawClient(srv.port, SECRET)
        bare.tx = None
        bare.send(frame(5, struct.pack("<I", 1) + ids[0]))
        assert "bad magic" in bare.expect_error(_mover.ERR_RECORD)
        assert srv.counters()["auth_failures"] == 3
    assert _held(dst, ids) == []


def test_low_order_exchange_key_is_refused(src: Client) -> None:
    """A peer with the secret that sends a low-order X25519 key (shared secret zero)."""
    with mover.MoverServer(src, SECRET) as srv:
        peer = RawClient(srv.port, SECRET, pub=bytes(32))
        assert peer.last == 4  # READY: the proof binds the key, then the exchange fails
        ftype, payload = read_plain_frame(peer.sock)
        assert ftype == 12 and struct.unpack_from("<I", payload)[0] == _mover.ERR_AUTH
        assert b"X25519" in payload
        assert srv.counters()["auth_failures"] == 1
        peer.close()


def test_plaintext_needs_both_ends_to_ask(src: Client, dst: Client) -> None:
    ids = mover.tree_chunks(src, "/data")
    with mover.MoverServer(src, SECRET) as srv:
        with pytest.raises(mover.MoverAuthError, match="requires encrypted streams"):
            mover.fetch(dst, srv.address, ids, SECRET, cipher="none", retries=0)
        raw = RawClient(srv.port, SECRET, cipher=ref.CIPHER_NONE)
        assert raw.last == 12
        stats = mover.fetch(dst, srv.address, ids[:20], SECRET, cipher="chacha20-poly1305")
        assert stats.cipher == "chacha20-poly1305" and stats.committed == 20
    with pytest.raises(ValueError, match="unknown"):
        mover.fetch(dst, ("127.0.0.1", 1), ids, SECRET, cipher="rot13")
    with pytest.raises(ValueError, match="cipher 7"):
        _mover.transfer(1, "127.0.0.1", 1, SECRET, [ids[0]], spool=lambda p, e: (0, 0),
                        cipher=7)
    # A HELLO naming an unknown cipher is a protocol error.
    with mover.MoverServer(src, SECRET) as srv:
        peer = RawClient(srv.port, SECRET, cipher=9)
        assert peer.last == 12 and b"unknown cipher 9" in peer.error
    _clean(dst)


def test_version_1_peers_are_refused(src: Client) -> None:
    with mover.MoverServer(src, SECRET) as srv:
        sock = socket.create_connection(srv.address, timeout=5)
        hello = b"HTMV" + struct.pack("<BBHI", 1, 1, 0, 36) + os.urandom(32) + b"\x01\0\0\0"
        sock.sendall(hello)
        ftype, payload = read_plain_frame(sock)
        assert ftype == 12 and b"unsupported protocol version 1" in payload
        sock.close()


@pytest.fixture
def big(tmp_path: Path) -> Iterator[Client]:
    """Blobs of 64 KiB to 256 KiB (the default chunk sizes), stored raw."""
    data = tmp_path / "big"
    data.mkdir()
    (data / "f").write_bytes(random.Random(5).randbytes(6 << 20))
    with Client.init(tmp_path / "bigsrc", pack_size=1 << 20) as c:
        c.put(str(data), "/data")
        yield c


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_large_blobs_start_their_own_records(big: Client, dst: Client, direct: bool,
                                             tmp_path: Path) -> None:
    """A blob of >= 32 KiB is sealed in records of its own, which a receiver opens
    straight into its spool buffers; an altered one is refused there too."""
    ids = mover.tree_chunks(big, "/data")
    saved = mover.TUNING.direct
    mover.TUNING.direct = direct
    try:
        with mover.MoverServer(big, SECRET) as srv:
            relay = Relay(srv.address)
            try:
                stats = mover.fetch(dst, relay.address, ids, SECRET, streams=1)
            finally:
                relay.close()
            assert stats.committed == len(ids)
            # The records a server sends for them, read by a raw client.
            peer = RawClient(srv.port, SECRET)
            peer.send(frame(5, struct.pack("<I", len(ids)) + b"".join(ids)))
            plain = [peer.read_record()]
            while plain[-1][-20:-14] != b"HTMV\x02\x08" and len(plain) < 4 * len(ids) + 8:
                plain.append(peer.read_record())  # until the record that ends with END
            peer.close()
            assert sum(p[:4] == b"HTCB" for p in plain) >= len(ids) // 2  # a blob's header
            assert sum(len(p) for p in plain if p[:4] == b"HTCB") > stats.bytes // 2
            # ...and ends them: the next frame's header is in a record of its own,
            # so every byte of a large blob is opened straight into the spool.
            ends, at = set(), 0
            for p in plain:
                at += len(p)
                ends.add(at)
            stream, pos, large = b"".join(plain), 0, 0
            while pos < len(stream):
                kind, length = stream[pos + 5], struct.unpack_from("<I", stream, pos + 8)[0]
                if kind == 6 and length - 16 >= 32768:  # DATA: id, then the blob
                    assert {pos + 12 + 16, pos + 12 + length} <= ends
                    large += 1
                pos += 12 + length
            assert large >= len(ids) // 2
            with small_store(tmp_path / "again") as again:
                # Record 3 is inside the blobs: flipped, it fails the fetch there.
                relay = Relay(srv.address, Tamper("s2c", 3, "flip"))
                try:
                    with pytest.raises(mover.MoverRecordError):
                        mover.fetch(again, relay.address, ids, SECRET, streams=1, retries=0)
                finally:
                    relay.close()
                held = _held(again, ids)
                assert len(held) < len(ids)
                _clean(again)
        # Pushed: the server opens them straight into its spool buffers too.
        with small_store(tmp_path / "pushed") as pushed, \
                mover.MoverServer(pushed, SECRET) as srv:
            sent = mover.send(big, srv.address, ids, SECRET, streams=2)
            assert sent.committed == len(ids) and sent.rejected == 0
            _clean(pushed)
    finally:
        mover.TUNING.direct = saved
    _clean(dst)


def _fake_server(code: int) -> tuple[socket.socket, threading.Thread]:
    """A peer with the secret that answers the first request with a sealed ERROR `code`."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            _, hello = read_plain_frame(conn)
            cn, op, cipher, cpub = hello[:32], hello[32], hello[33], hello[36:]
            sn = os.urandom(32)
            key, spub = ref.ephemeral()
            conn.sendall(frame(2, sn + ref.proof(SECRET, "server", cn, sn, op, cipher, cpub,
                                                 spub) + spub))
            read_plain_frame(conn)  # AUTH (not checked: this peer is ours)
            conn.sendall(frame(4))
            _, s2c = ref.record_keys(SECRET, ref.shared(key, cpub), cn, sn, op, cipher)
            conn.sendall(ref.Direction(cipher, s2c).seal(
                frame(12, struct.pack("<I", code) + b"from the fake peer")))
            conn.recv(1 << 16)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("code, status", [
    (_mover.ERR_REKEY, _mover.ERR_REKEY), (_mover.ERR_RECORD, _mover.ERR_RECORD),
    (_mover.ERR_AUTH, _mover.ERR_AUTH), (_mover.ERR_IO, _mover.ERR_PEER)])
def test_peer_errors_that_decide_the_retry_keep_their_code(code: int, status: int) -> None:
    listener, thread = _fake_server(code)
    try:
        [result] = _mover.transfer(_mover.OP_FETCH, "127.0.0.1", listener.getsockname()[1],
                                   SECRET, [os.urandom(16)], spool=lambda p, e: (0, 0),
                                   timeout=5)
    finally:
        listener.close()
        thread.join(10)
    assert result[0] == status and "from the fake peer" in result[1]


def test_streams_out_of_key_resume_without_spending_a_retry(
        dst: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [os.urandom(16) for _ in range(4)]
    answers = [(_mover.ERR_REKEY, "key used up", 10, 2, 0, 2, 0, "aes-256-gcm"),
               (_mover.OK, "", 10, 4, 0, 4, 0, "aes-256-gcm")]
    calls: list[int] = []

    def transfer(*args: object, **kw: object) -> list[tuple[object, ...]]:
        calls.append(1)
        return [answers[len(calls) - 1]]

    monkeypatch.setattr(mover._mover, "transfer", transfer)
    stats = mover.fetch(dst, ("127.0.0.1", 1), ids, SECRET, streams=1, retries=0)
    assert len(calls) == 2 and stats.retries == 1 and stats.errors == ["key used up"]
    # Without progress, the same status spends attempts like any other failure.
    answers[:] = [(_mover.ERR_REKEY, "key used up", 0, 0, 0, 0, 0, "aes-256-gcm")]
    calls.clear()
    with pytest.raises(mover.MoverError, match="key used up"):
        mover.fetch(dst, ("127.0.0.1", 1), ids, SECRET, streams=1, retries=0)


def test_cli_server_takes_plaintext_only_when_told(src: Client, dst: Client,
                                                   tmp_path: Path) -> None:
    """`hutong mover serve`: encrypted streams always, plaintext ones with --allow-plaintext."""
    import subprocess
    import sys

    ids = mover.tree_chunks(src, "/data")
    src.close()  # the server process opens the store
    env = {**os.environ, "HUTONG_MOVER_SECRET": SECRET.hex()}
    for flags, plain_ok in (([], False), (["--allow-plaintext"], True)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "gfs.cli", "mover", "serve", "--state",
             str(tmp_path / "src"), "--port", "0", "--quiet", *flags],
            env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "hutong mover: serving STATE on HOST:PORT"
            port = int(line.rsplit(":", 1)[1])
            if plain_ok:
                stats = mover.fetch(dst, ("127.0.0.1", port), ids, SECRET, cipher="none")
                assert stats.cipher == "none" and stats.committed == len(ids) - 5
            else:
                with pytest.raises(mover.MoverAuthError, match="requires encrypted"):
                    mover.fetch(dst, ("127.0.0.1", port), ids, SECRET, cipher="none",
                                retries=0)
                assert mover.fetch(dst, ("127.0.0.1", port), ids[:5], SECRET).committed == 5
        finally:
            proc.terminate()
            proc.wait(10)
    _clean(dst)


def test_a_build_without_intel_ipsec_mb_seals_aes_gcm_with_openssl(tmp_path: Path) -> None:
    """setup.py drops intel-ipsec-mb where it is not packaged (non-x86-64): that
    build of the record layer must still seal and open every cipher, on OpenSSL."""
    import importlib.util
    import shutil
    import subprocess
    import sysconfig

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip("no C compiler")
    root = Path(__file__).resolve().parent.parent / "native"
    so = tmp_path / ("_mover" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-std=gnu11", "-pthread",
                    f"-I{root}", f"-I{sysconfig.get_paths()['include']}",
                    *(str(root / f) for f in ("mover_module.c", "mover.c", "mover_record.c")),
                    "-lcrypto", "-o", str(so)], check=True, capture_output=True, timeout=120)
    assert b"IPSec_MB" not in subprocess.run(["ldd", str(so)], capture_output=True,
                                             check=True).stdout
    spec = importlib.util.spec_from_file_location("gfs._mover", so)
    assert spec is not None and spec.loader is not None
    plain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain)
    for cipher in CIPHERS:
        assert plain.cipher_backend(cipher).startswith("OpenSSL")
        keys = ref.DirKeys(os.urandom(ref.KEY_LEN[cipher]), os.urandom(12))
        status, rec, msg = plain.seal_record(cipher, keys.key, keys.iv, 0, b"y" * 5000)
        assert (status, msg) == (0, "") and ref.Direction(cipher, keys).open(rec) == b"y" * 5000
        good = ref.Direction(cipher, keys).seal(b"z" * 300)
        assert plain.check_records(cipher, keys.key, keys.iv, good) == (0, 1, "")
        bad = bytearray(good)
        bad[20] ^= 1
        assert plain.check_records(cipher, keys.key, keys.iv, bytes(bad))[0] == _mover.ERR_RECORD
    # The in-tree build names what it uses: intel-ipsec-mb wherever it was linked.
    linked = b"IPSec_MB" in subprocess.run(["ldd", _mover.__file__], capture_output=True,
                                           check=True).stdout
    aes = _mover.cipher_backend(ref.CIPHER_AES128GCM)
    assert (aes == "intel-ipsec-mb") == (linked and DEFAULT_IS_AES)
    assert _mover.cipher_backend(ref.CIPHER_CHACHA20).startswith("OpenSSL")
