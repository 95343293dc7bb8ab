"""The registry as a real process: signed registration, identifiers, expressions,
heartbeats, links, and rejected requests that change nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.federation import expr, ids
from gfs.federation.auth import AuthError, EntityKeys
from gfs.federation.http import ApiError, BadRequestError, HttpClient
from gfs.federation.testing import Proc
from gfs.federation.tls import Trust

_TRUST: dict[str, Trust] = {}
"""Each registry's trust by URL: its CA, pinned by the clients of these tests."""


def _serve(d: Path, log: Path, *args: str) -> Proc:
    p = Proc([sys.executable, "-m", "gfs.cli", "registry", "serve", "--state", str(d), *args],
             log)
    _TRUST[p.url] = Trust(p.url, (d / "tls" / "ca.pem").read_bytes())
    return p


def _client(url: str, keys: EntityKeys | None = None) -> HttpClient:
    return HttpClient(url, keys=keys, tls=_TRUST[url])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("registry")
    p = _serve(d, d / "log", "--ttl", "1.5", "--admission", "open")
    try:
        yield p.url
    finally:
        assert p.stop() == 0  # SIGTERM: graceful


def _entity(tmp: Path, name: str, url: str, industry: str = "FIN",
            region: str = "cn-west") -> tuple[EntityKeys, HttpClient]:
    keys = EntityKeys.create(tmp / name, name)
    h = _client(url, keys)
    rec = h.call("POST", "/v1/entities", {"name": name, "industry": industry, "region": region,
                                          "public_key": keys.public_b64})
    assert ids.parse(rec["id"]).kind == "entity"
    return keys, h


def _site(h: HttpClient, name: str, entity: str, region: str, tier: str, cap: int) -> dict:
    return dict(h.call("PUT", f"/v1/sites/{name}", {
        "entity": entity, "region": region, "endpoint": f"http://127.0.0.9:{len(name)}",
        "primary": False, "pools": [{"name": "p0", "tier": tier, "capacity": cap}]}))


def test_register_query_and_ids(registry: str, tmp_path: Path) -> None:
    _, ha = _entity(tmp_path, "bank-q", registry)
    _, ht = _entity(tmp_path, "telco-q", registry, "TEL", "cn-east")
    s1 = _site(ha, "q1", "bank-q", "cn-west", "hot", 1000)
    _site(ha, "q2", "bank-q", "cn-east", "cold", 5000)
    _site(ht, "q3", "telco-q", "cn-west", "hot", 10)
    pub = _client(registry)
    names = {s["name"] for s in pub.call("GET", "/v1/sites",
                                          query={"where": "region=cn-west & tier=hot"})["sites"]}
    assert {"q1", "q3"} <= names and "q2" not in names
    pools = pub.call("GET", "/v1/pools", query={"where": "entity=bank-q & capacity>=2000"})
    assert [p["site"] for p in pools["pools"]] == ["q2"]
    got = pub.call("GET", f"/v1/ids/{s1['pools'][0]['id']}")
    assert got["kind"] == "pool" and got["name"] == "q1/p0"
    assert pub.call("GET", f"/v1/ids/{s1['id'].lower()}")["name"] == "q1"
    with pytest.raises(BadRequestError, match="check character"):
        pub.call("GET", f"/v1/ids/{s1['id'][:-1]}{'0' if s1['id'][-1] != '0' else '1'}")
    with pytest.raises(BadRequestError, match="expected a comparison"):
        pub.call("GET", "/v1/sites", query={"where": "region=cn-west & (tier"})
    ha.call("PUT", "/v1/links/q1/q2", {"rtt_ms": 12.5, "mbps": 100})
    assert any(lk["a"] == "q1" and lk["rtt_ms"] == 12.5
               for lk in pub.call("GET", "/v1/links")["links"])


def test_signatures_required_and_checked(registry: str, tmp_path: Path) -> None:
    keys, h = _entity(tmp_path, "bank-s", registry)
    other = EntityKeys.create(tmp_path / "other", "bank-s")  # same name, another key
    with pytest.raises(ApiError) as e:
        _client(registry, other).call("POST", "/v1/entities", {
            "name": "bank-s", "region": "cn-west", "public_key": other.public_b64})
    assert e.value.status == 409
    with pytest.raises(AuthError, match="unsigned"):
        _client(registry).call("PUT", "/v1/sites/s1", {
            "entity": "bank-s", "region": "cn-west", "endpoint": "http://127.0.0.9:1",
            "pools": [{"name": "p0", "tier": "hot", "capacity": 1}]})
    with pytest.raises(AuthError, match="bad signature"):
        _client(registry, other).call("PUT", "/v1/sites/s1", {
            "entity": "bank-s", "region": "cn-west", "endpoint": "http://127.0.0.9:1",
            "pools": [{"name": "p0", "tier": "hot", "capacity": 1}]})
    with pytest.raises(BadRequestError, match="tier"):
        h.call("PUT", "/v1/sites/s1", {"entity": "bank-s", "region": "cn-west",
                                       "endpoint": "http://127.0.0.9:1",
                                       "pools": [{"name": "p0", "tier": "lava",
                                                  "capacity": 1}]})
    with pytest.raises(ApiError) as e2:
        _client(registry).call("GET", "/v1/sites/s1")
    assert e2.value.status == 404  # nothing was registered by the rejected requests
    # registration must be signed by the key it registers
    k3 = EntityKeys.create(tmp_path / "k3", "bank-t")
    with pytest.raises(AuthError, match="bad signature"):
        _client(registry, EntityKeys("bank-t", keys.private, keys.data_secret)).call(
            "POST", "/v1/entities", {"name": "bank-t", "region": "cn-west",
                                     "public_key": k3.public_b64})


def test_heartbeat_status_up_then_down(registry: str, tmp_path: Path) -> None:
    _, h = _entity(tmp_path, "bank-h", registry)
    _site(h, "h1", "bank-h", "cn-west", "warm", 100)
    h.call("POST", "/v1/sites/h1/heartbeat", {"used": {"p0": 42}})
    rec = _client(registry).call("GET", "/v1/sites/h1")
    assert rec["status"] == "up" and rec["pools"][0]["used"] == 42
    deadline = time.monotonic() + 10
    while _client(registry).call("GET", "/v1/sites/h1")["status"] != "down":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(BadRequestError):
        h.call("POST", "/v1/sites/h1/heartbeat", {"used": {"p0": -1}})


def test_expressions() -> None:
    p = expr.parse("region=cn-west & (tier=hot | tier=warm) & !status=down & free>10")
    assert p({"region": "cn-west", "tier": "warm", "status": "up", "free": 11})
    assert not p({"region": "cn-west", "tier": "cold", "status": "up", "free": 11})
    assert not p({"region": "cn-west", "tier": "hot", "status": "down", "free": 11})
    assert expr.parse("")({})
    for bad in ("region", "a=b &", "(a=b", "a=b)", "a==b", "a=b $ c=d"):
        with pytest.raises(expr.ExpressionError):
            expr.parse(bad)


def test_deep_expressions_are_a_clear_400(registry: str) -> None:
    """V11: 1,000 `!` or 400 `(` were a 500 RecursionError; now a 400 naming the limit,
    and the server goes on answering."""
    pub = _client(registry)
    for where in ("!" * 1000 + "a=b", "(" * 400 + "a=b" + ")" * 400):
        with pytest.raises(BadRequestError, match="nesting deeper than 32"):
            pub.call("GET", "/v1/sites", query={"where": where})
        with pytest.raises(BadRequestError, match="nesting deeper than 32"):
            pub.call("GET", "/v1/pools", query={"where": where})
    assert expr.parse("!" * 31 + "a=b")({"a": "c"})  # 31 levels are still fine
    assert pub.call("GET", "/v1/health")["status"] == "ok"


def test_registry_is_not_an_amplifier(registry: str, tmp_path: Path) -> None:
    """V10: a 1 MiB heartbeat `info` was stored and returned by every unauthenticated
    `GET /v1/sites` (150 sites: 135 MB per call); no limit of sites per entity and no
    way to remove a site."""
    _, h = _entity(tmp_path, "bank-v", registry)
    _, other = _entity(tmp_path, "telco-v", registry, "TEL")
    _site(h, "v0", "bank-v", "cn-west", "hot", 100)
    with pytest.raises(ApiError) as e:
        h.call("POST", "/v1/sites/v0/heartbeat", {"info": {"pad": "x" * (1 << 20)}})
    assert e.value.status == 413
    h.call("POST", "/v1/sites/v0/heartbeat", {"info": {"build": "x" * 3000}})
    pub = _client(registry)
    assert pub.call("GET", "/v1/sites/v0")["info"] == {"build": "x" * 3000}
    listing = pub.request("GET", "/v1/sites")[1]
    assert b"x" * 3000 not in listing
    for i in range(1, 64):
        _site(h, f"v{i}", "bank-v", "cn-west", "hot", 100)
    with pytest.raises(ApiError, match="already has 64 sites") as e2:
        _site(h, "v64", "bank-v", "cn-west", "hot", 100)
    assert e2.value.status == 409
    with pytest.raises(AuthError) as e3:  # another entity cannot remove bank-v's sites
        other.call("DELETE", "/v1/sites/v1")
    assert e3.value.status in (401, 403)
    h.call("PUT", "/v1/links/v0/v1", {"rtt_ms": 1.0})
    assert h.call("DELETE", "/v1/sites/v1")["name"] == "v1"
    with pytest.raises(ApiError) as e4:
        pub.call("GET", "/v1/sites/v1")
    assert e4.value.status == 404
    assert not any("v1" in (lk["a"], lk["b"]) for lk in pub.call("GET", "/v1/links")["links"])
    _site(h, "v64", "bank-v", "cn-west", "hot", 100)  # room again


def test_entities_exist_only_once_the_operator_admits_them(tmp_path: Path) -> None:
    """V4: registration was open and names first come, first served. Now a squatter's
    registration is a pending request; the operator admits the rightful key."""
    d = tmp_path / "reg"
    p = _serve(d, tmp_path / "log")
    try:
        squatter = EntityKeys.create(tmp_path / "squat", "bank-z")
        owner = EntityKeys.create(tmp_path / "owner", "bank-z")
        body = {"name": "bank-z", "industry": "FIN", "region": "cn-west"}
        for k in (squatter, owner):
            with pytest.raises(AuthError, match="not admitted") as e:
                _client(p.url, k).call("POST", "/v1/entities",
                                               body | {"public_key": k.public_b64})
            assert e.value.status == 403
        pub = _client(p.url)
        assert pub.call("GET", "/v1/entities")["entities"] == []
        with pytest.raises(AuthError):  # nothing can be done in its name meanwhile
            _client(p.url, squatter).call("PUT", "/v1/sites/z1", {
                "entity": "bank-z", "region": "cn-west", "endpoint": "http://127.0.0.9:1",
                "pools": [{"name": "p0", "tier": "hot", "capacity": 1}]})
        cli = [sys.executable, "-m", "gfs.cli", "registry"]
        pending = subprocess.run([*cli, "pending", "--state", str(d)], check=True,
                                 capture_output=True, text=True, timeout=60).stdout
        assert squatter.public_b64 in pending and owner.public_b64 in pending
        no_choice = subprocess.run([*cli, "admit", "--state", str(d), "bank-z"],
                                   capture_output=True, text=True, timeout=60)
        assert no_choice.returncode != 0 and "2 pending requests" in no_choice.stderr
        subprocess.run([*cli, "admit", "--state", str(d), "bank-z", "--key", owner.public_b64],
                       check=True, capture_output=True, timeout=60)
        rec = pub.call("GET", "/v1/entities/bank-z")
        assert rec["public_key"] == owner.public_b64 and rec["industry"] == "FIN"
        with pytest.raises(ApiError) as e2:
            _client(p.url, squatter).call("POST", "/v1/entities",
                                                  body | {"public_key": squatter.public_b64})
        assert e2.value.status == 409
        assert _client(p.url, owner).call(
            "POST", "/v1/entities", body | {"public_key": owner.public_b64})["id"] == rec["id"]
    finally:
        assert p.stop() == 0
