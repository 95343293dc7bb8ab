"""Grantees read from an entity's mirrors while its primary is down, through grants
the primary signed and pushed (gfs.federation.grant_mirror), tested from the
attacker's side: a grant set forged, altered (in transit or on the mirror's disk)
or replayed is refused, and a revoked grant stops working at the mirror at the
next reconcile."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.errors import NotFoundError, UnavailableSiteError
from gfs.federation.auth import AuthError, EntityKeys
from gfs.federation.grant_mirror import sign_grants, verify_grants
from gfs.federation.http import ApiError
from gfs.federation.namespace import FederatedNamespace
from gfs.federation.site_state import MIRROR_GRANTS_KEY
from gfs.federation.testing import Federation
from gfs.meta import LmdbEngine

SHARED = "/lab/d/shared/a.txt"
SECRET = "/lab/d/secret.txt"


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    """Entity lab (primary lab-1, lab-2 mirroring /lab/d by a rule) granting guest
    /lab/d/shared/**; the grant set pushed to lab-2 by the reconcile."""
    with Federation(tmp_path / "fed", ttl=1.5, heartbeat=0.2) as f:
        f.registry()
        f.site("lab-1", "lab", "cn-west", primary=True)
        f.site("lab-2", "lab", "cn-east")
        f.site("g-1", "guest", "cn-north", primary=True)
        with f.client("lab") as fc:
            fc.mkdir("/lab/d/shared", parents=True, exist_ok=True)
            fc.write_bytes(SHARED, b"for the guest")
            fc.write_bytes(SECRET, b"lab only")
            fc.grant("/lab/d/shared/**", "guest", "read")
            fc.rule_add("/lab/d/**", 2, "region=cn-west | region=cn-east")
            [rule] = fc.reconcile("lab")
            assert rule["state"] == "ok"
        yield f


def _guest(fed: Federation) -> FederatedNamespace:
    return FederatedNamespace(fed.registry_url, keys=fed.keys("guest"))


def _down(fed: Federation) -> None:
    fed.kill("lab-1")
    fed.wait_status("lab-1", "down")


def test_a_grantee_reads_from_the_mirror_and_a_revoked_grant_stops_there(
        fed: Federation) -> None:
    with _guest(fed) as ns:
        assert [s.name for s in ns.ls("/lab/d/shared")] == ["a.txt"]  # sees the grant
        _down(fed)
        assert ns.read_bytes(SHARED) == b"for the guest"  # from lab-2's mirror
        assert ns.fc.chunks_from.get("lab-2", 0) > 0
        assert [s.name for s in ns.ls("/lab/d/shared")] == ["a.txt"]
        assert ns.stat(SHARED).size == len(b"for the guest")
        with pytest.raises((UnavailableSiteError, NotFoundError)):
            ns.read_bytes(SECRET)  # mirrored, but not granted
    # the grant is revoked (the primary up again), the reconcile pushes the new set
    fed.start("lab-1")
    fed.wait_status("lab-1", "up")
    with fed.client("lab") as fc:
        [g] = fc.grants("lab")
        fc.revoke("lab", g["id"])
        fc.reconcile("lab")
    _down(fed)
    with _guest(fed) as ns:
        h = ns.fc.site("lab-2")
        with pytest.raises(AuthError) as e:
            h.manifest(SHARED, mirror=True)
        assert e.value.status == 403
        with pytest.raises(AuthError):
            h.list_dir("/lab/d/shared", mirror=True)


def test_forged_altered_and_replayed_grant_sets_are_refused(fed: Federation,
                                                            tmp_path: Path) -> None:
    lab, guest = fed.keys("lab"), fed.keys("guest")
    to_lab2 = fed.http("lab-2", keys=lab)
    wide = [{"id": "00000001", "pattern": "/lab/**", "to": "guest", "mode": "read"}]
    # the grantee cannot push a set, even one signed with its own key
    with pytest.raises(AuthError) as e:
        fed.http("lab-2", keys=guest).call("PUT", "/v1/grants/mirror",
                                           sign_grants(guest, wide))
    assert e.value.status == 403
    # a set signed by another key, or altered after signing, is refused even from the owner
    other = EntityKeys.create(tmp_path / "rogue", "lab")
    for signed in (sign_grants(other, wide), _altered(sign_grants(lab, []), wide)):
        with pytest.raises(AuthError) as e:
            to_lab2.call("PUT", "/v1/grants/mirror", signed)
        assert e.value.code == "bad_grants"
    # a replay of an older set (one still granting what was revoked since) is refused
    old = sign_grants(lab, wide, now=time.time() - 60)
    with pytest.raises(ApiError) as e2:
        to_lab2.call("PUT", "/v1/grants/mirror", old)
    assert e2.value.status == 409
    to_lab2.close()
    # altered on the mirror's disk: the mirror checks the signature at every use
    fed.kill("lab-2", signal.SIGTERM)
    engine = LmdbEngine(str(fed.sites["lab-2"]["state"] / "meta"))
    try:
        with engine.write() as txn:
            raw = txn.get_value("rules", MIRROR_GRANTS_KEY)
            assert raw is not None
            txn.put_value("rules", MIRROR_GRANTS_KEY,
                          json.dumps(_altered(json.loads(raw), wide)).encode())
    finally:
        engine.close()
    fed.start("lab-2")
    fed.wait_status("lab-2", "up")
    _down(fed)
    with _guest(fed) as ns:
        h = ns.fc.site("lab-2")
        for path in (SECRET, SHARED):  # the altered set gives nothing, not even the grant
            with pytest.raises(AuthError) as e:
                h.manifest(path, mirror=True)
            assert e.value.status == 403


def _altered(signed: dict[str, str], grants: list[dict[str, str]]) -> dict[str, str]:
    """`signed` with its grant list replaced, the signature kept."""
    doc = json.loads(signed["doc"])
    doc["grants"] = grants
    return {"doc": json.dumps(doc, sort_keys=True, separators=(",", ":")),
            "sig": signed["sig"]}


def test_a_grant_set_is_bound_to_its_entity_and_expires(tmp_path: Path) -> None:
    keys = EntityKeys.create(tmp_path / "k", "lab")
    key = keys.private.public_key()
    signed = sign_grants(keys, [{"id": "1", "pattern": "/lab/x", "to": "g", "mode": "read",
                                 "created": 1.0}], now=1000.0, ttl=60.0)
    assert verify_grants(signed, "lab", key, now=1059.0)["grants"][0]["to"] == "g"
    with pytest.raises(AuthError, match="expired"):
        verify_grants(signed, "lab", key, now=1060.0)
    with pytest.raises(AuthError, match="not signed"):
        verify_grants({**signed, "sig": signed["sig"][:-4] + "AAA="}, "lab", key, now=1001.0)
    with pytest.raises(AuthError, match="not entity 'bank'"):
        verify_grants(signed, "bank", key, now=1001.0)
    with pytest.raises(AuthError, match="doc"):
        verify_grants({"doc": 5}, "lab", key)
