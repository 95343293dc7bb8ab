"""Who may read the registry's `/metrics` (docs/format.md, "Tokens"; docs/trust.md).

The registry has no entity of its own: its metrics are for its operator. The
operator mints a `metrics` token with `hutong registry metrics-token` (a JWT
of issuer `registry`, signed by the registry's notary key in its state
directory), gives it to the Prometheus scraper, and the registry answers
`GET /metrics` and its dashboard's data (`/dashboard/api/*`) only with such a
token: 401 without one, 403 for any other token (an entity's data or metrics
token included).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gfs.federation import audit_heads
from gfs.federation.auth import AuthError, Issuer, bearer_claims, mint_token

ISSUER = "registry"
"""The `iss` of the registry's metrics tokens (verified with its notary key, so an
entity that happens to be named `registry` cannot mint one)."""
_MINT = "mint one with `hutong registry metrics-token --state REGISTRY_STATE`"


def mint(root: Path, ttl: float, sub: str = "prometheus") -> str:
    """A metrics token of the registry whose state directory is `root`, valid `ttl` s."""
    return mint_token(audit_heads.notary_key(root), ISSUER, sub, "metrics", "/", ttl)


def check(headers: Mapping[str, str], key: Ed25519PublicKey) -> None:
    """Raise AuthError unless `headers` carry a metrics token of this registry (`key`: its
    notary public key). The one rule for watching the registry: its `/metrics` and its
    dashboard's data (`/dashboard/api/*`) alike."""

    def registry_only(iss: str) -> Issuer:
        if iss != ISSUER:
            raise AuthError(f"the registry is watched with its own metrics token, not an "
                            f"entity's; {_MINT}", 403, "forbidden")
        return Issuer(key)

    claims = bearer_claims(headers, registry_only,
                           missing=f"watching the registry needs its metrics token "
                                   f"(Authorization: Bearer); {_MINT}")
    assert claims is not None
    if claims.scope != "metrics":
        raise AuthError(f"token {claims.jti} has scope {claims.scope}, not metrics; {_MINT}",
                        403, "forbidden")
