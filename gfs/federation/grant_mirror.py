"""Grants carried to an entity's mirror sites, signed by the entity, so that a mirror
can serve a grantee while the primary is down (docs/trust.md, rule 13).

The primary signs the whole set of its grants with the entity's key, with the time
it was issued and an expiry, and pushes it to the entity's other sites at every
reconcile. A mirror keeps the signed text as it came and checks it again at every
use: a set altered after signing (in transit, on the mirror's disk, by anyone
without the entity's key), another entity's set, an expired one, or one older
than the set it holds (a replay that would bring back a revoked grant) is refused.
A revoked grant stops working at a mirror at the next reconcile that reaches it,
and at the latest when the set it is in expires (MIRROR_GRANTS_TTL).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gfs.federation.auth import AuthError, EntityKeys, b64d, b64e

#: Seconds a signed grant set is honoured by a mirror without a newer one.
MIRROR_GRANTS_TTL = 600.0
#: Prefix of the signed bytes (no other signature of the entity's key can pass as one).
DOMAIN = b"hutong mirror grants v1\n"
#: Largest signed set accepted (bytes of its JSON text).
MAX_DOC = 1 << 20

_FIELDS = ("id", "pattern", "to", "mode")


def sign_grants(keys: EntityKeys, grants: Sequence[Mapping[str, Any]], *,
                now: float | None = None, ttl: float = MIRROR_GRANTS_TTL) -> dict[str, str]:
    """The signed set of `grants` of `keys`' entity: `{"doc": JSON text, "sig": base64}`."""
    t = time.time() if now is None else now
    doc = {"entity": keys.name, "issued": t, "expires": t + ttl,
           "grants": [{k: g[k] for k in _FIELDS} for g in grants]}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return {"doc": text, "sig": b64e(keys.private.sign(DOMAIN + text.encode()))}


def verify_grants(signed: Mapping[str, Any], entity: str, key: Ed25519PublicKey, *,
                  now: float | None = None) -> dict[str, Any]:
    """The document of a signed grant set of `entity`, checked against its key `key`
    and not expired; AuthError (403 `bad_grants`) naming what is wrong otherwise."""
    text, sig = signed.get("doc"), signed.get("sig")
    if not isinstance(text, str) or not isinstance(sig, str) or len(text) > MAX_DOC:
        raise AuthError("a signed grant set is {doc: JSON text of at most 1 MiB, sig: "
                        "base64}", 403, "bad_grants")
    try:
        key.verify(b64d(sig), DOMAIN + text.encode())
    except (InvalidSignature, ValueError):
        raise AuthError(f"the grant set is not signed by entity {entity!r}'s key (altered "
                        "or forged); the primary sends a new one at its next reconcile", 403,
                        "bad_grants") from None
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("entity") != entity:
        raise AuthError(f"the grant set is not entity {entity!r}'s", 403, "bad_grants")
    t = time.time() if now is None else now
    if not isinstance(doc.get("expires"), (int, float)) or doc["expires"] <= t:
        raise AuthError(f"entity {entity!r}'s grant set expired; the primary renews it at "
                        "its next reconcile", 403, "bad_grants")
    if not isinstance(doc.get("issued"), (int, float)) or not isinstance(doc.get("grants"),
                                                                         list):
        raise AuthError("the grant set has no issue time or no grant list", 403, "bad_grants")
    return doc


__all__ = ["DOMAIN", "MAX_DOC", "MIRROR_GRANTS_TTL", "sign_grants", "verify_grants"]
