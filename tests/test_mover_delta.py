"""Delta transfer over the native mover (docs/format.md, "Delta transfer on the mover"):
N -> N+1 crosses as deltas against bases the receiver holds, in a fetch and in a send,
and from the attacker's side: a delta against a base the receiver lacks, a delta whose
content is not its id, and BASES/HAVE frames out of order or oversized are refused with
nothing committed. Real stores, real LMDB, real sockets on loopback."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import _mover, delta, delta_transfer, mover
from gfs import mover_reference as ref
from gfs.client import Client
from gfs.codec import CODEC_DELTA, chunk_id, decode_blob, parse_blob_header
from gfs.packs import pack_key
from tests.mover_peer import (
    OP_FETCH,
    OP_SEND,
    RawClient,
    RawServer,
    ServerConn,
    frame,
    relayed_fetch,
)
from tests.similar_data import mutate, text

pytestmark = pytest.mark.timeout(120)

SECRET = b"delta-transfer-session-secret-32"
OFFER, NEED, WANT, DATA, MISSING, END, ACK, BYE = 9, 10, 5, 6, 7, 8, 11, 13


def _ids(c: Client) -> set[bytes]:
    with c.engine.read() as txn:
        return {rec.id for rec in txn.iter_chunks()}


def _store(root: Path, name: str, on: bool) -> Client:
    return Client.init(root / name, pack_size=1 << 20, workers=1, delta=on)


@contextmanager
def _versions(root: Path, *, src_delta: bool = True, dst_delta: bool = True, seed: int = 7
              ) -> Iterator[tuple[Client, Client, list[bytes]]]:
    """A source holding versions N and N+1 of three files, a destination holding N; the
    chunks the destination lacks."""
    rng = random.Random(seed)
    src, dst = _store(root, "src", src_delta), _store(root, "dst", dst_delta)
    try:
        for i in range(3):
            a = text(rng, 200_000)
            src.write_bytes(f"/v{i}", a)
            dst.write_bytes(f"/v{i}", a)
            src.write_bytes(f"/w{i}", mutate(a, rng, 12))
        yield src, dst, sorted(_ids(src) - _ids(dst))
    finally:
        src.close()
        dst.close()


def _whole(src: Client, ids: list[bytes]) -> int:
    return sum(len(src.store.read_blob(c)) for c in ids)


def _check_copied(src: Client, dst: Client, ids: list[bytes]) -> None:
    """Every chunk is held by the destination, reads back verified, and fsck is clean
    (no temporary, no dangling base)."""
    assert not set(ids) - _ids(dst)
    for cid in ids:
        assert dst.store.read_chunk(cid) == src.store.read_chunk(cid)
    report = dst.fsck()
    assert report.ok, report.problems
    assert os.listdir(dst.state / "pools" / "default" / "tmp") == []
    staging = src.state / "tmp"
    assert not (staging.exists() and [p for p in os.listdir(staging)
                                      if p.startswith("mover-stage-")])


def _move(op: str, src: Client, dst: Client, ids: list[bytes]) -> mover.TransferStats:
    """Fetch `ids` into dst from a server on src, or send them from src to one on dst."""
    with mover.MoverServer(src if op == "fetch" else dst, SECRET) as srv:
        if op == "fetch":
            return mover.fetch(dst, srv.address, ids, SECRET, streams=2)
        return mover.send(src, srv.address, ids, SECRET, streams=2)


@pytest.mark.parametrize("op", ["fetch", "send"])
def test_n_plus_1_crosses_as_deltas_and_every_chunk_verifies(tmp_path: Path, op: str) -> None:
    with _versions(tmp_path) as (src, dst, missing):
        assert len(missing) >= 3
        stats = _move(op, src, dst, missing)
        whole = _whole(src, missing)
        assert stats.deltas >= len(missing) // 2 and stats.committed == len(missing)
        assert 0 < stats.bytes * 4 < whole, (stats.bytes, whole)
        _check_copied(src, dst, missing)


def test_delta_frames_travel_only_inside_records(tmp_path: Path) -> None:
    with _versions(tmp_path) as (src, dst, missing):
        with mover.MoverServer(src, SECRET) as srv:
            stats, relay = relayed_fetch(dst, srv.address, missing, SECRET, streams=1)
        assert stats.deltas and stats.committed == len(missing)
        wire = relay.capture()
        with src.engine.read() as txn:
            bases = [b for c in missing if (b := txn.get_value(delta.DELTAS, c))]
        assert bases
        for cid in missing + bases:  # no id of WANT, BASES, HAVE or DATA in the clear
            assert cid not in wire
        assert src.store.read_chunk(missing[0])[1000:1032] not in wire
        # past HELLO and AUTH (client), CHALLENGE and READY (server): records only
        for (_, direction), data in relay.captures.items():
            skip = 80 + 44 if direction == "c2s" else 108 + 12
            records, rest = ref.split_records(bytes(data[skip:]))
            assert records and rest == b""


def test_a_damaged_base_at_the_receiver_gets_its_dependents_whole(tmp_path: Path) -> None:
    with _versions(tmp_path) as (src, dst, missing):
        damaged = [r.id for r in dst.manifest("/v0").chunks]
        with dst.engine.read() as txn:  # a folded member's copy is its group's
            recs = [txn.get_chunk(r.group) if r.group else r
                    for c in damaged if (r := txn.get_chunk(c))]
            locs = list(dict.fromkeys(r.locations[0] for r in recs if r is not None))
        for loc in locs:
            path = dst.store.pool(loc.pool).local_path(pack_key(loc.pack))
            assert path is not None
            with open(path, "r+b") as f:
                f.seek(loc.offset + loc.length - 8)
                byte = f.read(1)[0]
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte ^ 0xFF]))
        stats = _move("fetch", src, dst, missing)
        # deltas against the damaged bases were refused, then those chunks came whole
        assert stats.committed == len(missing) and stats.rejected == 0
        assert 0 < stats.deltas < len(missing)
        assert stats.bytes < _whole(src, missing)
        for cid in missing:
            assert dst.store.read_chunk(cid) == src.store.read_chunk(cid)


@pytest.mark.parametrize(("op", "src_delta", "dst_delta"),
                         [("fetch", True, False), ("fetch", False, True),
                          ("send", False, True)])
def test_a_store_with_delta_off_moves_whole_chunks_as_before(
        tmp_path: Path, op: str, src_delta: bool, dst_delta: bool) -> None:
    with _versions(tmp_path, src_delta=src_delta, dst_delta=dst_delta) as (src, dst, missing):
        stats = _move(op, src, dst, missing)
        assert stats.deltas == 0
        assert stats.bytes == _whole(src, missing)
        _check_copied(src, dst, missing)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 6), st.integers(-2, 2), st.booleans(), st.binary(min_size=0, max_size=3))
def test_c_checks_bases_and_have_frames_as_the_reference(
        n: int, skew: int, self_base: bool, extra: bytes) -> None:
    """`_mover.check_frames` (the frames a server reads) accepts a BASES or HAVE payload
    exactly when the reference parses it (lengths, counts, bits past the count, a chunk
    named as its own base)."""
    rng = random.Random(n * 31 + skew)
    pairs = [(rng.randbytes(16), rng.randbytes(16)) for _ in range(n)]
    if self_base and pairs:
        pairs[-1] = (pairs[-1][0], pairs[-1][0])
    cases = []
    bases = ref.bases_payload(pairs)
    bases = struct.pack("<I", max(0, n + skew)) + bases[4:] + extra
    cases.append((ref.BASES, bases, lambda: ref.parse_bases(bases, [c for c, _ in pairs])))
    have = ref.have_payload([rng.random() < 0.5 for _ in range(n)]) + extra
    count = max(0, n + skew)
    have = struct.pack("<I", count) + have[4:]
    cases.append((ref.HAVE, have, lambda: ref.parse_have(have, count)))
    for ftype, payload, parse in cases:
        status = _mover.check_frames(frame(ftype, payload))[0]
        try:
            parse()
            ok = True
        except ref.FrameError:
            ok = False
        assert (status == _mover.OK) == ok, (ftype, payload.hex(), status)


# -- the receiver, attacked by a sender -------------------------------------------------


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Client, bytes, bytes, bytes]]:
    """A destination store holding two one-chunk files (two bases) and its server's port
    in `dst.port`; (store, base, base id, other base id)."""
    rng = random.Random(11)
    dst = _store(tmp_path, "dst", True)
    base, other = text(rng, 20_000), text(rng, 20_000)
    dst.write_bytes("/base", base)
    dst.write_bytes("/other", other)
    assert {chunk_id(base), chunk_id(other)} <= _ids(dst)
    try:
        yield dst, base, chunk_id(base), chunk_id(other)
    finally:
        dst.close()


def _batch(peer: RawClient, cid: bytes, blob: bytes, *, pairs: list[tuple[bytes, bytes]]
           ) -> tuple[int, int]:
    """One send batch of one chunk: OFFER, NEED, BASES (if pairs) and HAVE, DATA, END;
    the ACK's (committed, rejected)."""
    peer.send(frame(OFFER, struct.pack("<I", 1) + cid))
    assert peer.read_frame() == (NEED, struct.pack("<I", 1) + cid)
    if pairs:
        peer.send(frame(ref.BASES, ref.bases_payload(pairs)))
        ftype, have = peer.read_frame()
        assert ftype == ref.HAVE
        ref.parse_have(have, len(pairs))
    peer.send(frame(DATA, cid + blob) + frame(END, struct.pack("<II", 1, 0)))
    ftype, ack = peer.read_frame()
    assert ftype == ACK
    committed, rejected = struct.unpack("<II", ack)
    return committed, rejected


def _changed(base: bytes, seed: int) -> tuple[bytes, bytes, bytes]:
    """A next version of `base`, its chunk id, and a base no store has seen."""
    rng = random.Random(seed)
    new = mutate(base, rng, 5)
    return new, chunk_id(new), text(rng, 20_000)


def test_deltas_against_a_missing_base_or_not_matching_their_id_are_rejected(
        held: tuple[Client, bytes, bytes, bytes]) -> None:
    dst, base, bid, other = held
    new, cid, absent = _changed(base, 12)
    header, payload = delta.encode_delta(new, cid, bid, base, 3)
    h2, p2 = delta.encode_delta(new, cid, chunk_id(absent), absent, 3)
    flipped = bytearray(header + payload)
    flipped[-4] ^= 0x10
    assert payload[:16] == bid
    swapped = header + other + payload[16:]  # names another base the destination holds
    elsewise = mutate(base, random.Random(15), 5)  # a good delta, of another chunk
    h3, p3 = delta.encode_delta(elsewise, chunk_id(elsewise), bid, base, 3)
    with mover.MoverServer(dst, SECRET) as srv:
        peer = RawClient(srv.port, SECRET, op=OP_SEND, flags=ref.FLAG_DELTA)
        try:
            # the receiver said it does not hold that base: the delta comes anyway
            assert _batch(peer, cid, h2 + p2, pairs=[(cid, chunk_id(absent))]) == (0, 1)
            assert _batch(peer, cid, h2 + p2, pairs=[]) == (0, 1)
            assert _batch(peer, cid, bytes(flipped), pairs=[(cid, bid)]) == (0, 1)
            assert _batch(peer, cid, swapped, pairs=[(cid, other)]) == (0, 1)
            assert _batch(peer, cid, h3 + p3, pairs=[(cid, bid)]) == (0, 1)
            assert cid not in _ids(dst)
            # the honest delta is taken, rebuilt to its id and stored
            assert _batch(peer, cid, header + payload, pairs=[(cid, bid)]) == (1, 0)
            peer.send(frame(BYE))
        finally:
            peer.close()
    assert dst.store.read_chunk(cid) == new
    report = dst.fsck()
    assert report.ok, report.problems
    assert os.listdir(dst.state / "pools" / "default" / "tmp") == []


def _send_session(port: int, cid: bytes, flags: int = ref.FLAG_DELTA) -> RawClient:
    """A send session by hand that offered `cid` and was told NEED."""
    peer = RawClient(port, SECRET, op=OP_SEND, flags=flags)
    peer.send(frame(OFFER, struct.pack("<I", 1) + cid))
    assert peer.read_frame()[0] == NEED
    return peer


def test_bases_and_have_out_of_order_or_oversized_are_protocol_errors(
        held: tuple[Client, bytes, bytes, bytes]) -> None:
    dst, base, bid, other = held
    new = mutate(base, random.Random(13), 5)
    cid = chunk_id(new)
    header, payload = delta.encode_delta(new, cid, bid, base, 3)
    bases = frame(ref.BASES, ref.bases_payload([(cid, bid)]))
    with mover.MoverServer(dst, SECRET) as srv:
        # BASES on a stream whose HELLO did not ask for delta transfer
        peer = _send_session(srv.port, cid, flags=0)
        peer.send(bases)
        assert "expected DATA or END" in peer.expect_error(_mover.ERR_PROTOCOL)
        # BASES after the batch's first DATA
        peer = _send_session(srv.port, cid)
        peer.send(frame(DATA, cid + header + payload) + bases)
        peer.expect_error(_mover.ERR_PROTOCOL)
        # a second BASES in one batch
        peer = _send_session(srv.port, cid)
        peer.send(bases)
        assert peer.read_frame()[0] == ref.HAVE
        peer.send(bases)
        peer.expect_error(_mover.ERR_PROTOCOL)
        # BASES about a chunk that was not needed, or a chunk as its own base
        for pairs in ([(other, bid)], [(cid, cid)]):
            peer = _send_session(srv.port, cid)
            peer.send(frame(ref.BASES, ref.bases_payload(pairs)))
            peer.expect_error(_mover.ERR_PROTOCOL)
        # oversized: past MAX_PAIRS (refused at the header), or a count its length denies
        peer = _send_session(srv.port, cid)
        peer.send(b"HTMV" + struct.pack("<BBHI", 2, ref.BASES, 0, 4 + 32 * (ref.MAX_PAIRS + 1)))
        peer.expect_error(_mover.ERR_LIMIT)
        peer = _send_session(srv.port, cid)
        peer.send(frame(ref.BASES, struct.pack("<I", 2) + cid + bid))
        peer.expect_error(_mover.ERR_PROTOCOL)
        # HAVE from the data sender, where it is never allowed
        peer = _send_session(srv.port, cid)
        peer.send(frame(ref.HAVE, ref.have_payload([True])))
        peer.expect_error(_mover.ERR_PROTOCOL)
        # an unknown HELLO flag
        raw = RawClient(srv.port, SECRET, op=OP_SEND, flags=2)
        assert raw.last == 12 and b"flags" in raw.error
        raw.close()
        assert cid not in _ids(dst)


def test_fetch_server_speaks_bases_as_the_reference_and_refuses_a_bad_have(
        tmp_path: Path) -> None:
    with _versions(tmp_path) as (src, dst, missing):
        base_reader = delta_transfer.base_reader(dst.store)
        with mover.MoverServer(src, SECRET) as srv:
            peer = RawClient(srv.port, SECRET, op=OP_FETCH, flags=ref.FLAG_DELTA)
            peer.send(frame(WANT, struct.pack("<I", len(missing)) + b"".join(missing)))
            ftype, payload = peer.read_frame()
            assert ftype == ref.BASES
            pairs = ref.parse_bases(payload, missing)  # the C sender as the reference says
            held = [b in _ids(dst) for _, b in pairs]
            peer.send(frame(ref.HAVE, ref.have_payload(held)))
            deltas = 0
            for cid in missing:
                ftype, body = peer.read_frame()
                assert ftype == DATA and body[:16] == cid
                if parse_blob_header(body[16:]).codec == CODEC_DELTA:
                    deltas += 1
                    assert delta.base_of(body[16:]) in {b for (c, b), h in zip(pairs, held,
                                                                                strict=True)
                                                        if h and c == cid}
                assert decode_blob(body[16:], expect_id=cid, base=base_reader) == \
                    src.store.read_chunk(cid)
            assert deltas and peer.read_frame()[0] == END
            peer.send(frame(BYE))
            peer.close()
            # a HAVE whose count is not the BASES count; three WANTs where HAVE is awaited
            for answer in (frame(ref.HAVE, ref.have_payload([True] * (len(pairs) + 1))),
                           frame(WANT, struct.pack("<I", 1) + missing[0]) * 2):
                peer = RawClient(srv.port, SECRET, op=OP_FETCH, flags=ref.FLAG_DELTA)
                peer.send(frame(WANT, struct.pack("<I", len(missing)) + b"".join(missing)))
                assert peer.read_frame()[0] == ref.BASES
                peer.send(answer)
                peer.expect_error(_mover.ERR_PROTOCOL)
            # HAVE that answers nothing
            peer = RawClient(srv.port, SECRET, op=OP_FETCH, flags=ref.FLAG_DELTA)
            peer.send(frame(ref.HAVE, ref.have_payload([True])))
            peer.expect_error(_mover.ERR_PROTOCOL)


# -- the fetching client, attacked by a server -------------------------------------------


def _serve_batch(conn: ServerConn, answer: list[tuple[bytes, bytes]],
                 bases: list[tuple[bytes, bytes]] | None) -> None:
    """Read a WANT, send BASES (if given, reading the HAVE), then `answer` as DATA (or
    MISSING for an empty blob) and END."""
    assert conn.read_frame()[0] == WANT
    if bases is not None and conn.flags:
        conn.send(frame(ref.BASES, ref.bases_payload(bases)))
        ftype, _ = conn.read_frame()
        if ftype != ref.HAVE:
            return
    out = b"".join(frame(DATA, cid + blob) if blob else frame(MISSING, cid)
                   for cid, blob in answer)
    conn.send(out + frame(END, struct.pack("<II", sum(1 for _, b in answer if b),
                                           sum(1 for _, b in answer if not b))))
    conn.read_frame()  # BYE


def test_fetch_client_refuses_bad_bases_and_deltas_from_a_server(
        held: tuple[Client, bytes, bytes, bytes]) -> None:
    dst, base, bid, other = held
    new, cid, absent = _changed(base, 14)
    h, p = delta.encode_delta(new, cid, chunk_id(absent), absent, 3)
    # a BASES about a chunk the client did not ask for: protocol error, nothing stored
    server = RawServer(SECRET, lambda c: _serve_batch(c, [(cid, h + p)], [(other, bid)]), 1)
    try:
        with pytest.raises(mover.MoverProtocolError, match="not in the batch"):
            mover.fetch(dst, server.address, [cid], SECRET, retries=0)
    finally:
        server.close()
    assert server.conns and server.conns[0].flags == ref.FLAG_DELTA
    assert cid not in _ids(dst)
    # a delta against a base the client does not hold: rejected; the client then asks
    # without the flag (whole) and the server, lying still, leaves the chunk missing
    server = RawServer(SECRET, lambda c: _serve_batch(
        c, [(cid, h + p if c.flags else b"")], [(cid, chunk_id(absent))]), 2)
    try:
        stats = mover.fetch(dst, server.address, [cid], SECRET, retries=0, strict=False)
    finally:
        server.close()
    assert [c.flags for c in server.conns] == [ref.FLAG_DELTA, 0]
    assert stats.missing == [cid] and stats.committed == 0 and stats.deltas == 0
    assert cid not in _ids(dst)
    report = dst.fsck()
    assert report.ok, report.problems
    assert os.listdir(dst.state / "pools" / "default" / "tmp") == []
