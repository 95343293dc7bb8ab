"""SigV4 from the attacker's side: wrong secrets, unknown or revoked keys, expired or
tampered presigned URLs, skewed clocks, bodies that do not match their signed digest,
and keys scoped to other buckets are refused, and change nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import urllib.error
import urllib.request
from typing import Any
from unittest import mock

import pytest
from botocore.exceptions import ClientError

from gfs.gateway import credentials
from gfs.gateway.credentials import Credential
from tests.gateway_servers import S3Server, code, s3server

__all__ = ["s3server"]


def http(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def at(when: dt.datetime) -> Any:
    """botocore signing as if the clock said `when`."""
    return mock.patch("botocore.auth.get_current_datetime", return_value=when)


@pytest.fixture
def s3(s3server: S3Server) -> Any:
    c = s3server.client()
    c.create_bucket(Bucket="bkt")
    c.put_object(Bucket="bkt", Key="obj", Body=b"secret data")
    return c


def test_wrong_secret_and_unknown_key(s3server: S3Server, s3: Any) -> None:
    wrong = Credential(s3server.cred.access_key, "not-the-secret")
    with pytest.raises(ClientError) as e:
        s3server.client(wrong).get_object(Bucket="bkt", Key="obj")
    assert code(e) == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as e:
        s3server.client(wrong).put_object(Bucket="bkt", Key="obj", Body=b"overwritten")
    assert code(e) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as e:
        s3server.client(Credential("HTNOSUCHKEY", "x")).list_buckets()
    assert code(e) == "InvalidAccessKeyId"
    assert s3.get_object(Bucket="bkt", Key="obj")["Body"].read() == b"secret data"


def test_anonymous_and_sigv2_refused(s3server: S3Server, s3: Any) -> None:
    status, body = http(f"{s3server.url}/bkt/obj")
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    status, body = http(f"{s3server.url}/bkt/obj?AWSAccessKeyId={s3server.cred.access_key}"
                        "&Signature=abc&Expires=9999999999")
    assert status == 403 and b"signature version 2" in body
    status, _ = http(f"{s3server.url}/bkt/new", "PUT", b"data")
    assert status == 403
    with pytest.raises(ClientError):
        s3.head_object(Bucket="bkt", Key="new")


def test_revoked_key(s3server: S3Server) -> None:
    with s3server.store() as fs:
        cred = credentials.add(fs)
    s3server.client(cred).list_buckets()
    with s3server.store() as fs:
        credentials.remove(fs, cred.access_key)
    with pytest.raises(ClientError) as e:
        s3server.client(cred).list_buckets()
    assert code(e) == "InvalidAccessKeyId"


def test_presigned_urls(s3server: S3Server, s3: Any) -> None:
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "obj"},
                                    ExpiresIn=300)
    assert http(url) == (200, b"secret data")
    put = s3.generate_presigned_url("put_object", Params={"Bucket": "bkt", "Key": "up"},
                                    ExpiresIn=300)
    assert http(put, "PUT", b"uploaded")[0] == 200
    assert s3.get_object(Bucket="bkt", Key="up")["Body"].read() == b"uploaded"
    # tampering with the key, the lifetime or the signature breaks it
    status, body = http(url.replace("/bkt/obj?", "/bkt/up?"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = http(url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    sig = url.rsplit("X-Amz-Signature=", 1)[1][:64]
    status, body = http(url.replace(sig, "0" * 64))
    assert status == 403 and b"SignatureDoesNotMatch" in body


def test_expired_presigned_url(s3: Any) -> None:
    two_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with at(two_hours_ago):
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "obj"},
                                        ExpiresIn=3600)
        put = s3.generate_presigned_url("put_object", Params={"Bucket": "bkt", "Key": "obj"},
                                        ExpiresIn=3600)
    status, body = http(url)
    assert status == 403 and b"Request has expired" in body
    assert http(put, "PUT", b"late")[0] == 403
    assert s3.get_object(Bucket="bkt", Key="obj")["Body"].read() == b"secret data"


def test_skewed_clock(s3: Any) -> None:
    with at(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)), \
            pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket="bkt")
    assert code(e) == "RequestTimeTooSkewed"


@pytest.mark.parametrize("size", [100, 3 << 20])  # read whole / streamed into the store
def test_body_not_matching_its_signed_digest(s3server: S3Server, s3: Any, size: int) -> None:
    def swap(request: Any, **_: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else request.body.read()
        request.body = bytes(len(body))  # same length, other bytes: a man in the middle

    s3.meta.events.register("before-send.s3.PutObject", swap)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="bkt", Key="obj", Body=os.urandom(size))
    assert code(e) == "XAmzContentSHA256Mismatch"
    s3.meta.events.unregister("before-send.s3.PutObject", swap)
    assert s3.get_object(Bucket="bkt", Key="obj")["Body"].read() == b"secret data"


def test_wrong_content_md5(s3: Any) -> None:
    import base64

    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="bkt", Key="obj", Body=b"new data", ContentMD5=bad)
    assert code(e) == "BadDigest"
    assert s3.get_object(Bucket="bkt", Key="obj")["Body"].read() == b"secret data"


def test_key_scoped_to_buckets(s3server: S3Server, s3: Any) -> None:
    s3.create_bucket(Bucket="other")
    with s3server.store() as fs:
        scoped = credentials.add(fs, ("other",))
    c = s3server.client(scoped)
    assert [b["Name"] for b in c.list_buckets()["Buckets"]] == ["other"]
    c.put_object(Bucket="other", Key="k", Body=b"ok")
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="bkt", Key="obj")
    assert code(e) == "AccessDenied"
    with pytest.raises(ClientError) as e:
        c.copy_object(Bucket="other", Key="stolen", CopySource="bkt/obj")
    assert code(e) == "AccessDenied"
    with pytest.raises(ClientError):
        c.head_object(Bucket="other", Key="stolen")


def test_damaged_credential_record_is_an_internal_error(s3server: S3Server) -> None:
    with s3server.store() as fs, fs.engine.write() as txn:
        txn.put_value(credentials.TABLE, b"HTDAMAGED", b"{not json")
    with pytest.raises(ClientError) as e:
        s3server.client(Credential("HTDAMAGED", "x")).list_buckets()
    assert code(e) == "InternalError"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert "HTDAMAGED is damaged" in e.value.response["Error"]["Message"]
