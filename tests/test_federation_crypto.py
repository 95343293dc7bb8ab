"""Owner-encrypted blobs (flag bit 0), keyed ids, signed requests and tokens."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import codec
from gfs.errors import CorruptChunkError
from gfs.federation.auth import (
    SKEW,
    AuthError,
    EntityKeys,
    NonceCache,
    check_body,
    verify_request,
    verify_token,
)

K1, K2 = os.urandom(32), os.urandom(32)


@settings(max_examples=50)
@given(st.binary(max_size=5000))
def test_encrypted_roundtrip_and_plain_decoder_refuses(raw: bytes) -> None:
    cid = codec.chunk_id(raw)
    blob = codec.encode_encrypted_blob(raw, K1, K2)
    assert codec.decode_encrypted_blob(blob, cid, K1, K2) == raw
    head = codec.check_encrypted_blob(blob)
    assert head.flags == 1 and head.chunk_id == codec.keyed_chunk_id(cid, K2) != cid
    with pytest.raises(CorruptChunkError, match="flags"):
        codec.decode_blob(blob)


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=2000), st.data())
def test_any_flipped_byte_is_detected(raw: bytes, data: st.DataObject) -> None:
    blob = bytearray(codec.encode_encrypted_blob(raw, K1, K2))
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptChunkError):
        codec.decode_encrypted_blob(bytes(blob), codec.chunk_id(raw), K1, K2)


def test_wrong_key_and_dedup_within_owner() -> None:
    raw = b"same content" * 100
    cid = codec.chunk_id(raw)
    a, b = codec.encode_encrypted_blob(raw, K1, K2), codec.encode_encrypted_blob(raw, K1, K2)
    assert a[16:32] == b[16:32]  # same keyed id: deduplicated within the owner's domain
    other = os.urandom(32)
    assert codec.keyed_chunk_id(cid, other) != a[16:32]  # another owner cannot compute it
    with pytest.raises(CorruptChunkError):
        codec.decode_encrypted_blob(a, cid, other, K2)
    with pytest.raises(CorruptChunkError, match="keyed id"):
        codec.decode_encrypted_blob(a, codec.chunk_id(b"x"), K1, K2)


def _blob_lengths_of(path: str) -> tuple[list[bytes], list[int], list[int]]:
    """Chunks of the file at `path`, their blob lengths in clear as before V7 (header, nonce,
    payload, tag), and the lengths of their sealed blobs now."""
    from gfs.chunking import iter_chunks

    with open(path, "rb") as f:
        chunks = [bytes(c) for c in iter_chunks(f.read())]
    exact = [codec.BLOB_HEADER_LEN + 28 + len(codec.encode_blob(c)[1]) for c in chunks]
    return chunks, exact, [len(codec.encode_encrypted_blob(c, K1, K2)) for c in chunks]


def test_host_cannot_match_a_known_file_by_blob_lengths() -> None:
    """V7: a host keeping an owner's sealed blobs knows a file (a shared library) and
    computes the length each of its chunks would have when sealed. Before, every chunk's
    length was unique among the blobs held, so the host matched the file chunk by chunk
    (59 of 59); now lengths are padded buckets that many chunks share, and a vault that
    never held the file shows the same lengths."""
    import cryptography.hazmat.bindings._rust as other_lib
    import zstandard.backend_c as known_lib

    known, known_exact, known_sealed = _blob_lengths_of(known_lib.__file__)
    other, other_exact, other_sealed = _blob_lengths_of(other_lib.__file__)
    assert len(known) > 50 and len(other) > 50
    # the attack on exact lengths (the control): nearly every chunk has a unique length
    held = Counter(known_exact + other_exact)
    assert sum(held[n] == 1 for n in known_exact) >= 0.9 * len(known)
    # (two libraries share an exact length only by chance: 0 of 146 with cryptography
    # 50, 2 of 146 with 51, so the control allows a few)
    assert len(set(known_exact) & set(other_exact)) <= 0.05 * len(known)
    # the same attack on sealed blobs singles out (almost) nothing: a length alone in the
    # vault can happen only in a sparse top bucket (0 of 146 here, 2 of 186 the other way)
    held = Counter(known_sealed + other_sealed)
    assert sum(held[n] == 1 for n in known_sealed) <= 0.03 * len(known)
    assert sum(n in set(other_sealed) for n in known_sealed) >= 0.9 * len(known)
    # codec and plaintext length are not in clear; padding costs under 12.5 % (5 % here)
    for c in (known[0], bytes(5000), os.urandom(5000)):
        head = codec.check_encrypted_blob(codec.encode_encrypted_blob(c, K1, K2))
        assert (head.codec, head.raw_len) == (0, 0)
    assert sum(known_sealed) < 1.125 * sum(known_exact)


def test_sealed_blob_old_layout_and_bad_padding_refused() -> None:
    raw = os.urandom(3000)
    cid = codec.chunk_id(raw)
    blob = codec.encode_encrypted_blob(raw, K1, K2)
    head = codec.parse_encrypted_header(blob)
    old = codec.BlobHeader(0, 1, len(raw), head.payload_len, head.chunk_id).to_bytes()
    with pytest.raises(CorruptChunkError, match="old layout"):
        codec.decode_encrypted_blob(old + blob[36:], cid, K1, K2)
    short = codec.BlobHeader(0, 1, 0, head.payload_len - 16, head.chunk_id).to_bytes()
    with pytest.raises(CorruptChunkError, match="not a padded length"):
        codec.check_encrypted_blob(short + blob[36:-16])
    assert [codec.padded_blob_len(n) for n in (1, 4096, 4097, 65537, 70000)] == [
        4096, 4096, 4608, 73728, 73728]


def test_signatures_and_tokens(tmp_path: Path) -> None:
    keys = EntityKeys.create(tmp_path / "k", "bank-a")
    again = EntityKeys.load(tmp_path / "k")
    assert again.public_b64 == keys.public_b64 and again.enc_key == keys.enc_key
    assert (tmp_path / "k" / "entity.key").stat().st_mode & 0o777 == 0o600
    pub = keys.private.public_key()
    aud = "127.0.0.2:8080"
    h = keys.sign("POST", "/v1/x?a=1", b"body", aud)
    assert verify_request(h, "POST", "/v1/x?a=1", aud, pub, NonceCache()) == "bank-a"
    check_body(h, hashlib.sha256(b"body").hexdigest())
    with pytest.raises(AuthError, match="does not match the signed"):
        check_body(h, hashlib.sha256(b"bodY").hexdigest())
    for method, target in (("GET", "/v1/x?a=1"), ("POST", "/v1/x?a=2")):
        with pytest.raises(AuthError, match="bad signature"):
            verify_request(h, method, target, aud, pub, NonceCache())
    with pytest.raises(AuthError, match=r"signed for .127\.0\.0\.2:8080."):
        verify_request(h, "POST", "/v1/x?a=1", "127.0.0.3:8080", pub, NonceCache())
    forged = {**h, "X-Hutong-Audience": "127.0.0.3:8080"}
    with pytest.raises(AuthError, match="bad signature"):
        verify_request(forged, "POST", "/v1/x?a=1", "127.0.0.3:8080", pub, NonceCache())
    nonces = NonceCache()
    verify_request(h, "POST", "/v1/x?a=1", aud, pub, nonces)
    with pytest.raises(AuthError, match="replayed"):
        verify_request(h, "POST", "/v1/x?a=1", aud, pub, nonces)
    with pytest.raises(AuthError, match="clock"):
        verify_request(h, "POST", "/v1/x?a=1", aud, pub, NonceCache(),
                       now=float(h["X-Hutong-Time"]) + 1000)
    tok = verify_token(keys.mint_token("u", "read", "/bank-a/p", 60), pub)
    assert tok.allows("/bank-a/p/q", write=False) and not tok.allows("/bank-a/pq", False)
    assert not tok.allows("/bank-a/p/q", write=True)
    with pytest.raises(ValueError):
        keys.mint_token("u", "admin", "/bank-a", 60)


def test_tokens_are_eddsa_jwts_and_nothing_else_is_accepted(tmp_path: Path) -> None:
    """Item 4: tokens are standard JWTs (RFC 7519) signed with EdDSA; the attacks on JWT
    verifiers (alg none, HS256 keyed with the public key, a stripped signature, another
    key) and the old format are refused, each with a clear message."""
    import jwt
    from cryptography.hazmat.primitives import serialization

    keys = EntityKeys.create(tmp_path / "k", "bank-a")
    pub = keys.private.public_key()
    token = keys.mint_token("alice", "write", "/bank-a/shared", 600)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "typ": "JWT"}
    claims = jwt.decode(token, pub, algorithms=["EdDSA"])  # any JWT library verifies it
    assert {k: claims[k] for k in ("iss", "sub", "scope", "prefix")} == {
        "iss": "bank-a", "sub": "alice", "scope": "write", "prefix": "/bank-a/shared"}
    assert claims["exp"] - claims["iat"] == 600 and len(claims["jti"]) == 32
    tok = verify_token(token, pub)
    assert (tok.iss, tok.jti) == ("bank-a", claims["jti"])
    evil = {**claims, "prefix": "/bank-a"}
    h64 = codec_b64({"alg": "none", "typ": "JWT"})
    attacks = [
        h64 + "." + codec_b64(evil) + ".",  # alg none
        jwt.encode(evil, pub.public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw), algorithm="HS256"),
        token.rsplit(".", 1)[0] + ".",  # signature stripped
        EntityKeys.create(tmp_path / "m", "bank-a").mint_token("m", "write", "/bank-a", 600),
        ".".join([token.split(".")[0], codec_b64(evil), token.split(".")[2]]),  # claims swapped
    ]
    for bad in attacks:
        with pytest.raises(AuthError, match=r"invalid token|malformed"):
            verify_token(bad, pub)
    old = codec_b64(claims) + "." + "A" * 86  # the format before JWT
    with pytest.raises(AuthError, match=r"old-format token .* mint a new one"):
        verify_token(old, pub)
    with pytest.raises(AuthError, match="expired"):
        verify_token(token, pub, now=claims["exp"])
    with pytest.raises(AuthError, match="issued in the future"):
        verify_token(token, pub, now=claims["iat"] - SKEW - 10)


def codec_b64(obj: object) -> str:
    """base64url (no padding) of compact JSON, as JWT segments are."""
    import json

    from gfs.federation.auth import b64e

    return b64e(json.dumps(obj, separators=(",", ":")).encode())


def test_nonce_cache_never_forgets_inside_the_window() -> None:
    """V6: once the cache held `limit` nonces it evicted ones still inside the window, so
    a captured request was accepted again. Now a full cache refuses new requests (429 for
    the entity over its share, 503 in all) and still refuses the replay."""
    cache = NonceCache(limit=8, per_entity=4)
    t0 = 1_000_000.0
    cache.check("0" * 32, t0, "bank-a")  # the captured request
    for i in range(1, 4):
        cache.check(f"{i:032x}", t0 + i, "bank-a")
    with pytest.raises(AuthError) as e:
        cache.check("f" * 32, t0 + 5, "bank-a")
    assert e.value.status == 429 and "bank-a" in str(e.value)
    for i in range(4):
        cache.check(f"{100 + i:032x}", t0 + 5, f"e{i}")
    with pytest.raises(AuthError) as e2:
        cache.check("e" * 32, t0 + 6, "telco-b")
    assert e2.value.status == 503
    with pytest.raises(AuthError, match="replayed"):
        cache.check("0" * 32, t0 + 2 * SKEW - 1, "bank-a")  # still inside the window
    cache.check("f" * 32, t0 + 2 * SKEW + 4, "bank-a")  # old ones expired: room again
    assert len(cache) <= 8


def test_nonce_cache_is_thread_safe() -> None:
    """R1: executor threads shared the cache without a lock ("OrderedDict mutated during
    iteration"). 8 threads x 2,000 nonces with expiry running: no error, none lost."""
    cache = NonceCache(limit=1 << 20, per_entity=1 << 20)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        try:
            for i in range(2000):
                cache.check(f"{k:08x}{i:024x}", 1000.0 + i * 0.01, f"e{k}")
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(cache) == 8 * 2000  # 20 s of steps: nothing has expired yet
