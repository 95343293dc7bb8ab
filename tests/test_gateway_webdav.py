"""WebDAV through real clients (webdav4, and httpx for raw PROPFIND and bad bodies)
against `hutong gateway webdav` on 127.0.0.1 port 0."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from webdav4.client import Client as DavClient
from webdav4.client import HTTPError

from gfs.client import Client
from gfs.federation.testing import Proc
from gfs.gateway import credentials
from gfs.gateway.credentials import Credential
from tests.gateway_servers import cli


class DavServer:
    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        with Client.init(self.state) as fs:
            self.cred: Credential = credentials.add(fs)
            fs.mkdir("/shared")
            fs.write_bytes("/shared/hello.txt", b"hello from hutong")
        self.proc = Proc(cli("--state", str(self.state), "gateway", "webdav", "--listen",
                             "127.0.0.1:0"), root / "webdav.log")
        self.url = self.proc.url

    def client(self, password: str | None = None) -> DavClient:
        return DavClient(self.url, auth=(self.cred.access_key,
                                         password or self.cred.secret_key))


@pytest.fixture
def dav(tmp_path: Path) -> Iterator[DavServer]:
    server = DavServer(tmp_path)
    try:
        yield server
    finally:
        server.proc.stop()


def test_webdav_operations(dav: DavServer) -> None:
    c = dav.client()
    with c.open("shared/hello.txt", "rb") as f:
        assert f.read() == b"hello from hutong"
    c.mkdir("docs")
    data = os.urandom(3 << 20)
    c.upload_fileobj(io.BytesIO(data), "docs/blob.bin")
    out = io.BytesIO()
    c.download_fileobj("docs/blob.bin", out)
    assert out.getvalue() == data
    names = sorted(e["name"] for e in c.ls("docs"))
    assert names == ["docs/blob.bin"]
    assert c.info("docs/blob.bin")["content_length"] == len(data)
    c.copy("docs/blob.bin", "docs/copy.bin")
    c.move("docs/copy.bin", "shared/moved.bin")
    assert c.exists("shared/moved.bin") and not c.exists("docs/copy.bin")
    c.remove("shared/hello.txt")
    assert not c.exists("shared/hello.txt")
    with Client(dav.state) as fs:  # what WebDAV did is in the namespace
        assert fs.read_bytes("/shared/moved.bin") == data
        assert fs.du("/").unique_bytes < 1.1 * len(data)  # the copy shares chunks
        assert not fs.exists("/shared/hello.txt")
    c.remove("docs")
    assert not c.exists("docs")


def test_webdav_raw_requests(dav: DavServer) -> None:
    auth = (dav.cred.access_key, dav.cred.secret_key)
    with httpx.Client(base_url=dav.url, auth=auth) as h:
        r = h.request("PROPFIND", "/shared/", headers={"Depth": "1"})
        assert r.status_code == 207 and b"hello.txt" in r.content
        assert h.request("MKCOL", "/new").status_code == 201
        assert h.put("/new/a.txt", content=b"abc").status_code == 201
        r = h.get("/new/a.txt", headers={"Range": "bytes=1-1"})
        assert r.status_code == 206 and r.content == b"b"
        r = h.request("MOVE", "/new/a.txt", headers={"Destination": f"{dav.url}/new/b.txt"})
        assert r.status_code == 201
        assert h.get("/new/b.txt").content == b"abc"
        assert h.delete("/new").status_code == 204
        assert h.get("/new/b.txt").status_code == 404
        metrics = h.get("/-/metrics").text
    assert 'hutong_gateway_request_seconds_count{gateway="webdav",operation="PROPFIND"' in metrics


def test_webdav_refuses_wrong_secret(dav: DavServer) -> None:
    with pytest.raises(HTTPError) as e:
        dav.client("wrong").ls("/")
    assert e.value.response.status_code == 401
    r = httpx.put(f"{dav.url}/shared/evil.txt", content=b"x")  # anonymous
    assert r.status_code == 401
    with Client(dav.state) as fs:
        scoped = credentials.add(fs, ("somebucket",))  # bucket-scoped keys are S3-only
    r = httpx.get(f"{dav.url}/shared/hello.txt", auth=(scoped.access_key, scoped.secret_key))
    assert r.status_code == 401
    with Client(dav.state) as fs:
        assert not fs.exists("/shared/evil.txt")


def test_webdav_truncated_put_stores_nothing(dav: DavServer) -> None:
    import base64

    u = urlsplit(dav.url)
    token = base64.b64encode(f"{dav.cred.access_key}:{dav.cred.secret_key}".encode()).decode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(b"PUT /shared/hello.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                  + token.encode() + b"\r\nContent-Length: 100000\r\n\r\n" + b"y" * 5000)
        s.shutdown(socket.SHUT_WR)  # the client goes away mid-body
        while s.recv(65536):
            pass
    with Client(dav.state) as fs:
        assert fs.read_bytes("/shared/hello.txt") == b"hello from hutong"
