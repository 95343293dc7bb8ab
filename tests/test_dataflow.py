"""dataflow end to end: real stores per site, real mover, real Dask LocalClusters."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow import (
    ConfigError,
    Constraints,
    Dataflow,
    Dataset,
    DatasetError,
    InputFile,
    JobFailedError,
    PlanError,
    Topology,
    probe_link,
)
from dataflow.catalog import JOBS_TABLE
from gfs import Client

SITES = """
secret = "{secret}"
[sites.a]
region = "west"
entity = "bank-a"
state = "a"
{a_mover}
[sites.b]
region = "west"
entity = "bank-a"
state = "b"
[sites.c]
region = "east"
entity = "lab"
state = "c"
[[links]]
a = "a"
b = "b"
mbps = 800
rtt_ms = 2
[[links]]
a = "a"
b = "c"
mbps = 40
rtt_ms = 40
price_per_gb = 0.08
[[links]]
a = "b"
b = "c"
mbps = 40
rtt_ms = 40
price_per_gb = 0.08
"""

SECRET = "ab" * 16


def count(inputs: list[InputFile]) -> dict[str, int]:
    return {"bytes": sum(len(f.read()) for f in inputs), "files": len(inputs)}


def slow_count(inputs: list[InputFile]) -> dict[str, int]:
    time.sleep(0.4)
    return count(inputs)


def always_fails(inputs: list[InputFile]) -> None:
    raise ValueError("bad row in " + inputs[0].path)


def flaky(marker: str, inputs: list[InputFile]) -> dict[str, int]:
    """Fails the first time it runs for a file, then works (a transient error)."""
    m = Path(marker) / inputs[0].path.replace("/", "_")
    if not m.exists():
        m.write_text("x")
        raise OSError("transient")
    return count(inputs)


def gated_count(gate: str, inputs: list[InputFile]) -> dict[str, int]:
    """x2's task says it started (GATE/started) and waits for GATE/open (at most 120 s)."""
    if inputs[0].path.endswith("x2"):
        Path(gate, "started").write_text("x")
        deadline = time.monotonic() + 120
        while not Path(gate, "open").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return count(inputs)


def first_runs(gate: str, inputs: list[InputFile]) -> dict[str, int]:
    """The first task to start runs at once; every later one waits for GATE/open (at
    most 120 s), whatever the order the cluster runs them in."""
    try:
        os.close(os.open(Path(gate, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        deadline = time.monotonic() + 120
        while not Path(gate, "open").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return count(inputs)


def _until(cond: Any, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"still waiting for {what} after {limit} s"
        time.sleep(0.02)


def upper(inputs: list[InputFile]) -> bytes:
    return b"".join(f.read()[:16].upper() for f in inputs)


def _write_sites(root: Path, a_mover: str = "") -> Path:
    p = root / "sites.toml"
    p.write_text(SITES.format(secret=SECRET, a_mover=a_mover))
    return p


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, dict[str, bytes]]]:
    """Three site stores: a and b (bank-a, west) share chunks; c (lab, east) is empty."""
    base = os.urandom(3 << 20)
    data = {"/bank-a/loans/x1": base[: 1 << 20] + os.urandom(1 << 20),
            "/bank-a/loans/x2": base[1 << 20:],
            "/bank-a/loans/y1": base[: 2 << 20] + os.urandom(512 << 10)}
    for name in "abc":
        Client.init(tmp_path / name).close()
    with Client(tmp_path / "a") as a:
        a.mkdir("/bank-a/loans", parents=True)
        a.write_bytes("/bank-a/loans/x1", data["/bank-a/loans/x1"])
        a.write_bytes("/bank-a/loans/x2", data["/bank-a/loans/x2"])
    with Client(tmp_path / "b") as b:
        b.mkdir("/bank-a/loans", parents=True)
        b.write_bytes("/bank-a/loans/y1", data["/bank-a/loans/y1"])
    _write_sites(tmp_path)
    yield tmp_path, data


def _df(root: Path) -> Dataflow:
    return Dataflow.open(str(root / "sites.toml"), progress=False)


# -- sites and links -----------------------------------------------------------------------


@pytest.mark.parametrize("text, word", [
    ("", "[sites.NAME]"),
    ("[sites.a]\nslots = 0\n", "slots"),
    ("[sites.a]\nbogus = 1\n", "bogus"),
    ("[sites.a]\n[[links]]\na = 'a'\nb = 'zz'\nmbps = 1\n", "zz"),
    ("[sites.a]\n[sites.b]\n[[links]]\na = 'a'\nb = 'b'\nmbps = -1\n", "mbps"),
    ("[sites.a]\n[owners.bank-a]\nallow = 'region=(('\n", "expression"),
    ("[sites.a\n", "sites file"),
])
def test_bad_sites_file_is_refused(tmp_path: Path, text: str, word: str) -> None:
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=word.replace("[", r"\[").replace("(", r"\(")):
        Topology.from_config(p)


def test_link_sources_in_order(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    topo = Topology.from_config(root / "sites.toml")
    assert topo.link("a", "a").source == "local"
    lk = topo.link("a", "c")
    assert (lk.source, lk.bandwidth, lk.price_per_gb) == ("configured", 5e6, 0.08)
    topo.sites["d"] = topo.sites["c"].__class__("d", "east", "lab")
    assert topo.link("c", "d").source == "default"          # same region default
    assert topo.link("a", "d").rtt == topo.defaults.inter_rtt
    m = probe_link(topo, "a", "c", nbytes=2 << 20)
    assert topo.link("a", "c") == m and m.source == "measured" and m.bandwidth > 0
    topo.fresh = 0.0                                          # stale: configured again
    time.sleep(0.01)
    assert topo.link("a", "c").source == "configured"
    with Client(root / "c") as c:                             # the probe left c unchanged
        assert sum(1 for _ in c.walk("/")) == 1
        with c.engine.read() as txn:
            assert not list(txn.iter_chunks())


# -- datasets --------------------------------------------------------------------------------


def test_dataset_chunks_and_holders(world: tuple[Path, dict[str, bytes]]) -> None:
    root, data = world
    with _df(root) as df:
        ds = df.dataset("loans", "/bank-a/loans/**")
        assert [f.path for f in ds.files] == sorted(data)
        assert ds.logical_bytes == sum(len(v) for v in data.values())
        assert ds.unique_bytes < ds.logical_bytes            # y1 shares 2 MiB with x1, x2
        assert {f.home for f in ds.files} == {"a", "b"}
        assert ds.bytes_at("a") > 0 and ds.bytes_at("c") == 0
        shared = [c for c in ds.lengths if ds.holders(c) == {"a", "b"}]
        assert shared
        only_x = Dataset.resolve("x", ["/bank-a/loans/x?"], df.rt.stores)
        assert len(only_x.files) == 2
        with pytest.raises(DatasetError, match="matches no file"):
            df.dataset("none", "/bank-a/nothing/**")
        with pytest.raises(DatasetError, match="absolute"):
            df.dataset("rel", "bank-a/loans")


# -- planning ---------------------------------------------------------------------------------


def test_plan_explains_and_respects_constraints(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    with _df(root) as df:
        plan = df.plan("/bank-a/loans/**")
        text = plan.explain()
        assert "rejected" in text and "move data to c" in text
        assert plan.estimate.wan_bytes == 0 and set(plan.sites()) <= {"a", "b"}
        pinned = df.plan("/bank-a/loans/**", at="c")
        ds = df.dataset("l", "/bank-a/loans/**")
        assert pinned.estimate.wan_bytes == ds.unique_bytes  # shared chunks once
        assert pinned.estimate.logical_bytes == ds.logical_bytes
        fb = df.plan("/bank-a/loans/**", constraints=Constraints(forbid=frozenset({"a", "b"})))
        assert fb.sites() == ["c"]
        with pytest.raises(PlanError, match="forbidden"):
            df.plan("/bank-a/loans/**", constraints=Constraints(forbid=frozenset("abc")))
        with pytest.raises(PlanError, match="deadline"):
            df.plan("/bank-a/loans/**", at="c", deadline=1e-6)
    # An owner rule: bank-a's data stays in the west, and lab was granted nothing.
    text = (root / "sites.toml").read_text() + '[owners.bank-a]\nallow = "region=west"\n'
    (root / "sites.toml").write_text(text)
    with _df(root) as df, pytest.raises(PlanError, match="region=west"):
        df.plan("/bank-a/loans/**", at="c")


# -- running ------------------------------------------------------------------------------------


def test_run_moves_missing_chunks_writes_outputs_and_records(
        world: tuple[Path, dict[str, bytes]]) -> None:
    root, data = world
    with _df(root) as df:
        ds = df.dataset("loans", "/bank-a/loans/**")
        job = df.run(count, ds, at="c", output="/lab/out/count", job_id="j1")
        res = job.result
        assert {v["bytes"] for v in res.values.values()} == {len(v) for v in data.values()}
        assert res.wan_bytes >= ds.unique_bytes             # blobs: compressed or not
        assert sum(t["chunks"] for t in res.record["transfers"]) == len(ds.lengths)
        assert {t["src"] for t in res.record["transfers"]} == {"a", "b"}
        c = df.rt.stores.get("c")
        for tid, out in res.outputs.items():
            assert json.loads(c.read_bytes(out)) == res.values[tid]
        rec = df.rt.load_record("j1")
        assert rec is not None and rec["status"] == "done"
        assert all(len(t["attempts"]) == 1 for t in rec["tasks"].values())
        with df.rt.stores.get("a").engine.read() as txn:
            assert txn.get_value(JOBS_TABLE, b"job:j1") is not None
        # The same job id again: every task is done, nothing runs or moves.
        again = df.run(count, ds, at="c", output="/lab/out/count", job_id="j1").result
        assert all(len(t["attempts"]) == 1 for t in again.record["tasks"].values())
        assert len(again.record["transfers"]) == 2
        # Now c holds every chunk: moving the data there costs nothing.
        assert df.plan(ds, at="c").estimate.wan_bytes == 0
        # Chaining: the outputs of one job are the inputs of the next.
        nxt = df.run(upper, job, output="/lab/out/upper")
        assert nxt.plan.sites() == ["c"] and len(nxt.result.outputs) == 3


def test_retries_then_clear_failure(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    marks = root / "marks"
    marks.mkdir()
    with _df(root) as df:
        job = df.run(functools.partial(flaky, str(marks)), "/bank-a/loans/x1", at="a",
                     retries=2)
        assert job.result.values["t0000"]["bytes"] == 2 << 20
        with pytest.raises(JobFailedError, match="bad row in /bank-a/loans/x1") as ei:
            df.run(always_fails, "/bank-a/loans/x1", at="a", retries=1, job_id="bad")
        rec = df.rt.load_record("bad")
        assert rec is not None and rec["status"] == "failed"
        assert "written" in ei.value.report


def test_lost_compute_site_is_replanned(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    with _df(root) as df:
        ds = df.dataset("loans", "/bank-a/loans/**")
        gate = root / "gate-lc"
        gate.mkdir()
        # one task finishes at c, the others are held until c has failed (however
        # slow the machine), so the job is always re-planned mid-way
        job = df.run(functools.partial(first_runs, str(gate)), ds, at="c",
                     output="/lab/out/slow", wait=False, job_id="lc")

        def one_done() -> bool:
            rec = df.rt.load_record("lc")
            return bool(rec) and any(t["status"] == "done" for t in rec["tasks"].values())
        _until(one_done, "a task at c to finish")
        df.rt.fail_site("c")
        (gate / "open").write_text("x")
        res = job.wait(60)
        assert res.record["replans"] and res.record["replans"][0]["lost"] == ["c"]
        sites = {t["output_site"] for t in res.record["tasks"].values()}
        assert "c" in sites and sites - {"c"} <= {"a", "b"} and len(sites) > 1
        for t in res.record["tasks"].values():              # nothing written was lost
            store = df.rt.stores.get(t["output_site"])
            assert json.loads(store.read_bytes(t["output"]))["bytes"] > 0


def test_lost_data_site_reports_what_is_missing(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    with _df(root) as df:
        ds = df.dataset("loans", "/bank-a/loans/**")
        df.rt.mover("b")
        df.rt.fail_site("b")                                  # b's mover is gone
        with pytest.raises(JobFailedError, match="/bank-a/loans/y1") as ei:
            df.run(count, ds, at="c", output="/lab/out/lost", job_id="ld")
        report = ei.value.report
        assert report["missing"] == ["/bank-a/loans/y1"] and report["lost_sites"] == ["b"]
        written = {k: v for k, v in report["written"].items() if v}  # type: ignore[union-attr]
        assert len(written) == 2
        c = df.rt.stores.get("c")
        for out in written.values():
            assert json.loads(c.read_bytes(str(out)))["bytes"] == 2 << 20


# -- a transfer cut in the middle resumes -------------------------------------------------------


class CutOnce:
    """A loopback TCP proxy that cuts its first connection after `budget` bytes."""

    def __init__(self, target: tuple[str, int], budget: int) -> None:
        self.target, self.budget = target, budget
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.cuts = 0
        self._stop = False
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            budget = self.budget if self.cuts == 0 else None
            if budget is not None:
                self.cuts += 1
            for x, y, n in ((a, b, None), (b, a, budget)):
                t = threading.Thread(target=self._pump, args=(x, y, n), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(x: socket.socket, y: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while True:
                data = x.recv(65536)
                if not data:
                    break
                if budget is not None and sent + len(data) > budget:
                    y.sendall(data[: budget - sent])
                    break
                y.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (x, y):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for t in self._threads:
            t.join(5)


def test_cut_transfer_resumes_without_resending(world: tuple[Path, dict[str, bytes]]) -> None:
    from gfs.mover import MoverServer

    root, _ = world
    with Client(root / "a") as a, MoverServer(a, bytes.fromhex(SECRET)) as srv:
        proxy = CutOnce(srv.address, budget=1 << 20)
        try:
            _write_sites(root, a_mover=f'mover = "127.0.0.1:{proxy.port}"')
            with _df(root) as df:
                ds = df.dataset("x", "/bank-a/loans/x?")
                out = df.prefetch(ds, "c")
                need = sum(n for c, n in ds.lengths.items())
                assert proxy.cuts == 1
                # Only what had not arrived was asked again: at most one chunk per
                # stream is sent twice (the one cut in the middle).
                assert need * 0.9 <= out.bytes <= need + 4 * (1 << 20)
                assert df.prefetch(ds, "c").bytes == 0          # nothing left to move
        finally:
            proxy.close()


# -- operations ----------------------------------------------------------------------------------


def test_prefetch_migrate_replicate_subscribe(world: tuple[Path, dict[str, bytes]]) -> None:
    root, data = world
    with _df(root) as df:
        ds = df.dataset("loans", "/bank-a/loans/**")
        pre = df.prefetch(ds, "c")
        assert pre.chunks == len(ds.lengths) and df.prefetch(ds, "c").chunks == 0
        mig = df.migrate("/bank-a/loans/x1", to="b")
        assert mig.removed == 1
        assert not df.rt.stores.get("a").exists("/bank-a/loans/x1")
        assert df.rt.stores.get("b").read_bytes("/bank-a/loans/x1") == data["/bank-a/loans/x1"]
        reps = df.replicate("/bank-a/loans/**", copies=2, where="region=west")
        assert len(reps) == 2
        for s in "ab":
            assert {st.path for st in df.rt.stores.get(s).walk("/bank-a/loans")
                    if st.kind == "file"} == set(data)
        with pytest.raises(PlanError, match="copies"):
            df.replicate("/bank-a/loans/**", copies=3, where="region=west")
        sub = df.subscribe("/bank-a/loans/*", count, output="/bank-a/out/sub")
        first = sub.poll()
        assert first is not None and len(first.result.values) == 3
        assert sub.poll() is None
        df.rt.stores.get("a").write_bytes("/bank-a/loans/z9", b"new data" * 1000)
        second = sub.poll()
        assert second is not None
        assert [v["bytes"] for v in second.result.values.values()] == [8000]


# -- CLI -----------------------------------------------------------------------------------------


def _hutong(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.run([sys.executable, "-m", "gfs.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_cli_plan_and_run(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    job = root / "job.toml"
    job.write_text('sites = "sites.toml"\ninputs = ["/bank-a/loans/**"]\n'
                   'entry = "tests.test_dataflow:count"\noutput = "/bank-a/out/cli"\n'
                   '[constraints]\nforbid = ["a"]\n')
    p = _hutong("plan", str(job), "--json", cwd=root)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert "a" not in plan["placement"].values()
    r = _hutong("run", str(job), "-q", "--job-id", "cli1", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["status"] == "done" and len(rec["tasks"]) == 3
    bad = root / "bad.toml"
    bad.write_text('sites = "sites.toml"\ninputs = ["/bank-a/loans/**"]\nentry = "nocolon"\n')
    r = _hutong("run", str(bad), cwd=root)
    assert r.returncode == 2 and "module:function" in r.stderr
    bad.write_text('sites = "sites.toml"\ninputs = ["/bank-a/loans/**"]\n'
                   'entry = "tests.test_dataflow:nothing_here"\n')
    r = _hutong("run", str(bad), cwd=root)
    assert r.returncode == 2 and "nothing_here" in r.stderr
    with Client(root / "b") as b:                             # nothing ran for bad files
        assert not b.exists("/bank-a/out/cli") or len(b.ls("/bank-a/out/cli")) <= 3


def test_prefetch_is_pipelined_in_task_order(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    with Client(root / "a") as a:
        a.mkdir("/bank-a/big", parents=True)
        for i in range(3):
            a.write_bytes(f"/bank-a/big/f{i}", os.urandom(16 << 20))
    with _df(root) as df:
        plan = df.plan("/bank-a/big/**", at="c")
        job = df.run(count, "/bank-a/big/**", at="c", job_id="pipe")
        xs = [t for t in job.result.record["transfers"] if t["src"] == "a"]
        assert sorted(t["group"] for t in xs) == [0, 1, 2]     # three fetches, in order
        assert sum(t["bytes"] for t in xs) >= 48 << 20
        assert plan.estimate.flows[0].bytes == 48 << 20
        assert [v["bytes"] for v in job.result.values.values()] == [16 << 20] * 3


def test_background_jobs_chain_with_after(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    with _df(root) as df:
        first = df.run(slow_count, "/bank-a/loans/x1", at="a", output="/bank-a/out/f",
                       wait=False)
        second = df.run(upper, first, after=first, wait=False, output="/bank-a/out/s")
        assert second.wait(60).outputs and first.done()
        assert second.plan.sites() == ["a"]
        out = df.rt.stores.get("a").read_bytes(second.result.outputs["t0000"])
        assert out == b'{"BYTES": 2097152, "FILES": 1}'[:16]
        with pytest.raises(JobFailedError):
            bad = df.run(always_fails, "/bank-a/loans/x1", at="a", retries=0, wait=False)
            df.run(count, "/bank-a/loans/x1", after=bad, wait=False).wait(60)


def test_subscription_triggers_on_new_data(world: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = world
    with _df(root) as df:
        sub = df.subscribe("/bank-a/incoming/*.csv", count, output="/bank-a/out/in")
        assert sub.poll() is None                            # nothing matches yet
        sub.start(interval=0.05)
        try:
            a = df.rt.stores.get("a")
            a.mkdir("/bank-a/incoming", parents=True)
            a.write_bytes("/bank-a/incoming/day1.csv", b"x,y\n" * 100)
            a.write_bytes("/bank-a/incoming/notes.txt", b"not matched")
            deadline = time.monotonic() + 60
            while not sub.jobs and sub.error is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            sub.stop()
        assert sub.error is None and len(sub.jobs) == 1
        assert list(sub.jobs[0].result.values.values()) == [{"bytes": 400, "files": 1}]
        with pytest.raises(ConfigError, match="interval"):
            sub.start(interval=0)


# -- link contention between jobs ---------------------------------------------------------------


class Gate:
    """A loopback TCP proxy that holds every connection until `open()` is called."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen = threading.Event()
        self._open = threading.Event()
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            self.seen.set()
            t = threading.Thread(target=self._hold, args=(a,), daemon=True)
            t.start()
            self._threads.append(t)

    def _hold(self, a: socket.socket) -> None:
        self._open.wait(120)
        b = socket.create_connection(self.target)
        for x, y in ((a, b), (b, a)):
            t = threading.Thread(target=CutOnce._pump, args=(x, y, None), daemon=True)
            t.start()
            self._threads.append(t)

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.set()
        self.sock.close()
        for t in list(self._threads):
            t.join(5)


CONTENTION = """
secret = "{secret}"
[sites.a]
region = "west"
entity = "bank-a"
state = "a"
mover = "127.0.0.1:{port}"
compute_mbps = 4
[sites.c]
region = "east"
entity = "bank-a"
state = "c"
slots = 2
[[links]]
a = "a"
b = "c"
mbps = 40
rtt_ms = 1
"""


def test_second_job_shares_a_link_busy_with_an_earlier_job(
        world: tuple[Path, dict[str, bytes]]) -> None:
    """While job 1's 48 MiB transfer a -> c is held in flight, job 2 (4 MiB at a, where
    computing is slow) is planned with its fair share of a -> c: held up by 4 MiB of
    job 1's bytes (as many as its own), not all 48 (FIFO); sharing the link still
    beats computing at a. Every reservation is settled once the job ends."""
    from gfs.mover import MoverServer

    root, _ = world
    with Client(root / "a") as a:
        a.mkdir("/bank-a/big", parents=True)
        a.write_bytes("/bank-a/big/j1", os.urandom(48 << 20))
        a.write_bytes("/bank-a/big/j2", os.urandom(4 << 20))
    with Client(root / "a") as a, MoverServer(a, bytes.fromhex(SECRET)) as srv:
        gate = Gate(srv.address)
        try:
            conf = root / "contention.toml"
            conf.write_text(CONTENTION.format(secret=SECRET, port=gate.port))
            with Dataflow.open(str(conf), progress=False, objective="time") as df:
                free = df.plan("/bank-a/big/j2")
                assert free.placement == {"t0000": "c"}          # the link is free: move
                first = df.run(count, "/bank-a/big/j1", at="c", wait=False)
                assert gate.seen.wait(60)                 # its a -> c transfer is in flight
                assert df.topo.pending("a", "c") == 48 << 20
                assert df.topo.queue_seconds("a", "c") == pytest.approx((48 << 20) / 5e6)
                pinned = df.plan("/bank-a/big/j2", at="c")
                [flow] = pinned.estimate.flows
                assert flow.queue == pytest.approx((4 << 20) / 5e6)
                assert "queued" in pinned.explain()
                shared = df.plan("/bank-a/big/j2")
                assert shared.placement == {"t0000": "c"}
                assert shared.estimate.seconds >= free.estimate.seconds + flow.queue - 1e-9
                assert not first.done()
                gate.open()
                assert first.wait(120).record["status"] == "done"
                assert df.topo.backlog() == {}
                assert df.plan("/bank-a/big/j2").estimate.flows[0].queue == 0.0
        finally:
            gate.close()


def test_executor_takes_the_planned_sources_despite_its_own_reservation(
        world: tuple[Path, dict[str, bytes]]) -> None:
    """x1's shared chunks are held at a and b (equal links to c): the plan takes them
    from a; while the job runs its own reservation is on a -> c, and the executor
    (which passes its record id to the cost model) still takes them from a."""
    root, _ = world
    with _df(root) as df:
        ds = df.dataset("x1", "/bank-a/loans/x1")
        assert any(set(w) == {"a", "b"} for w in ds.locations.values())
        job = df.run(count, ds, at="c")
        planned = {f.src: f.chunks for f in job.plan.estimate.flows}
        moved: dict[str, int] = {}
        for t in job.result.record["transfers"]:
            moved[t["src"]] = moved.get(t["src"], 0) + t["chunks"]
        assert planned == moved == {"a": len(ds.locations)}
        assert df.topo.backlog() == {}


def test_second_job_goes_where_slots_are_free_while_the_first_computes(
        world: tuple[Path, dict[str, bytes]]) -> None:
    """Job 1 (x1 and x2 at a, 168 s of planned compute each on a's single slot) holds
    a's slot; once x1 is done only x2's seconds are queued there. Job 2 over x1,
    planned meanwhile, sees that backlog and runs at b (same region, fast link)
    instead of at a where its data is; every share is released when job 1 ends."""
    root, _ = world
    gate = root / "gate"
    gate.mkdir()
    with _df(root) as df:
        assert df.plan("/bank-a/loans/x1").placement == {"t0000": "a"}
        first = df.run(functools.partial(gated_count, str(gate)), "/bank-a/loans/x*", at="a",
                       compute_mbps=0.1, wait=False)
        per_task = (2 << 20) * 8 / 0.1e6
        _until(lambda: (gate / "started").exists(), "x2's task to start")
        _until(lambda: df.topo.compute_backlog().get("a") == pytest.approx(per_task),
               "x1's share to be released")
        second = df.run(count, "/bank-a/loans/x1")
        assert second.plan.placement == {"t0000": "b"}
        assert second.plan.compute_queue == {"a": pytest.approx(per_task)}
        text = second.plan.explain()
        assert "compute queue" in text and f"a busy {per_task:.3f} s" in text
        assert second.result.record["tasks"]["t0000"]["site"] == "b"
        assert list(second.result.values.values()) == [{"bytes": 2 << 20, "files": 1}]
        assert not first.done()
        (gate / "open").write_text("x")
        assert first.wait(120).record["status"] == "done"
        assert df.topo.compute_backlog() == {} and df.topo.backlog() == {}
        assert df.plan("/bank-a/loans/x1").placement == {"t0000": "a"}
