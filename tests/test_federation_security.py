"""Hostile-peer regression tests (issue 13, "Found"): a registry and three sites of two
entities as real processes on loopback, attacked from the outside."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from gfs.federation.http import HttpClient
from gfs.federation.testing import Federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("hostile"), ttl=3.0, heartbeat=0.3)
    try:
        f.registry()
        f.site("a1", "bank-a", "cn-west", primary=True, industry="FIN")
        f.site("a2", "bank-a", "cn-east")
        f.site("t1", "telco-b", "cn-east", primary=True, industry="TEL")
        with f.client("bank-a") as fc:
            fc.mkdir("/bank-a/secret", parents=True, exist_ok=True)
            fc.mkdir("/bank-a/shared", parents=True, exist_ok=True)
            fc.write_bytes("/bank-a/secret/key.txt", b"the vault combination is 12-34-56\n")
        yield f
    finally:
        f.close()


def _raw(url: str, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `head` (request line and headers, without the blank line) and `body` on a
    fresh connection; (status, answer bytes) of whatever the server answers within
    `timeout`, even if it answers before the body is sent in full."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n")
        with contextlib.suppress(OSError):  # the server may answer before the whole body
            s.sendall(body)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except TimeoutError:
                break
            if not part:
                break
            data += part
    if not data.startswith(b"HTTP/1.1 "):
        raise AssertionError(f"no answer within {timeout} s: {data[:200]!r}")
    return int(data[9:12]), data


def test_signature_for_one_site_refused_at_another(fed: Federation) -> None:
    """V5: a `POST /v1/gc` signed for a1 ran on a2. The signed text names the target."""
    keys = fed.keys("bank-a")
    a1, a2 = HttpClient(fed.sites["a1"]["url"]), HttpClient(fed.sites["a2"]["url"])
    headers = keys.sign("POST", "/v1/gc", b"{}", a1.audience)
    head = (f"POST /v1/gc HTTP/1.1\nHost: {a2.host}:{a2.port}\nContent-Length: 2\n"
            "Content-Type: application/json\nConnection: close\n"
            + "".join(f"{k}: {v}\n" for k, v in headers.items())).rstrip("\n")
    status, answer = _raw(fed.sites["a2"]["url"], head, b"{}")
    assert status == 401 and b"wrong_audience" in answer
    # the same captured headers with the audience edited do not verify either
    forged = head.replace(f"X-Hutong-Audience: {a1.audience}",
                          f"X-Hutong-Audience: {a2.audience}")
    status, answer = _raw(fed.sites["a2"]["url"], forged, b"{}")
    assert status == 401 and b"bad signature" in answer
    # and the genuine request still works at a1
    assert _raw(fed.sites["a1"]["url"], head.replace(f"Host: {a2.host}:{a2.port}",
                                                     f"Host: {a1.host}:{a1.port}"),
                b"{}")[0] == 200


def test_unauthenticated_upload_refused_before_the_body(fed: Federation) -> None:
    """V8: bodies up to 64 MiB were read before the 401. Now the 401 comes on the
    headers alone: the server answers although not one body byte was sent."""
    url = fed.sites["a1"]["url"]
    for path in ("/v1/chunks/put", "/v1/ns/write?path=/bank-a/x", "/v1/ns/mkdir"):
        head = (f"POST {path} HTTP/1.1\nHost: a1\nContent-Length: {63 << 20}\n"
                "Content-Type: application/octet-stream")
        status, answer = _raw(url, head, b"", timeout=10)
        assert status == 401, answer[:300]
    bad_token = (f"POST /v1/chunks/put HTTP/1.1\nHost: a1\nContent-Length: {63 << 20}\n"
                 "Authorization: Bearer eyJ4IjoxfQ.AAAA")
    assert _raw(url, bad_token, b"", timeout=10)[0] == 401


def test_chunked_json_capped_while_streaming(fed: Federation) -> None:
    """V8: chunked JSON bodies were read to 64 MiB (1,008 MiB RSS under 16 of them)
    before the 413. Now reading stops at 1 MiB: the 413 arrives while the client has
    sent 2 MiB of an endless body."""
    keys = fed.keys("bank-a")
    a1 = HttpClient(fed.sites["a1"]["url"])
    headers = keys.sign("POST", "/v1/ns/mkdir", b"whatever", a1.audience)
    head = ("POST /v1/ns/mkdir HTTP/1.1\nHost: a1\nTransfer-Encoding: chunked\n"
            "Content-Type: application/json\n"
            + "".join(f"{k}: {v}\n" for k, v in headers.items())).rstrip("\n")
    piece = b" " * 65536
    body = b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(32))  # 2 MiB
    status, answer = _raw(fed.sites["a1"]["url"], head, body, timeout=10)
    assert status == 413 and b"exceeds 1048576" in answer
    with fed.client("bank-a") as fc:  # the site still serves
        assert fc.read_bytes("/bank-a/secret/key.txt").startswith(b"the vault")


def test_signed_body_must_match(fed: Federation) -> None:
    """V8 corollary: the signature covers the body through its SHA-256 header, so a
    captured signature cannot carry another body."""
    keys = fed.keys("bank-a")
    a1 = HttpClient(fed.sites["a1"]["url"])
    good = json.dumps({"path": "/bank-a/shared/ok"}).encode()
    evil = json.dumps({"path": "/bank-a/shared/evil"}).encode()
    headers = keys.sign("POST", "/v1/ns/mkdir", good, a1.audience)
    head = (f"POST /v1/ns/mkdir HTTP/1.1\nHost: a1\nContent-Length: {len(evil)}\n"
            "Content-Type: application/json\nConnection: close\n"
            + "".join(f"{k}: {v}\n" for k, v in headers.items())).rstrip("\n")
    status, answer = _raw(fed.sites["a1"]["url"], head, evil)
    assert status == 401 and b"does not match the signed" in answer
    with fed.client("bank-a") as fc:
        assert not any(e["path"].endswith("evil") for e in fc.ls("/bank-a/shared"))
