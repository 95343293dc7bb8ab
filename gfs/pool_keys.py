"""The at-rest key of a store's encrypted pools (docs/format.md, "Sealed pool objects").

The key is a 32-byte file held by the store's owner, outside every pool:
`STATE/at-rest.key` (mode 0600) or the file $HUTONG_AT_REST_KEY names. The
metadata keeps which pools are sealed and a check value of the key, so a
missing or wrong key is named before any object is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gfs.env import AT_REST_KEY_ENV
from gfs.errors import ConfigError, StateError
from gfs.meta import ReadTxn, WriteTxn

KEY_FILE = "at-rest.key"
KEY_LEN = 32
#: metadata: JSON {"pools": [ids], "check": hex} (store-wide `meta` key)
META_KEY = "sealed_pools"


def key_path(state: Path) -> Path:
    """Where the at-rest key lives: $HUTONG_AT_REST_KEY, else STATE/at-rest.key."""
    env = os.environ.get(AT_REST_KEY_ENV)
    return Path(env).expanduser().absolute() if env else state / KEY_FILE


def _check_value(key: bytes) -> str:
    import hashlib  # here: loading OpenSSL costs ~3 ms of every command's start-up
    import hmac

    return hmac.new(key, b"hutong at-rest key check v1", hashlib.sha256).hexdigest()[:16]


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_LEN:
        raise ConfigError(f"at-rest key {path} has {len(key)} bytes, not {KEY_LEN}; restore "
                          "the key file from your backup")
    return key


def load_or_create(state: Path) -> bytes:
    """The at-rest key, created (random, mode 0600) when it does not exist yet."""
    path = key_path(state)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(KEY_LEN))
        f.flush()
        os.fsync(f.fileno())
    return _read(path)


def sealed_pools(txn: ReadTxn) -> tuple[frozenset[int], str | None]:
    """(ids of the pools encrypted at rest, check value of their key)."""
    raw = txn.get_meta(META_KEY)
    if raw is None:
        return frozenset(), None
    doc = json.loads(raw)
    return frozenset(int(i) for i in doc["pools"]), str(doc["check"])


def mark_sealed(txn: WriteTxn, pool_id: int, key: bytes) -> None:
    """Record that pool `pool_id` is encrypted under `key` (the same key for all)."""
    ids, check = sealed_pools(txn)
    if check is not None and check != _check_value(key):
        raise ConfigError("the at-rest key is not the one this store's encrypted pools use; "
                          "restore the original key file")
    txn.set_meta(META_KEY, json.dumps({"pools": sorted(ids | {pool_id}),
                                       "check": _check_value(key)}).encode())


def load(state: Path, pool: str, check: str | None) -> bytes:
    """The at-rest key to open encrypted pool `pool`; a clear error when it is missing or
    is not the key the pool was sealed with."""
    import hmac  # here: see _check_value

    path = key_path(state)
    try:
        key = _read(path)
    except FileNotFoundError:
        raise StateError(f"pool {pool} is encrypted at rest and its key {path} is missing; "
                         f"restore the key file (or set {AT_REST_KEY_ENV} to its path)") from None
    if check is not None and not hmac.compare_digest(check, _check_value(key)):
        raise StateError(f"pool {pool} is encrypted at rest and {path} is not its key; "
                         f"restore the original key file (or set {AT_REST_KEY_ENV})")
    return key
