"""The PSI group in C (privacy._ec) against pure-Python and libsodium references."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from nacl.bindings import crypto_scalarmult

from gfs.client import Client
from privacy import ec
from privacy.errors import QueryError
from privacy.jobs import JobSpec, run_job
from privacy.testing import open_policy, put_policy, put_table

P = 2**255 - 19
A = 486662


def map_reference(h: bytes) -> bytes:
    """RFC 9380 6.7.1 map_to_curve_elligator2 for curve25519 (Z = 2), u only."""
    r = (int.from_bytes(h, "little") & ((1 << 255) - 1)) % P
    tv1 = 2 * r * r % P
    den = (1 + tv1) % P or 1
    x1 = (-A * pow(den, P - 2, P)) % P
    gx1 = x1 * (x1 * x1 + A * x1 + 1) % P
    x = x1 if pow(gx1, (P - 1) // 2, P) in (0, 1) else (-x1 - A) % P
    return x.to_bytes(32, "little")


def on_curve(u: bytes) -> bool:
    x = int.from_bytes(u, "little")
    g = (x * x * x + A * x * x + x) % P
    return pow(g, (P - 1) // 2, P) in (0, 1)


def test_map_matches_reference_and_lands_on_curve() -> None:
    rnd = random.Random(7)
    hs = [rnd.randbytes(32) for _ in range(500)]
    # edge inputs: zero, p, all ones, and r with 2 r^2 = -1 has no solution here but
    # r = 0 and values >= p exercise the reduction
    hs += [bytes(32), P.to_bytes(32, "little"), b"\xff" * 32, (P + 5).to_bytes(32, "little")]
    out = ec.split(ec.map_to_curve(b"".join(hs)), 32)
    for h, u in zip(hs, out, strict=True):
        assert u == map_reference(h)
        assert on_curve(u)


@pytest.fixture(params=["portable", "ifma"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    before = ec.backend()
    try:
        ec.set_backend(request.param)
    except RuntimeError:
        pytest.skip("this CPU has no AVX-512 IFMA")
    yield request.param
    ec.set_backend(before)


def test_mul_matches_libsodium_x25519(backend: str) -> None:
    pts = ec.split(ec.map_to_curve(os.urandom(32 * 301)), 32)  # not a multiple of 8
    pts[5] = bytes(32)  # a small-order point inside an 8-lane group
    for _ in range(3):
        k = os.urandom(32)
        got = ec.split(ec.mul(k, b"".join(pts)), 32)
        assert got == [crypto_scalarmult(k, p) if any(p) else bytes(32) for p in pts]
    assert ec.backend() == backend


def test_backends_agree_on_large_batches() -> None:
    if "ifma" not in (ec.backend(), ec.set_backend("auto")):
        pytest.skip("this CPU has no AVX-512 IFMA")
    k, pts = os.urandom(32), ec.map_to_curve(os.urandom(32 * 5000))
    fast = ec.mul(k, pts, 12)
    ec.set_backend("portable")
    try:
        assert ec.mul(k, pts, 12) == fast
    finally:
        ec.set_backend("auto")


def test_blinding_commutes_and_truncates() -> None:
    keys = [f"+86-{i}" for i in range(1000)]
    dom = ec.job_domain("job")
    a, b = ec.new_scalar(), ec.new_scalar()
    ab = ec.mul(b, ec.hash_mul(a, dom, keys), ec.TRUNC_BYTES)
    ba = ec.mul(a, ec.hash_mul(b, dom, keys), ec.TRUNC_BYTES)
    assert ab == ba and len(ab) == 1000 * ec.TRUNC_BYTES
    assert len(set(ec.split(ab, ec.TRUNC_BYTES))) == 1000
    # another job's domain gives unrelated encodings
    other = ec.mul(a, ec.hash_mul(b, ec.job_domain("job2"), keys), ec.TRUNC_BYTES)
    assert not set(ec.split(other, 12)) & set(ec.split(ab, 12))


def test_small_order_point_gives_zero() -> None:
    assert ec.mul(os.urandom(32), bytes(32)) == bytes(32)


@pytest.mark.parametrize("scalar,points", [(b"short", bytes(32)), (bytes(32), bytes(31))])
def test_bad_input_is_refused(scalar: bytes, points: bytes) -> None:
    with pytest.raises(ValueError):
        ec.mul(scalar, points)
    with pytest.raises(ValueError, match="unknown backend"):
        ec.set_backend("gpu")


def test_pool_keeps_order() -> None:
    keys = [str(i) for i in range(20000)]
    k, dom = ec.new_scalar(), ec.job_domain("j")
    with ec.GroupPool(2) as pool:
        got = b"".join(pool.hash_mul(k, dom, [keys[:15000], keys[15000:]]))
        again = b"".join(pool.mul(k, [got[:32 * 9000], got[32 * 9000:]], 12))
    assert got == ec.hash_mul(k, dom, keys)
    assert again == ec.mul(k, got, 12)


def test_backend_env_is_checked_and_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ec.BACKEND_ENV, "bogus")
    with pytest.raises(QueryError, match="HUTONG_EC_BACKEND='bogus'"):
        ec.backend_from_env()
    monkeypatch.setenv(ec.BACKEND_ENV, "portable")
    try:
        assert ec.backend_from_env() == "portable" == ec.backend()
    finally:
        ec.set_backend("auto")


def test_a_job_runs_the_forced_portable_backend_in_both_parties(tmp_path: Path) -> None:
    left, right = [f"p{i}" for i in range(300)], [f"p{i}" for i in range(150, 450)]
    with Client.init(tmp_path / "s") as fs:
        for ent, partner, keys in (("bank-a", "telco-b", left), ("telco-b", "bank-a", right)):
            put_table(fs, f"/{ent}/ids.parquet", pa.table({"phone": keys}))
            put_policy(fs, open_policy(ent, partner, f"/{ent}/ids.parquet"))
    spec = JobSpec("psi", "/bank-a/ids.parquet", "/telco-b/ids.parquet", "phone",
                   output="intersection", protocol="ecdh")
    res = run_job(spec, tmp_path / "s", env={ec.BACKEND_ENV: "portable"})
    assert res.left["ec_backend"] == res.right["ec_backend"] == "portable"
    # each party reports its own peak memory (VmHWM), not its launcher's
    assert all(0 < r["peak_rss_mb"] < 2048 for r in (res.left, res.right))
    assert res.answer["intersection"] == sorted(set(left) & set(right))
