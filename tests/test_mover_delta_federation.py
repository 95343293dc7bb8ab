"""Delta transfer over the mover between two real site daemons (registry and site
processes on loopback): `mover_pull` of version N+1 moves deltas against the chunks of
version N the destination site holds, and every chunk it committed verifies."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from gfs.codec import decode_blob
from gfs.federation.client import FederationClient
from gfs.federation.testing import Federation
from tests.similar_data import mutate, text
from tests.site_chunks import files_chunk_ids, site_blobs, site_has

FILES = 3


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("mvdelta"), ttl=3.0, heartbeat=0.3)
    try:
        f.registry()
        f.site("a1", "bank-a", "cn-west", primary=True, env={"HUTONG_DELTA": "1"})
        f.site("a2", "bank-a", "cn-west", env={"HUTONG_DELTA": "1"})
        yield f
    finally:
        f.close()


def _chunks(fc: FederationClient) -> list[bytes]:
    return files_chunk_ids(fc, [f"/bank-a/d/f{i}" for i in range(FILES)])


def test_mover_pull_of_n_plus_1_moves_deltas_and_a2_holds_verified_chunks(
        fed: Federation) -> None:
    rng = random.Random(23)
    v1 = [text(rng, 300_000) for _ in range(FILES)]
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/d", parents=True, exist_ok=True)
        for i, data in enumerate(v1):
            fc.write_bytes(f"/bank-a/d/f{i}", data)
        old = _chunks(fc)
        first = fc.mover_pull("a2", "a1", old)
        assert first["committed"] == len(old) and all(site_has(fc, "a2", old))
        assert first["deltas"] == 0  # a2 held no base yet
        for i, data in enumerate(v1):
            fc.write_bytes(f"/bank-a/d/f{i}", mutate(data, rng, 20))
        ids = _chunks(fc)
        new = [c for c in ids if c not in set(old)]
        assert new and not any(site_has(fc, "a2", new))
        whole = sum(len(b) for b in site_blobs(fc, "a1", new))  # a1 serves whole blobs
        st = fc.mover_pull("a2", "a1", new, streams=2)
        assert st["committed"] == len(new) and st["chunks"] == len(new)
        assert 0 < st["bytes"] * 4 < whole, (st["bytes"], whole)
        assert 0 < st["deltas"] <= len(new)  # the site's answer counts them
        assert all(site_has(fc, "a2", ids))
        pairs = zip(ids, site_blobs(fc, "a1", ids), site_blobs(fc, "a2", ids), strict=True)
        for cid, b1, b2 in pairs:
            assert decode_blob(b2, expect_id=cid) == decode_blob(b1, expect_id=cid)
