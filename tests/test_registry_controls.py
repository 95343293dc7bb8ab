"""What the registry controls (issue 13), from the attacker's side.

* Its /metrics: served only with the registry's own metrics token; no token, an entity's
  data or metrics token, a signed request, a forged registry token and a registry token
  replayed at a site are all refused.
* Certificate revocation: an entity revokes one certificate its CA issued (the registry
  publishes the serial in its entity record), and every site then refuses it at the
  mutual-TLS check: a stolen site certificate (with the entity key's signatures) stops
  working; another entity cannot revoke it. Clients check a site's server certificate
  against the same list: a host holding a1's revoked certificate and key no longer
  passes for a1. The entity revokes with `hutong entity revoke-cert`. (Runs last: it
  revokes a1's certificate.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gfs.federation import certs
from gfs.federation.auth import AuthError, mint_token
from gfs.federation.http import HttpClient
from gfs.federation.registry_metrics import ISSUER
from gfs.federation.testing import Federation
from gfs.federation.tls import Trust, trust_for
from tests.test_access_log import fed  # noqa: F401 - the same two sites, this module's own

ROOT = Path(__file__).parent.parent


def registry(f: Federation, token: str | None = None) -> HttpClient:
    return HttpClient(str(f.registry_url), token=token, tls=f.trust)


def refused(h: HttpClient) -> int:
    with pytest.raises(AuthError) as e:
        h.call("GET", "/metrics")
    return e.value.status


def test_registry_metrics_need_its_metrics_token(fed: Federation) -> None:  # noqa: F811
    keys = fed.keys("bank-a")
    assert refused(registry(fed)) == 401
    for token in (keys.mint_token("u", "read", "/bank-a", ttl=600),
                  keys.mint_token("u", "write", "/bank-a", ttl=600),
                  keys.mint_token("prom", "metrics", "/bank-a", ttl=600)):
        assert refused(registry(fed, token)) == 403
    signed = HttpClient(str(fed.registry_url), keys=keys, tls=trust_for(keys))
    assert refused(signed) == 401
    forged = mint_token(Ed25519PrivateKey.generate(), ISSUER, "prom", "metrics", "/", 600)
    assert refused(registry(fed, forged)) == 401
    expired = subprocess.run(
        [sys.executable, "-m", "gfs.cli", "--state", str(fed.root / "registry"), "registry",
         "metrics-token", "--ttl", "1s"], capture_output=True, text=True, timeout=60,
        cwd=ROOT, check=True).stdout.strip()
    proc = subprocess.run(
        [sys.executable, "-m", "gfs.cli", "--state", str(fed.root / "registry"), "registry",
         "metrics-token"], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    token = proc.stdout.strip()
    text = registry(fed, token).call("GET", "/metrics")
    assert b"hutong_registry" in text
    # the registry's token opens nothing at a site, not even the site's /metrics
    with pytest.raises(AuthError):
        fed.http("a1", token=token).call("GET", "/metrics")
    # and it expires: wait (bounded) until the 1 s token is refused
    deadline = time.monotonic() + 10
    while True:
        try:
            registry(fed, expired).call("GET", "/metrics")
        except AuthError as e:
            assert e.status == 401 and "expired" in str(e)
            break
        assert time.monotonic() < deadline, "a 1 s metrics token still read after 10 s"
        time.sleep(0.2)


def as_user_of(f: Federation, site: str) -> HttpClient:
    """A user of the site's entity (a token) with a fresh trust: it reads the registry now."""
    entity = str(f.sites[site]["entity"])
    return HttpClient(str(f.sites[site]["url"]), tls=Trust(f.registry_url, f.registry_ca),
                      site=site, token=f.keys(entity).mint_token("u", "read", f"/{entity}",
                                                                   ttl=600))


def test_revoked_site_certificate_refused(fed: Federation) -> None:  # noqa: F811
    keys = fed.keys("bank-a")
    trust = trust_for(keys)
    assert trust is not None and trust.directory is not None
    serial = certs.load_cert((trust.directory / certs.NODE_CERT).read_bytes(),
                             "a1's certificate").serial_number
    at_t1 = fed.http("t1", keys=keys)  # signed by bank-a, a1's certificate presented

    def answer() -> str:
        try:
            at_t1.call("GET", "/v1/status")
        except AuthError as e:
            return e.code
        return "ok"
    assert answer() != "client_certificate"
    body = {"cert": f"{serial:x}"}
    other = fed.keys("telco-b")
    with pytest.raises(AuthError) as e:  # only bank-a revokes bank-a's certificates
        HttpClient(fed.registry_url, keys=other, tls=trust_for(other)).call(
            "POST", "/v1/entities/bank-a/revoke", body)
    assert e.value.status == 401  # its signature does not verify with bank-a's key
    public = HttpClient(fed.registry_url, tls=fed.trust)
    assert "revoked_certs" not in public.call("GET", "/v1/entities/bank-a")
    assert answer() != "client_certificate"

    def as_user() -> HttpClient:
        return as_user_of(fed, "a1")
    assert as_user().call("GET", "/v1/status")["site"] == "a1"
    # the entity revokes with its key, through the CLI (the serial as openssl prints it)
    assert keys.directory is not None
    proc = subprocess.run(
        [sys.executable, "-m", "gfs.cli", "entity", "revoke-cert",
         "serial=" + f"{serial:X}", "--registry", str(fed.registry_url),
         "--keys", str(keys.directory)], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env={**os.environ, "HUTONG_TOKEN": "", "HUTONG_PROFILE": ""})
    assert proc.returncode == 0, proc.stderr
    assert f"revokes certificate {serial:x}" in proc.stdout
    rec = public.call("GET", "/v1/entities/bank-a")
    assert rec["revoked_certs"] == [f"{serial:x}"]
    # a client no longer accepts a1's certificate as a server's (a host that stole it)
    with pytest.raises(AuthError) as e:
        as_user().call("GET", "/v1/status")
    assert e.value.code == "revoked_certificate" and f"{serial:x}" in str(e.value)
    # nor does a site of bank-a itself (its own entity's list)
    with pytest.raises(AuthError) as e:
        HttpClient(str(fed.sites["a1"]["url"]), keys=fed.keys("bank-a"),
                   tls=Trust(fed.registry_url, fed.registry_ca, directory=trust.directory),
                   site="a1").call("GET", "/v1/status")
    assert e.value.code == "revoked_certificate"
    # another site of the federation still passes
    assert as_user_of(fed, "t1").call("GET", "/v1/status")["site"] == "t1"
    deadline = time.monotonic() + 20  # t1 reads the registry every heartbeat (0.3 s)
    while (got := answer()) != "client_certificate":
        assert time.monotonic() < deadline, f"t1 still answers {got!r} to a revoked cert"
        time.sleep(0.1)
    with pytest.raises(AuthError) as e:
        at_t1.call("GET", "/v1/status")
    assert e.value.status == 403
