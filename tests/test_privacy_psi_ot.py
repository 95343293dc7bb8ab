"""OT-extension PSI (KKRT16): the C loops against Python references, correctness
against set intersection, what each side can recover from its own view (with a
positive control showing each attack works once given the secret it lacks),
malformed messages, and the job interface."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs.cli import main as hutong
from gfs.client import Client
from privacy import _psi_ot as _c
from privacy import psi_ot
from privacy.channel import Channel
from privacy.ec import GroupPool, job_domain
from privacy.errors import PolicyError, ProtocolError, QueryError
from privacy.jobs import JobSpec, run_job
from privacy.psi import PsiResult
from privacy.testing import open_policy, put_policy, put_table, run_pair

Half = Callable[[Channel, GroupPool], Any]


def pair(recv: Half, send: Half) -> tuple[Any, Any]:
    r, s, _ = run_pair(recv, send, workers=1)
    return r, s


def run(x: list[str], y: list[str], **kw: Any) -> tuple[PsiResult, PsiResult]:
    r, s = pair(lambda ch, _: psi_ot.receiver(ch, x, "job", **kw),
                lambda ch, _: psi_ot.sender(ch, y, "job"))
    if isinstance(r, BaseException):
        raise r
    if isinstance(s, BaseException):
        raise s
    assert isinstance(r, PsiResult) and isinstance(s, PsiResult)
    return r, s


def check(x: list[str], y: list[str], **kw: Any) -> PsiResult:
    r, s = run(x, y, **kw)
    want = sorted(set(x) & set(y))
    assert r.intersection == want and r.size == len(want)
    assert (r.receiver_count, r.sender_count) == (len(set(x)), len(set(y)))
    # the sender learns the receiver's set size and nothing else
    assert s.intersection is None and s.size == -1 and s.receiver_count == len(set(x))
    return r


# -- the C loops against references ------------------------------------------------

def test_transpose_matches_numpy() -> None:
    rows, cols = 48, 136
    m = os.urandom(rows * cols // 8)
    bitsm = np.unpackbits(np.frombuffer(m, np.uint8), bitorder="little").reshape(rows, cols)
    want = np.packbits(bitsm.T.copy(), axis=1, bitorder="little").tobytes()
    assert _c.transpose(m, rows, cols) == want


def test_code_hash_and_prg_match_references() -> None:
    key, ids = os.urandom(16), os.urandom(16 * 5)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    want = b"".join(enc.update(ids[16 * i:16 * i + 15] + bytes([ids[16 * i + 15] ^ b]))
                    for i in range(5) for b in range(4))
    assert _c.code(key, ids) == want
    arr = pa.array(["a", "", "héllo", "+8613800000000"], type=pa.large_string())
    dom = job_domain("j")
    assert psi_ot.hash_ids(arr, dom, lambda *a: None) == b"".join(
        hashlib.sha256(dom + k.encode()).digest()[:16] for k in arr.to_pylist())
    keys = os.urandom(512 * 16)
    start, rows = 256, 384
    cols = []
    for c in range(512):
        iv = (start // 128).to_bytes(16, "big")
        cols.append(Cipher(algorithms.AES(keys[16 * c:16 * c + 16]), modes.CTR(iv))
                    .encryptor().update(bytes(rows // 8)))
    colbits = np.unpackbits(np.frombuffer(b"".join(cols), np.uint8),
                            bitorder="little").reshape(512, rows)
    want_rows = np.packbits(colbits.T.copy(), axis=1, bitorder="little").tobytes()
    assert _c.prg_rows(keys, start, rows) == want_rows


def bins_of(ids: bytes, i: int, bins: int) -> list[int]:
    return [(int.from_bytes(ids[16 * i + 4 * h:16 * i + 4 * h + 4], "little") * bins) >> 32
            for h in range(3)]


def test_cuckoo_and_simple_hashing_place_every_item_in_its_bins() -> None:
    n, bins = 3000, 3810
    ids = os.urandom(16 * n)
    table_b, used = _c.cuckoo(ids, bins, 2, 7)
    table = np.frombuffer(table_b, np.int32)
    assert used >= 0 and sorted(table[table >= 0].tolist()) == list(range(n))
    for j in np.flatnonzero(table[:bins] >= 0):
        assert j in bins_of(ids, int(table[j]), bins)
    offs_b, items_b = _c.simple(ids, bins)
    offs = np.frombuffer(offs_b, np.int64)
    items = np.frombuffer(items_b, np.uint32)
    for i in range(0, n, 97):
        mine = {j for j in range(bins) if i in items[offs[j]:offs[j + 1]]}
        assert mine == set(bins_of(ids, i, bins))


# -- correctness ---------------------------------------------------------------------

keys_st = st.lists(st.text(alphabet="abc01éZ中😀", max_size=4), max_size=60)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=keys_st, y=keys_st)
def test_equals_set_intersection(x: list[str], y: list[str]) -> None:
    check(x, y)


@pytest.mark.parametrize("case", ["empty-both", "empty-receiver", "empty-sender", "all-overlap",
                                  "no-overlap", "duplicates", "one-each"])
def test_edge_cases(case: str) -> None:
    u = [f"+86138{i:09d}" for i in range(5000)]
    x, y = {
        "empty-both": ([], []),
        "empty-receiver": ([], u[:300]),
        "empty-sender": (u[:300], []),
        "all-overlap": (u[:2000], list(reversed(u[:2000]))),
        "no-overlap": (u[:2000], u[2000:4500]),
        "duplicates": (u[:50] * 7 + u[100:900], u[40:60] * 3 + u[800:1200]),
        "one-each": (u[:1], u[:1]),
    }[case]
    check(x, y)


def test_larger_sets_span_many_ot_blocks() -> None:
    u = [str(i) for i in range(60_000)]
    r = check(u[:40_000], u[25_000:])
    assert r.size == 15_000


def test_stash_is_used_and_still_correct() -> None:
    """A cuckoo table far too small (load 0.97 > the 3-hash threshold 0.918) pushes
    items into the stash; the stash rows match against every sender item."""
    u = [f"s{i}" for i in range(400)]
    view = psi_ot.ReceiverView()
    check(u[:300], u[150:], bins=310, stash=64, view=view)
    assert view.stash_used > 0


def test_cuckoo_overflow_fails_clearly_before_anything_is_sent() -> None:
    u = [f"s{i}" for i in range(400)]
    r, s = pair(lambda ch, _: psi_ot.receiver(ch, u, "job", bins=300, stash=0),
                lambda ch, _: psi_ot.sender(ch, u, "job"))
    assert isinstance(r, psi_ot.CuckooError) and "run the job again" in str(r)
    assert isinstance(s, ProtocolError) and "aborted the job at step psi-cuckoo" in str(s)


# -- what each side can recover from its own view ---------------------------------

def _h(j: int, row: bytes, ob: int) -> bytes:
    return hashlib.sha256(j.to_bytes(8, "little") + row).digest()[:ob]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(p ^ q for p, q in zip(a, b, strict=True))


def _and(a: bytes, b: bytes) -> bytes:
    return bytes(p & q for p, q in zip(a, b, strict=True))


def _views(x: list[str], y: list[str]) -> tuple[psi_ot.ReceiverView, psi_ot.SenderView]:
    rv, sv = psi_ot.ReceiverView(), psi_ot.SenderView()
    r, _ = pair(lambda ch, _: psi_ot.receiver(ch, x, "job", view=rv),
                lambda ch, _: psi_ot.sender(ch, y, "job", view=sv))
    assert isinstance(r, PsiResult) and r.intersection == sorted(set(x) & set(y))
    assert rv.params is not None  # the count of values depends on |Y| only
    assert sum(map(len, rv.received)) == (3 + rv.params.stash) * len(y) * rv.params.ob
    return rv, sv


def test_receiver_cannot_recover_the_senders_other_items() -> None:
    """The receiver knows every sender candidate (a dictionary), both base-OT keys of
    every column, the code key and its own rows; it tries to compute the OPRF value
    each non-matching sender item would have produced. Given the sender's secret s
    the attack finds every one of them (the control); with guesses of s, none."""
    x = [f"x{i}" for i in range(300)] + [f"c{i}" for i in range(50)]
    y = [f"y{i}" for i in range(300)] + [f"c{i}" for i in range(50)]
    rv, sv = _views(x, y)
    p = rv.params
    assert p is not None
    received = set()
    for blob in rv.received:
        received.update(blob[i:i + p.ob] for i in range(0, len(blob), p.ob))
    t = _c.prg_rows(rv.k0, 0, p.rows)
    # the values of the matched items are the receiver's own outputs: set them aside
    received -= {_h(j, t[64 * j:64 * j + 64], p.ob) for j in range(p.rows)}
    assert len(received) > 900
    codes_r = _c.code(rv.code_key, rv.inputs)
    ids = psi_ot.hash_ids(pa.array(y[:300], pa.large_string()), job_domain("job"),
                          lambda *a: None)
    cy = _c.code(rv.code_key, ids)

    def found(s_guess: bytes) -> int:
        hits = 0
        for i in range(300):
            rows = set(bins_of(ids, i, p.bins)) | set(range(p.bins, p.bins + p.stash))
            for j in rows:
                tj, crj = t[64 * j:64 * j + 64], codes_r[64 * j:64 * j + 64]
                guess = _xor(tj, _and(_xor(crj, cy[64 * i:64 * i + 64]), s_guess))
                if _h(j, guess, p.ob) in received:
                    hits += 1
                    break
        return hits

    assert found(sv.s) == 300  # the control: with s, every sender item is exposed
    for s_guess in [bytes(64), b"\xff" * 64] + [os.urandom(64) for _ in range(20)]:
        assert found(s_guess) == 0


def test_the_order_of_the_senders_values_says_nothing_about_bins() -> None:
    """Sent in bin order, a value's position would give its bin, i.e. bits of a hash
    of every sender item; the sender shuffles. Check on the matched values, whose bin
    the receiver knows: position and bin are uncorrelated."""
    u = [f"k{i}" for i in range(3000)]
    rv, _ = _views(u[:2000], u[1000:])
    p = rv.params
    assert p is not None
    t = _c.prg_rows(rv.k0, 0, p.rows)
    own = {_h(j, t[64 * j:64 * j + 64], p.ob): j for j in range(p.rows)}
    blob = b"".join(rv.received)
    pairs = [(i // p.ob, own[blob[i:i + p.ob]]) for i in range(0, len(blob), p.ob)
             if blob[i:i + p.ob] in own]
    assert len(pairs) == 1000
    pos, bins = (np.argsort(np.argsort(np.array(c))) for c in zip(*pairs, strict=True))
    assert abs(float(np.corrcoef(pos, bins)[0, 1])) < 0.15


def test_sender_learns_nothing_about_the_receivers_items() -> None:
    """The sender knows every receiver candidate and its own half of the base-OT keys;
    it tries to read the code word C(x) out of U on the columns where it holds k0
    (s_i = 0). Given the receiver's other keys the attack places every receiver item
    (the control); without them the columns look uniform and place none."""
    x = [f"x{i}" for i in range(400)]
    y = [f"y{i}" for i in range(10)]
    rv, sv = _views(x, y)
    p = sv.params
    assert p is not None
    u = b"".join(sv.u)
    pr = _c.prg_rows(sv.ks, 0, p.rows)
    g = _c.prg_rows(rv.k1, 0, p.rows)
    zero_cols = np.array(psi_ot.bits(sv.s)) == 0
    ids = psi_ot.hash_ids(pa.array(x, pa.large_string()), job_domain("job"), lambda *a: None)
    cx = _c.code(sv.code_key, ids)

    def bitrow(b: bytes) -> np.ndarray:
        return np.unpackbits(np.frombuffer(b, np.uint8), bitorder="little")

    def placed(mask: bytes | None) -> int:
        hits = 0
        for i in range(len(x)):
            want = bitrow(cx[64 * i:64 * i + 64])[zero_cols]
            for j in bins_of(ids, i, p.bins):
                row = _xor(u[64 * j:64 * j + 64], pr[64 * j:64 * j + 64])
                if mask is not None:
                    row = _xor(row, mask[64 * j:64 * j + 64])
                if np.array_equal(bitrow(row)[zero_cols], want):
                    hits += 1
                    break
        return hits

    assert placed(g) == len(x)  # the control
    assert placed(None) == 0
    seen = np.unpackbits(np.frombuffer(_xor(u, pr), np.uint8), bitorder="little")
    seen = seen.reshape(p.rows, 512)[:, zero_cols]
    assert abs(float(seen.mean()) - 0.5) < 0.01


# -- malformed messages ---------------------------------------------------------------

def fake_sender(meta: dict[str, Any], body: Callable[[bytes], bytes]) -> Half:
    def half(ch: Channel, _: GroupPool) -> None:
        hello = ch.recv("ot-hello")
        ch.send("ot-base", meta, body(hello.body))
        ch.recv("ot-u")
    return half


def honest_base(a: bytes) -> bytes:
    return os.urandom(16) + b"".join(point() for _ in range(512))


def point() -> bytes:
    return bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(psi_ot._scalar()))


@pytest.mark.parametrize("meta,body,msg", [
    ({"m": 5}, lambda a: b"\x00" * 100, "bytes of base OTs, expected"),
    ({"m": 5}, lambda a: os.urandom(16) + b"\x01" * 32 * 512, "invalid base-OT point 0"),
    ({"m": "5"}, honest_base, "malformed set size"),
    ({"m": -1}, honest_base, "malformed set size"),
])
def test_receiver_refuses_malformed_base_ots(meta: dict[str, Any],
                                             body: Callable[[bytes], bytes], msg: str) -> None:
    x = [f"k{i}" for i in range(100)]
    r, _ = pair(lambda ch, _: psi_ot.receiver(ch, x, "job"), fake_sender(meta, body))
    assert isinstance(r, ProtocolError) and msg in str(r)


def fake_receiver(meta: dict[str, Any], u_blocks: Callable[[int], list[tuple[Any, bytes]]],
                  ) -> Half:
    def half(ch: Channel, _: GroupPool) -> None:
        ch.send("ot-hello", meta, point())
        ch.recv("ot-base")
        for start, blob in u_blocks(psi_ot.params(meta["n"], 1, meta["bins"],
                                                  meta["stash"]).rows):
            ch.send("ot-u", {"start": start}, blob)
        ch.send("ot-u-end", {"rows": 0})
        ch.recv("ot-v")
    return half


@pytest.mark.parametrize("meta,blocks,msg", [
    ({"n": 100, "bins": 50, "stash": 0}, lambda rows: [], "the sender allows n..4n+1024 bins"),
    ({"n": 100, "bins": 10**7, "stash": 0}, lambda rows: [], "the sender allows"),
    ({"n": 100, "bins": 128, "stash": 1000}, lambda rows: [], "at most 64 stash slots"),
    ({"n": True, "bins": 128, "stash": 0}, lambda rows: [], "malformed OT parameters"),
    ({"n": 100, "bins": 128, "stash": 0}, lambda rows: [(0, b"\x00" * 10)],
     "malformed OT block"),
    ({"n": 100, "bins": 128, "stash": 0}, lambda rows: [(128, bytes(64 * rows))],
     "malformed OT block"),
    ({"n": 100, "bins": 128, "stash": 0}, lambda rows: [], "ended the OT extension after 0"),
])
def test_sender_refuses_malformed_requests(meta: dict[str, Any],
                                           blocks: Callable[[int], list[tuple[Any, bytes]]],
                                           msg: str) -> None:
    y = [f"k{i}" for i in range(100)]
    _, s = pair(fake_receiver(meta, blocks), lambda ch, _: psi_ot.sender(ch, y, "job"))
    assert isinstance(s, ProtocolError) and msg in str(s)


def test_sender_refuses_a_membership_test_before_sending_anything() -> None:
    sv = psi_ot.SenderView()
    r, s = pair(lambda ch, _: psi_ot.receiver(ch, ["+8613800000001"], "job"),
                lambda ch, _: psi_ot.sender(ch, ["a", "b"], "job", min_receiver=10, view=sv))
    assert isinstance(s, PolicyError) and "membership test" in str(s)
    assert isinstance(r, ProtocolError) and sv.code_key == b""


def test_receiver_refuses_too_many_or_broken_values() -> None:
    x = [f"k{i}" for i in range(50)]

    def flood(extra: int, tail: bytes) -> Half:
        def half(ch: Channel, pool: GroupPool) -> None:
            real = ch.send

            def send(kind: str, meta: dict[str, Any] | None = None, body: bytes = b"") -> None:
                if kind == "ot-v":
                    body = body * extra + tail
                real(kind, meta, body)
            ch.send = send  # type: ignore[method-assign]
            psi_ot.sender(ch, x, "job")
        return half

    r, _ = pair(lambda ch, _: psi_ot.receiver(ch, x, "job"), flood(3, b""))
    assert isinstance(r, ProtocolError) and "more than the" in str(r)
    r, _ = pair(lambda ch, _: psi_ot.receiver(ch, x, "job"), flood(1, b"\x00"))
    assert isinstance(r, ProtocolError) and "not whole" in str(r)

    ob = psi_ot.params(len(x), len(x)).ob

    def short(ch: Channel, pool: GroupPool) -> None:
        real = ch.send

        def send(kind: str, meta: dict[str, Any] | None = None, body: bytes = b"") -> None:
            if kind == "ot-v":  # one value fewer, and a count to match
                body = body[ob:]
            if kind == "ot-v-end":
                meta = {"n": int((meta or {})["n"]) - 1}
            real(kind, meta, body)
        ch.send = send  # type: ignore[method-assign]
        psi_ot.sender(ch, x, "job")

    r, _ = pair(lambda ch, _: psi_ot.receiver(ch, x, "job"), short)
    assert isinstance(r, ProtocolError) and "make" in str(r)


# -- the job interface ------------------------------------------------------------------

def test_keys_from_a_table_are_distinct_canonical_text(fs: Client) -> None:
    put_table(fs, "/a/t.parquet", pa.table({"phone": [2, 2, None, 3, 3, 10]}))
    keys = psi_ot.TableKeys(fs, "/a/t.parquet", "phone", batch_rows=2)
    dom = job_domain("j")
    ids = psi_ot.distinct_ids(keys, dom, lambda *a: None)
    want = sorted(hashlib.sha256(dom + k.encode()).digest()[:16] for k in ("10", "2", "3"))
    assert sorted(bytes(r) for r in ids) == want
    # read again by id: each key once, sorted, duplicates across batches too
    assert psi_ot.strings_of(keys, dom, ids[[0, 2]]) == sorted(
        k for k in ("10", "2", "3")
        if hashlib.sha256(dom + k.encode()).digest()[:16] in (bytes(ids[0]), bytes(ids[2])))
    assert psi_ot.strings_of(keys, dom, ids) == ["10", "2", "3"]
    put_table(fs, "/a/f.parquet", pa.table({"phone": [1.5]}))
    with pytest.raises(QueryError, match="not floating point"):
        psi_ot.distinct_ids(psi_ot.TableKeys(fs, "/a/f.parquet", "phone"), dom,
                            lambda *a: None)


def test_job_picks_ot_for_the_intersection_and_ecdh_for_cardinality(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    left = [f"+86138{i:09d}" for i in range(3000)]
    right = [f"+86138{i:09d}" for i in range(2000, 5000)] + left[:10]
    with Client.init(state) as fs:
        put_table(fs, "/bank-a/ids.parquet", pa.table({"phone": left}))
        put_table(fs, "/telco-b/ids.parquet", pa.table({"phone": right}))
        for ent, partner in (("bank-a", "telco-b"), ("telco-b", "bank-a")):
            put_policy(fs, open_policy(ent, partner, f"/{ent}/ids.parquet"))
    want = sorted(set(left) & set(right))
    spec = JobSpec("psi", "/bank-a/ids.parquet", "/telco-b/ids.parquet", "phone",
                   output="intersection")
    assert spec.psi_protocol() == "ot"
    ans = run_job(spec, state).answer
    assert ans["protocol"] == "ot" and ans["intersection"] == want and ans["size"] == len(want)
    card = JobSpec("psi", "/bank-a/ids.parquet", "/telco-b/ids.parquet", "phone")
    assert card.psi_protocol() == "ecdh"
    ans = run_job(card, state).answer
    assert ans["protocol"] == "ecdh" and ans["size"] == len(want) and "intersection" not in ans
    with pytest.raises(QueryError, match="cannot release the cardinality only"):
        JobSpec("psi", "/bank-a/ids.parquet", "/telco-b/ids.parquet", "phone",
                protocol="ot").validate()
    with pytest.raises(QueryError, match="PSI protocol must be one of"):
        JobSpec("psi", "/bank-a/ids.parquet", "/telco-b/ids.parquet", "phone",
                protocol="kkrt").validate()
    cli = ["--state", str(state), "psi", "--left", "/bank-a/ids.parquet", "--right",
           "/telco-b/ids.parquet", "--on", "phone"]
    assert hutong([*cli, "--output", "intersection"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "ot-PSI" in out[0] and out[1:] == want
    assert hutong([*cli, "--protocol", "ot"]) == 2
    assert "cannot release the cardinality only" in capsys.readouterr().err
