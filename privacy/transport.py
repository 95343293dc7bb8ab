"""A party at its entity's site: credentials from the site's federation keys, the
mutual-TLS connection to the partner's party, and the registry as the keeper of
countersigned audit heads (docs/privacy.md "Parties at their sites").

The partner's party listens on its site's address with the site's certificate and
accepts only a client certificate issued by the initiating entity's CA (as the
registry publishes it, bound to the entity's key); the initiator checks the
partner's certificate against the partner entity's CA and site name. Inside TLS the
privacy channel's handshake still proves each entity key and the job digest.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization

from gfs.errors import HutongError
from gfs.federation import certs
from gfs.federation.audit_heads import anchor_text
from gfs.federation.auth import EntityKeys
from gfs.federation.http import ApiError, HttpClient, UnavailableError
from gfs.federation.tls import Trust, trust_for
from privacy.audit import AuditLog
from privacy.channel import Identity
from privacy.errors import AuditError, AuthError, ProtocolError
from privacy.keys import Credentials, federation_identity

HEARTBEAT = 1.0
"""Seconds between a listening half's checks that the initiating half still exists."""


@dataclass
class SiteParty:
    """One party's standing at its site: the entity keys, TLS trust and registry."""

    state: Path
    keys: EntityKeys
    trust: Trust
    registry: HttpClient

    @classmethod
    def load(cls, state: str | Path) -> SiteParty:
        """The party of the site whose state directory is `state`."""
        st = Path(state)
        keys = EntityKeys.load(st / "federation")
        trust = trust_for(keys)
        if trust is None:
            raise AuthError(f"site {st} has no TLS directory (federation/tls); a privacy "
                            f"job between sites needs the federation's certificates")
        return cls(st, keys, trust, HttpClient(trust.registry_url, keys=keys, tls=trust,
                                               timeout=15))

    def close(self) -> None:
        self.registry.close()

    def identity(self) -> Identity:
        """The entity's federation key as the privacy channel's signing identity."""
        return federation_identity(self.keys)

    def credentials(self, peer: str) -> Credentials:
        """Our identity and `peer`'s key as the registry publishes it."""
        rec = self.registry.call("GET", f"/v1/entities/{peer}")
        return Credentials(self.identity(), base64.b64decode(rec["public_key"]).hex())

    # -- transport --------------------------------------------------------------------
    def _server_context(self, peer: str) -> ssl.SSLContext:
        d = self.trust.directory
        assert d is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(d / certs.NODE_CERT, d / certs.NODE_KEY)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca = self.trust.entity_ca(peer, refresh=True)
        ctx.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
        return ctx

    def listen(self, host: str, peer: str) -> tuple[socket.socket, ssl.SSLContext]:
        """A listening socket on `host` (port 0) and the context that admits only a
        client certificate of `peer`'s CA."""
        return socket.create_server((host, 0)), self._server_context(peer)

    def accept(self, srv: socket.socket, ctx: ssl.SSLContext, peer: str,
               timeout: float, gone: Callable[[], str | None] | None = None,
               ) -> socket.socket:
        """The partner's connection, after the TLS handshake checked its certificate.
        While it waits, `gone` is asked every HEARTBEAT seconds whether the initiating
        half still exists (a reason if not: the wait ends at once, ProtocolError)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            srv.settimeout(max(0.01, min(left, HEARTBEAT if gone else left)))
            try:
                raw, _ = srv.accept()
                break
            except TimeoutError as e:
                if time.monotonic() >= deadline:
                    raise AuthError(f"{peer}'s party did not connect within {timeout:g} s; "
                                    f"the job is abandoned") from e
                why = gone() if gone else None
                if why:
                    raise ProtocolError(f"{peer}'s half will not connect: {why}; the job "
                                        f"is abandoned and nothing was released") from None
        raw.settimeout(timeout)
        return _wrap(raw, lambda: ctx.wrap_socket(raw, server_side=True),
                     f"TLS handshake with {peer}'s party failed; only a certificate of "
                     f"{peer}'s CA is accepted")

    def initiator_watch(self, endpoint: str, peer_site: str, job_id: str,
                        ) -> Callable[[], str | None]:
        """A check for `accept`: the initiating site's record of its half of `job_id`
        (read as the partner, state only). A reason when the half has ended or the
        site does not know it, or when the site is unreachable twice in a row."""
        h = HttpClient(endpoint, keys=self.keys, tls=self.trust, site=peer_site,
                       timeout=max(2.0, HEARTBEAT * 2))
        misses = [0]

        def gone() -> str | None:
            try:
                state = h.call("GET", f"/v1/privacy/jobs/{job_id}").get("state")
            except UnavailableError as e:
                misses[0] += 1
                return f"site {peer_site} is unreachable ({e})" if misses[0] >= 2 else None
            except (ApiError, HutongError) as e:
                return f"site {peer_site} does not run it ({e})"
            misses[0] = 0
            return None if state == "running" else f"its half at {peer_site} is {state}"
        return gone

    def connect(self, host: str, port: int, peer_site: str, peer: str,
                timeout: float) -> socket.socket:
        """A TLS connection to `peer`'s party at (`host`, `port`), whose certificate
        must be `peer_site`'s, issued by `peer`'s CA; ours goes the other way."""
        url = f"https://{host}:{port}"
        ctx, name = self.trust.client_context(url, site=peer_site, entity=peer)
        raw = socket.create_connection((host, port), timeout=timeout)
        return _wrap(raw, lambda: ctx.wrap_socket(raw, server_hostname=name),
                     f"TLS handshake with {peer_site} ({peer}) at {host}:{port} failed")


def _wrap(raw: socket.socket, wrap: Callable[[], ssl.SSLSocket], what: str) -> socket.socket:
    """`wrap()` of `raw`; on failure `raw` is closed and AuthError(`what`: why) raised."""
    try:
        return wrap()
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise AuthError(f"{what}: {e}") from e


class RegistryAnchors:
    """The registry as keeper of a party's audit head: after each job the head is
    sent, signed by the entity, and the registry keeps it with a timestamp and its
    own signature; before the next job the log must still hold that head."""

    def __init__(self, party: SiteParty) -> None:
        self.party = party

    def _path(self, entity: str) -> str:
        return f"/v1/audit/{entity}/head"

    def latest(self, entity: str) -> dict[str, object] | None:
        """The head the registry keeps for `entity` (signature checked), or None."""
        try:
            rec = self.party.registry.call("GET", self._path(entity))
        except HutongError as e:
            if getattr(e, "status", 0) == 404:
                return None
            raise
        try:
            key = nacl.signing.VerifyKey(base64.b64decode(str(rec["registry_key"])))
            key.verify(anchor_text(entity, int(rec["seq"]), str(rec["head"]),
                                   float(rec["time"])), base64.b64decode(str(rec["sig"])))
        except (KeyError, ValueError, nacl.exceptions.BadSignatureError) as e:
            raise AuditError(f"the registry's copy of {entity}'s audit head is not signed "
                             f"by the registry; check the registry") from e
        return dict(rec)

    def check(self, log: AuditLog) -> None:
        """Raise AuditError unless `log` holds the head the registry keeps."""
        rec = self.latest(log.entity)
        if rec is not None:
            log.check_anchor(int(str(rec["seq"])), str(rec["head"]), "the registry")

    def anchor(self, log: AuditLog) -> None:
        """Send `log`'s head to the registry (409 if it went back)."""
        seq, head = log.head()
        self.party.registry.call("PUT", self._path(log.entity), {"seq": seq, "head": head})
