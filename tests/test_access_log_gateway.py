"""The gateways' access log (issue 13): every S3 and WebDAV request through a real gateway
process is recorded in the store's access log with the credential that signed it and the
result, and `hutong log` shows it; refused requests too, from the attacker's side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from gfs.client import Client
from gfs.federation.testing import Proc
from gfs.gateway import credentials
from tests.gateway_servers import S3Server, cli, code, s3server  # noqa: F401 - fixture

ROOT = Path(__file__).parent.parent


def hutong_log(state: Path, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), "log",
                           "--json", *args], capture_output=True, timeout=60, cwd=ROOT,
                          check=True)
    return list(json.loads(proc.stdout))


def test_s3_get_and_refused_put_are_logged(s3server: S3Server) -> None:  # noqa: F811
    owner = s3server.client()
    owner.create_bucket(Bucket="bkt")
    data = os.urandom(70_000)
    owner.put_object(Bucket="bkt", Key="obj", Body=data)
    with s3server.store() as fs:
        scoped = credentials.add(fs, ("other",))
    intruder = s3server.client(scoped)
    assert owner.get_object(Bucket="bkt", Key="obj")["Body"].read() == data
    with pytest.raises(ClientError) as e:
        intruder.put_object(Bucket="bkt", Key="planted", Body=b"x" * 1000)
    assert code(e) == "AccessDenied"
    records = hutong_log(s3server.state, "--path", "/bkt")
    get = [r for r in records if r["op"] == "s3 GetObject"]
    assert len(get) == 1, records
    assert get[0]["who"] == f"{s3server.cred.access_key}@local"
    assert (get[0]["status"], get[0]["result"], get[0]["bytes_out"]) == (200, "ok", len(data))
    assert get[0]["path"] == "/bkt/obj" and get[0]["method"] == "GET"
    put = [r for r in records if r["path"] == "/bkt/planted"]
    assert len(put) == 1, records
    assert put[0]["who"] == f"{scoped.access_key}@local" and put[0]["entity"] == "local"
    assert (put[0]["method"], put[0]["status"], put[0]["result"]) == ("PUT", 403,
                                                                        "AccessDenied")
    assert put[0]["bytes_in"] == 1000
    # a request signed with no known key is recorded as nobody, with its error
    bad = s3server.client(credentials.Credential("AKNOSUCHKEY", "x" * 40))
    with pytest.raises(ClientError):
        bad.get_object(Bucket="bkt", Key="obj")
    last = hutong_log(s3server.state, "--path", "/bkt/obj")[-1]
    assert (last["who"], last["status"], last["result"]) == ("-", 403, "InvalidAccessKeyId")


def test_webdav_read_and_refused_write_are_logged(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Client.init(state) as fs:
        cred = credentials.add(fs)
        fs.write_bytes("/hello.txt", b"hello from hutong")
    proc = Proc(cli("--state", str(state), "gateway", "webdav", "--listen", "127.0.0.1:0"),
                tmp_path / "webdav.log")
    try:
        with httpx.Client(base_url=proc.url, timeout=30) as http:
            got = http.get("/hello.txt", auth=(cred.access_key, cred.secret_key))
            assert got.status_code == 200 and got.content == b"hello from hutong"
            refused = http.put("/planted.txt", content=b"x" * 10,
                               auth=(cred.access_key, "wrong secret"))
            assert refused.status_code == 401
    finally:
        proc.stop()
    records = hutong_log(state)
    get = [r for r in records if r["path"] == "/hello.txt" and r["method"] == "GET"]
    assert len(get) == 1, records
    assert (get[0]["who"], get[0]["status"], get[0]["result"], get[0]["bytes_out"]) == (
        f"{cred.access_key}@local", 200, "ok", len(b"hello from hutong"))
    put = [r for r in records if r["path"] == "/planted.txt"]
    assert len(put) == 1, records
    assert (put[0]["who"], put[0]["method"], put[0]["status"], put[0]["result"]) == (
        "-", "PUT", 401, "http 401")
    with Client(state) as fs:
        assert not fs.exists("/planted.txt")
