"""Gateway credentials: the one place that maps an access key id to its secret and scope.

Credentials are kept in the store (value table `credentials`, key: access key
id, value: JSON `{"secret", "buckets", "created_ns"}`), issued by `hutong
gateway credentials add`. When scoped tokens arrive, `lookup` is where an
access key id becomes a token id.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass

from gfs.client import Client
from gfs.errors import ConfigError, FormatError, NotFoundError

TABLE = "credentials"
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Credential:
    """An access key id, its secret, and the buckets it may use (empty: all); for a
    federation token (gfs.gateway.access): the token, whether it may only read, and
    whether it acts as the gateway's own entity."""

    access_key: str
    secret_key: str
    buckets: tuple[str, ...] = ()
    created_ns: int = 0
    token: str | None = None
    read_only: bool = False
    as_gateway: bool = False

    def allows(self, bucket: str) -> bool:
        """Whether this credential may act on `bucket` ("" = the bucket list)."""
        return not self.buckets or not bucket or bucket in self.buckets


def add(fs: Client, buckets: tuple[str, ...] = ()) -> Credential:
    """Issue a new credential for `buckets` (empty: every bucket)."""
    for b in buckets:
        if not _BUCKET.match(b):
            raise ConfigError(f"invalid bucket name {b!r}: 3 to 63 lowercase letters, "
                              "digits, '.' or '-'")
    cred = Credential("HT" + "".join(secrets.choice(_ALPHABET) for _ in range(18)),
                      secrets.token_urlsafe(30), tuple(buckets), time.time_ns())
    value = json.dumps({"secret": cred.secret_key, "buckets": list(cred.buckets),
                        "created_ns": cred.created_ns}, sort_keys=True).encode()
    with fs.engine.write() as txn:
        txn.put_value(TABLE, cred.access_key.encode(), value)
    return cred


def lookup(fs: Client, access_key: str) -> Credential | None:
    """The credential of `access_key`, or None."""
    if not access_key or len(access_key) > 128:
        return None
    with fs.engine.read() as txn:
        raw = txn.get_value(TABLE, access_key.encode())
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return Credential(access_key, d["secret"], tuple(d["buckets"]), d["created_ns"])
    except (ValueError, KeyError, TypeError):
        raise FormatError(f"the stored credential of access key {access_key} is damaged; "
                          "revoke it (`hutong gateway credentials rm`) and issue another"
                          ) from None


def list_all(fs: Client) -> list[Credential]:
    """Every credential, by access key id."""
    with fs.engine.read() as txn:
        keys = [k.decode() for k, _ in txn.iter_values(TABLE)]
    return [c for k in keys if (c := lookup(fs, k)) is not None]


def remove(fs: Client, access_key: str) -> None:
    """Revoke `access_key`."""
    with fs.engine.write() as txn:
        if txn.get_value(TABLE, access_key.encode()) is None:
            raise NotFoundError(access_key, "no such access key; list them with "
                                "`hutong gateway credentials ls`")
        txn.delete_value(TABLE, access_key.encode())
