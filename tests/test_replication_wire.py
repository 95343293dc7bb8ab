"""What a rule's reconcile sends besides chunks (docs/format.md "Rules"): to another
entity's site the pin's answer says which keyed ids the vault lacks, so no has-list is
sent; to an own site the pin carries the files' manifests once, and the site pins their
union. Real registry and site processes; bytes read from the sites' access logs."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs import accesslog
from gfs.codec import keyed_chunk_id
from gfs.federation.http import ApiError
from gfs.federation.testing import Federation
from gfs.federation.wire import manifest_digest
from gfs.meta import ChunkRef
from tests.replicated import first_version, folder_chunks, hosted, next_version
from tests.similar_data import mutate
from tests.site_chunks import file_chunk_ids, site_has

FILES = 4


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with hosted(tmp_path_factory.mktemp("repl-wire"), own=["a2"]) as f:
        yield f


def _ops(fed: Federation, site: str, since: float) -> list[accesslog.Access]:
    return list(accesslog.read(Path(str(fed.sites[site]["state"])), since=since,
                               entity="bank-a"))


def test_reconcile_sends_no_has_list_to_a_vault_and_each_ref_once_to_an_own_site(
        fed: Federation) -> None:
    rng = random.Random(41)
    with fed.client("bank-a") as fc:
        v1 = first_version(fc, "/bank-a/w", rng, FILES, 150_000)
        fc.rule_add("/bank-a/w/**", 2, "entity=bank-a & site=a2 | entity=telco-b")
        fc.reconcile("bank-a")
        next_version(fc, "/bank-a/w", rng, v1, 10)
        since = time.time()
        [r] = fc.reconcile("bank-a")
        assert r["state"] == "ok" and sorted(r["sites"]) == ["a2", "t1"], r
        files = {f"/bank-a/w/f{i}": file_chunk_ids(fc, f"/bank-a/w/f{i}") for i in range(FILES)}
        ids = folder_chunks(fc, "/bank-a/w", FILES)

        # the vault: pins, then puts of what the pins' answers said it lacks; all held
        t1 = _ops(fed, "t1", since)
        assert [a.op for a in t1 if a.op == "/v1/chunks/has"] == []
        assert any(a.op == "/v1/chunks/put" for a in t1)
        keys = fed.keys("bank-a")
        kids = [keyed_chunk_id(c, keys.id_key) for c in ids]
        assert all(fc.site("t1").has(kids, owner="bank-a"))

        # the own site: one pin request, about the size of the manifests alone
        [pin] = [a for a in _ops(fed, "a2", since) if a.op == "/v1/pins/{owner}/{rule}"]
        refs = [[c.hex(), 1] for c in ids]
        files_json = json.dumps([{"path": p, "chunks": [[c.hex(), 150_000] for c in cs]}
                                 for p, cs in files.items()])
        assert pin.bytes_in < len(files_json) + len(json.dumps(refs)) // 2, pin
        fc.site("a2").gc()
        assert all(site_has(fc, "a2", ids))  # the union of the files' chunks is pinned


def test_a_vault_pin_answers_the_ids_it_lacks(fed: Federation) -> None:
    keys = fed.keys("bank-a")
    with fed.client("bank-a") as fc:
        [cid] = file_chunk_ids(fc, "/bank-a/w/f0")[:1]
        held = keyed_chunk_id(cid, keys.id_key)
        absent = keyed_chunk_id(b"\x07" * 16, keys.id_key)
        ans = fc.site("t1").pin_vault("bank-a", "zz", {"ids": [held.hex(), absent.hex()]})
        assert ans.complete and ans.missing == [absent]
        assert fc.site("t1").unpin("bank-a", "zz")


def test_only_changed_files_are_compared_sent_and_mirrored(fed: Federation) -> None:
    rng = random.Random(43)
    with fed.client("bank-a") as fc:
        v1 = first_version(fc, "/bank-a/m", rng, FILES, 120_000)
        rule = fc.rule_add("/bank-a/m/**", 1, "entity=bank-a & site=a2")
        [r1] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r1["state"] == "ok", r1
        before = file_chunk_ids(fc, "/bank-a/m/f0")
        edited = mutate(v1[2], rng, 5)
        fc.write_bytes("/bank-a/m/f2", edited)
        since = time.time()
        [r2] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r2["state"] == "ok", r2
        ops = _ops(fed, "a2", since)  # this rule's and the first test's (nothing changed)
        has = max((a for a in ops if a.op == "/v1/chunks/has"), key=lambda a: a.bytes_in)
        pin = max((a for a in ops if a.op == "/v1/pins/{owner}/{rule}"),
                  key=lambda a: a.bytes_in)
        f2 = file_chunk_ids(fc, "/bank-a/m/f2")
        # the has-list names f2's chunks only, the pin carries f2's manifest only
        assert has.bytes_in < 40 * len(f2) + 64, has
        assert pin.bytes_in < 60 * len(f2) + 400, pin
        fc.site("a2").gc()
        ids = folder_chunks(fc, "/bank-a/m", FILES)
        assert all(site_has(fc, "a2", ids)) and set(before) <= set(ids)
        # the mirror serves every file, the edited one in its new version
        a2 = fc.site("a2")
        for i in range(FILES):
            m = a2.call("GET", "/v1/ns/manifest", query={"path": f"/bank-a/m/f{i}",
                                                         "mirror": "1"})
            assert [bytes.fromhex(h) for h, _ in m["chunks"]] == file_chunk_ids(
                fc, f"/bank-a/m/f{i}")


def test_a_pin_naming_a_file_unchanged_that_is_not_is_refused(fed: Federation) -> None:
    with fed.client("bank-a") as fc:
        [rule] = [r for r in fc.rules("bank-a") if r["pattern"] == "/bank-a/m/**"]
        a2 = fc.site("a2")
        ids = file_chunk_ids(fc, "/bank-a/m/f1")
        real = manifest_digest([ChunkRef(c, 1) for c in ids])  # lengths differ: not its digest
        assert a2.mirror_changed("bank-a", rule["id"], {"/bank-a/m/f1": real}) == [
            "/bank-a/m/f1"]
        with pytest.raises(ApiError) as e:
            a2.pin("bank-a", rule["id"], {"files": [], "same": [["/bank-a/m/f1", real]]})
        assert e.value.status == 409 and e.value.code == "mirror_changed"
        a2.gc()  # the rule's pins are as they were: nothing collected
        assert all(site_has(fc, "a2", folder_chunks(fc, "/bank-a/m", FILES)))
