"""The federation end to end: a registry and three sites as real processes on distinct
loopback addresses (127.0.0.1 - .4): one namespace, best-replica reads, rules, kill a
site, corrupt a replica, grants, tokens, and rejected requests that change nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.errors import ChunkMissingError, InvalidPathError, NotFoundError
from gfs.federation.auth import AuthError, EntityKeys
from gfs.federation.http import ApiError, BadRequestError, HttpClient
from gfs.federation.testing import Federation, SiteDef, populate, started
from gfs.federation.tls import trust_for
from gfs.federation.wire import pack_frames

DATA = os.urandom(200_000) + b"shared tail " * 20_000


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    sites = [SiteDef("a1", "bank-a", "cn-west", True, "FIN"),
             SiteDef("a2", "bank-a", "cn-east"),
             SiteDef("t1", "telco-b", "cn-east", True, "TEL")]
    with started(tmp_path_factory.mktemp("fed"), sites, ttl=2.0, heartbeat=0.3) as f:
        with f.client("telco-b") as tc:
            tc.agreement_add("t1", "bank-a", 64 << 20)
        populate(f, "bank-a", {"/bank-a/data/x.bin": DATA,
                               "/bank-a/shared/s.txt": b"shared with telco-b\n"})
        yield f


def test_registry_lists_sites_with_ids(fed: Federation) -> None:
    with fed.client() as fc:
        sites = fc.sites(refresh=True)
    assert set(sites) == {"a1", "a2", "t1"}
    assert sites["a1"]["id"].startswith("BANK-A.FIN.CN-WEST.S.DC.")
    assert sites["t1"]["pools"][0]["id"].startswith("TELCO-B.TEL.CN-EAST.P.WARM.")
    assert all(s["status"] == "up" for s in sites.values())


def test_namespace_roundtrip_and_close_to_open(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        assert fc.read_bytes("/bank-a/data/x.bin") == DATA
        st1 = fc.stat("/bank-a/data/x.bin")
        fc.write_bytes("/bank-a/data/y.bin", b"v1")
        fc.write_bytes("/bank-a/data/y.bin", b"version 2")
        assert fc.read_bytes("/bank-a/data/y.bin") == b"version 2"
        fc.mv("/bank-a/data/y.bin", "/bank-a/data/z.bin")
        names = {e.path for e in fc.ls("/bank-a/data")}
        assert names == {"/bank-a/data/x.bin", "/bank-a/data/z.bin"}
        fc.rm("/bank-a/data/z.bin")
        with pytest.raises(NotFoundError):
            fc.stat("/bank-a/data/z.bin")
        assert st1.size == len(DATA)


def test_rule_places_replicas_encrypted_on_other_entity(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        rule = fc.rule_add("/bank-a/data/**", 3, "region=cn-west | region=cn-east")
        assert rule["state"] == "replicating"
        [r] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r["state"] == "ok" and sorted(r["sites"]) == ["a1", "a2", "t1"]
        # telco-b's site holds bank-a's chunks only as owner-encrypted blobs under keyed ids
        vault = fed.sites["t1"]["state"] / "vault" / "bank-a"
        blobs = [p for p in vault.glob("??/*")]
        assert blobs and all(p.read_bytes()[6] == 1 for p in blobs)  # flag bit 0
        plain = fc.site("a1").call("GET", "/v1/ns/manifest", query={"path": "/bank-a/data/x.bin"})
        assert not {c for c, _ in plain["chunks"]} & {p.name for p in blobs}
        # the nearest replica serves the read
        with fed.client("bank-a", near="t1") as near_t1:
            assert near_t1.read_bytes("/bank-a/data/x.bin") == DATA
            assert set(near_t1.chunks_from) == {"t1"}
        with fed.client("bank-a", near="a2") as near_a2:
            assert near_a2.read_bytes("/bank-a/data/x.bin") == DATA
            assert set(near_a2.chunks_from) == {"a2"}


def test_other_entity_cannot_probe_or_read_chunks(fed: Federation) -> None:
    telco = fed.keys("telco-b")
    plain = HttpClient(fed.sites["a1"]["url"], keys=telco)
    with fed.client("bank-a") as fc:
        m = fc.site("a1").call("GET", "/v1/ns/manifest", query={"path": "/bank-a/data/x.bin"})
    with pytest.raises(AuthError) as e:
        plain.call("POST", "/v1/chunks/has", {"ids": [m["chunks"][0][0]]})
    assert e.value.status == 403
    with pytest.raises(AuthError):
        plain.call("POST", "/v1/chunks/get", {"ids": [m["chunks"][0][0]]})
    # at its own site, telco-b cannot ask for bank-a's vault either
    own = HttpClient(fed.sites["t1"]["url"], keys=telco)
    with pytest.raises(AuthError):
        own.call("POST", "/v1/chunks/has", {"ids": [m["chunks"][0][0]], "owner": "bank-a"})


def test_grants_and_deny_by_default(fed: Federation) -> None:
    with fed.client("telco-b") as tb:
        with pytest.raises(AuthError) as e:
            tb.read_bytes("/bank-a/shared/s.txt")
        assert e.value.status == 403 and "no read grant" in str(e.value)
        with fed.client("bank-a") as fc:
            g = fc.grant("/bank-a/shared/**", "telco-b", "read")
        assert tb.read_bytes("/bank-a/shared/s.txt") == b"shared with telco-b\n"
        assert [x.path for x in tb.ls("/bank-a/shared")] == ["/bank-a/shared/s.txt"]
        with pytest.raises(AuthError):
            tb.read_bytes("/bank-a/data/x.bin")
        with pytest.raises(AuthError):
            tb.write_bytes("/bank-a/shared/evil.txt", b"x")
        with pytest.raises(AuthError):
            tb.grant("/bank-a/**", "telco-b", "write")  # only bank-a grants on /bank-a
        with fed.client("bank-a") as fc:
            fc.revoke("bank-a", g["id"])
        with pytest.raises(AuthError):
            tb.read_bytes("/bank-a/shared/s.txt")
    with fed.client("bank-a") as fc, pytest.raises(NotFoundError):
        fc.stat("/bank-a/shared/evil.txt")


def test_tokens_scope_prefix_expiry_forgery(fed: Federation) -> None:
    keys = fed.keys("bank-a")
    ro = keys.mint_token("alice", "read", "/bank-a/shared", ttl=600)
    with fed.client(token=ro) as fc:
        assert fc.read_bytes("/bank-a/shared/s.txt").startswith(b"shared")
        with pytest.raises(AuthError, match="does not allow write"):
            fc.write_bytes("/bank-a/shared/new.txt", b"x")
        with pytest.raises(AuthError, match="does not allow read"):
            fc.read_bytes("/bank-a/data/x.bin")
    rw = keys.mint_token("bob", "write", "/bank-a", ttl=600)
    with fed.client(token=rw) as fc:
        fc.write_bytes("/bank-a/shared/by-bob.txt", b"bob")
        assert fc.read_bytes("/bank-a/shared/by-bob.txt") == b"bob"
    expired = keys.mint_token("carol", "write", "/bank-a", ttl=1)
    time.sleep(1.1)
    with fed.client(token=expired) as fc, pytest.raises(AuthError, match="expired"):
        fc.write_bytes("/bank-a/shared/late.txt", b"x")
    # a token claiming bank-a but signed with telco-b's key
    forged = fed.keys("telco-b").mint_token("mallory", "write", "/bank-a", ttl=600)
    head, body, sig = forged.split(".")
    from gfs.federation.auth import b64d, b64e
    claims = json.loads(b64d(body))
    claims["iss"] = "bank-a"
    fake = f"{head}.{b64e(json.dumps(claims).encode())}.{sig}"
    with fed.client(token=fake) as fc, pytest.raises(AuthError, match="invalid token"):
        fc.write_bytes("/bank-a/shared/forged.txt", b"x")
    # a token of the format before JWT, validly signed by bank-a, is refused by name
    claims = {"iss": "bank-a", "sub": "old", "scope": "write", "prefix": "/bank-a",
              "iat": int(time.time()), "exp": int(time.time()) + 600, "jti": "0" * 32}
    body = b64e(json.dumps(claims).encode())
    old = body + "." + b64e(keys.private.sign(b"HTTOK1." + body.encode()))
    site = HttpClient(fed.sites["a1"]["url"], token=old, tls=trust_for(keys))
    with pytest.raises(AuthError, match="old-format token") as e:
        site.call("GET", "/v1/ns/stat", query={"path": "/bank-a/shared"})
    assert e.value.status == 401
    with fed.client("bank-a") as fc:
        for p in ("late.txt", "forged.txt", "new.txt"):
            assert not any(e.path.endswith(p) for e in fc.ls("/bank-a/shared"))


def test_forged_signature_and_unsigned_rejected(fed: Federation) -> None:
    url = fed.sites["a1"]["url"]
    telco = fed.keys("telco-b")
    impostor = EntityKeys("bank-a", telco.private, telco.data_secret)  # wrong key, right name
    with pytest.raises(AuthError, match="bad signature"):
        HttpClient(url, keys=impostor, tls=trust_for(fed.keys("bank-a"))).call(
            "POST", "/v1/ns/mkdir", {"path": "/bank-a/evil"})
    with pytest.raises(AuthError, match="authentication required"):
        fed.http("a1").call("POST", "/v1/ns/mkdir", {"path": "/bank-a/evil"})
    # a replayed signed request
    keys = fed.keys("bank-a")
    h = HttpClient(url, keys=keys)
    body = json.dumps({"path": "/bank-a/replay", "parents": True, "exist_ok": True}).encode()
    headers = keys.sign("POST", "/v1/ns/mkdir", body, h.audience)
    for expect in (200, 401):
        conn = h.connection(10)
        conn.request("POST", "/v1/ns/mkdir", body=body,
                     headers={**headers, "Content-Type": "application/json"})
        assert conn.getresponse().status == expect
        conn.close()
    with fed.client("bank-a") as fc, pytest.raises(NotFoundError):
        fc.stat("/bank-a/evil")


def test_paths_escaping_root_and_bad_bodies(fed: Federation) -> None:
    keys = fed.keys("bank-a")
    a1 = HttpClient(fed.sites["a1"]["url"], keys=keys)
    with pytest.raises(InvalidPathError, match=r"'\.\.' is not allowed"):
        a1.call("POST", "/v1/ns/mkdir", {"path": "/bank-a/../telco-b/x"})
    with pytest.raises(AuthError, match="outside /bank-a") as e2:
        a1.call("POST", "/v1/ns/mkdir", {"path": "/telco-b/x", "parents": True})
    assert e2.value.code == "path_outside_root"
    with pytest.raises(BadRequestError, match="not valid JSON"):
        a1.call("POST", "/v1/ns/mkdir", body=b"{nope", content_type="application/json")
    with pytest.raises(BadRequestError, match="'path' is required"):
        a1.call("POST", "/v1/ns/mkdir", {"parents": True})
    with pytest.raises(ApiError) as e3:
        a1.call("POST", "/v1/ns/mkdir", body=b'{"path": "' + b"x" * (2 << 20) + b'"}')
    assert e3.value.status == 413
    with pytest.raises(BadRequestError, match="chunk ids"):
        a1.call("POST", "/v1/chunks/has", {"ids": ["zz"]})
    # a put body with a truncated frame, or one corrupt blob among good ones: nothing stored
    from gfs.codec import chunk_id, encode_blob
    good_raw, bad_raw = b"good chunk " * 100, b"bad chunk " * 100
    h1, p1 = encode_blob(good_raw)
    h2, p2 = encode_blob(bad_raw)
    bad = bytearray(h2 + bytes(p2))
    bad[-1] ^= 0xFF
    with pytest.raises(BadRequestError, match="truncated frame"):
        a1.call("POST", "/v1/chunks/put", body=pack_frames([h1 + bytes(p1)])[:-3],
                content_type="application/octet-stream")
    with pytest.raises(BadRequestError, match="corrupt"):
        a1.call("POST", "/v1/chunks/put", body=pack_frames([h1 + bytes(p1), bytes(bad)]),
                content_type="application/octet-stream")
    have = a1.call("POST", "/v1/chunks/has",
                   {"ids": [chunk_id(good_raw).hex(), chunk_id(bad_raw).hex()]})
    assert have["have"] == [False, False]
    # commit naming chunks the site lacks: refused
    with pytest.raises(ApiError, match="not stored") as e4:
        a1.call("POST", "/v1/ns/commit", {"path": "/bank-a/data/ghost",
                                          "chunks": [[chunk_id(good_raw).hex(), 1100]]})
    assert e4.value.status == 409
    with fed.client("bank-a") as fc, pytest.raises(NotFoundError):
        fc.stat("/bank-a/data/ghost")


def test_concurrent_small_puts_share_packs(fed: Federation) -> None:
    """Every small chunk put made its own pack (5,781 packs under load); puts arriving
    together are now stored by one session, into one pack."""
    from concurrent.futures import ThreadPoolExecutor

    from gfs.codec import encode_blob

    packs = Path(fed.sites["a1"]["state"]) / "pools" / "default" / "packs"
    before = len(list(packs.rglob("*.pack")))
    puts = 192

    def put(i: int) -> int:
        head, payload = encode_blob(os.urandom(4096))
        h = fed.http("a1", keys=fed.keys("bank-a"))
        try:
            return int(h.call("POST", "/v1/chunks/put", body=pack_frames([head + payload]),
                              content_type="application/octet-stream")["stored"])
        finally:
            h.close()
    with ThreadPoolExecutor(24) as ex:
        assert sum(ex.map(put, range(puts))) == puts
    made = len(list(packs.rglob("*.pack"))) - before
    assert 0 < made <= puts * 3 // 4, made  # one per put before; how many share depends on load


def test_vault_temporaries_reported_and_removed(fed: Federation) -> None:
    """A host killed -9 while writing a guest's blob left `.NAME.tmp` files that nothing
    reported or removed; the vault listing counts them and gc removes those of an earlier
    process (never a write in flight of the running one)."""
    vault = Path(fed.sites["t1"]["state"]) / "vault" / "bank-a" / "ab"
    vault.mkdir(parents=True, exist_ok=True)
    left = vault / f".ab{'0' * 30}.1a2b3c4d.tmp"
    left.write_bytes(os.urandom(5000))
    os.utime(left, (time.time() - 86400, time.time() - 86400))  # before the site started
    young = vault / f".ab{'1' * 30}.5e6f7a8b.tmp"
    young.write_bytes(b"in flight")  # as if the running site were writing it
    t1 = fed.http("t1", keys=fed.keys("telco-b"))
    [held] = [o for o in t1.call("GET", "/v1/vault")["owners"] if o["owner"] == "bank-a"]
    assert held["temporaries"] == 2
    assert t1.call("POST", "/v1/gc", {})["vault_temporaries_removed"] == 1
    assert not left.exists() and young.exists()
    young.unlink()
    [held] = [o for o in t1.call("GET", "/v1/vault")["owners"] if o["owner"] == "bank-a"]
    assert held["temporaries"] == 0


def test_metrics_and_status(fed: Federation) -> None:
    text = fed.metrics("a1")
    assert b"hutong_site_http_requests_total" in text
    assert b"hutong_site_commits_total" in text
    st = HttpClient(fed.sites["a1"]["url"], keys=fed.keys("bank-a")).call("GET", "/v1/status")
    assert st["primary"] and st["pools"][0]["used"] > 0


def test_metrics_need_the_sites_own_entity(fed: Federation) -> None:
    """R11: /metrics was served to anyone. Now only the site's entity reads it: signed, an
    entity-wide token, or a `metrics` token, which reads nothing else."""
    keys = fed.keys("bank-a")
    with pytest.raises(AuthError) as e:
        fed.http("a1").call("GET", "/metrics")
    assert e.value.status == 401
    narrow = keys.mint_token("u", "read", "/bank-a/shared", ttl=600)
    for h in (fed.http("a1", keys=fed.keys("telco-b")), fed.http("a1", token=narrow)):
        with pytest.raises(AuthError) as e:
            h.call("GET", "/metrics")
        assert e.value.status == 403
    scraper = fed.http("a1", token=keys.mint_token("prom", "metrics", "/bank-a", ttl=600))
    assert b"hutong_site_http_requests_total" in scraper.call("GET", "/metrics")
    for target, query in (("/v1/ns/stat", {"path": "/bank-a/data/x.bin"}),
                          ("/v1/ns/read", {"path": "/bank-a/data/x.bin"})):
        with pytest.raises(AuthError, match="metrics token") as e:
            scraper.call("GET", target, query=query)
        assert e.value.status == 403
    with fed.client(token=scraper.token) as fc, pytest.raises(AuthError):
        fc.read_bytes("/bank-a/data/x.bin")


def test_corrupt_replica_detected_and_another_read(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        fc.write_bytes("/bank-a/data/c.bin", os.urandom(50_000))
        data = fc.read_bytes("/bank-a/data/c.bin")
        fc.reconcile("bank-a")
    vault = fed.sites["t1"]["state"] / "vault" / "bank-a"
    for p in vault.glob("??/*"):
        b = bytearray(p.read_bytes())
        b[-5] ^= 0xFF
        p.write_bytes(bytes(b))
    with fed.client("bank-a", near="t1") as fc:
        assert fc.read_bytes("/bank-a/data/c.bin") == data
        assert fc.bad_copies >= 1 and set(fc.chunks_from) - {"t1"}
    # damage bank-a's own replica on a2 as well (every pack of its store)
    a2 = fed.sites["a2"]["state"]
    for p in (a2 / "pools" / "default" / "packs").glob("??/*.pack"):
        b = bytearray(p.read_bytes())
        b[-3] ^= 0xFF
        p.write_bytes(bytes(b))
    with Client(a2) as local:
        assert not local.fsck().ok
    # the reconciler's audit reads every replica back and replaces the damaged ones
    with fed.client("bank-a") as fc:
        states = fc.reconcile("bank-a", verify=True)
        assert sum(r.get("repaired", 0) for r in states) >= 2
    with fed.client("bank-a", near="t1") as fc:
        assert fc.read_bytes("/bank-a/data/c.bin") == data
        assert fc.bad_copies == 0 and set(fc.chunks_from) == {"t1"}
    with Client(a2) as local:
        report = local.fsck()
        assert report.ok, report.problems
    with fed.client("bank-a") as fc:  # a second audit finds nothing to repair
        again = fc.reconcile("bank-a", verify=True)
        assert sum(r.get("repaired", 0) for r in again) == 0, (states, again)


def test_kill_site_reads_from_replicas_rule_stuck_then_repaired(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        rule = fc.rule_add("/bank-a/data/x.bin", 2, "region=cn-east")
        [r] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r["state"] == "ok" and sorted(r["sites"]) == ["a2", "t1"]
    fed.kill("a2")  # kill -9
    fed.wait_status("a2", "down")
    with fed.client("bank-a", near="a2") as fc:
        assert fc.read_bytes("/bank-a/data/x.bin") == DATA
        assert "a2" not in fc.chunks_from
        [r] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r["state"] == "stuck" and "only 1 of 2" in r["reason"] and "a2" in r["reason"]
    fed.start("a2")
    fed.wait_status("a2", "up")
    with fed.client("bank-a") as fc:
        [r] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r["state"] == "ok"
        assert next(x for x in fc.rules("bank-a") if x["id"] == rule["id"])["state"] == "ok"


def test_rule_removal_lets_gc_reclaim(fed: Federation) -> None:
    keys = fed.keys("bank-a")
    with fed.client("bank-a") as fc:
        rule = fc.rule_add("/bank-a/shared/**", 1, "site=t1")
        [r] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r["state"] == "ok" and r["sites"] == ["t1"]
        pins = fed.sites["t1"]["state"] / "vault" / "bank-a" / "pins"
        assert (pins / f"{rule['id']}.json").exists()
        for other in fc.rules("bank-a"):
            fc.rule_rm("bank-a", other["id"])
        assert not list(pins.glob("*.json"))
    # gc at t1 runs as telco-b; it drops bank-a's unpinned blobs
    t1 = HttpClient(fed.sites["t1"]["url"], keys=fed.keys("telco-b"))
    report = t1.call("POST", "/v1/gc", {})
    assert report["vault_removed"] > 0
    assert not list((fed.sites["t1"]["state"] / "vault" / "bank-a").glob("??/*"))
    # a2's pins are gone too: its store's /.pins has no files left
    a2 = HttpClient(fed.sites["a2"]["url"], keys=keys)
    a2.call("POST", "/v1/gc", {})


def test_not_primary_refuses_namespace(fed: Federation) -> None:
    a2 = HttpClient(fed.sites["a2"]["url"], keys=fed.keys("bank-a"))
    with pytest.raises(ApiError) as e:
        a2.call("GET", "/v1/ns/stat", query={"path": "/bank-a/data"})
    assert e.value.status == 421


def test_missing_everywhere_is_a_clear_error(fed: Federation, tmp_path: Path) -> None:
    with fed.client("bank-a") as fc:
        fc.write_bytes("/bank-a/data/only-a1.bin", os.urandom(30_000))
    # damage a1's copy: no replica holds this file
    import gfs.client
    with fed.client("bank-a") as fc:
        m = fc.site("a1").call("GET", "/v1/ns/manifest",
                               query={"path": "/bank-a/data/only-a1.bin"})
    packs = list((fed.sites["a1"]["state"] / "pools" / "default" / "packs").glob("*/*.pack"))
    target = bytes.fromhex(m["chunks"][0][0])
    for p in packs:
        b = bytearray(p.read_bytes())
        i = b.find(target)
        if i >= 0:
            b[i + 40] ^= 0xFF
            p.write_bytes(bytes(b))
    with fed.client("bank-a") as fc, pytest.raises(ChunkMissingError, match="no readable"):
        fc.read_bytes("/bank-a/data/only-a1.bin")
    assert gfs.client  # imported for its side effect-free use above


def test_sigterm_is_graceful(fed: Federation) -> None:
    proc = fed.procs["t1"]
    assert proc.stop(signal.SIGTERM) == 0
    fed.procs.pop("t1")
    fed.start("t1")


def test_cli_grant_rule_status_token(fed: Federation) -> None:
    import subprocess
    import sys
    state = str(fed.sites["a1"]["state"])

    def hutong(*args: str, ok: bool = True) -> str:
        r = subprocess.run([sys.executable, "-m", "gfs.cli", *args], capture_output=True,
                           text=True, timeout=60)
        assert (r.returncode == 0) == ok, r.stderr
        return r.stdout + r.stderr
    out = hutong("grant", "/bank-a/shared/**", "--to", "telco-b", "--read", "--state", state)
    assert "telco-b may read /bank-a/shared/**" in out
    out = hutong("rule", "add", "/bank-a/shared/**", "--copies", "1", "--where", "site=a1",
                 "--lifetime", "7d", "--state", state)
    assert out.startswith("rule ")
    assert " ok" in hutong("rule", "reconcile", "--state", state)
    assert "copies=1" in hutong("rule", "ls", "--state", state)
    status = hutong("status", "--state", state)
    assert "a1" in status and "t1" in status and "rules:" in status
    tok = hutong("token", "mint", "--user", "dan", "--scope", "read", "--prefix",
                 "/bank-a/shared", "--ttl", "10m", "--state", state).strip()
    hutong("profile", "add", "dan", "--registry", fed.registry_url, "--entity", "bank-a",
           "--token", tok, "--registry-ca", str(fed.registry_ca_file))
    # the federation's own commands take the registry CA copied into the profile
    assert "a1" in hutong("--profile", "dan", "status")
    assert "shared with" in hutong("--profile", "dan", "cat", "/bank-a/shared/s.txt")
    err = hutong("--profile", "dan", "cat", "/bank-a/data/x.bin", ok=False)
    assert "no such file" in err  # outside the token's prefix nothing exists
    err = hutong("rule", "add", "/bank-a/x", "--copies", "1", "--where", "region=(",
                 "--state", state, ok=False)
    assert "expression" in err


def test_binary_answers_that_look_like_json_stay_bytes(fed: Federation) -> None:
    """A body is JSON only when the server says so, not when its first byte is '{'."""
    body = b'{"not": "json to the client"}\x99'
    with fed.client("bank-a") as fc:
        fc.write_bytes("/bank-a/shared/brace.bin", body)
        g = fc.grant("/bank-a/shared/brace.bin", "telco-b", "read")
        assert fc.read_bytes("/bank-a/shared/brace.bin") == body
    with fed.client("telco-b") as tb:
        assert tb.read_bytes("/bank-a/shared/brace.bin") == body  # via /v1/ns/read
    raw = HttpClient(fed.sites["a1"]["url"], keys=fed.keys("bank-a"))
    assert raw.call("GET", "/v1/ns/read", query={"path": "/bank-a/shared/brace.bin"}) == body
    with fed.client("bank-a") as fc:
        fc.revoke("bank-a", g["id"])
