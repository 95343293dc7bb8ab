"""Federation mode of migrate and subscribe, end to end: registry and three sites of
bank-a as processes, a Dask cluster next to each site, everything through the APIs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow import Dataflow, JobFailedError
from dataflow.federated import FederatedDataflow, RemoteInputFile
from dataflow.federated_ops import MigrationIncompleteError
from gfs import Client
from tests.federated_sites import FederatedSites

assert FederatedDataflow.__mro__[1] is Dataflow  # composed: no mixin


def digest(files: list[RemoteInputFile]) -> dict[str, Any]:
    data = b"".join(f.read() for f in files)
    return {"paths": [f.path for f in files], "sha": hashlib.sha256(data).hexdigest()}


def checked(files: list[RemoteInputFile]) -> dict[str, Any]:
    """Fails on a file whose content starts with FAIL (a bad input)."""
    for f in files:
        if f.read().startswith(b"FAIL"):
            raise ValueError(f"bad input {f.path}")
    return digest(files)


class Sites(FederatedSites):
    """bank-a: w1 (primary), w2, w3 in one region, a Dask cluster next to each."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, [("w1", "bank-a", "cn-west", True),
                                ("w2", "bank-a", "cn-west", False),
                                ("w3", "bank-a", "cn-west", False)], ["w1", "w2", "w3"],
                         driver="w1")

    def write(self, files: dict[str, bytes]) -> None:
        with self.fed.client("bank-a") as fc:
            for p, data in files.items():
                fc.mkdir(p.rsplit("/", 1)[0], parents=True, exist_ok=True)
                fc.write_bytes(p, data)


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    s = Sites(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _content(name: str) -> bytes:
    shared = hashlib.sha256(b"shared").digest() * 16384              # 512 KiB in every file
    return shared + hashlib.sha256(name.encode()).digest() * 8192     # 256 KiB of its own


def _pins(sites: Sites, site: str) -> dict[str, set[bytes]]:
    """Rule id -> chunk ids pinned in `site`'s store (the site process is stopped to
    open its store, then started again)."""
    sites.fed.kill(site, 15)
    try:
        with Client(sites.fed.sites[site]["state"]) as c:
            if not c.exists("/.pins/bank-a"):
                return {}
            return {st.path.rsplit("/", 1)[1]: {r.id for r in c.manifest(st.path).chunks}
                    for st in c.ls("/.pins/bank-a")}
    finally:
        sites.fed.start(site)
        sites.fed.wait_status(site, "up")


def _read_from(sites: Sites, path: str) -> tuple[bytes, dict[str, int]]:
    """A file's content read by a fresh client (no cache), and the chunks per site."""
    with sites.fed.client("bank-a") as fc:
        return fc.read_bytes(path), dict(fc.chunks_from)


def test_migrate_pins_at_the_destination_and_releases_only_its_own_copies(
        sites: Sites) -> None:
    files = {f"/bank-a/mig/f{i}.bin": _content(f"mig{i}") for i in range(3)}
    other = {"/bank-a/other/f0.bin": _content("other")}
    sites.write({**files, **other})
    with sites.fed.client("bank-a") as fc:
        only = fc.rule_add("/bank-a/mig/**", 1, "site=w3")          # only for the dataset
        shared = fc.rule_add("/bank-a/*/f0.bin", 1, "site=w3")      # also for other data
        assert {r["state"] for r in fc.reconcile("bank-a")} == {"ok"}
    with sites.dataflow() as df:
        ds = df.dataset("mig", "/bank-a/mig/**")
        assert ds.bytes_at("w2") == 0
        out = df.migrate(ds, to="w2")
        assert out.site == "w2" and out.files == 3
        assert out.chunks == len(ds.lengths) and set(out.by_source) <= {"w1", "w3"}
        assert out.removed == 1                                  # `only` on w3
        assert df.topo.backlog() == {}                # its copy's link reservation settled
        assert any(only["id"] in n and "removed" in n for n in out.notes)
        assert any(shared["id"] in n and "kept" in n and "/bank-a/other/f0.bin" in n
                   for n in out.notes)
        with sites.fed.client("bank-a") as fc:
            rules = {r["id"]: r for r in fc.rules("bank-a")}
        assert only["id"] not in rules and shared["id"] in rules
        [mig] = [r for r in rules.values() if r["where"] == "site=w2"]
        assert mig["pattern"] == "/bank-a/mig/**" and mig["state"] == "ok"
        # the planner sees w2 holding the whole dataset; the files list w2 as a replica
        again = df.resolve(ds)
        assert again.bytes_at("w2") == ds.unique_bytes
        assert all("w2" in f.sites for f in df.dataset("mig", "/bank-a/mig/**").files)
        # run again: nothing to move, nothing to release, the same rule
        twice = df.migrate(ds, to="w2")
        assert (twice.chunks, twice.removed) == (0, 0)
        with sites.fed.client("bank-a") as fc:
            assert [r["id"] for r in fc.rules("bank-a") if r["where"] == "site=w2"] == \
                [mig["id"]]
    # reads prefer w2 (f0 is also kept on w3 by `shared`)
    for p in ("/bank-a/mig/f1.bin", "/bank-a/mig/f2.bin"):
        data, by_site = _read_from(sites, p)
        assert data == files[p] and set(by_site) == {"w2"}
    # durable at w2: its store pins every chunk under the migrate rule; w3 keeps only
    # the pin of the rule that also serves other data
    want = {r.id for f in ds.files for r in f.manifest.chunks}
    assert want <= _pins(sites, "w2")[mig["id"]]
    assert set(_pins(sites, "w3")) == {shared["id"]}

    # migrate on to w3: the w2 placement existed only for this dataset and is released
    with sites.dataflow() as df:
        out = df.migrate("/bank-a/mig/**", to="w3")
        assert out.removed == 1 and out.chunks == 0          # w3 held them all already
        with sites.fed.client("bank-a") as fc:
            wheres = sorted(r["where"] for r in fc.rules("bank-a"))
        assert wheres == ["site=w3", "site=w3"]              # `shared` and the new rule
    assert _pins(sites, "w2") == {}
    for p, data in files.items():
        assert _read_from(sites, p)[0] == data               # no file broken on the way


def test_migrate_without_remove_keeps_other_copies(sites: Sites) -> None:
    files = {f"/bank-a/keep/f{i}.bin": _content(f"keep{i}") for i in range(2)}
    sites.write(files)
    with sites.fed.client("bank-a") as fc:
        first = fc.rule_add("/bank-a/keep/**", 1, "site=w3")
        fc.reconcile("bank-a")
    with sites.dataflow() as df:
        out = df.migrate("/bank-a/keep", to="w2", remove=False)   # a directory selector
        assert out.removed == 0 and out.chunks > 0
        with sites.fed.client("bank-a") as fc:
            rules = fc.rules("bank-a")
        assert {(r["pattern"], r["where"]) for r in rules} == {
            ("/bank-a/keep/**", "site=w3"), ("/bank-a/keep/**", "site=w2")}
        assert first["id"] in {r["id"] for r in rules}
        # to the primary: it holds every file already; both placements existed only for
        # these files and are released
        home = df.migrate("/bank-a/keep/**", to="w1")
        assert (home.chunks, home.removed) == (0, 2)
        with sites.fed.client("bank-a") as fc:
            assert [(r["pattern"], r["where"]) for r in fc.rules("bank-a")] == [
                ("/bank-a/keep/**", "site=w1")]
    for p, data in files.items():
        got, by_site = _read_from(sites, p)
        assert got == data and set(by_site) == {"w1"}


def test_subscription_state_lives_in_the_federation(sites: Sites) -> None:
    with sites.dataflow() as df:
        sub = df.subscribe("/bank-a/inbox/*.csv", checked, name="inbox",
                           output="/bank-a/out/inbox")
        assert sub.poll() is None                            # nothing matches yet
        sites.write({"/bank-a/inbox/a.csv": b"a,1\n" * 100, "/bank-a/inbox/b.csv": b"b,2\n",
                     "/bank-a/inbox/notes.txt": b"not matched"})
        job = sub.poll()
        assert job is not None
        res = job.wait(120)
        assert sorted(p for v in res.values.values() for p in v["paths"]) == \
            ["/bank-a/inbox/a.csv", "/bank-a/inbox/b.csv"]
        assert sub.poll() is None                            # handled: nothing runs
        with sites.fed.client("bank-a") as fc:
            state = json.loads(fc.read_bytes("/bank-a/.dataflow/subs/inbox.json"))
        assert state["pattern"] == "/bank-a/inbox/*.csv"
        assert sorted(state["seen"]) == ["/bank-a/inbox/a.csv", "/bank-a/inbox/b.csv"]
        # a changed file runs again, alone
        sites.write({"/bank-a/inbox/a.csv": b"a,3\n" * 50})
        job = sub.poll()
        assert job is not None
        assert [v["paths"] for v in job.wait(120).values.values()] == [["/bank-a/inbox/a.csv"]]
        # a failed job leaves its files unhandled
        sites.write({"/bank-a/inbox/c.csv": b"FAIL\n"})
        with pytest.raises(JobFailedError):
            sub.poll()
        pend = sub.pending()
        assert pend is not None and [f.path for f in pend.files] == ["/bank-a/inbox/c.csv"]
        sites.write({"/bank-a/inbox/c.csv": b"c,4\n"})
        job = sub.poll()
        assert job is not None
        assert [v["paths"] for v in job.wait(120).values.values()] == [["/bank-a/inbox/c.csv"]]
    # another driver (a new Dataflow) sees the same state: nothing is pending
    with sites.dataflow() as df:
        sub = df.subscribe("/bank-a/inbox/*.csv", checked, name="inbox")
        assert sub.pending() is None and sub.poll() is None
        with pytest.raises(ValueError, match="subscription name"):
            df.subscribe("/bank-a/inbox/*.csv", checked, name="../x")


def test_migrate_releases_nothing_until_the_destination_is_verified(
        sites: Sites, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"/bank-a/safe/f{i}.bin": _content(f"safe{i}") for i in range(2)}
    sites.write(files)
    with sites.fed.client("bank-a") as fc:
        old = fc.rule_add("/bank-a/safe/**", 1, "site=w3")
        fc.reconcile("bank-a")
    with sites.dataflow() as df:
        real = df.catalog.has

        def lying(site: str, ids: Any, owner: Any = None) -> list[bool]:
            have = real(site, ids)
            return [False, *have[1:]] if site == "w2" and have else have
        monkeypatch.setattr(df.catalog, "has", lying)       # w2 seems to lack a chunk
        with pytest.raises(MigrationIncompleteError, match="w2 lacks 1 chunk"):
            df.migrate("/bank-a/safe/**", to="w2", rounds=2)
        with sites.fed.client("bank-a") as fc:
            assert old["id"] in {r["id"] for r in fc.rules("bank-a")}   # nothing released
        monkeypatch.setattr(df.catalog, "has", real)
        out = df.migrate("/bank-a/safe/**", to="w2")        # run again: it finishes
        assert out.removed == 1 and out.chunks == 0
        with sites.fed.client("bank-a") as fc:
            assert old["id"] not in {r["id"] for r in fc.rules("bank-a")}
