"""A site's tasks on any Dask distributed cluster: a real `dask scheduler` and `dask
worker` (separate processes, as on a multi-node site) started by the test, the site's
`scheduler` address in the sites file (docs/dataflow.md, "A Dask cluster per site")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow import Dataflow, InputFile
from gfs import Client

REPO = Path(__file__).resolve().parent.parent
DASK = Path(sys.executable).parent / "dask"
SITES = """
[sites.a]
state = "a"
entity = "bank-a"
[sites.c]
state = "c"
entity = "bank-a"
slots = 2
scheduler = "{address}"
"""


def where(inputs: list[InputFile]) -> dict[str, int]:
    return {"pid": os.getpid(), "bytes": sum(len(f.read()) for f in inputs)}


def _wait_file(path: Path, limit: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + limit
    while True:
        try:
            return dict(json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            assert time.monotonic() < deadline, f"no scheduler file {path} after {limit} s"
            time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`dask scheduler` on 127.0.0.1 (port 0) and one `dask worker` (no nanny: the task
    runs in this very process) with the resource `site-c=2`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched_file)], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = str(_wait_file(sched_file)["address"])
        procs.append(subprocess.Popen(
            [str(DASK), "worker", address, "--nthreads", "2", "--resources", "site-c=2",
             "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address, procs[1]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(30)


def test_tasks_run_on_the_sites_own_dask_cluster(
        tmp_path: Path, cluster: tuple[str, subprocess.Popen[bytes]]) -> None:
    address, worker = cluster
    for s in ("a", "c"):
        Client.init(tmp_path / s).close()
    data = {f"/bank-a/in/f{i}": os.urandom(300_000) for i in range(3)}
    with Client(tmp_path / "a") as a:
        a.mkdir("/bank-a/in", parents=True)
        for p, d in data.items():
            a.write_bytes(p, d)
    (tmp_path / "sites.toml").write_text(SITES.format(address=address))
    with Dataflow.open(str(tmp_path / "sites.toml"), progress=False) as df:
        df.rt.dask("c").wait_for_workers(1, timeout=60)
        res = df.run(where, "/bank-a/in/**", at="c", output="/bank-a/out/w").wait(120)
        assert {v["pid"] for v in res.values.values()} == {worker.pid}   # on that worker
        assert sorted(v["bytes"] for v in res.values.values()) == [300_000] * 3
        assert sum(t["chunks"] for t in res.record["transfers"]) > 0     # a -> c first
        with Client(tmp_path / "c") as c:
            assert sorted(e.path for e in c.ls("/bank-a/out/w")) == sorted(
                res.outputs.values())
    assert worker.poll() is None                 # the site's cluster is not ours to stop


@pytest.mark.parametrize("processes", [False, True])
def test_site_workers_run_without_the_dask_profiler(processes: bool) -> None:
    """The site cluster's worker takes no profile samples: Dask's profiler calls
    sys._current_frames() every 10 ms, and on CPython 3.11 a garbage collection inside
    it deadlocked a whole test process (every task thread waiting for the GIL)."""
    from distributed import Client as DaskClient

    from dataflow.executor import start_site_cluster

    cluster = start_site_cluster("w1", processes=processes)
    try:
        with DaskClient(cluster, set_as_default=False) as dc:
            callbacks = dc.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
        (names,) = callbacks.values()
        assert "heartbeat" in names  # the worker's own callbacks are listed
        assert "profile" not in names and "profile-cycle" not in names
    finally:
        cluster.close()
