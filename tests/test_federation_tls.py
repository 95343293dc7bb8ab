"""TLS between the parties of a federation, from the attacker's side: certificates that
are missing, self-signed, of another entity or of another site are refused; TLS 1.2 and
plain HTTP are refused; a capture of the traffic holds no file byte and no token."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs.errors import ConfigError
from gfs.federation import certs
from gfs.federation.auth import AuthError, EntityKeys, audience_of
from gfs.federation.client import FederationClient
from gfs.federation.http import BadRequestError, HttpClient, UnavailableError
from gfs.federation.namespace import FederatedNamespace
from gfs.federation.testing import TWO_ENTITIES, Federation, Proc, SiteDef, started
from gfs.federation.tls import Trust, trust_for
from gfs.profiles import ProfileError, add_profile, open_namespace
from gfs.testing.relay import TcpRelay

MARK = b"TLS-CAPTURE-MARKER-7f3a9c"
_HANDSHAKE_REFUSED = r"(?i)unknown.ca|closed connection|reset"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    sites = [*TWO_ENTITIES, SiteDef("a2", "bank-a", "cn-east")]
    with started(tmp_path_factory.mktemp("tls"), sites) as f:
        yield f


def _rogue(tmp: Path, fed: Federation, org: str, site: str, *,
           ca_from: str | None = None, days: int = 30) -> Trust:
    """A client trust presenting a certificate for `site` of `org` (valid for `days`),
    issued by a CA of its own (self-made) or by the CA of site `ca_from`'s entity."""
    d = tmp / f"rogue-{org}-{site}-{ca_from}-{days}"
    if ca_from is None:
        certs.create_ca(d, org, f"Hutong entity CA {org}")  # the same names as the real CA
    else:
        certs.copy_ca(fed.sites[ca_from]["state"] / "federation" / "tls", d)
    certs.issue_node(d, org, site, certs.site_name(site, org), days=days)
    for f in (certs.CA_CERT, certs.CA_KEY):  # it checks servers against the real CAs
        (d / f).unlink()
    return Trust(fed.registry_url, fed.registry_ca, directory=d)


def test_signed_request_without_client_certificate_refused(fed: Federation) -> None:
    """Mutual TLS: a request signed with bank-a's key but sent without bank-a's
    certificate (a stolen key used from another host) is refused; users reach the
    site with TLS and a token, without a certificate."""
    h = HttpClient(fed.sites["a1"]["url"], keys=fed.keys("bank-a"), tls=fed.trust)
    with pytest.raises(AuthError) as e:
        h.call("GET", "/v1/status")
    assert e.value.status == 401 and e.value.code == "client_certificate"
    token = fed.keys("bank-a").mint_token("u", "read", "/bank-a", ttl=600)
    assert fed.http("a1", token=token).call("GET", "/v1/status")["site"] == "a1"
    # the same request with the certificate passes
    assert fed.http("a1", keys=fed.keys("bank-a")).call("GET", "/v1/status")["site"] == "a1"


@pytest.mark.parametrize("ca_from", [None, "t1"])
def test_foreign_client_certificate_refused(fed: Federation, tmp_path: Path,
                                            ca_from: str | None) -> None:
    """A certificate named like bank-a's site a2 but issued by a self-made CA (with the
    same names as bank-a's) fails the handshake; one issued by telco-b's real CA
    passes the handshake but cannot carry bank-a's signed requests."""
    rogue = _rogue(tmp_path, fed, "bank-a", "a2", ca_from=ca_from)
    h = HttpClient(fed.sites["a1"]["url"], keys=fed.keys("bank-a"), tls=rogue, site="a1")
    if ca_from is None:  # the site ends the handshake (asyncio sends no alert)
        with pytest.raises((AuthError, UnavailableError), match=_HANDSHAKE_REFUSED):
            h.call("GET", "/v1/status")
    else:
        with pytest.raises(AuthError) as e:
            h.call("GET", "/v1/status")
        assert e.value.status == 403 and e.value.code == "client_certificate"


def test_expired_client_certificate_refused(fed: Federation, tmp_path: Path) -> None:
    """bank-a's own CA, its own site's name, but expired yesterday: the handshake fails;
    the same certificate still valid gets through."""
    for days, refused in ((-1, True), (30, False)):
        mine = _rogue(tmp_path, fed, "bank-a", "a2", ca_from="a2", days=days)
        h = HttpClient(fed.sites["a1"]["url"], keys=fed.keys("bank-a"), tls=mine, site="a1")
        if refused:
            with pytest.raises((AuthError, UnavailableError), match=_HANDSHAKE_REFUSED):
                h.call("GET", "/v1/status")
        else:
            assert h.call("GET", "/v1/status")["site"] == "a1"


def test_self_signed_client_certificate_refused(fed: Federation, tmp_path: Path) -> None:
    d = tmp_path / "selfsigned"
    certs.create_ca(d, "bank-a", "a1")
    shutil.move(d / certs.CA_CERT, d / certs.NODE_CERT)
    shutil.move(d / certs.CA_KEY, d / certs.NODE_KEY)
    h = HttpClient(fed.sites["a1"]["url"], tls=Trust(fed.registry_url, fed.registry_ca,
                                                     directory=d), site="a1")
    with pytest.raises((AuthError, UnavailableError), match=_HANDSHAKE_REFUSED):
        h.call("GET", "/v1/health")


def test_client_refuses_a_server_with_another_sites_certificate(fed: Federation) -> None:
    """The client checks the certificate against the expected site's entity CA and
    name: a2 (same entity) and t1 (another entity) cannot answer for a1."""
    for other in ("a2", "t1"):
        h = HttpClient(fed.sites[other]["url"], keys=fed.keys("bank-a"), site="a1")
        with pytest.raises(AuthError) as e:
            h.call("GET", "/v1/health")
        assert e.value.code == "tls" and "CERTIFICATE_VERIFY_FAILED" in str(e.value).upper()
    assert HttpClient(fed.sites["a2"]["url"], keys=fed.keys("bank-a")).call(
        "GET", "/v1/health")["status"] == "ok"  # the registry says a2 is there


def test_client_refuses_another_entity_ca_issuing_a_site_name(fed: Federation,
                                                              tmp_path: Path) -> None:
    """telco-b's CA issues a certificate named a1.bank-a.hutong and serves it: a
    client expecting a1 refuses it (only bank-a's CA speaks for bank-a's sites)."""
    d = tmp_path / "impostor"
    certs.copy_ca(fed.sites["t1"]["state"] / "federation" / "tls", d)
    certs.issue_node(d, "bank-a", "a1", certs.site_name("a1", "bank-a"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / certs.NODE_CERT, d / certs.NODE_KEY)
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(20)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = srv.accept()
            with ctx.wrap_socket(conn, server_side=True) as s:
                s.recv(1)
        except (OSError, ssl.SSLError) as e:
            errors.append(e)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        h = HttpClient(f"https://127.0.0.1:{srv.getsockname()[1]}", keys=fed.keys("bank-a"),
                       site="a1")
        with pytest.raises(AuthError, match="CERTIFICATE_VERIFY_FAILED"):
            h.call("GET", "/v1/health")
        t.join(20)
        assert errors  # the impostor saw the handshake fail
    finally:
        srv.close()


def test_unknown_endpoint_is_not_trusted(fed: Federation) -> None:
    """Without a site name, the client trusts only what the registry lists at a URL."""
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        h = HttpClient(f"https://127.0.0.1:{srv.getsockname()[1]}", keys=fed.keys("bank-a"))
        with pytest.raises(AuthError, match="no site of registry"):
            h.call("GET", "/v1/health")
    finally:
        srv.close()


@pytest.mark.parametrize("who", ["a1", "registry"])
def test_tls12_refused(fed: Federation, who: str) -> None:
    url = fed.registry_url if who == "registry" else fed.sites[who]["url"]
    host, port = url.split("//")[1].rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            pytest.raises(ssl.SSLError, match=r"(?i)version|alert|eof"):
        ctx.wrap_socket(raw, server_hostname="x")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3  # the same client with 1.3 gets through
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="x") as s:
        assert s.version() == "TLSv1.3"


def test_plaintext_refused(fed: Federation) -> None:
    """Plain HTTP to a TLS port gets no answer; a client refuses http:// URLs unless
    started with --insecure-plaintext."""
    for url in (fed.sites["a1"]["url"], fed.registry_url):
        host, port = url.split("//")[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            conn.request("GET", "/v1/health")
            conn.getresponse()
        conn.close()
    plain = fed.sites["a1"]["url"].replace("https://", "http://")
    with pytest.raises(ConfigError, match="insecure-plaintext"):
        HttpClient(plain, keys=fed.keys("bank-a")).call("GET", "/v1/health")


def test_registry_refuses_a_ca_not_bound_to_the_entity_key(fed: Federation) -> None:
    """The registry publishes a CA only with the entity key's signature over it, so
    neither another entity nor the registry can swap it unnoticed."""
    bank, telco = fed.keys("bank-a"), fed.keys("telco-b")
    telco_ca = (fed.sites["t1"]["state"] / "federation" / "tls" / certs.CA_CERT).read_bytes()
    body = {"name": "bank-a", "region": "cn-west", "public_key": bank.public_b64,
            "ca": telco_ca.decode(), "ca_sig": certs.sign_ca(telco, telco_ca)}
    reg = HttpClient(fed.registry_url, keys=bank)
    with pytest.raises(BadRequestError, match="not a self-signed CA signed by"):
        reg.call("POST", "/v1/entities", body)
    rec = reg.call("GET", "/v1/entities/bank-a")
    assert rec["ca"].encode() != telco_ca
    # a record whose CA signature does not verify is not trusted by clients
    forged = dict(rec, ca=telco_ca.decode())
    with pytest.raises(AuthError, match="not a self-signed CA signed by"):
        Trust(fed.registry_url, fed.registry_ca)._verified(forged)


class _Relay(TcpRelay):
    """A TCP relay on loopback that records every byte in both directions."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.captured = bytearray()
        super().__init__(target, connect_timeout=30)

    @property
    def port(self) -> int:
        return self.address[1]

    def pump(self, a: socket.socket, b: socket.socket, direction: str, number: int) -> None:
        while data := a.recv(65536):
            with self._lock:
                self.captured += data
            b.sendall(data)

    def close(self, *, join: float = 10.0, cut: bool = True) -> None:
        super().close(join=join, cut=cut)


def test_capture_holds_no_file_byte_and_no_token(fed: Federation) -> None:
    """Everything a network observer between a client and site a1 sees: a file written
    and read back through the federation (a token's write, a signed read) appears in
    the capture neither as bytes nor as the token."""
    host, port = fed.sites["a1"]["url"].split("//")[1].rsplit(":", 1)
    relay = _Relay((host, int(port)))
    data = (MARK + os.urandom(16)) * 4096  # 160 KiB with the marker all over it
    token = fed.keys("bank-a").mint_token("writer", "write", "/bank-a/cap", ttl=600)
    try:
        url = f"https://127.0.0.1:{relay.port}"
        user = HttpClient(url, token=token, tls=fed.trust, site="a1")
        user.call("POST", "/v1/ns/mkdir", {"path": "/bank-a/cap", "parents": True,
                                           "exist_ok": True})
        user.call("POST", "/v1/ns/write", query={"path": "/bank-a/cap/f.bin"}, body=data,
                  content_type="application/octet-stream")
        owner = HttpClient(url, keys=fed.keys("bank-a"), tls=trust_for(fed.keys("bank-a")),
                           site="a1")
        owner.audience = audience_of(fed.sites["a1"]["url"])  # signed for a1 itself
        assert owner.call("GET", "/v1/ns/read", query={"path": "/bank-a/cap/f.bin"}) == data
        user.close()
        owner.close()
    finally:
        relay.close()
    seen = bytes(relay.captured)
    assert len(seen) > 2 * len(data)  # the file went both ways through the relay
    assert MARK not in seen and data[:4096] not in seen
    assert token.encode() not in seen and token.split(".")[1].encode() not in seen
    assert b"/bank-a/cap" not in seen and b"X-Hutong-Signature" not in seen


def test_ca_binding_checks_key_name_and_kind(tmp_path: Path) -> None:
    """The binding verifies only with the entity's key, for the entity's name, over a
    self-signed CA certificate (a site's certificate is not a CA)."""
    keys = EntityKeys.create(tmp_path / "k", "bank-u")
    other = EntityKeys.create(tmp_path / "o", "bank-u")
    d = tmp_path / "k" / "tls"
    certs.init_site_tls(d, site="u1", entity="bank-u", registry="https://127.0.0.1:1",
                        registry_ca=_self_signed_pem(tmp_path), ca_from=None)
    ca = (d / certs.CA_CERT).read_text()
    node = (d / certs.NODE_CERT).read_text()
    sig = certs.sign_ca(keys, ca.encode())
    mine = keys.private.public_key()
    assert certs.ca_fields(keys) == {"ca": ca, "ca_sig": sig}  # Ed25519: deterministic
    assert certs.verify_ca("bank-u", ca, sig, mine).subject.rfc4514_string().endswith(
        "O=bank-u")
    for name, pem, s, key in (("bank-u", ca, sig, other.private.public_key()),  # key
                              ("bank-v", ca, sig, mine),                        # name
                              ("bank-u", node, certs.sign_ca(keys, node.encode()), mine)):
        with pytest.raises(AuthError, match="not a self-signed CA"):
            certs.verify_ca(name, pem, s, key)


def test_site_init_refuses_a_bad_registry_ca_and_changes_nothing(tmp_path: Path) -> None:
    from gfs.federation.site import init_site

    with pytest.raises(ConfigError, match="registry-ca"):
        init_site(tmp_path / "s", name="x1", entity="bank-x", region="cn-west",
                  registry="https://127.0.0.1:1")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        init_site(tmp_path / "s", name="x1", entity="bank-x", region="cn-west",
                  registry="https://127.0.0.1:1", registry_ca=b"junk")
    assert not (tmp_path / "s").exists()


def _self_signed_pem(tmp: Path) -> bytes:
    certs.create_ca(tmp / "reg", "registry", "Hutong registry CA")
    return (tmp / "reg" / certs.CA_CERT).read_bytes()


def test_insecure_plaintext_is_explicit_and_loud(tmp_path: Path) -> None:
    """A registry serves plain HTTP only with --insecure-plaintext, and says so on
    stderr; a client talks to it only with a trust that allows plaintext."""
    d = tmp_path / "reg"
    p = Proc([sys.executable, "-m", "gfs.cli", "registry", "serve", "--state", str(d),
              "--insecure-plaintext"], tmp_path / "reg.log")
    try:
        assert p.url.startswith("http://")
        assert "UNENCRYPTED" in (tmp_path / "reg.log").read_text()
        with pytest.raises(ConfigError, match="insecure-plaintext"):
            HttpClient(p.url, tls=Trust(p.url, None)).call("GET", "/v1/health")
        plain = Trust(p.url, None, plaintext=True)
        assert HttpClient(p.url, tls=plain).call("GET", "/v1/health")["status"] == "ok"
    finally:
        assert p.stop() == 0
    assert not (d / "tls").exists()  # no TLS material made for a plaintext registry


def test_a_plaintext_profile_reaches_a_plaintext_registry_only_when_it_says_so(
        tmp_path: Path) -> None:
    """A profile of an http:// registry is made only with plaintext (--insecure-plaintext),
    and its namespace then talks plain HTTP; without it the namespace refuses to."""
    d = tmp_path / "reg"
    p = Proc([sys.executable, "-m", "gfs.cli", "registry", "serve", "--state", str(d),
              "--insecure-plaintext"], tmp_path / "reg.log")
    try:
        token = EntityKeys.create(tmp_path / "keys", "bank-p").mint_token(
            "ann", "read", "/bank-p", 600)
        with pytest.raises(ProfileError, match="insecure-plaintext"):
            add_profile("dev", registry=p.url, entity="bank-p", token=token)
        add_profile("dev", registry=p.url, entity="bank-p", token=token, plaintext=True)
        with open_namespace("dev") as ns:
            assert ns.sites() == {}  # type: ignore[attr-defined]
        with FederatedNamespace(p.url, token=token) as fns, \
                pytest.raises(ConfigError, match="insecure-plaintext"):
            fns.sites()
    finally:
        assert p.stop() == 0


def test_site_init_pins_the_registry_ca_from_the_command_line(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "gfs.cli", "site", "init", "--entity", "bank-w", "--name",
           "w1", "--region", "cn-west", "--registry", "https://127.0.0.1:1"]
    r = subprocess.run([*cli, "--state", str(tmp_path / "s")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--registry-ca" in r.stderr
    assert not (tmp_path / "s").exists()
    ca = _self_signed_pem(tmp_path)
    (tmp_path / "ca.pem").write_bytes(ca)
    subprocess.run([*cli, "--state", str(tmp_path / "s"), "--quiet"], check=True,
                   timeout=60, env={**os.environ, "HUTONG_REGISTRY_CA": str(tmp_path / "ca.pem")})
    tls = tmp_path / "s" / "federation" / "tls"
    assert (tls / certs.REGISTRY_CA).read_bytes() == ca
    assert (tls / certs.REGISTRY_URL).read_text().strip() == "https://127.0.0.1:1"
    assert oct((tls / certs.CA_KEY).stat().st_mode & 0o777) == "0o600"
    assert oct((tls / certs.NODE_KEY).stat().st_mode & 0o777) == "0o600"


def test_a_replaced_entity_ca_revokes_its_old_certificates(fed: Federation,
                                                           tmp_path: Path) -> None:
    """An entity whose certificates leaked registers a new CA (signed by its key); every
    site drops the old CA at its next refresh, so the old certificates stop working."""
    fed.site("r1", "bank-r", "cn-west", primary=True)
    keys = fed.keys("bank-r")
    leaked = tmp_path / "leaked"
    shutil.copytree(fed.sites["r1"]["state"] / "federation" / "tls", leaked)
    for f in (certs.CA_CERT, certs.CA_KEY):
        (leaked / f).unlink()
    stolen = Trust(fed.registry_url, fed.registry_ca, directory=leaked)

    def status() -> str:
        h = HttpClient(fed.sites["a1"]["url"], keys=keys, tls=stolen, site="a1")
        try:
            return str(h.call("GET", "/v1/status")["site"])
        finally:
            h.close()
    assert status() == "a1"
    new = tmp_path / "new"
    certs.create_ca(new, "bank-r", "Hutong entity CA bank-r")
    pem = (new / certs.CA_CERT).read_bytes()
    HttpClient(fed.registry_url, keys=keys).call("POST", "/v1/entities", {
        "name": "bank-r", "region": "cn-west", "public_key": keys.public_b64,
        "ca": pem.decode(), "ca_sig": certs.sign_ca(keys, pem)})
    deadline = time.monotonic() + 20
    while True:
        try:
            status()
        except (AuthError, UnavailableError):
            break
        assert time.monotonic() < deadline, "a1 still accepts the replaced CA"
        time.sleep(0.2)
    fed.kill("r1")



def test_a_client_and_its_tls_share_one_registry_cache(fed: Federation,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The trust that checks the sites' certificates reads the registry through the
    client's RegistryView: a client that has the entities and sites asks the registry
    nothing more to connect to another entity's site (no GET /v1/entities/NAME, no
    second GET /v1/sites), counted at the client's registry connections."""
    keys = fed.keys("bank-a")
    trust = Trust.load(Path(str(keys.directory)) / "tls")  # fresh: no records yet
    asked: Counter[str] = Counter()
    real = HttpClient.call

    def counted(self: HttpClient, method: str, path: str, *a: Any, **kw: Any) -> Any:
        if trust.serves(self.base_url):
            asked[path] += 1
        return real(self, method, path, *a, **kw)

    with FederationClient(fed.registry_url, keys=keys, tls=trust) as fc:
        assert fc.view is trust.view
        fc.view.entities()
        fc.sites()
        monkeypatch.setattr(HttpClient, "call", counted)
        with contextlib.suppress(PermissionError, FileNotFoundError):
            fc.stat("/telco-b")  # a TLS connection to t1: telco-b's CA checks its certificate
        assert trust.site_at(str(fed.sites["t1"]["url"])) == ("t1", "telco-b")
        assert trust.entity_ca("telco-b") is not None
    assert not asked, asked
