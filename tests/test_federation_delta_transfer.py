"""Delta transfer between two sites of one entity (real registry and site processes):
a rule's N -> N+1 replication sends changed chunks as deltas against bases the
receiver holds, and the receiver refuses a tampered delta or one whose base it lacks."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gfs import delta, delta_transfer
from gfs.client import Client
from gfs.codec import chunk_id, decode_blob
from gfs.federation import rules
from gfs.federation.client import FederationClient
from gfs.federation.site_client import SiteClient
from gfs.federation.testing import Federation
from gfs.federation.tls import trust_for
from tests.similar_data import mutate, text
from tests.site_chunks import (
    assert_bad_deltas_refused,
    file_chunk_ids,
    files_chunk_ids,
    site_blobs,
    site_has,
)

FILES = 3


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("delta"), ttl=3.0, heartbeat=0.3)
    try:
        f.registry()
        f.site("a1", "bank-a", "cn-west", primary=True, env={"HUTONG_DELTA": "1"})
        f.site("a2", "bank-a", "cn-west")
        yield f
    finally:
        f.close()


def _chunks(fc: FederationClient) -> list[bytes]:
    return files_chunk_ids(fc, [f"/bank-a/d/f{i}" for i in range(FILES)])


def _wire(fed: Federation) -> float:
    return fed.metric("a2", "mover_bytes") + fed.metric("a2", "chunk_bytes_in_total")


def test_n_plus_1_replication_sends_deltas_and_a2_holds_verified_chunks(
        fed: Federation) -> None:
    rng = random.Random(17)
    v1 = [text(rng, 300_000) for _ in range(FILES)]
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/d", parents=True, exist_ok=True)
        for i, data in enumerate(v1):
            fc.write_bytes(f"/bank-a/d/f{i}", data)
        fc.rule_add("/bank-a/d/**", 2, "entity=bank-a")
        [r1] = fc.reconcile("bank-a")
        assert r1["state"] == "ok", r1
        old = set(_chunks(fc))
        for i, data in enumerate(v1):
            fc.write_bytes(f"/bank-a/d/f{i}", mutate(data, rng, 20))
        ids = _chunks(fc)
        new = [c for c in ids if c not in old]
        assert new and not any(site_has(fc, "a2", new))
        whole = sum(len(b) for b in site_blobs(fc, "a1", new))  # a1 serves whole blobs
        before = _wire(fed)
        [r2] = fc.reconcile("bank-a")
        sent = _wire(fed) - before
        assert r2["state"] == "ok", r2
        # without delta transfer every new chunk crosses whole (plus framing)
        assert 0 < sent < whole / 3, (sent, whole)
        assert all(site_has(fc, "a2", ids))
        pairs = zip(ids, site_blobs(fc, "a1", ids), site_blobs(fc, "a2", ids), strict=True)
        for cid, b1, b2 in pairs:
            assert decode_blob(b2, expect_id=cid) == decode_blob(b1, expect_id=cid)


def test_tampered_delta_or_missing_base_is_refused_and_nothing_stored(fed: Federation) -> None:
    rng = random.Random(18)
    base = text(rng, 20_000)
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/t", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/t/base", base)
        fc.rule_add("/bank-a/t/**", 2, "entity=bank-a")
        fc.reconcile("bank-a")
        [bid] = file_chunk_ids(fc, "/bank-a/t/base")
        assert bid == chunk_id(base) and site_has(fc, "a2", [bid]) == [True]
        new = mutate(base, rng, 5)
        cid = chunk_id(new)
        header, payload = delta.encode_delta(new, cid, bid, base, 3)
        tampered = bytearray(header + payload)
        tampered[-4] ^= 0x10
        absent = text(rng, 20_000)  # a base a2 has never seen
        h2, p2 = delta.encode_delta(new, cid, chunk_id(absent), absent, 3)
        assert_bad_deltas_refused(fed, fc, "a2", cid, bytes(tampered), h2 + p2,
                                  chunk_id(absent))
        # the honest delta is taken and rebuilt to its id
        assert fc.site("a2").put([header + payload]).stored == 1
        [blob] = site_blobs(fc, "a2", [cid])
        assert decode_blob(blob, expect_id=cid) == new


class _LyingPeer(SiteClient):
    """A receiver whose have-list claims every chunk (as if a base it named were
    collected between the answer and the put)."""

    def has(self, cids: Sequence[bytes], *, owner: str | None = None) -> list[bool]:
        return [True] * len(cids)


def test_a_refused_delta_batch_leaves_its_chunks_to_the_whole_path(
        fed: Federation, tmp_path: Path) -> None:
    rng = random.Random(19)
    a = text(rng, 300_000)
    src = Client.init(tmp_path / "src", pack_size=1 << 20, workers=1, delta=True)
    peer = _LyingPeer(str(fed.sites["a2"]["url"]), keys=fed.keys("bank-a"),
                      tls=trust_for(fed.keys("bank-a")))
    try:
        src.write_bytes("/v", a)
        before = {r.id for r in src.manifest("/v").chunks}
        src.write_bytes("/w", mutate(a, rng, 10))
        missing = [r.id for r in src.manifest("/w").chunks if r.id not in before]
        assert delta_transfer.delta_blobs(src.store, missing, peer.has)  # deltas were made
        sent, left = rules._put_deltas(cast(Any, SimpleNamespace(client=src)), peer, missing,
                                       [[r.id for r in src.manifest("/w").chunks]])
        assert (sent, left) == (0, missing)
        with fed.client("bank-a") as fc:
            assert not any(site_has(fc, "a2", missing))
    finally:
        peer.close()
        src.close()
