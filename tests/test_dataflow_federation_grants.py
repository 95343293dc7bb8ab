"""Jobs of one entity over files another entity granted it read on (federation mode, real
registry and site processes): read chunk by chunk through the read stack (the grantee's
own site first, dedup credit, then the owner's primary), run at the grantee's sites,
outputs and records in the grantee's namespace."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow import JobFailedError, PlanError
from gfs.federation.auth import AuthError
from gfs.federation.client import FederationClient
from tests.federated_sites import FederatedSites
from tests.test_dataflow_federation_run import digest


class World(FederatedSites):
    """bank-a (primary a1, a2) owns the data; lab-b (b1, with a Dask cluster) runs jobs."""

    def __init__(self, root: Path) -> None:
        self.data: dict[str, bytes] = {}
        super().__init__(root, [("a1", "bank-a", "cn-west", True),
                                ("a2", "bank-a", "cn-west", False),
                                ("b1", "lab-b", "cn-east", True)], ["b1"], driver="b1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("grants"))
    try:
        shared = hashlib.sha256(b"common").digest() * 8192          # 256 KiB in every file
        with w.fed.client("bank-a") as fc:
            fc.mkdir("/bank-a/shared", parents=True)
            fc.mkdir("/bank-a/private", parents=True)
            for i in range(3):
                p = f"/bank-a/shared/s{i}.bin"
                w.data[p] = shared + hashlib.sha256(p.encode()).digest() * 4096
                fc.write_bytes(p, w.data[p])
            fc.write_bytes("/bank-a/private/p0.bin", b"secret" * 10_000)
            fc.rule_add("/bank-a/shared/**", 2, "entity=bank-a")
            fc.reconcile("bank-a")                                  # replicas at a2 too
            fc.grant("/bank-a/shared/**", "lab-b", "read")
        yield w
    finally:
        w.close()


def test_grantee_job_reads_granted_files_by_chunk(world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = world.data
    with world.dataflow() as df:
        ds = df.dataset("shared", "/bank-a/shared/**")
        assert [f.path for f in ds.files] == sorted(data)
        for f in ds.files:                  # granted entries: listed at the primary alone
            assert f.granted and f.home == "a1" and f.sites == ("a1",)
            assert f.size == len(data[f.path]) and len(f.manifest.chunks) > 1
            for r in f.manifest.chunks:
                assert ds.locations[r.id] == {"a1": df.topo.sites["a1"].tier}
        plan = df.plan(ds)
        assert plan.sites() == ["b1"]      # only the grantee's sites run its tasks
        for a in plan.alternatives:
            assert not ({"a1", "a2"} & set(a.placement.values())), a.strategy
        # distinct chunks from the primary: the 256 KiB the files share is counted once
        e = plan.estimate
        assert e.wan_bytes == ds.unique_bytes < sum(len(d) for d in data.values())
        assert [(f.src, f.dst, f.bytes) for f in e.flows] == [("a1", "b1", e.wan_bytes)]

        real = FederationClient.read_bytes

        def whole(fc: FederationClient, path: str, *a: Any, **k: Any) -> bytes:
            assert not path.startswith("/bank-a/"), f"{path} read whole (/v1/ns/read)"
            return real(fc, path, *a, **k)
        monkeypatch.setattr(FederationClient, "read_bytes", whole)   # tasks run in-process
        res = df.run(digest, ds, output="/lab-b/out/g").wait()
        monkeypatch.undo()
        assert res.record["status"] == "done" and res.record["transfers"] == []
        for tid, t in res.record["tasks"].items():
            assert t["site"] == "b1" and t["granted"]["from"] == ["a1"], tid
            v = res.values[tid]
            assert v["sha"] == hashlib.sha256(data[v["paths"][0]]).hexdigest()
        with world.fed.client("lab-b") as fc:
            outs = sorted(e.path for e in fc.ls("/lab-b/out/g"))
            assert outs == sorted(res.outputs.values()) and len(outs) == 3
            rec = json.loads(fc.read_bytes(f"/lab-b/.dataflow/jobs/{res.id}.json"))
            assert rec["status"] == "done"
        # chained: the outputs are lab-b's own files (chunk reads, no grant needed)
        nxt = df.run(digest, list(res.outputs.values()), output="/lab-b/out/g2").wait()
        assert nxt.record["status"] == "done" and len(nxt.outputs) == 3


def test_ungranted_files_fail_clearly_and_write_nothing(world: World) -> None:
    with world.dataflow() as df:
        before = len(df.jobs())
        with pytest.raises(AuthError, match=r"no read grant.*FederationClient\.grant") as e:
            df.run(digest, "/bank-a/private/**", output="/lab-b/out/bad")
        assert e.value.status == 403 and "lab-b" in str(e.value)
        with pytest.raises(AuthError):                 # one ungranted selector is enough
            df.run(digest, ["/bank-a/shared/**", "/bank-a/private/p0.bin"],
                   output="/lab-b/out/bad")
        assert len(df.jobs()) == before
    with world.fed.client("lab-b") as fc:
        fc.mkdir("/lab-b/out", parents=True, exist_ok=True)
        assert "/lab-b/out/bad" not in {e.path for e in fc.ls("/lab-b/out")}


def test_owner_policy_and_changed_inputs(world: World, tmp_path: Path) -> None:
    cfg = tmp_path / "sites.toml"
    cfg.write_text('[sites.b1]\nslots = 1\n[owners.bank-a]\nallow = "region=cn-west"\n')
    with world.dataflow(config=str(cfg)) as df:        # bank-a's data only in cn-west
        ds = df.dataset("shared", "/bank-a/shared/**")
        with pytest.raises(PlanError, match="allows its data only"):
            df.plan(ds)
    with world.dataflow() as df:
        ds = df.dataset("shared", "/bank-a/shared/s0.bin")
        plan = df.plan(ds)
        with world.fed.client("bank-a") as fc:           # the owner rewrites it meanwhile
            fc.write_bytes("/bank-a/shared/s0.bin", b"new content")
        with pytest.raises(JobFailedError, match="changed since the job was planned"):
            df.rt.executor(retries=0).run(digest, plan, output="/lab-b/out/c")


def test_grantee_reads_chunks_its_own_site_holds_there(world: World) -> None:
    """Dedup credit: chunks of a granted file that the grantee's site already holds are
    neither charged by the plan nor read from the owner's primary."""
    mine = hashlib.sha256(b"held by both").digest() * 20_000            # 640 KiB
    theirs = hashlib.sha256(b"owner only").digest() * 20_000
    with world.fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/more", parents=True)
        fc.write_bytes("/bank-a/more/m.bin", mine)
        fc.write_bytes("/bank-a/more/n.bin", theirs)
        fc.grant("/bank-a/more/**", "lab-b", "read")
    with world.fed.client("lab-b") as fc:                # lab-b holds the same bytes
        fc.mkdir("/lab-b/mine", parents=True, exist_ok=True)
        fc.write_bytes("/lab-b/mine/copy.bin", mine)
    with world.dataflow() as df:
        ds = df.dataset("more", "/bank-a/more/**")
        m, n = ds.files
        assert all(ds.locations[r.id].keys() == {"a1", "b1"} for r in m.manifest.chunks)
        assert all(ds.locations[r.id].keys() == {"a1"} for r in n.manifest.chunks)
        only_n = sum(ds.lengths[c] for c in {r.id for r in n.manifest.chunks}
                     - {r.id for r in m.manifest.chunks})
        plan = df.plan(ds)
        assert plan.sites() == ["b1"] and plan.estimate.wan_bytes == only_n
        reader = df.rt.creds.client(near="b1")           # the workers' client (in-process)
        before = dict(reader.chunks_from)
        res = df.run(digest, ds, output="/lab-b/out/dedup").wait()
        got = {k: v - before.get(k, 0) for k, v in reader.chunks_from.items()}
        assert got.get("b1", 0) == len({r.id for r in m.manifest.chunks})
        assert got.get("a1", 0) == len({r.id for r in n.manifest.chunks}
                                       - {r.id for r in m.manifest.chunks})
        assert sorted(v["sha"] for v in res.values.values()) == sorted(
            hashlib.sha256(d).hexdigest() for d in (mine, theirs))
