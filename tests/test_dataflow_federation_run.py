"""Federation mode end to end: registry and sites as processes, one Dask cluster per site,
datasets, transfers, tasks, outputs and records through the sites' HTTP APIs only."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow import JobFailedError, PlanError
from dataflow.federated import (
    RemoteInputFile,
)
from tests.federated_sites import FederatedSites

STARTED = threading.Event()
HELD = threading.Event()


def digest(files: list[RemoteInputFile]) -> dict[str, Any]:
    data = b"".join(f.read() for f in files)
    return {"paths": [f.path for f in files], "n": len(data),
            "sha": hashlib.sha256(data).hexdigest()}


def held_digest(files: list[RemoteInputFile]) -> dict[str, Any]:
    """Says it started (STARTED), then waits for HELD to be set (at most 60 s)."""
    STARTED.set()
    HELD.wait(60)
    return digest(files)


def _content(name: str, shared: bytes) -> bytes:
    own = hashlib.sha256(name.encode()).digest() * 8192             # 256 KiB of its own
    return shared + own + shared[: 64 << 10]


class Sites(FederatedSites):
    """A federation of bank-a (primary w1, w2) with a Dask cluster next to each site."""

    def __init__(self, root: Path, *, foreign: bool = False, processes: bool = False) -> None:
        specs = [("w1", "bank-a", "cn-west", True), ("w2", "bank-a", "cn-west", False)]
        if foreign:                     # another entity's site, no cluster of ours
            specs.append(("e1", "telco-b", "cn-east", True))
        super().__init__(root, specs, ["w1", "w2"], driver="w1", processes=processes)

    def pulls(self, site: str) -> float:
        """`/v1/mover/pull` requests `site` has served (its metrics)."""
        text = self.fed.metrics(site)
        text = text.decode() if isinstance(text, bytes) else str(text)
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("hutong_site_mover_pulls_total"))

    def crash(self, name: str, *, then: Callable[[], None] | None = None) -> None:
        """The site's API process and its Dask cluster stop (kill -9, `then()`, cluster
        closed)."""
        self.fed.kill(name)
        if then is not None:
            then()
        cl = self.clusters.pop(name)
        cl.close(timeout=10)


def _write(sites: Sites, prefix: str, n: int) -> dict[str, bytes]:
    shared = hashlib.sha256(prefix.encode()).digest() * 16384         # 512 KiB shared
    out = {}
    with sites.fed.client("bank-a") as fc:
        fc.mkdir(prefix, parents=True, exist_ok=True)
        for i in range(n):
            p = f"{prefix}/f{i}.bin"
            out[p] = _content(p, shared)
            fc.write_bytes(p, out[p])
    return out


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    s = Sites(tmp_path_factory.mktemp("dffedrun"), foreign=True)
    try:
        yield s
    finally:
        s.close()


def test_job_over_two_sites_runs_through_the_apis(sites: Sites,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    hot = _write(sites, "/bank-a/ds/hot", 3)
    cold = _write(sites, "/bank-a/ds/cold", 3)
    with sites.fed.client("bank-a") as fc:
        rule = fc.rule_add("/bank-a/ds/hot/**", 2, "region=cn-west")
        [r] = [r for r in fc.reconcile("bank-a") if r["id"] == rule["id"]]
        assert r["state"] == "ok"
    with sites.dataflow() as df:
        ds = df.dataset("ds", "/bank-a/ds/**")
        assert [f.path for f in ds.files] == sorted({**hot, **cold})
        for f in ds.files:
            held = set.intersection(*(set(ds.locations[r.id]) for r in f.manifest.chunks))
            assert held == ({"w1", "w2"} if "/hot/" in f.path else {"w1"}), f.path
            assert f.home == "w1"
        plan = df.plan(ds)
        assert set(plan.sites()) <= {"w1", "w2"}
        # telco-b's site is never a candidate for bank-a's data (the chunk API is owner-only)
        assert not [a for a in plan.alternatives if "e1" in a.strategy or
                    "e1" in a.placement.values()]
        res = df.run(digest, ds, output="/bank-a/out/j1").wait()
        assert res.record["status"] == "done" and len(res.outputs) == 6
        with sites.fed.client("bank-a") as fc:
            for tid, out in res.outputs.items():
                got = json.loads(fc.read_bytes(out))
                data = b"".join({**hot, **cold}[p] for p in got["paths"])
                assert got["sha"] == hashlib.sha256(data).hexdigest(), tid
            rec = json.loads(fc.read_bytes(f"/bank-a/.dataflow/jobs/{res.id}.json"))
            assert rec["status"] == "done" and rec["plan"]["placement"] == plan.placement
        assert [j["id"] for j in df.jobs()][-1] == res.id
        # the catalog never lists job records
        assert not [f for f in df.dataset("all", "/bank-a/**").files if "/.dataflow/" in f.path]

        # pinned at w2: new files' chunks are copied w1 -> w2 through the APIs first
        _write(sites, "/bank-a/late", 3)
        cds = df.dataset("late", "/bank-a/late/**")
        assert cds.bytes_at("w2") == 0
        res2 = df.run(digest, cds, at="w2", output="/bank-a/out/j2").wait()
        [xfer] = res2.record["transfers"]
        assert (xfer["src"], xfer["dst"]) == ("w1", "w2")
        assert xfer["moved"] == len(cds.lengths)       # distinct chunks, once each
        assert xfer["via"] == "mover"                  # two bank-a sites with movers
        assert df.rt.transfer_via("w1", "e1") == "site-api"     # another entity's site
        assert {t["site"] for t in res2.record["tasks"].values()} == {"w2"}
        again = df.resolve(cds)
        assert again.bytes_at("w2") == cds.unique_bytes
        # a second job at w2 moves nothing (dedup-aware: the chunks are there now)
        res3 = df.run(digest, "/bank-a/late/**", at="w2").wait()
        assert res3.record["transfers"] == []
        assert res3.values == res2.values
        # chaining: the second job's inputs are the first one's outputs (resolved remotely)
        first = df.run(digest, "/bank-a/ds/hot/**", output="/bank-a/out/c1", wait=False)
        nxt = df.run(digest, first, output="/bank-a/out/c2", after=[first]).wait()
        assert sorted(p for v in nxt.values.values() for p in v["paths"]) == \
            sorted(first.wait().outputs.values())
        # prefetch: only what w2 lacks, once
        _write(sites, "/bank-a/pre", 2)
        pre = df.dataset("pre", "/bank-a/pre/**")
        before = sites.pulls("w2")
        ahead: list[float] = []
        start_copy = df.rt.start_copy

        def spy(*a: Any, **kw: Any) -> Any:       # what a job planned now would queue behind
            ahead.append(df.topo.pending("w1", "w2"))
            return start_copy(*a, **kw)
        monkeypatch.setattr(df.rt, "start_copy", spy)
        got = df.prefetch(pre, "w2")
        monkeypatch.undo()
        # the copy's flow was reserved on w1 -> w2 while it ran, and settled after
        assert ahead == [pre.unique_bytes]
        assert df.topo.backlog() == {}
        assert got.chunks == len(pre.lengths) and got.by_source.keys() == {"w1"}
        assert sites.pulls("w2") > before                # through the native mover
        assert df.resolve(pre).bytes_at("w2") == pre.unique_bytes
        assert df.prefetch(pre, "w2").chunks == 0


def test_restarted_site_is_found_at_its_new_endpoint(sites: Sites) -> None:
    """Workers keep their federation clients; a site restarted on a new port is
    found again through the registry (no stale connection)."""
    data = _write(sites, "/bank-a/again", 2)
    with sites.dataflow() as df:
        assert df.run(digest, "/bank-a/again/**", at="w2").wait().record["status"] == "done"
    old = sites.fed.sites["w2"]["url"]
    sites.fed.kill("w2")
    assert sites.fed.start("w2") != old
    more = _write(sites, "/bank-a/again2", 2)
    with sites.dataflow() as df:
        res = df.run(digest, ["/bank-a/again/**", "/bank-a/again2/**"], at="w2").wait()
        assert res.record["status"] == "done" and not res.record["replans"]
        [x] = res.record["transfers"]
        assert x["dst"] == "w2" and x["moved"] > 0
        both = {**data, **more}
        for v in res.values.values():
            assert v["sha"] == hashlib.sha256(both[v["paths"][0]]).hexdigest()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Sites]:
    s = Sites(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_site_lost_mid_job_replans(fresh: Sites) -> None:
    data = _write(fresh, "/bank-a/in", 4)
    with fresh.fed.client("bank-a") as fc:
        fc.rule_add("/bank-a/in/**", 2, "region=cn-west")
        fc.reconcile("bank-a")
    STARTED.clear()
    HELD.clear()
    with fresh.dataflow() as df:
        # w2's tasks are held until w2's API is dead (however slow the machine): none
        # can finish there, so the job is always re-planned
        job = df.run(held_digest, "/bank-a/in/**", at="w2", output="/bank-a/out/r",
                     wait=False)
        assert STARTED.wait(60)
        fresh.crash("w2", then=HELD.set)
        res = job.wait(120)
        assert res.record["status"] == "done"
        [rp] = res.record["replans"]
        assert rp["lost"] == ["w2"] and set(rp["placement"].values()) == {"w1"}
        with fresh.fed.client("bank-a") as fc:
            for out in res.outputs.values():
                got = json.loads(fc.read_bytes(out))
                assert got["sha"] == hashlib.sha256(data[got["paths"][0]]).hexdigest()


def test_only_holder_lost_fails_with_report(fresh: Sites) -> None:
    _write(fresh, "/bank-a/only", 2)
    with fresh.dataflow() as df:
        ds = df.dataset("only", "/bank-a/only/**")
        assert ds.bytes_at("w2") == 0
        plan = df.plan(ds, at="w2")
        assert plan.estimate.wan_bytes == ds.unique_bytes
        fresh.crash("w1")                     # the primary: the only holder, and home
        with pytest.raises(JobFailedError) as err:       # the plan made before the crash
            df.rt.executor().run(digest, plan, output="/bank-a/out/x")
        rep = err.value.report
        assert rep["missing"] == [f.path for f in ds.files]
        assert "w1" in rep["lost_sites"]
        assert "not saved" in str(rep["record"])
        with pytest.raises(PlanError, match="held by no up site"):   # planning again
            df.plan(ds, at="w2")


def test_cli_plan_and_run_in_federation_mode(sites: Sites, tmp_path: Path) -> None:
    from tests.test_dataflow import _hutong

    data = _write(sites, "/bank-a/cli", 2)
    keys = sites.fed.sites["w1"]["state"] / "federation"
    scheds = ", ".join(f'{n} = "{a}"' for n, a in sites.schedulers.items())
    job = tmp_path / "job.toml"
    job.write_text(f'inputs = ["/bank-a/cli/**"]\nentry = "tests.test_dataflow_federation_run:'
                   f'digest"\noutput = "/bank-a/out/cli"\nat = "w2"\n'
                   f'[federation]\nregistry = "{sites.fed.registry_url}"\nkeys = "{keys}"\n'
                   f'schedulers = {{{scheds}}}\n')
    p = _hutong("plan", str(job), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)["placement"].values()) == {"w2"}
    r = _hutong("run", str(job), "-q", "--job-id", "fedcli", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["status"] == "done" and len(rec["tasks"]) == 2
    with sites.fed.client("bank-a") as fc:
        for t in rec["tasks"].values():
            got = json.loads(fc.read_bytes(t["output"]))
            assert got["sha"] == hashlib.sha256(data[got["paths"][0]]).hexdigest()
        assert json.loads(fc.read_bytes("/bank-a/.dataflow/jobs/fedcli.json"))["id"] == "fedcli"
    again = _hutong("run", str(job), "-q", "--job-id", "fedcli", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr           # resumed: done tasks are skipped
    assert [len(t["attempts"]) for t in json.loads(again.stdout)["tasks"].values()] == [1, 1]
    bad = tmp_path / "bad.toml"
    bad.write_text(f'inputs = ["/bank-a/cli/**"]\nentry = "m:f"\n'
                   f'[federation]\nregistry = "{sites.fed.registry_url}"\n')
    r = _hutong("plan", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "keys" in r.stderr


def test_worker_processes_copy_and_read_through_the_apis(tmp_path: Path) -> None:
    """Site clusters with worker processes: credentials travel to them, the copy
    moves the distinct chunks once (incompressible data: stored bytes >= raw)."""
    import os

    s = Sites(tmp_path, processes=True)
    try:
        blob = os.urandom(1 << 20)
        with s.fed.client("bank-a") as fc:
            fc.mkdir("/bank-a/p", parents=True)
            fc.write_bytes("/bank-a/p/a", blob)
            fc.write_bytes("/bank-a/p/b", blob + b"tail")      # shares most chunks with a
        with s.dataflow(use_mover=False) as df:         # the HTTP chunk API path
            ds = df.dataset("p", "/bank-a/p/**")
            res = df.run(digest, ds, at="w2", output="/bank-a/out/p").wait()
            [x] = res.record["transfers"]
            assert x["moved"] == len(ds.lengths) and x["bytes"] >= ds.unique_bytes
            assert x["via"] == "site-api" and s.pulls("w2") == 0
            assert ds.unique_bytes < ds.logical_bytes
            used = {t["attempts"][-1]["site"] for t in res.record["tasks"].values()}
            assert used == {"w2"}
            assert hashlib.sha256(blob).hexdigest() == res.values["t0000"]["sha"]
    finally:
        s.close()
