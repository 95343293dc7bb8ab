"""The access log (issue 13 item 5): every read and write through a site is recorded (who,
what, when, bytes, result), append-only and rotated, queried with `hutong log`; from the
attacker's side, no request writes, forges or truncates a record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs import accesslog
from gfs.accesslog import Access, AccessLog
from gfs.federation.auth import AuthError
from gfs.federation.http import ApiError
from gfs.federation.testing import Federation

ROOT = Path(__file__).parent.parent
DATA = os.urandom(300_000)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with Federation(tmp_path_factory.mktemp("fed"), ttl=2.0, heartbeat=0.3) as f:
        f.registry()
        for name, entity, region in (("a1", "bank-a", "cn-west"), ("t1", "telco-b", "cn-east")):
            f.site(name, entity, region, primary=True)
        yield f


def hutong_log(state: Path, *args: str) -> list[dict[str, object]]:
    proc = subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), "log",
                           "--json", *args], capture_output=True, timeout=60, cwd=ROOT,
                          check=True)
    return list(json.loads(proc.stdout))


def test_reads_and_writes_are_recorded_and_queryable(fed: Federation) -> None:
    state = Path(fed.sites["a1"]["state"])
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/logged", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/logged/f.bin", DATA)
    token = fed.keys("bank-a").mint_token("alice", "read", "/bank-a/logged", ttl=600)
    with fed.client(token=token) as uc:
        assert uc.read_bytes("/bank-a/logged/f.bin") == DATA
    with fed.client("telco-b") as tc, pytest.raises(AuthError):
        tc.read_bytes("/bank-a/logged/f.bin")
    with pytest.raises(AuthError):
        fed.http("a1").call("GET", "/v1/ns/stat", query={"path": "/bank-a/logged/f.bin"})

    mine = hutong_log(state, "--entity", "bank-a", "--since", "10m")
    assert mine and all(r["entity"] == "bank-a" for r in mine)
    assert sum(int(str(r["bytes_in"])) for r in mine if r["who"] == "bank-a") >= len(DATA) // 2
    on_file = hutong_log(state, "--path", "/bank-a/logged/f.bin")
    writes = [r for r in on_file if r["who"] == "bank-a" and r["method"] == "POST"]
    assert writes and all(r["result"] == "ok" and r["status"] == 200 for r in writes)
    reads = [r for r in on_file if r["who"] == "alice@bank-a"]
    assert reads and sum(int(str(r["bytes_out"])) for r in reads) >= len(DATA) // 2
    refused = [r for r in on_file if r["entity"] == "telco-b"]
    assert refused and all(r["status"] == 403 for r in refused)
    anon = [r for r in on_file if r["who"] == "-"]
    assert anon and anon[-1]["status"] == 401 and anon[-1]["result"] == "unauthenticated"
    assert not hutong_log(state, "--path", "/bank-a/elsewhere")
    assert not hutong_log(state, "--since", "2001-01-01T00:00:00+00:00", "--entity", "nobody")


def test_clients_cannot_write_forge_or_truncate_the_log(fed: Federation) -> None:
    state = Path(fed.sites["a1"]["state"])
    path = accesslog.log_path(state)
    with fed.client("bank-a") as fc:
        fc.write_bytes("/bank-a/warmup.txt", b"x")
    before = path.read_bytes()
    bank = fed.http("a1", keys=fed.keys("bank-a"))
    forged = json.dumps({"time": 0, "who": "forged", "entity": "bank-a"})
    attempts = [
        ("GET", "/v1/log", None, None), ("DELETE", "/v1/log", None, None),
        ("PUT", "/log/access.jsonl", None, None), ("POST", "/v1/access", {"x": 1}, None),
        ("GET", "/v1/ns/read", None, {"path": "/bank-a/../log/access.jsonl"}),
    ]
    for method, target, payload, query in attempts:
        with pytest.raises((ApiError, AuthError, OSError)):
            bank.call(method, target, payload, query=query)
    # names may hold newlines and JSON: recorded escaped, they cannot start a record
    bank.call("POST", "/v1/ns/mkdir", {"path": "/bank-a/\n" + forged + "\n"})
    with pytest.raises(OSError):
        bank.call("GET", "/v1/ns/stat", query={"path": "/bank-a/x\n" + forged})
    after = path.read_bytes()
    assert after.startswith(before) and len(after) > len(before)  # appended, never rewritten
    lines = after.decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(lines)  # one record per line: nothing injected a line
    assert not any(r["who"] == "forged" for r in records)
    new = records[len(before.decode().splitlines()):]
    refused = [r for r in new if r["op"] in ("/v1/log", "unmatched", "/v1/ns/read")]
    assert len(refused) >= len(attempts) and all(r["result"] != "ok" for r in refused)
    assert any("\n" in r["path"] for r in new)  # the hostile path is kept, escaped
    assert path.stat().st_mode & 0o777 == 0o600


def test_rotation_by_size_keeps_the_newest(tmp_path: Path) -> None:
    log = AccessLog(tmp_path, max_bytes=4096, backups=3)
    for i in range(400):
        log.record(Access(1_000_000.0 + i, "u@e", "e", "GET", "/v1/ns/read", f"/e/f{i}",
                          0, i, 200, "ok"))
    log.close()
    files = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert files == ["access.jsonl", "access.jsonl.1", "access.jsonl.2", "access.jsonl.3"]
    assert all((tmp_path / "log" / f).stat().st_size <= 4096 for f in files)
    got = list(accesslog.read(tmp_path))
    assert [a.bytes_out for a in got] == list(range(400 - len(got), 400))  # oldest first
    assert [a.path for a in accesslog.read(tmp_path, path="/e/f399")] == ["/e/f399"]
    assert not list(accesslog.read(tmp_path, since=2_000_000.0))
