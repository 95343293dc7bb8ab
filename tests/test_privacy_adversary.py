"""Adversary tests: each plays one party of a real job, keeps everything it sent
and received, and tries to learn what docs/privacy.md says it cannot."""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import tenseal as ts
import zstandard
from tenseal import sealapi

from gfs.client import Client
from privacy import c2d, he, pjc, psi
from privacy.audit import AuditLog
from privacy.channel import Channel, Message
from privacy.ec import POINT_BYTES, digests, job_domain, map_to_curve, split
from privacy.errors import PolicyError, ProtocolError
from privacy.testing import open_policy, put_policy, put_table, run_pair


class Recorder:
    """A channel as a curious party uses it: every message in and out is kept."""

    def __init__(self, ch: Channel) -> None:
        self._ch = ch
        self.sent: list[tuple[str, dict[str, Any], bytes]] = []
        self.received: list[Message] = []

    def send(self, kind: str, meta: dict[str, Any] | None = None, body: bytes = b"") -> None:
        self.sent.append((kind, dict(meta or {}), body))
        self._ch.send(kind, meta, body)

    def recv(self, *kinds: str) -> Message:
        m = self._ch.recv(*kinds)
        self.received.append(m)
        return m

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ch, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_ch", "sent", "received"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._ch, name, value)


# -- polynomial arithmetic in Z_q[X]/(X^N + 1), for the attacks -----------------------
def _root(q: int, n: int) -> int:
    """A primitive 2n-th root of unity mod the NTT-friendly prime q."""
    for g in range(2, 1000):
        psi_ = pow(g, (q - 1) // (2 * n), q)
        if pow(psi_, n, q) == q - 1:
            return psi_
    raise AssertionError(f"no 2n-th root of unity mod {q}")


def _ntt(a: list[int], q: int, w: int) -> list[int]:
    """Cyclic NTT of a (length a power of two) with the root w of order len(a)."""
    n = len(a)
    a = a[:]
    j = 0
    for i in range(1, n):  # bit reversal
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            a[i], a[j] = a[j], a[i]
    size = 2
    while size <= n:
        wl = pow(w, n // size, q)
        for start in range(0, n, size):
            x = 1
            for k in range(start, start + size // 2):
                u, v = a[k], a[k + size // 2] * x % q
                a[k], a[k + size // 2] = (u + v) % q, (u - v) % q
                x = x * wl % q
        size <<= 1
    return a


def ring_div(num: list[int], den: list[int], q: int) -> list[int]:
    """num / den in Z_q[X]/(X^N + 1) (den invertible), by the negacyclic NTT."""
    n = len(num)
    root = _root(q, n)
    tw = [pow(root, i, q) for i in range(n)]
    fa = _ntt([x * t % q for x, t in zip(num, tw, strict=True)], q, root * root % q)
    fb = _ntt([x * t % q for x, t in zip(den, tw, strict=True)], q, root * root % q)
    fc = [x * pow(y, q - 2, q) % q for x, y in zip(fa, fb, strict=True)]
    winv = pow(root * root % q, q - 2, q)
    c = _ntt(fc, q, winv)
    ninv, rinv = pow(n, q - 2, q), pow(root, q - 2, q)
    return [x * ninv % q * pow(rinv, i, q) % q for i, x in enumerate(c)]


def _poly(ct: Any, index: int, limb: int) -> list[int]:
    """RNS limb `limb` of polynomial `index` of a ciphertext, read from SEAL's own
    serialisation (16-byte header, compressed members, the uint64 data last)."""
    n, k = ct.poly_modulus_degree(), ct.coeff_modulus_size()
    with tempfile.TemporaryDirectory() as d:
        ct.save(os.path.join(d, "ct"))
        raw = Path(d, "ct").read_bytes()
    magic, _, _, _, mode, _, size = struct.unpack("<HBBBBHQ", raw[:16])
    assert magic == 0xA15E
    body = raw[16:size]
    body = {0: lambda b: b, 1: zlib.decompress,
            2: lambda b: zstandard.ZstdDecompressor().decompress(b, max_output_size=1 << 26),
            }[mode](body)
    words = body[len(body) - ct.size() * k * n * 8:]
    start = (index * k + limb) * n
    return list(struct.unpack(f"<{n}Q", words[start * 8:(start + n) * 8]))


def bfv_mask_attack(ctx: Any, params: he.HeParams, sent: bytes, returned: bytes) -> list[int]:
    """The value holder's attack on a returned BFV ciphertext `returned` = sent x
    mask + shares: the second component is c1(sent) * mask, so dividing it by
    c1(sent) gives the selector's plaintext mask polynomial; decoding it gives the
    0/1 mask slot by slot (issue 14)."""
    va, vb = ts.bfv_vector_from(ctx, sent), ts.bfv_vector_from(ctx, returned)  # kept alive
    a, b = va.ciphertext()[0], vb.ciphertext()[0]
    seal = ctx.seal_context().data
    qs = [m.value() for m in seal.first_context_data().parms().coeff_modulus()][:2]
    limbs = [ring_div(_poly(b, 1, i), _poly(a, 1, i), q) for i, q in enumerate(qs)]
    q0, q1 = qs
    t = params.plain_modulus()
    coeffs = []
    for x0, x1 in zip(*limbs, strict=True):  # CRT to mod q0*q1 (> t), centre, then mod t
        x = (x0 + q0 * ((x1 - x0) * pow(q0, -1, q1) % q1)) % (q0 * q1)
        x = x - q0 * q1 if x > q0 * q1 // 2 else x
        coeffs.append(x % t)
    text = " + ".join(f"{c:X}x^{i}" for i, c in reversed(list(enumerate(coeffs))) if c) or "0"
    plain = sealapi.Plaintext(text)
    return list(sealapi.BatchEncoder(seal).decode_int64(plain))


def _main_thread_calls(fn: Callable[..., Any]) -> tuple[Callable[..., Any], list[Any]]:
    """Wrap `fn` to keep the results of calls made on the main thread (the value
    holder's in run_pair), so the test knows the order V itself chose."""
    seen: list[Any] = []

    def wrapped(*a: Any, **kw: Any) -> Any:
        out = fn(*a, **kw)
        if threading.current_thread() is threading.main_thread():
            seen.append(out)
        return out
    return wrapped, seen


@pytest.fixture
def ctxs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The value holder's secret HE contexts, as the value holder itself keeps them."""
    kept: list[Any] = []
    orig_ctx = he.new_context

    def keep_ctx(p: he.HeParams) -> Any:
        kept.append(orig_ctx(p))
        return kept[-1]
    monkeypatch.setattr(he, "new_context", keep_ctx)
    return kept


def test_bfv_value_holder_cannot_recover_the_selectors_mask(
        monkeypatch: pytest.MonkeyPatch, ctxs: list[Any]) -> None:
    """V keeps its ciphertexts and its secret key and divides the returned
    ciphertext's second component by its own: on the old code this gives S's mask,
    i.e. exactly which of V's rows matched S's (even suppressed) groups."""
    shuffle, orders = _main_thread_calls(psi.shuffled)
    monkeypatch.setattr(pjc, "shuffled", shuffle)
    vkeys: list[str | None] = [f"k{i}" for i in range(200)]
    v = pjc.ValueRows(vkeys, {"bal": list(range(200))})
    s_keys = [f"k{i}" for i in range(0, 400, 3)] + ["k7", "k11", "k13", "k14", "k16"]
    s = pjc.SelectRows(list(s_keys), ["a"] * (len(s_keys) - 5) + ["tiny"] * 2 + ["few"] * 3)
    params = he.HeParams("bfv")
    rec: dict[str, Recorder] = {}

    def holder(ch: Channel, pool: Any) -> Any:
        rec["v"] = Recorder(ch)
        return pjc.value_holder(rec["v"], v, "j", params, pjc.ReleaseRules(min_distinct=5),
                                pool)
    _, sr, _ = run_pair(holder, lambda ch, pool: pjc.selector(ch, s, "j", pool),
                         timeout=120, workers=1)
    assert isinstance(sr, pjc.JoinResult), sr
    assert sr.suppressed == 2  # groups "few" and "tiny" (3 and 2 keys) are below 5
    order = orders[0]  # V's own shuffled row order (every key is live here)
    sent_count = next(b for k, m, b in rec["v"].sent
                      if k == "pjc-ct" and m["agg"] == pjc.COUNT and m["chunk"] == 0)
    returned = {int(m.meta["sg"]): m.body for m in rec["v"].received
                if m.kind == "pjc-agg" and m.meta["agg"] == pjc.COUNT}
    truth = {0: {f"k{i}" for i in range(0, 200, 3)}, 1: {"k13", "k14", "k16"},
             2: {"k7", "k11"}}
    for sg, body in returned.items():
        mask = bfv_mask_attack(ctxs[0], params, sent_count, body)
        learnt = {vkeys[order[j]] for j in range(len(order)) if mask[j] == 1}
        assert learnt != truth[sg], f"the value holder recovered group {sg}'s matched keys"
        assert sum(1 for x in mask if x in (0, 1)) < len(mask) // 2, \
            "the recovered 'mask' still looks like a 0/1 mask"


def ckks_slots(ctx: Any, data: bytes) -> list[float]:
    """Every slot of a CKKS ciphertext, decrypted with the value holder's key (not
    only the ones the vector's logical size shows)."""
    vec = ts.ckks_vector_from(ctx, data)
    plain = sealapi.Plaintext()
    ctx.decryptor().data.decrypt(vec.ciphertext()[0], plain)
    return list(sealapi.CKKSEncoder(ctx.seal_context().data).decode_double(plain))


def test_ckks_value_holder_cannot_read_the_sum_from_another_slot(ctxs: list[Any]) -> None:
    """On the old code the selector summed the slots (every slot then holds the
    total) and masked slot 0 only: slot 1 gave the value holder the true sum of a
    group, suppressed or not."""
    vals = [float(1000 + i) for i in range(300)]
    v = pjc.ValueRows([f"k{i}" for i in range(300)], {"bal": vals})
    s = pjc.SelectRows([f"k{i}" for i in range(0, 300, 2)] + ["k1", "k3", "k5", "k7", "k9"],
                       ["big"] * 150 + ["tiny"] * 2 + ["few"] * 3)
    truth = {0: sum(vals[0:300:2]), 1: vals[5] + vals[7] + vals[9], 2: vals[1] + vals[3]}
    rec: dict[str, Recorder] = {}

    def holder(ch: Channel, pool: Any) -> Any:
        rec["v"] = Recorder(ch)
        return pjc.value_holder(rec["v"], v, "j", he.HeParams("ckks"),
                                pjc.ReleaseRules(min_distinct=5), pool)
    _, sr, _ = run_pair(holder, lambda ch, pool: pjc.selector(ch, s, "j", pool),
                        timeout=120, workers=1)
    assert isinstance(sr, pjc.JoinResult), sr
    assert sr.suppressed == 2 and abs(sr.groups[0].sums["bal"] - truth[0]) < 0.05
    for m in rec["v"].received:
        if m.kind == "pjc-agg" and m.meta["agg"] == "bal":
            slots = ckks_slots(ctxs[0], m.body)
            near = [x for x in slots if abs(x - truth[int(m.meta["sg"])]) < 1.0]
            assert not near, f"slot(s) of group {m.meta['sg']} show its true sum"


# -- compute-to-data: differencing within one release and across a partner's jobs ----
C2D = "/bank-a/accounts.parquet"


def c2d_world(fs: Client) -> dict[str, dict[str, int]]:
    """Regions n (5 people), s (2), w (4); balances known to the test."""
    rows = [("p1", "n", "retail", 10), ("p2", "n", "retail", 20), ("p3", "n", "retail", 30),
            ("p4", "n", "retail", 40), ("p5", "n", "vip", 5000), ("p6", "s", "retail", 7),
            ("p7", "s", "retail", 9), ("p8", "w", "retail", 1), ("p9", "w", "retail", 2),
            ("p10", "w", "retail", 3), ("p11", "w", "retail", 4)]
    put_table(fs, C2D, pa.table({"phone": [r[0] for r in rows], "region": [r[1] for r in rows],
                                 "segment": [r[2] for r in rows],
                                 "balance": [r[3] for r in rows]}))
    put_policy(fs, open_policy("bank-a", "right-co", C2D, columns=["balance", "region",
                                                                    "segment"],
                               group_by=["region"], min_group_size=3))
    out: dict[str, dict[str, int]] = {}
    for _, region, segment, bal in rows:
        for cell in (region, f"{region}/{segment}", "*"):
            out.setdefault(cell, {"n": 0, "sum": 0})
            out[cell]["n"] += 1
            out[cell]["sum"] += bal
    return out


def ask(fs: Client, group_by: str | None, where: dict[str, str]) -> dict[str, Any]:
    """The partner's query, served by the owner over a real channel."""
    aggs: list[tuple[str, str | None]] = [("count", None), ("sum", "balance")]
    _, got, _ = run_pair(
        lambda ch, pool: c2d.serve(ch, fs, C2D, "right-co", aggs, group_by, where,
                                   AuditLog(fs, "bank-a"), "job"),
        lambda ch, pool: c2d.submit(ch, C2D, aggs, group_by, where), timeout=60, workers=1)
    assert isinstance(got, dict), got
    return got


def test_c2d_total_minus_released_groups_does_not_isolate_a_group(fs: Client) -> None:
    truth = c2d_world(fs)
    groups = ask(fs, "region", {})["groups"]
    total = ask(fs, None, {})["groups"][0]
    diff = total["sum(balance)"] - sum(g["sum(balance)"] for g in groups)
    assert diff != truth["s"]["sum"], "total minus the released regions gave region s"
    assert "s" not in {g["group"] for g in groups}


def test_c2d_differencing_across_jobs_is_prevented(fs: Client) -> None:
    """Job 1 asks for region n (5 people), job 2 for region n's retail customers (4):
    the difference would be the one vip's balance."""
    truth = c2d_world(fs)
    first = ask(fs, None, {"region": "n"})["groups"]
    second = ask(fs, None, {"region": "n", "segment": "retail"})
    assert first and first[0]["sum(balance)"] == truth["n"]["sum"]
    assert second["groups"] == [] and second["suppressed"] == 1


def test_psi_with_a_one_key_set_is_refused_by_the_sender() -> None:
    """A one-key PSI is an exact membership test of that key in the sender's set."""
    r, s, _ = run_pair(
        lambda ch, pool: psi.receiver(ch, ["13800000001"], "j", "cardinality", pool),
        lambda ch, pool: psi.sender(ch, [f"1380000000{i}" for i in range(10)], "j",
                                    "cardinality", pool, min_receiver=3),
        timeout=60, workers=1)
    assert isinstance(s, PolicyError) and s.rule == "min_group_size"
    assert isinstance(r, ProtocolError)  # the receiver learns nothing but the refusal


# -- what a party sees of the other's keys: blinded points only ------------------------
def dictionary(keys: list[str], job: str) -> set[bytes]:
    """H(x) of every candidate key, as an attacker without the peer's scalar can compute."""
    return set(split(map_to_curve(digests(keys, job_domain(job))), POINT_BYTES))


def test_psi_sender_cannot_test_candidates_against_the_receivers_points() -> None:
    mine = [f"138{i:08d}" for i in range(50)]
    rec: dict[str, Recorder] = {}

    def sender(ch: Channel, pool: Any) -> Any:
        rec["s"] = Recorder(ch)
        return psi.sender(rec["s"], mine[::2], "j", "cardinality", pool)
    r, _, _ = run_pair(lambda ch, pool: psi.receiver(ch, mine, "j", "cardinality", pool),
                       sender, timeout=60, workers=1)
    assert isinstance(r, psi.PsiResult) and r.size == 25
    seen = b"".join(m.body for m in rec["s"].received if m.kind == "psi-a")
    assert len(seen) == 50 * POINT_BYTES  # the sender learns |X| ...
    assert not set(split(seen, POINT_BYTES)) & dictionary(mine, "j")  # ... and not X


def test_join_selector_sees_neither_keys_nor_a_secret_key() -> None:
    vkeys = [f"k{i}" for i in range(60)]
    v = pjc.ValueRows(list(vkeys), {"bal": list(range(60))})
    rec: dict[str, Recorder] = {}

    def selector(ch: Channel, pool: Any) -> Any:
        rec["s"] = Recorder(ch)
        return pjc.selector(rec["s"], pjc.SelectRows(vkeys[:30]), "j", pool)
    _, sr, _ = run_pair(lambda ch, pool: pjc.value_holder(ch, v, "j", he.HeParams("bfv"),
                                                          pjc.ReleaseRules(), pool),
                        selector, timeout=120, workers=1)
    assert isinstance(sr, pjc.JoinResult) and sr.groups[0].sums["bal"] == sum(range(30))
    ctx_msg = next(m for m in rec["s"].received if m.kind == "pjc-ctx")
    ctx = ts.context_from(ctx_msg.body)
    assert not ctx.has_secret_key()  # the value holder's values stay encrypted
    ct = next(m for m in rec["s"].received if m.kind == "pjc-ct")
    with pytest.raises(ValueError):
        ts.bfv_vector_from(ctx, ct.body).decrypt()
    points = b"".join(m.body for m in rec["s"].received if m.kind == "pjc-a")
    assert not set(split(points, POINT_BYTES)) & dictionary(vkeys, "j")


def test_c2d_repeated_releases_without_dp_are_capped(fs: Client) -> None:
    """Differencing across jobs that no cell check catches (three or more cells) is
    prevented by the owner's cap on releases without noise."""
    c2d_world(fs)
    put_policy(fs, open_policy("bank-a", "right-co", C2D, columns=["balance", "region"],
                               group_by=["region"], min_group_size=3, max_releases=2))
    ask(fs, "region", {})
    ask(fs, None, {})
    _, err, _ = run_pair(
        lambda ch, pool: c2d.serve(ch, fs, C2D, "right-co", [("count", None)], None, {},
                                   AuditLog(fs, "bank-a"), "job"),
        lambda ch, pool: c2d.submit(ch, C2D, [("count", None)], None, {}), timeout=60,
        workers=1)
    assert isinstance(err, ProtocolError) and "rule max_releases" in str(err)
