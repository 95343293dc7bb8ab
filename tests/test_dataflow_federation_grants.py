"""Jobs of one entity over files another entity granted it read on (federation mode, real
registry and site processes): read whole through the owner's primary, run at the
grantee's sites, outputs and records in the grantee's namespace."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow import JobFailedError, PlanError
from gfs.federation.auth import AuthError
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


def test_grantee_job_reads_granted_files_whole(world: World) -> None:
    data = world.data
    with world.dataflow() as df:
        ds = df.dataset("shared", "/bank-a/shared/**")
        assert [f.path for f in ds.files] == sorted(data)
        for f in ds.files:                  # whole-file entries held by the primary alone
            assert f.whole is not None and f.home == "a1" and f.size == len(data[f.path])
            [pseudo] = f.manifest.chunks
            assert ds.locations[pseudo.id] == {"a1": df.topo.sites["a1"].tier}
        plan = df.plan(ds)
        assert plan.sites() == ["b1"]      # only the grantee's sites run its tasks
        for a in plan.alternatives:
            assert not ({"a1", "a2"} & set(a.placement.values())), a.strategy
        # whole files from the primary, no dedup credit (the files share 256 KiB each)
        e = plan.estimate
        assert e.wan_bytes == sum(len(d) for d in data.values())
        assert [(f.src, f.dst, f.bytes) for f in e.flows] == [("a1", "b1", e.wan_bytes)]
        res = df.run(digest, ds, output="/lab-b/out/g").wait()
        assert res.record["status"] == "done" and res.record["transfers"] == []
        for tid, t in res.record["tasks"].items():
            assert t["site"] == "b1" and t["read_whole"]["from"] == ["a1"], tid
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
