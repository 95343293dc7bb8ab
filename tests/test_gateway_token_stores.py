"""The federation gateway keeps at most MAX_TOKEN_STORES namespaces opened for tokens:
the least recently used is closed, with a log line naming the token's id (never the
token), and one that requests still use is closed only when the last of them ends."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.federation.auth import EntityKeys
from gfs.gateway import access
from gfs.gateway.access import FederationAccess
from gfs.gateway.backend import NamespaceBackend
from gfs.gateway.credentials import Credential
from gfs.gateway.objects import ObjectStore

closed_stores: list[ObjectStore] = []


class _Store(ObjectStore):
    """An object store over an embedded namespace that records when it is closed."""

    def close(self) -> None:
        closed_stores.append(self)
        super().close()


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> tuple[FederationAccess, list[Credential]]:
    monkeypatch.setattr(access, "MAX_TOKEN_STORES", 2)
    closed_stores.clear()
    Client.init(tmp_path / "store").close()
    keys = EntityKeys.create(tmp_path / "keys", "bank-a")
    tokens = [keys.mint_token(f"user{i}", "read", f"/bank-a/u{i}", 600) for i in range(4)]
    creds = [Credential(f"id{i}", "secret", token=t) for i, t in enumerate(tokens)]

    def open_store(token: str) -> ObjectStore:
        return _Store(NamespaceBackend(Client(tmp_path / "store")))
    own = _Store(NamespaceBackend(Client(tmp_path / "store")))
    return FederationAccess(own, "bank-a", dict, open_store), creds


def test_the_least_recently_used_token_store_is_closed(
        gate: tuple[FederationAccess, list[Credential]],
        caplog: pytest.LogCaptureFixture) -> None:
    fa, creds = gate
    s0, s1 = fa.store(creds[0]), fa.store(creds[1])
    assert fa.store(creds[0]) is s0  # used again: now s1 is the least recent
    with caplog.at_level(logging.INFO, logger="gfs.gateway"):
        s2 = fa.store(creds[2])
    assert closed_stores == [s1]
    [line] = [r.getMessage() for r in caplog.records if "token namespaces" in r.getMessage()]
    assert "of 'user1'" in line and "closing the least recently used" in line
    assert creds[1].token is not None and creds[1].token not in line
    assert fa.store(creds[1]) is not s1  # its next request opens it again
    assert set(fa.stores()) >= {s2}
    fa.close()


def test_a_store_in_use_is_closed_when_its_requests_end(
        gate: tuple[FederationAccess, list[Credential]]) -> None:
    fa, creds = gate
    busy = fa.acquire(creds[0])
    again = fa.acquire(creds[0])  # two requests in flight on it
    assert again is busy
    fa.store(creds[1])
    fa.store(creds[2])  # evicts creds[0]'s store, which two requests still use
    assert busy not in closed_stores and busy in fa.stores()
    fa.release(busy)
    assert busy not in closed_stores
    fa.release(again)
    assert closed_stores == [busy] and busy not in fa.stores()
    fresh = fa.acquire(creds[0])
    assert fresh is not busy
    fa.release(fresh)
    assert fresh not in closed_stores  # not evicted: it stays open for the next request
    fa.close()
