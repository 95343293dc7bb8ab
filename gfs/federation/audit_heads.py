"""The registry as a notary of audit-log heads: an entity sends the head of its
privacy audit log (`PUT /v1/audit/ENTITY/head`, signed by the entity) and the
registry keeps it with its receipt time and its own Ed25519 signature; anyone reads
it back (`GET`). A head never goes back: an older sequence number, or the same one
with another hash, is refused (409), so a rewritten or truncated log cannot be
anchored again. docs/format.md "Registry state" has the record.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gfs.federation.http import ApiError, field

KEY_FILE = "audit-notary.key"
"""The registry's notary key (PEM, mode 0600) in its state directory."""
ANCHOR_TEXT = "hutong-audit-registry/1"
_HEAD = re.compile(r"^[0-9a-f]{64}$")


def anchor_text(entity: str, seq: int, head: str, when: float) -> bytes:
    """The bytes the registry signs when it keeps `entity`'s audit head."""
    return f"{ANCHOR_TEXT} {entity} {seq} {head} {when!r}".encode()


def notary_key(root: Path) -> Ed25519PrivateKey:
    """The registry's notary key, created on first use."""
    path = root / KEY_FILE
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        tmp = root / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key; remove it to have a new one made")
    return key


def record_key(entity: str) -> bytes:
    """The key of `entity`'s head in the registry's `sites` table."""
    return b"audit:" + entity.encode()


def keep(txn: Any, key: Ed25519PrivateKey, entity: str, data: dict[str, Any]
         ) -> dict[str, Any]:
    """Check and store a new head of `entity` in `txn`; returns the signed record."""
    seq = field(data, "seq", int, check=lambda n: -1 <= n < 1 << 62)
    head = field(data, "head", str, check=lambda h: _HEAD.match(h) is not None)
    raw = txn.get_value("sites", record_key(entity))
    if raw is not None:
        old = json.loads(raw)
        if seq < old["seq"] or (seq == old["seq"] and head != old["head"]):
            raise ApiError(f"the registry keeps head {old['seq']} of {entity}'s audit log; "
                           f"head {seq} does not follow it: the log was rewritten or cut",
                           409, "audit_rollback")
    when = time.time()
    rec = {"entity": entity, "seq": seq, "head": head, "time": when,
           "sig": base64.b64encode(key.sign(anchor_text(entity, seq, head, when))).decode()}
    txn.put_value("sites", record_key(entity), json.dumps(rec).encode())
    return rec


def public_b64(key: Ed25519PrivateKey) -> str:
    """The notary key's public half (raw, base64), returned with every record."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def answer(rec: dict[str, Any], key: Ed25519PrivateKey) -> web.Response:
    """The JSON answer: the record and the notary's public key."""
    return web.json_response({**rec, "registry_key": public_b64(key)})
