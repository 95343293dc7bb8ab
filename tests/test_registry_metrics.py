"""The registry's /metrics (issue 13): served only with the registry's own metrics token,
from the attacker's side: no token, an entity's data or metrics token, a signed request,
a forged registry token and a registry token replayed at a site are all refused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gfs.federation.auth import AuthError, mint_token
from gfs.federation.http import HttpClient
from gfs.federation.registry_metrics import ISSUER
from gfs.federation.testing import Federation
from gfs.federation.tls import trust_for

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with Federation(tmp_path_factory.mktemp("fed"), ttl=2.0, heartbeat=0.3) as f:
        f.registry()
        f.site("a1", "bank-a", "cn-west", primary=True)
        yield f


def registry(fed: Federation, token: str | None = None) -> HttpClient:
    return HttpClient(str(fed.registry_url), token=token, tls=fed.trust)


def refused(h: HttpClient) -> int:
    with pytest.raises(AuthError) as e:
        h.call("GET", "/metrics")
    return e.value.status


def test_registry_metrics_need_its_metrics_token(fed: Federation) -> None:
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
