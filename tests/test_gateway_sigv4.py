"""SigV4 verification against the examples AWS publishes (golden signatures), and
aws-chunked bodies: decoded in any piece sizes, refused when a chunk is altered or
the body ends early, and stored through the gateway."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
from urllib.parse import urlsplit

import pytest

from gfs.gateway.credentials import Credential
from gfs.gateway.errors import S3Error
from gfs.gateway.sigv4 import (
    STREAMING_SIGNED,
    ChunkedDecoder,
    SignedRequest,
    Verified,
    signature,
    signing_key,
    verify,
)
from tests.gateway_servers import S3Server, s3server

__all__ = ["s3server"]

# AWS's documented example credential, time and signatures (S3 API reference,
# "Signature Calculations for the Authorization Header" and "Transferring Payload in
# Multiple Chunks").
AK = "AKIAIOSFODNN7EXAMPLE"
SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
WHEN = dt.datetime(2013, 5, 24, tzinfo=dt.UTC)
SCOPE = "20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNKS = [(65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"),
          (1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"),
          (0, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9")]
EMPTY = hashlib.sha256(b"").hexdigest()


def lookup(ak: str) -> Credential | None:
    return Credential(AK, SK) if ak == AK else None


def test_documented_get_object_signature() -> None:
    sig = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    headers = {"host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9",
               "x-amz-content-sha256": EMPTY, "x-amz-date": "20130524T000000Z",
               "authorization": f"AWS4-HMAC-SHA256 Credential={AK}/{SCOPE},SignedHeaders="
                                f"host;range;x-amz-content-sha256;x-amz-date,Signature={sig}"}
    v = verify(SignedRequest("GET", "/test.txt", (), headers), lookup, now=WHEN)
    assert v.credential.access_key == AK and v.payload_hash == EMPTY
    bad = {**headers, "range": "bytes=0-10"}
    with pytest.raises(S3Error) as e:
        verify(SignedRequest("GET", "/test.txt", (), bad), lookup, now=WHEN)
    assert e.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as e:  # the same request a day later
        verify(SignedRequest("GET", "/test.txt", (), headers), lookup,
               now=WHEN + dt.timedelta(days=1))
    assert e.value.code == "RequestTimeTooSkewed"


def test_documented_chunked_seed_signature() -> None:
    headers = {"host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z",
               "x-amz-storage-class": "REDUCED_REDUNDANCY", "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": "66560", "content-length": "66824",
               "x-amz-content-sha256": STREAMING_SIGNED,
               "authorization": f"AWS4-HMAC-SHA256 Credential={AK}/{SCOPE},SignedHeaders="
                                "content-encoding;content-length;host;x-amz-content-sha256;"
                                "x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
                                f"Signature={SEED}"}
    v = verify(SignedRequest("PUT", "/examplebucket/chunkObject.txt", (), headers), lookup,
               now=WHEN)
    assert v.chunked and v.signature == SEED and v.scope == SCOPE


def documented_body(corrupt: bool = False) -> bytes:
    out = b""
    for size, sig in CHUNKS:
        data = bytearray(b"a" * size)
        if corrupt and size == 1024:
            data[10] = ord("b")
        out += f"{size:x};chunk-signature={sig}\r\n".encode() + bytes(data) + b"\r\n"
    return out


@pytest.mark.parametrize("piece", [1, 7, 4096, 70_000])
def test_documented_chunked_body(piece: int) -> None:
    seed = Verified(Credential(AK, SK), STREAMING_SIGNED, SEED, "20130524T000000Z", SCOPE)
    body = documented_body()
    dec = ChunkedDecoder(seed)
    got = b"".join(b"".join(dec.feed(body[i:i + piece])) for i in range(0, len(body), piece))
    dec.finish()
    assert got == b"a" * 66560 and dec.decoded == 66560
    dec = ChunkedDecoder(seed)
    with pytest.raises(S3Error) as e:
        dec.feed(documented_body(corrupt=True))
    assert e.value.code == "SignatureDoesNotMatch"
    dec = ChunkedDecoder(seed)
    dec.feed(body[:66_000])  # cut inside the second chunk
    with pytest.raises(S3Error) as e:
        dec.finish()
    assert e.value.code == "IncompleteBody"


def _chunked_put(server: S3Server, key: str, data: bytes, chunk: int,
                 tamper: bool = False) -> tuple[int, bytes]:
    """PUT `data` as a signed aws-chunked body, the way the AWS Java SDK and minio send
    large objects over plain HTTP."""
    u = urlsplit(server.url)
    now = dt.datetime.now(dt.UTC)
    amz = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz[:8]}/us-east-1/s3/aws4_request"
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    framed_len = sum(len(f"{len(p):x};chunk-signature=") + 64 + 4 + len(p) for p in pieces)
    path = f"/bkt/{key}"
    headers = {"host": f"{u.hostname}:{u.port}", "x-amz-date": amz,
               "x-amz-content-sha256": STREAMING_SIGNED, "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(data)),
               "content-length": str(framed_len)}
    signed = sorted(headers)
    canonical = "\n".join(["PUT", path, "", "".join(f"{h}:{headers[h]}\n" for h in signed),
                           ";".join(signed), STREAMING_SIGNED])
    prev = signature(server.cred.secret_key, amz, scope, canonical)
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={server.cred.access_key}/"
                                f"{scope},SignedHeaders={';'.join(signed)},Signature={prev}")
    key_bytes = signing_key(server.cred.secret_key, amz[:8], "us-east-1", "s3")
    body = b""
    for p in pieces:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz, scope, prev, EMPTY,
                             hashlib.sha256(p).hexdigest()])
        prev = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        body += f"{len(p):x};chunk-signature={prev}\r\n".encode() + p + b"\r\n"
    if tamper:
        i = body.index(b"\r\n") + 2 + 100
        body = body[:i] + bytes([body[i] ^ 1]) + body[i + 1:]
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        conn.request("PUT", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("size", [300_000, 5 << 20])  # whole / streamed
def test_chunked_put_through_the_gateway(s3server: S3Server, size: int) -> None:
    import os

    s3 = s3server.client()
    s3.create_bucket(Bucket="bkt")
    data = os.urandom(size)
    status, body = _chunked_put(s3server, "obj", data, 64 << 10)
    assert status == 200, body
    got = s3.get_object(Bucket="bkt", Key="obj")
    assert got["Body"].read() == data
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    status, body = _chunked_put(s3server, "obj", os.urandom(size), 64 << 10, tamper=True)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert s3.get_object(Bucket="bkt", Key="obj")["Body"].read() == data  # unchanged
