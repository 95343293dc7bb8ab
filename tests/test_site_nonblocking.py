"""Handlers never block the event loop: while a namespace write waits for the site's
write lock (held here, from the outside), /v1/health and reads of other files still
answer. An in-process site on loopback (port 0) over TLS with its own certificate,
signed requests of its own entity."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from aiohttp import web

from gfs.federation.auth import AuthError, EntityKeys
from gfs.federation.certs import site_serve_tls
from gfs.federation.site import Site, make_app
from gfs.federation.site_client import SiteClient
from gfs.federation.testing import lone_site
from gfs.federation.tls import ServerTls, Trust, trust_for

#: Seconds a request that must not wait may take (far above a loopback answer).
PROMPT = 5.0
#: Seconds to wait for an event the test causes.
DEADLINE = 30.0


class GateLock:
    """The site's write lock, observable: `contended` is set when a writer finds it held."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.contended = threading.Event()

    def __enter__(self) -> GateLock:
        if not self.inner.acquire(blocking=False):
            self.contended.set()
            self.inner.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.inner.release()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """A file write's shared hold (gfs.federation.site_lock): it too waits while the
        gate is held, as behind an exclusive holder."""
        with self:
            yield


@dataclass
class Served:
    site: Site
    url: str
    gate: GateLock
    trust: Trust

    def client(self, keys: EntityKeys | None, timeout: float) -> SiteClient:
        """A client of the site that checks its certificate (no registry is asked: the
        site and its entity are named, and the entity's CA is the trust's own)."""
        return SiteClient(self.url, keys=keys, timeout=timeout, tls=self.trust, site="s1",
                          entity="bank-a")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    site = lone_site(tmp_path / "s1")  # the entity's own key is local
    trust = trust_for(site.keys)
    assert trust is not None and trust.directory is not None
    site_serve_tls(trust.directory, "s1", "bank-a", "127.0.0.1")
    tls = ServerTls(trust.directory, trust, mutual=True)
    gate = GateLock()
    site.write_lock = gate  # type: ignore[assignment]
    loop = asyncio.new_event_loop()
    app = make_app(site)
    app.middlewares.append(tls.middleware)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    tcp = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    loop.run_until_complete(tcp.start())
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    site.endpoint = url
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Served(site, url, gate, trust)
    finally:
        if gate.inner.locked():
            gate.inner.release()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.run_until_complete(runner.cleanup())
        loop.close()
        site.close()


WRITES: dict[str, Callable[[SiteClient], Any]] = {
    "mkdir": lambda sc: sc.mkdir("/bank-a/d/new"),
    "remove": lambda sc: sc.remove("/bank-a/d/victim"),
    "rename": lambda sc: sc.rename("/bank-a/d/victim", "/bank-a/d/moved"),
    "write": lambda sc: sc.write("/bank-a/d/w", b"w" * 100_000),
    "symlink": lambda sc: sc.symlink("/bank-a/d/l", "other"),
    "setattr": lambda sc: sc.setattr("/bank-a/d/victim", mode=0o600),
    "xattrs": lambda sc: sc.set_xattrs("/bank-a/d/victim", {"user.a": b"1"}),
}


@pytest.mark.parametrize("op", sorted(WRITES))
def test_a_blocked_write_does_not_stall_other_requests(served: Served, op: str) -> None:
    keys = served.site.keys
    with served.client(keys, DEADLINE) as sc:
        sc.mkdir("/bank-a/d")
        sc.write("/bank-a/d/other", b"other file")
        sc.write("/bank-a/d/victim", b"v")
    result: dict[str, Any] = {}

    def write() -> None:
        with served.client(keys, DEADLINE) as w:
            try:
                result["ok"] = WRITES[op](w)
            except Exception as e:  # reported by the assertion below
                result["error"] = e

    served.gate.inner.acquire()  # a long write holds the lock
    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert served.gate.contended.wait(DEADLINE), f"{op} never reached the write lock"
        with served.client(keys, PROMPT) as quick:
            assert quick.health().status == "ok"
            assert quick.read("/bank-a/d/other") == b"other file"
            assert quick.stat("/bank-a/d/other").size == 10
            assert [e.name for e in quick.ls("/bank-a")] == ["d"]
        assert writer.is_alive() and not result  # the write still waits
    finally:
        served.gate.inner.release()
        writer.join(DEADLINE)
    assert not writer.is_alive() and "error" not in result, result


def test_a_slow_gauge_does_not_stall_health(served: Served) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_gauge() -> float:  # a gauge reading a slow disk (the vault's usage)
        entered.set()
        release.wait(DEADLINE)
        return 1.0
    served.site.metrics.gauges["slow"] = slow_gauge
    got: dict[str, Any] = {}

    def scrape() -> None:
        with served.client(served.site.keys, DEADLINE) as sc:
            got["text"] = sc.call("GET", "/metrics")
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        assert entered.wait(DEADLINE)
        with served.client(None, PROMPT) as quick:
            assert quick.health().status == "ok"
    finally:
        release.set()
        scraper.join(DEADLINE)
    assert b"hutong_site_slow 1.0" in got["text"]


def _leaf(serial: int) -> bytes:
    """A self-signed certificate with `serial` (only its serial number is looked at)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_server_certificates_are_checked_against_the_list_last_read_while_the_registry_is_down(
        served: Served) -> None:
    """A client connects to sites while the registry cannot be asked (this fixture's
    registry is unreachable): the revocations it last read still refuse a revoked
    certificate, and any other passes."""
    trust = served.trust
    trust._note_revoked({"name": "bank-a", "revoked_certs": ["abc1"]})
    with pytest.raises(AuthError) as e:
        trust.check_server_cert("bank-a", served.url, _leaf(0xABC1))
    assert e.value.code == "revoked_certificate"
    trust.check_server_cert("bank-a", served.url, _leaf(0xABC2))
