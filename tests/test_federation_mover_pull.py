"""`POST /v1/mover/pull`: a site copies chunks from another site of its entity through the
native mover (real registry and site processes; the mover ports are the sites' own)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from gfs.federation.auth import AuthError
from gfs.federation.client import FederationClient
from gfs.federation.http import ApiError, BadRequestError
from gfs.federation.site_client import SiteUnavailableError
from gfs.federation.testing import TWO_ENTITIES, Federation, SiteDef, started
from tests.site_chunks import file_chunk_ids, site_has


def _data(name: str, n: int) -> bytes:
    return b"".join(hashlib.sha256(f"{name}{i}".encode()).digest() for i in range(n))


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    sites = [*TWO_ENTITIES, SiteDef("a2", "bank-a", "cn-west")]
    with started(tmp_path_factory.mktemp("pull"), sites, ttl=3.0, heartbeat=0.3) as f:
        f.site("a3", "bank-a", "cn-west", mover=False)
        yield f


def _pull(fc: FederationClient, site: str, body: Any) -> Any:
    return fc.site(site).call("POST", "/v1/mover/pull", body)


def test_pull_copies_only_what_is_missing_and_pins_it(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/p", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/p/x.bin", _data("x", 40_000))       # ~1.3 MB
        ids = file_chunk_ids(fc, "/bank-a/p/x.bin")
        assert len(ids) > 4 and not any(site_has(fc, "a2", ids))
        half = ids[: len(ids) // 2]
        first = fc.mover_pull("a2", "a1", half, streams=2)
        assert first["chunks"] == len(half) and first["committed"] == len(half)
        assert first["bytes"] > 0 and first["skipped"] == 0 and first["streams"] == 2
        # resume: the whole list again moves only the other half
        st = fc.mover_pull("a2", "a1", ids)
        assert (st["chunks"], st["skipped"]) == (len(ids) - len(half), len(half))
        assert all(site_has(fc, "a2", ids))
        again = fc.mover_pull("a2", "a1", ids)
        assert again["chunks"] == 0 and again["skipped"] == len(ids)
        # the copies are the source's blobs, and gc keeps them (pinned: no manifest at a2)
        fc.site("a2").call("POST", "/v1/gc", {})
        assert all(site_has(fc, "a2", ids))
        a1 = fc.site("a1").call("POST", "/v1/chunks/get", {"ids": [c.hex() for c in ids]})
        a2 = fc.site("a2").call("POST", "/v1/chunks/get", {"ids": [c.hex() for c in ids]})
        assert a1 == a2
        # the destination may also ask the source for the session itself (a site name)
        fc.write_bytes("/bank-a/p/y.bin", _data("y", 20_000))
        yids = file_chunk_ids(fc, "/bank-a/p/y.bin")
        st = _pull(fc, "a2", {"source": "a1", "ids": [c.hex() for c in yids]})
        assert st["source"] == "a1" and st["chunks"] == len(yids)
        assert all(site_has(fc, "a2", yids))


def test_bad_bodies_are_refused_with_400(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/p", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/p/z.bin", _data("z", 5_000))
        ids = [c.hex() for c in file_chunk_ids(fc, "/bank-a/p/z.bin")]
        sess = fc.mover_session("a1").to_wire()
        h = fc.site("a2")
        bad: list[tuple[Any, str]] = [
            ({"ids": ids}, "source"),
            ({"source": "a1"}, "ids"),
            ({"source": "a1", "ids": ["xyz"]}, "ids"),
            ({"source": "a1", "ids": ids, "streams": 0}, "streams"),
            ({"source": "a1", "ids": ids, "streams": "4"}, "streams"),
            ({"source": 7, "ids": ids}, "source"),
            ({"source": "a2", "ids": ids}, "this site"),
            ({"source": "nope", "ids": ids}, "not registered"),
            ({"source": "t1", "ids": ids}, "telco-b"),
            ({"source": {**sess, "secret": "zz"}, "ids": ids}, "secret"),
            ({"source": {**sess, "port": 0}, "ids": ids}, "port"),
            ({"source": {**sess, "secret": "00" * 32}, "ids": ids}, "refused the session"),
            ({"source": "a1", "ids": ids * 2000}, "ids"),       # more than 4096
        ]
        for body, word in bad:
            with pytest.raises(BadRequestError, match=word) as e:
                h.call("POST", "/v1/mover/pull", body)
            assert e.value.status == 400, body
        with pytest.raises(BadRequestError, match="JSON"):
            h.call("POST", "/v1/mover/pull", body=b"{not json")
        # a source without a mover: 409 naming the other path
        with pytest.raises(ApiError, match="no mover") as e2:
            h.call("POST", "/v1/mover/pull", {"source": "a3", "ids": ids})
        assert e2.value.status == 409
        assert not any(site_has(fc, "a2", [bytes.fromhex(c) for c in ids]))


def test_other_entities_and_tokens_get_403(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/p", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/p/w.bin", _data("w", 3_000))
        ids = [c.hex() for c in file_chunk_ids(fc, "/bank-a/p/w.bin")]
        sess = fc.mover_session("a1").to_wire()
    token = fed.keys("bank-a").mint_token("u", "write", "/bank-a", ttl=600)
    for c in (fed.client("telco-b"), fed.client(token=token)):
        with c, pytest.raises(AuthError, match="own entity") as e:
            c.site("a2").call("POST", "/v1/mover/pull", {"source": sess, "ids": ids})
        assert e.value.status == 403
    with fed.client("telco-b") as tb, pytest.raises(AuthError):
        tb.mover_session("a1")


def test_source_down_is_a_clear_502(fed: Federation) -> None:
    fed.site("a4", "bank-a", "cn-west")
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/p", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/p/v.bin", _data("v", 6_000))
        ids = file_chunk_ids(fc, "/bank-a/p/v.bin")
        fc.mover_pull("a4", "a1", ids)
        sess = fc.mover_session("a4")
        fed.kill("a4")
        with pytest.raises(SiteUnavailableError, match="pull from") as e:
            fc.mover_pull("a2", sess, ids)                 # its mover port is gone
        assert e.value.status == 502 and "run the transfer again" in str(e.value)
        with pytest.raises(SiteUnavailableError, match="a4 does not answer") as e:
            _pull(fc, "a2", {"source": "a4", "ids": [c.hex() for c in ids]})
        assert e.value.status == 502


def test_dataflow_uses_the_mover_only_between_own_sites_with_movers(fed: Federation) -> None:
    from dataflow.federated import FederatedDataflow

    keys = str(fed.sites["a1"]["state"] / "federation")
    with FederatedDataflow(fed.registry_url, keys_dir=keys) as df:
        via = df.rt.transfer_via
        assert via("a1", "a2") == via("a2", "a1") == "mover"
        assert via("a1", "a3") == via("a3", "a2") == "site-api"      # a3 runs no mover
        assert via("a1", "t1") == "site-api"                         # another entity
    with FederatedDataflow(fed.registry_url, keys_dir=keys, use_mover=False) as df:
        assert df.rt.transfer_via("a1", "a2") == "site-api"
    token = fed.keys("bank-a").mint_token("u", "write", "/bank-a", ttl=600)
    with FederatedDataflow(fed.registry_url, token=token,     # sessions need keys
                           registry_ca=str(fed.registry_ca_file)) as df:
        assert df.rt.transfer_via("a1", "a2") == "site-api"
