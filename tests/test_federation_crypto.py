"""Owner-encrypted blobs (flag bit 0), keyed ids, signed requests and tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import codec
from gfs.errors import CorruptChunkError
from gfs.federation.auth import AuthError, EntityKeys, NonceCache, verify_request, verify_token

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


def test_signatures_and_tokens(tmp_path: Path) -> None:
    keys = EntityKeys.create(tmp_path / "k", "bank-a")
    again = EntityKeys.load(tmp_path / "k")
    assert again.public_b64 == keys.public_b64 and again.enc_key == keys.enc_key
    assert (tmp_path / "k" / "entity.key").stat().st_mode & 0o777 == 0o600
    pub = keys.private.public_key()
    h = keys.sign("POST", "/v1/x?a=1", b"body")
    assert verify_request(h, "POST", "/v1/x?a=1", b"body", pub, NonceCache()) == "bank-a"
    for method, target, body in (("GET", "/v1/x?a=1", b"body"), ("POST", "/v1/x?a=2", b"body"),
                                 ("POST", "/v1/x?a=1", b"bodY")):
        with pytest.raises(AuthError, match="bad signature"):
            verify_request(h, method, target, body, pub, NonceCache())
    nonces = NonceCache()
    verify_request(h, "POST", "/v1/x?a=1", b"body", pub, nonces)
    with pytest.raises(AuthError, match="replayed"):
        verify_request(h, "POST", "/v1/x?a=1", b"body", pub, nonces)
    with pytest.raises(AuthError, match="clock"):
        verify_request(h, "POST", "/v1/x?a=1", b"body", pub, NonceCache(),
                       now=float(h["X-Hutong-Time"]) + 1000)
    tok = verify_token(keys.mint_token("u", "read", "/bank-a/p", 60), pub)
    assert tok.allows("/bank-a/p/q", write=False) and not tok.allows("/bank-a/pq", False)
    assert not tok.allows("/bank-a/p/q", write=True)
    with pytest.raises(ValueError):
        keys.mint_token("u", "admin", "/bank-a", 60)
