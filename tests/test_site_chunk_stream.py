"""A `/v1/chunks/get` answer streams in parts (site_handlers.STREAM_IDS chunks each):
whole and in order across parts, cut short (never passed off as whole) when a part
fails after the status was sent, and a reader that stops reading holds the site to
a few parts while other requests, health checks included, are answered. An
in-process site on loopback over TLS (tests.test_site_nonblocking's fixture)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gfs.codec import chunk_id, decode_blob, encode_blob
from gfs.errors import CorruptChunkError, UnavailableSiteError
from gfs.federation import site_handlers
from gfs.federation.site_client import SiteClient
from gfs.federation.wire import ids_to_wire, unpack_frames
from tests.test_site_nonblocking import DEADLINE, PROMPT, Served, served  # noqa: F401 - fixture

PART = site_handlers.STREAM_IDS


def _store(sc: SiteClient, count: int, size: int, seed: int = 0) -> list[bytes]:
    """`count` incompressible chunks of `size` bytes put at the site; their ids."""
    raws = [os.urandom(size) for _ in range(count)]
    blobs = [b"".join(encode_blob(r)) for r in raws]
    for i in range(0, count, 256):
        sc.put(blobs[i:i + 256])
    return [chunk_id(r) for r in raws]


def test_a_batch_of_many_parts_comes_back_whole_and_in_order(
        served: Served) -> None:  # noqa: F811
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = _store(sc, 5 * PART + 3, 4096)
        absent = [bytes([i]) * 16 for i in range(3)]
        asked = [*ids[:PART], absent[0], *ids[PART:3 * PART], *absent[1:], *ids[3 * PART:]]
        got = sc.get(asked)
    assert len(got) == len(asked)
    for cid, blob in zip(asked, got, strict=True):
        if cid in absent:
            assert blob is None
        else:
            assert blob is not None and blob[16:32] == cid


def test_a_part_failing_after_the_status_cuts_the_answer_short(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = _store(sc, 3 * PART, 1024)
        bad = ids[2 * PART + 1]  # in the third part: the status and two parts are sent
        real = served.site.frames
        failed = threading.Event()

        def frames(cids: list[bytes]) -> tuple[bytes | bytearray, int]:
            if bad in cids:
                failed.set()
                raise OSError(5, "disk read failed")
            return real(cids)
        monkeypatch.setattr(served.site, "frames", frames)
        with pytest.raises(UnavailableSiteError):
            sc.get(ids)
        assert failed.is_set()
        monkeypatch.setattr(served.site, "frames", real)
        assert all(b is not None for b in sc.get(ids))  # the next request is served


def _raw_get(sc: SiteClient, ids: list[bytes]) -> tuple[dict[str, str], bytes]:
    """The headers and body of a /v1/chunks/get answer, as sent."""
    keys = sc.http.keys
    assert keys is not None
    conn = sc.http.connection()
    body = json.dumps({"ids": ids_to_wire(ids)}).encode()
    try:
        conn.request("POST", "/v1/chunks/get", body=body,
                     headers={"Content-Type": "application/json",
                              **keys.sign("POST", "/v1/chunks/get", body, sc.http.audience)})
        resp = conn.getresponse()
        assert resp.status == 200
        return {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_an_answer_of_many_parts_announces_its_length(served: Served) -> None:  # noqa: F811
    """The owner's plain chunks have known lengths: the answer carries Content-Length,
    not chunked encoding (which the client's http.client undoes with a copy of every
    byte), and holds exactly the frames."""
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = _store(sc, 3 * PART + 5, 4096)
        asked = [*ids[:PART], bytes(16), *ids[PART:]]  # one absent: a bare frame header
        headers, body = _raw_get(sc, asked)
    assert "chunked" not in headers.get("transfer-encoding", "")
    assert headers["content-length"] == str(len(body))
    frames = unpack_frames(body)
    assert [f[16:32] if f else None for f in frames] == [*ids[:PART], None, *ids[PART:]]


def test_a_chunk_other_than_announced_comes_back_absent_and_the_rest_whole(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A chunk that changes between the length's computation and its part's read (here:
    one gone from a later part) costs that chunk only: it comes back absent (ask
    elsewhere), every other chunk whole, in an answer of the announced length."""
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = _store(sc, 3 * PART, 1024)
        gone = ids[2 * PART + 1]
        real = served.site.frames

        def frames(cids: list[bytes]) -> tuple[bytes | bytearray, int]:
            return real([bytes(16) if c == gone else c for c in cids])
        monkeypatch.setattr(served.site, "frames", frames)
        headers, body = _raw_get(sc, ids)
        got = sc.get(ids)
    assert headers["content-length"] == str(len(body))
    assert [f[16:32] if f else None for f in unpack_frames(body)] == \
        [None if c == gone else c for c in ids]
    assert [b[16:32] if b else None for b in got] == [None if c == gone else c for c in ids]


def _copy(fx: Served, cid: bytes) -> tuple[Path, int]:
    """The pack file holding chunk `cid`'s first copy, and where that copy ends."""
    with fx.site.client.engine.read() as txn:
        rec = txn.get_chunk(cid)
    assert rec is not None
    loc = rec.locations[0]
    pack = next(p for p in (Path(fx.site.client.state) / "pools").rglob("*")
                if p.is_file() and loc.pack.hex() in p.name)
    return pack, loc.offset + loc.length


def test_a_damaged_copy_in_a_later_part_costs_that_chunk_only(
        served: Served) -> None:  # noqa: F811
    """The last copy of a pack cut short (its bytes as stored are not the length its
    record announced): that chunk comes back absent or refused by its id, every other
    chunk of the many-part answer whole, and the site answers on."""
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = _store(sc, 3 * PART, 1024)
        ends = {c: _copy(served, c) for c in ids}
        last = {pack: max(e for p, e in ends.values() if p == pack) for pack, _ in ends.values()}
        bad = next(c for c in reversed(ids[PART:]) if ends[c][1] == last[ends[c][0]])
        pack, end = ends[bad]
        os.truncate(pack, end - 10)
        got = sc.get(ids)
        assert sc.health().status == "ok"
    for cid, blob in zip(ids, got, strict=True):
        if cid == bad:
            if blob is not None:
                with pytest.raises(CorruptChunkError):
                    decode_blob(blob, expect_id=cid)
        else:
            assert blob is not None and decode_blob(blob, expect_id=cid)


def test_a_deleted_pack_in_a_later_part_costs_its_chunks_only(
        served: Served) -> None:  # noqa: F811
    """The pack of some chunks of later parts is gone: those come back absent, the
    others (stored in other packs) whole."""
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = [c for i in range(3) for c in _store(sc, PART, 1024)]  # three puts, three packs
        pack, _ = _copy(served, ids[2 * PART])
        lost = {c for c in ids if _copy(served, c)[0] == pack}
        assert lost and set(ids[:PART]).isdisjoint(lost) and len(lost) < len(ids) - PART
        pack.unlink()
        got = sc.get(ids)
    assert [b[16:32] if b else None for b in got] == [None if c in lost else c for c in ids]


def _served_total(fx: Served) -> float:
    return sum(v for (name, _), v in fx.site.metrics.counters.items()
               if name == "chunks_served_total")


def test_a_reader_that_stops_reading_holds_a_few_parts_and_stalls_nobody(
        served: Served) -> None:  # noqa: F811
    count, size = 4 * 1024, 16 << 10  # 64 MiB asked, far beyond the socket buffers
    keys = served.site.keys
    with served.client(keys, DEADLINE) as sc:
        ids = _store(sc, count, size)
        before = _served_total(served)
        conn = sc.http.connection()
        body = json.dumps({"ids": ids_to_wire(ids)}).encode()
        headers: dict[str, Any] = {"Content-Type": "application/json",
                                   **keys.sign("POST", "/v1/chunks/get", body,
                                               sc.http.audience)}
        try:
            conn.request("POST", "/v1/chunks/get", body=body, headers=headers)
            resp = conn.getresponse()  # the status and headers; the body is left unread
            assert resp.status == 200
            # the site reads parts until the peer's socket is full, then waits
            end, last, stable = time.monotonic() + DEADLINE, -1.0, 0
            while time.monotonic() < end and stable < 20:  # polled, with a deadline
                now = _served_total(served) - before
                stable = stable + 1 if now == last else 0
                last = now
                time.sleep(0.05)
            assert 0 < last < count / 2, f"{last} of {count} chunks read for a stalled reader"
            with served.client(None, PROMPT) as quick:
                assert quick.health().status == "ok"
            with served.client(keys, PROMPT) as other:
                assert [b is not None for b in other.get(ids[:3 * PART])] == [True] * 3 * PART
            assert _served_total(served) - before < count  # the stalled answer still waits
            frames = unpack_frames(resp.read())  # reading resumes it, to the end
            assert [f[16:32] for f in frames] == ids
        finally:
            conn.close()


def test_a_stranger_asking_many_chunks_gets_a_refusal_and_no_chunk(
        served: Served) -> None:  # noqa: F811
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = _store(sc, 3 * PART, 1024)
    before = _served_total(served)
    with served.client(None, PROMPT) as stranger, pytest.raises(PermissionError):
        stranger.get(ids)  # unsigned: refused on the headers, before any part is read
    assert _served_total(served) == before


def test_a_reader_gets_the_blobs_as_views_into_the_one_answer(
        served: Served) -> None:  # noqa: F811
    """`SiteClient.get_views`: each blob a view into the answer body, not a copy (the
    federation client verifies or decodes each, then keeps one copy)."""
    with served.client(served.site.keys, DEADLINE) as sc:
        ids = _store(sc, 2 * PART + 1, 4096)
        views = sc.get_views([*ids, bytes(16)])
    assert views[-1] is None
    kept = [v for v in views if v is not None]
    assert len(kept) == len(ids) and len({id(v.obj) for v in kept}) == 1
    assert [bytes(v[16:32]) for v in kept] == ids
