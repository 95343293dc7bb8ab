"""Shared reservations between drivers: two driver processes over one link, embedded
stores shared (LMDB), leases in the home store (`dataflow.leases`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow import Dataflow, Topology
from dataflow.catalog import EmbeddedCatalog
from dataflow.leases import KIND, Lease, Leases
from gfs import Client

REPO = Path(__file__).resolve().parent.parent
SITES = """
[sites.a]
region = "west"
entity = "bank-a"
state = "a"
[sites.c]
region = "east"
entity = "lab"
state = "c"
slots = 2
[[links]]
a = "a"
b = "c"
mbps = 80
rtt_ms = 10
"""
TTL = 3.0


def _until(cond: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"still waiting for {what} after {limit} s"
        time.sleep(0.05)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    for s in ("a", "c"):
        Client.init(tmp_path / s).close()
    with Client(tmp_path / "a") as a:
        a.mkdir("/bank-a/in", parents=True)
        for i in range(3):
            a.write_bytes(f"/bank-a/in/f{i}", os.urandom(1 << 20))
    (tmp_path / "sites.toml").write_text(SITES)
    yield tmp_path


def _driver(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.dataflow_driver_child",
                             str(root / "sites.toml"), str(root / "gate"), str(TTL)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def test_second_driver_plans_around_the_first_drivers_flows(world: Path) -> None:
    first = _driver(world)
    try:
        assert first.stdout is not None
        line = first.stdout.readline().split()
        assert line[0] == "running", line
        moving = int(line[2])                                  # 3 MiB over a -> c
        with Dataflow.open(str(world / "sites.toml"), processes=False, progress=False,
                           lease_seconds=TTL) as df:
            ds = df.dataset("in", "/bank-a/in/**")
            alone = Topology.from_config(str(world / "sites.toml"))
            bw = alone.link("a", "c").bandwidth
            plan = df.plan(ds, at="c")
            [flow] = plan.estimate.flows
            # the first driver's flow shares a -> c: the second waits for its bytes (as
            # many as its own, fairly shared), and sees the first's tasks queued at c
            assert df.topo.pending("a", "c") == moving == flow.bytes
            assert flow.queue == pytest.approx(moving / bw)
            assert plan.estimate.backlog.get("c", 0) > 0
            [lease] = df.leases.others()
            assert lease.job == line[1] and lease.driver != df.leases.driver
            # kill -9 the first driver mid-job: its lease stops being renewed
            assert first.poll() is None                        # it was still running
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            killed = time.time()
            assert lease.expires > killed                     # still counted until expiry
            _until(lambda: not df.leases.others(), "the dead driver's lease to expire",
                   limit=10 * TTL)
            assert time.time() >= lease.expires
            again = df.plan(ds, at="c")
            assert [f.queue for f in again.estimate.flows] == [0.0]
            assert df.topo.pending("a", "c") == 0 and not again.estimate.backlog
            assert EmbeddedCatalog(df.rt.stores, lambda: "a").states(KIND) == []  # deleted
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)


def test_a_finished_job_drops_its_lease_and_renewal_tracks_progress(world: Path) -> None:
    (world / "gate").write_text("open")                       # no slow WAN
    first = _driver(world)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("running")
        assert first.stdout.readline().strip() == "done"
        assert first.wait(60) == 0
        with Dataflow.open(str(world / "sites.toml"), processes=False, progress=False,
                           lease_seconds=TTL) as df:
            assert df.leases.others() == []                   # dropped, not expired
            assert df.topo.pending("a", "c") == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)


def test_leases_renew_with_what_is_left_and_expire_by_the_clock(tmp_path: Path) -> None:
    Client.init(tmp_path / "h").close()
    topo = Topology.from_config({"sites": {"h": {"state": str(tmp_path / "h")},
                                           "x": {}}})
    from dataflow.datasets import Stores

    stores = Stores(topo)
    now = [1000.0]
    cat = EmbeddedCatalog(stores, lambda: "h")
    mine = Leases(cat, topo, ttl=60.0, clock=lambda: now[0])
    other = Leases(cat, Topology(dict(topo.sites)), ttl=60.0, clock=lambda: now[0])
    try:
        topo.reserve("j1", [("x", "h", 10, 10_000)])
        topo.reserve_compute("j1", [("t0", "h", 5.0)])
        mine.publish("j1")
        [lease] = other.refresh()
        assert (lease.flows, lease.compute) == ([("x", "h", 10, 10_000)], [("t0", "h", 5.0)])
        assert other.topo.pending("x", "h") == 10_000
        assert other.topo.compute_backlog() == {"h": 5.0}
        topo.observe("x", "h", 5_000, 5, 0.1)                 # half of it moved
        topo.compute_done("j1", "t0")
        mine._save("j1")                                      # what a renewal writes
        [lease] = other.refresh()
        assert lease.flows == [("x", "h", 5, 5_000)] and lease.compute == []
        now[0] += 61                                          # not renewed: expired
        assert other.refresh() == [] and other.topo.pending("x", "h") == 0
        assert cat.states(KIND) == []
        with pytest.raises(ValueError, match="lease lifetime"):
            Leases(cat, topo, ttl=0)
        assert Lease.from_dict(Lease("j", "d", 1.0).to_dict()) == Lease("j", "d", 1.0)
    finally:
        mine.close()
        other.close()
        stores.close()


def test_a_running_job_is_reestimated_when_another_drivers_lease_shares_its_link(
        world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gfs import mover

    gate = threading.Event()
    real = mover.fetch

    def slow_wan(*a: Any, **k: Any) -> Any:                # this driver's copy waits
        assert gate.wait(120), "the test never opened the gate"
        return real(*a, **k)
    monkeypatch.setattr(mover, "fetch", slow_wan)
    other: subprocess.Popen[str] | None = None
    with Dataflow.open(str(world / "sites.toml"), processes=False, progress=False,
                       lease_seconds=TTL) as df:
        try:
            job = df.run(_size, "/bank-a/in/**", at="c", wait=False)
            plan = job.plan
            _until(lambda: job.id in df.rt.live, "the job to start")
            rec = df.rt.live[job.id]
            assert rec.reestimates == []
            other = _driver(world)                        # a second driver, same link
            assert other.stdout is not None
            line = other.stdout.readline().split()
            assert line[0] == "running", line
            _until(lambda: bool(rec.reestimates), "the running job to be re-estimated",
                   limit=10 * TTL)
            [re] = rec.reestimates
            assert re.leases == [line[1]]
            # the flow is overdue (the gate is shut): all its bytes are left, and the
            # other job's bytes on a -> c (as many) share the link fairly
            [flow] = plan.estimate.flows
            bw = df.topo.link("a", "c").bandwidth
            tail = plan.estimate.site_seconds["c"] - flow.seconds
            assert re.seconds - re.elapsed == pytest.approx(2 * flow.bytes / bw + tail,
                                                            rel=0.01)
            assert re.seconds > plan.estimate.seconds
            _until(lambda: "reestimates" in (df.rt.load_record(job.id) or {}),
                   "the re-estimate to be saved in the record")
            saved = df.rt.load_record(job.id)
            assert saved is not None and saved["reestimates"][0]["leases"] == [line[1]]
            gate.set()
            assert job.wait(120).record["reestimates"][0]["seconds"] == re.seconds
        finally:
            gate.set()
            (world / "gate").write_text("open")
            if other is not None:
                try:
                    other.wait(120)
                finally:
                    if other.poll() is None:
                        other.kill()
                        other.wait(30)


def _size(inputs: list[Any]) -> int:
    return sum(f.size for f in inputs)
