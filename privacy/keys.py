"""Entity keys for the privacy channel: an Ed25519 signing key per entity, kept in
the state directory (privacy/keys/ENTITY.key, mode 0600) with its public half
(ENTITY.pub) that peers pin.

Both parties of a job on one machine find each other's public key in the same
directory. At a site (a state with `federation/` keys of the entity) the
entity's federation key is its identity, and a peer's key is the one the
registry publishes (privacy.transport).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
from cryptography.hazmat.primitives import serialization

from gfs.federation.auth import NAME_FILE, EntityKeys
from privacy.channel import Identity
from privacy.errors import AuthError, QueryError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def key_dir(state: Path) -> Path:
    """The directory of entity keys in a state directory."""
    return state / "privacy" / "keys"


def _check(entity: str) -> None:
    if not _NAME.match(entity):
        raise QueryError(f"entity name {entity!r} is not valid (letters, digits, . _ -)")


def federation_identity(keys: EntityKeys) -> Identity:
    """An entity's federation key (a site's `federation/` keys) as its identity."""
    seed = keys.private.private_bytes(serialization.Encoding.Raw,
                                      serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
    return Identity(keys.name, nacl.signing.SigningKey(seed))


def site_keys(state: Path, entity: str) -> EntityKeys | None:
    """The federation keys of `entity` when `state` is one of its sites, else None."""
    name = state / "federation" / NAME_FILE
    if name.exists() and name.read_text().strip() == entity:
        return EntityKeys.load(state / "federation")
    return None


def identity(state: Path, entity: str, *, create: bool = True) -> Identity:
    """The signing identity of `entity` in `state`: the entity's federation key when
    `state` is one of its sites, else its privacy key there, created on first use."""
    _check(entity)
    fed = site_keys(state, entity)
    if fed is not None:
        return federation_identity(fed)
    d = key_dir(state)
    path = d / f"{entity}.key"
    if not path.exists():
        if not create:
            raise AuthError(f"no key for entity {entity!r} in {d}; run `hutong privacy keys "
                            f"{entity}`")
        d.mkdir(parents=True, exist_ok=True)
        key = nacl.signing.SigningKey.generate()
        tmp = d / f".{entity}.key.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(bytes(key).hex() + "\n")
        os.replace(tmp, path)
        (d / f"{entity}.pub").write_text(bytes(key.verify_key).hex() + "\n")
    key = nacl.signing.SigningKey(bytes.fromhex(path.read_text().strip()))
    return Identity(entity, key)


def pinned(state: Path, entity: str) -> str:
    """The pinned public key (hex) of peer `entity`."""
    _check(entity)
    path = key_dir(state) / f"{entity}.pub"
    if not path.exists():
        raise AuthError(f"no pinned public key for entity {entity!r} ({path}); copy the "
                        f"peer's {entity}.pub there")
    return path.read_text().strip()


@dataclass(frozen=True)
class Credentials:
    """What one party of a job proves itself with and pins its peer to: its entity's
    signing identity and the peer entity's public key (hex)."""

    identity: Identity
    peer_key: str


def local_credentials(state: Path, entity: str, peer: str) -> Credentials:
    """Credentials from the privacy keys of one state directory (both parties on one
    host: `run_job`)."""
    return Credentials(identity(state, entity), pinned(state, peer))
