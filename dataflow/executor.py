"""The executor: runs a plan on Dask distributed, one cluster per site.

    with Runtime(topo) as rt:
        result = Executor(rt).run(my_fn, plan, output="/bank-a/out/job1")

* Each site has its own Dask cluster: a `LocalCluster` (1 worker process with
  the site's slots as threads) in the embedded mode, or the scheduler at
  `Site.scheduler`. Workers carry the resource `site-NAME`; every task is
  submitted with it, so it can only run at its site.
* Before a task runs at a site, the chunks of its inputs the site lacks are
  fetched through the native mover (`gfs.mover.fetch`, one transfer per
  source site, in parallel); tasks whose inputs are local run meanwhile.
* The task function gets a list of `InputFile` (readable from the site's own
  store), its return value (bytes, str or JSON) is written to
  `OUTPUT/TASK_ID` in the site's namespace.
* Task errors are retried (`retries`); a transfer cut is resumed by the mover
  (only the chunks still missing are asked again). A site whose cluster or
  mover stops answering is marked down and its unfinished tasks are planned
  again over the sites still up, if replicas of their chunks exist; otherwise
  the job fails with a report of the missing files and of what was written.
* The job record (`jobs` value table of the home site's store, key
  `job:ID`) lists every transfer and every task attempt; running a job again
  with the same id skips the tasks recorded as done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from dataflow.catalog import Catalog, EmbeddedCatalog
from dataflow.cost import CostModel, Task
from dataflow.datasets import FileEntry, Stores
from dataflow.errors import ConfigError, JobFailedError, PlanError, SiteLostError
from dataflow.planner import Plan, Planner
from dataflow.records import Attempt, JobRecord, TaskRecord, TransferRecord
from dataflow.sites import Topology, pipeline_groups
from gfs.meta import Manifest

log = logging.getLogger("hutong.dataflow")

#: Seconds a task result may take before the site's health is checked.
POLL_SECONDS = 1.0
#: Largest JSON task value kept in the job record.
MAX_VALUE_BYTES = 64 << 10

TaskFn = Callable[[list["InputFile"]], Any]


def resource_tag(site: str) -> str:
    """The Dask worker resource that pins tasks to `site`."""
    return f"site-{site}"


# -- the worker side ----------------------------------------------------------------------

_WORKER_STORES: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_store(state: str) -> Any:
    from gfs.client import Client

    with _WORKER_LOCK:
        c = _WORKER_STORES.get(state)
        if c is None:
            c = _WORKER_STORES[state] = Client(state)
        return c


@dataclass(frozen=True)
class InputFile:
    """One input of a task, read from the store of the site the task runs at."""

    path: str
    manifest: Manifest
    state: str

    @property
    def size(self) -> int:
        return self.manifest.size

    def open(self) -> IO[bytes]:
        """A seekable binary reader of this version of the file."""
        return _worker_store(self.state).open_version(self.path, self.manifest)  # type: ignore[no-any-return]

    def read(self) -> bytes:
        """The whole content."""
        with self.open() as f:
            return f.read()


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, sort_keys=True, default=str).encode()


def apply_task(fn: TaskFn | Sequence[TaskFn], inputs: list[Any], output: str | None,
               store: Callable[[], Any]) -> dict[str, Any]:
    """Call the function (or pipeline) on `inputs`; write a non-None result to `output`
    through `store()` (anything with `mkdir` and `write_bytes`); the task's report."""
    t0 = time.monotonic()
    value: Any = inputs
    steps: Sequence[TaskFn] = fn if isinstance(fn, list | tuple) else [fn]  # type: ignore[list-item]
    for step in steps:
        value = step(value)
    seconds = time.monotonic() - t0
    out: dict[str, Any] = {"seconds": seconds, "worker_pid": os.getpid()}
    if output is not None and value is not None:
        data = _encode(value)
        client = store()
        parent = output.rsplit("/", 1)[0] or "/"
        client.mkdir(parent, parents=True, exist_ok=True)
        client.write_bytes(output, data)
        out.update(output=output, output_bytes=len(data))
    if value is not None and not isinstance(value, bytes | bytearray | memoryview):
        with contextlib.suppress(TypeError, ValueError):
            text = json.dumps(value, default=str)
            if len(text) <= MAX_VALUE_BYTES:
                out["value"] = json.loads(text)
    return out


def run_task(fn: TaskFn | Sequence[TaskFn], state: str, files: list[tuple[str, Manifest]],
             output: str | None) -> dict[str, Any]:
    """Worker side of one task: call the function (or pipeline), write its output."""
    return apply_task(fn, [InputFile(p, m, state) for p, m in files], output,
                      lambda: _worker_store(state))


# -- the driver side ---------------------------------------------------------------------



def _quiet_dask() -> None:
    """Dask's own logging at ERROR, unless Hutong's is at DEBUG."""
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.ERROR)


def start_site_cluster(site: str, slots: int = 1, *, processes: bool = False) -> Any:
    """A one-worker LocalCluster for `site` on 127.0.0.1 whose worker carries the
    site's resource tag with `slots` threads; the caller closes it.

    The embedded mode starts one per site; tests and single-host federations
    pass its `scheduler_address` as the site's scheduler. It listens on TCP even
    with `processes=False`, where Dask would pick its in-process transport, which
    cannot start on a fixed host (the federated executor lost the site).
    """
    import dask
    from distributed import LocalCluster

    _quiet_dask()
    # Dask's worker profiler calls sys._current_frames() every 10 ms while tasks run;
    # on CPython 3.11 a garbage collection inside it can deadlock the whole process
    # (seen here: the profiler's thread held the GIL waiting for the interpreter's
    # head lock, every task thread waited for the GIL). Its samples are not used.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=1, threads_per_worker=slots, processes=processes,
            resources={resource_tag(site): slots}, host="127.0.0.1", scheduler_port=0,
            dashboard_address="127.0.0.1:0", worker_dashboard_address=None,
            silence_logs=logging.ERROR, protocol="tcp://")


class Runtime:
    """Stores, mover servers and Dask clusters of the sites, started on first use.

    `processes=False` runs each site's worker as threads of this process (for
    quick notebooks); the default runs a worker process per site.
    """

    def __init__(self, topo: Topology, *, processes: bool = True, home: str | None = None,
                 progress: bool = False) -> None:
        self.topo = topo
        self.stores = Stores(topo)
        self.states = EmbeddedCatalog(self.stores, lambda: self.home)
        self.catalog: Catalog = self.states
        """Where datasets are resolved and chunks located (embedded: the stores here)."""
        self.processes = processes
        self.progress = progress
        names = [s.name for s in topo.up() if s.state]
        self.home = home or (names[0] if names else None)
        if self.home is not None:
            topo.site(self.home)
        self._clusters: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}
        self._movers: dict[str, Any] = {}
        self._secret = topo.secret or os.urandom(32)
        self._lock = threading.Lock()
        self._dead: set[str] = set()
        self.live: dict[str, JobRecord] = {}
        """Job id -> the record of each job this runtime's executors are running."""
        self.record_errors: list[str] = []
        """Job records that could not be saved (federation: the home primary away)."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dask(self, site: str) -> Any:
        """The `distributed.Client` of `site`'s cluster (started on first use)."""
        with self._lock:
            c = self._clients.get(site)
            if c is not None:
                return c
            s = self.topo.site(site)
            if s.status != "up" or site in self._dead:
                raise SiteLostError(site, f"site {site} is down; its tasks cannot run")
            from distributed import Client

            if s.scheduler:
                _quiet_dask()
                c = Client(s.scheduler, timeout=10)  # type: ignore[no-untyped-call]
            else:
                cluster = start_site_cluster(site, s.slots, processes=self.processes)
                self._clusters[site] = cluster
                c = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
            self._clients[site] = c
            return c

    def mover(self, site: str) -> tuple[tuple[str, int], bytes]:
        """(address, secret) of the mover server serving `site`'s store."""
        s = self.topo.site(site)
        if s.status != "up" or site in self._dead:
            raise SiteLostError(site, f"site {site} is down; its chunks cannot be fetched")
        if s.mover:
            host, _, port = s.mover.rpartition(":")
            if not self.topo.secret:
                raise ConfigError(f"site {site} uses the mover at {s.mover}; put its session "
                                  f"secret (hex) as `secret` in the sites file")
            return (host, int(port)), self.topo.secret
        with self._lock:
            srv = self._movers.get(site)
            if srv is None:
                from gfs.mover import MoverServer

                srv = self._movers[site] = MoverServer(self.stores.get(site), self._secret)
            return srv.address, self._secret

    def fail_site(self, site: str) -> None:
        """Fault injection: stop `site`'s cluster and mover as if the site crashed."""
        with self._lock:
            self._dead.add(site)
            srv = self._movers.pop(site, None)
            client = self._clients.pop(site, None)
            cluster = self._clusters.pop(site, None)
        if srv is not None:
            srv.close()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=5)

    def alive(self, site: str) -> bool:
        """Whether `site`'s cluster answers and has a worker."""
        if site in self._dead or self.topo.sites[site].status != "up":
            return False
        c = self._clients.get(site)
        if c is None:
            return True
        try:
            info = c.scheduler_info()
            return bool(info.get("workers"))
        except Exception:  # a dead scheduler raises whatever its comm layer raises
            return False

    def close(self) -> None:
        """Stop every cluster and mover server started here, close the stores."""
        for c in list(self._clients.values()):
            with contextlib.suppress(Exception):
                c.close(timeout=5)
        for cl in list(self._clusters.values()):
            with contextlib.suppress(Exception):
                cl.close(timeout=5)
        for m in list(self._movers.values()):
            m.close()
        self._clients.clear()
        self._clusters.clear()
        self._movers.clear()
        self.stores.close()

    def publish_links(self, *, force: bool = False) -> int:
        """Send the links measured here to where other planners read them (embedded:
        nowhere, 0; a federation: the registry)."""
        return 0

    def executor(self, planner: Planner | None = None, *, retries: int = 2) -> Executor:
        """An executor running plans on this runtime."""
        return Executor(self, planner, retries=retries)

    def driver(self, streams: int = 2) -> SiteDriver:
        """The per-site driver of this runtime's executor."""
        return EmbeddedDriver(self, streams)

    # -- job records --------------------------------------------------------------------
    def save_record(self, rec: JobRecord) -> None:
        """Write job record `rec` to the home site's `jobs` table."""
        if self.home is not None:
            self.states.save_state("job", rec.id, rec.to_dict())

    def load_record(self, job_id: str) -> dict[str, Any] | None:
        """The record of job `job_id`, or None."""
        return None if self.home is None else self.states.load_state("job", job_id)

    def records(self) -> list[dict[str, Any]]:
        """Every job record of the home site, oldest first."""
        if self.home is None:
            return []
        recs = [r for _, r in self.states.states("job")]
        return sorted(recs, key=lambda r: r.get("created", 0))


@dataclass
class JobResult:
    """What a job did: its record, the outputs written and the task values."""

    id: str
    record: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)
    """Task id -> output path."""
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(self.record.get("seconds", 0.0))

    @property
    def wan_bytes(self) -> int:
        return sum(int(t["bytes"]) for t in self.record.get("transfers", []))


class _TaskFailed(Exception):
    def __init__(self, task: str, site: str, message: str, site_lost: bool) -> None:
        super().__init__(message)
        self.task, self.site, self.site_lost = task, site, site_lost


class _TransferFailed(Exception):
    """A transfer failed; `site` is the end found lost (the source unless the
    destination stopped answering)."""

    def __init__(self, site: str, message: str) -> None:
        super().__init__(message)
        self.site = site


class SiteDriver(Protocol):
    """What the executor asks of one mode to run a job's part at a site: which chunks
    a task needs there, which of them the site lacks (`missing`), a copy of chunks
    between two sites, and a task submitted to the site's cluster."""

    def need(self, files: Iterable[FileEntry]) -> dict[bytes, int]:
        """Chunk id -> raw length of the chunks of `files` a site must hold before a task
        reads them there."""
        ...

    def missing(self, site: str, ids: list[bytes]) -> list[bytes]:
        """The chunks of `ids` that `site`'s store lacks (SiteLostError: no answer)."""
        ...

    def via(self, src: str, dst: str) -> str | None:
        """How chunks go from `src` to `dst` (recorded with each transfer)."""
        ...

    def copy(self, src: str, dst: str, ids: list[bytes], lengths: list[int], *, key: str,
             retries: int) -> Any:
        """Start copying `ids` from `src`'s store into `dst`'s; a future whose result is
        {bytes, chunks, seconds} (and `via`, `retries`, `skipped` when known)."""
        ...

    def note(self, task: Task) -> dict[str, Any] | None:
        """What the job record keeps of how `task` reads its inputs beyond its site's
        store (a federation: granted files), or None."""
        ...

    def submit(self, client: Any, site: str, fn: TaskFn | Sequence[TaskFn], task: Task,
               output: str | None, *, key: str, retries: int) -> Any:
        """Submit `task` to `site`'s cluster (`client`); a future of its report."""
        ...

    def output_site(self, output: str, site: str) -> str:
        """The site whose namespace commits a task's `output` written at `site`."""
        ...


class EmbeddedDriver:
    """Sites whose stores are opened here: chunks through the native mover, tasks read
    their inputs from their site's store."""

    def __init__(self, rt: Runtime, streams: int = 2) -> None:
        self.rt = rt
        self.streams = streams

    def need(self, files: Iterable[FileEntry]) -> dict[bytes, int]:
        return {r.id: r.length for f in files for r in f.manifest.chunks}

    def missing(self, site: str, ids: list[bytes]) -> list[bytes]:
        try:
            dest = self.rt.stores.get(site)
        except Exception as e:
            raise SiteLostError(site, str(e)) from e
        with dest.engine.read() as txn:
            return [c for c in ids if txn.get_chunk(c) is None]

    def via(self, src: str, dst: str) -> str | None:
        return None

    def note(self, task: Task) -> dict[str, Any] | None:
        return None

    def copy(self, src: str, dst: str, ids: list[bytes], lengths: list[int], *, key: str,
             retries: int) -> Any:
        from gfs import mover

        fut: Future[dict[str, Any]] = Future()
        addr, secret = self.rt.mover(src)
        dest = self.rt.stores.get(dst)
        bar = _bar(self.rt.progress, 0, f"{src}->{dst}", unit="B")

        def tick(n: int) -> None:
            if bar is not None:
                bar.update(n)
        try:
            st = mover.fetch(dest, addr, ids, secret, streams=self.streams, progress=tick)
        except Exception as e:
            fut.set_exception(e)
            return fut
        finally:
            if bar is not None:
                bar.close()
        fut.set_result({"bytes": st.bytes, "chunks": st.chunks, "skipped": st.skipped,
                        "retries": st.retries, "seconds": st.seconds})
        return fut

    def submit(self, client: Any, site: str, fn: TaskFn | Sequence[TaskFn], task: Task,
               output: str | None, *, key: str, retries: int) -> Any:
        state = self.rt.topo.site(site).state
        if state is None:
            raise ConfigError(f"site {site} has no store here (state)")
        files = [(f.path, f.manifest) for f in task.files]
        return client.submit(run_task, fn, state, files, output, key=key,
                             resources={resource_tag(site): 1}, retries=retries, pure=False)

    def output_site(self, output: str, site: str) -> str:
        return site


class Executor:
    """Runs plans on a Runtime through its per-site driver: prefetch, pinned tasks,
    retries, re-planning, records."""

    def __init__(self, runtime: Runtime, planner: Planner | None = None, *, retries: int = 2,
                 streams: int = 2) -> None:
        self.rt = runtime
        self.planner = planner or Planner()
        self.retries = retries
        self.driver: SiteDriver = runtime.driver(streams)

    def run(self, fn: TaskFn | Sequence[TaskFn], plan: Plan, *, output: str | None = None,
            job_id: str | None = None, name: str = "", model: CostModel | None = None
            ) -> JobResult:
        """Run `fn` over `plan`'s tasks; returns when every task is done.

        `output` is a namespace directory: task T writes `OUTPUT/T` at its site.
        Raises JobFailedError (with `report`) when a task keeps failing or its
        inputs are held by no site that is still up.
        """
        jid = job_id or uuid.uuid4().hex[:12]
        old = self.rt.load_record(jid) if job_id else None
        rec = JobRecord.from_dict(old) if old else JobRecord(
            jid, name or getattr(fn, "__name__", "job"), time.time(), plan.to_dict(), output)
        rec.status = "running"
        self.rt.live[jid] = rec
        tasks = {t.id: t for t in plan.tasks}
        for t in plan.tasks:
            tr = rec.tasks.setdefault(t.id, TaskRecord([f.path for f in t.files]))
            if tr.status == "done":                       # resumed: no compute left
                self.rt.topo.compute_done(jid, t.id)
        self.rt.save_record(rec)
        placement = dict(plan.placement)
        started = time.monotonic()
        bar = _bar(self.rt.progress, len(tasks), f"job {jid}")
        try:
            while True:
                todo = [t for tid, t in tasks.items() if rec.tasks[tid].status != "done"]
                if not todo:
                    break
                lost = self._round(fn, todo, placement, output, rec, bar)
                self.rt.save_record(rec)
                if not lost:
                    continue
                for s in lost:
                    if self.rt.topo.sites[s].status == "up":
                        self.rt.topo.mark_down(s)
                pending = [t for tid, t in tasks.items() if rec.tasks[tid].status != "done"]
                placement = self._replan(pending, rec, model)
        except JobFailedError as e:
            rec.status, rec.error = "failed", str(e)
            rec.seconds = time.monotonic() - started
            e.report.setdefault("written", rec.written())
            rec.report = e.report
            self.rt.save_record(rec)
            if self.rt.record_errors:
                e.report.setdefault("record", self.rt.record_errors[-1])
            raise
        except BaseException as e:
            rec.status, rec.error = "failed", f"{type(e).__name__}: {e}"
            rec.seconds = time.monotonic() - started
            with contextlib.suppress(Exception):
                self.rt.save_record(rec)
            raise
        finally:
            self.rt.live.pop(jid, None)
            if bar is not None:
                bar.close()
        rec.status = "done"
        rec.seconds = time.monotonic() - started
        self.rt.save_record(rec)
        res = JobResult(jid, rec.to_dict())
        for tid, tr in rec.tasks.items():
            if tr.output:
                res.outputs[tid] = tr.output
            if tr.value is not None:
                res.values[tid] = tr.value
        return res

    # -- one round: every pending task at its site --------------------------------------
    def _round(self, fn: TaskFn | Sequence[TaskFn], todo: list[Task], placement: dict[str, str],
               output: str | None, rec: JobRecord, bar: Any) -> set[str]:
        by_site: dict[str, list[Task]] = {}
        for t in todo:
            by_site.setdefault(placement[t.id], []).append(t)
        lost: set[str] = set()
        with ThreadPoolExecutor(max_workers=max(1, len(by_site))) as pool:
            futs = [pool.submit(self._run_site, fn, site, ts, output, rec, bar)
                    for site, ts in by_site.items()]
            failures: list[_TaskFailed] = []
            for fut in futs:
                try:
                    lost |= fut.result()
                except _TaskFailed as e:
                    failures.append(e)
                except SiteLostError as e:
                    lost.add(e.site)
        if failures and not lost:
            first = failures[0]
            raise JobFailedError(f"task {first.task} failed at {first.site} after "
                                 f"{self.retries} retries: {first}",
                                 {"task": first.task, "site": first.site})
        return lost

    def _by_source(self, site: str, tasks: list[Task], need: Mapping[bytes, int],
                   missing: Iterable[bytes], rec: JobRecord) -> dict[str, list[bytes]]:
        """The chunks `site` lacks grouped by the site to fetch each from, chosen as the
        plan chose them (other jobs' link queues count, this job's own not); a chunk no
        up site holds fails the job with the files it belongs to."""
        missing = list(missing)
        where = self.rt.catalog.locate(missing) if missing else {}
        by_src, unheld = CostModel(self.rt.topo, where, job=rec.id).by_source(site, missing,
                                                                              need)
        if unheld:
            gone = set(unheld)
            missing_files = sorted({f.path for t in tasks for f in t.files
                                    if any(r.id in gone for r in f.manifest.chunks)})
            raise JobFailedError(
                f"job {rec.id}: {len(gone)} chunk(s) (first {unheld[0].hex()}) of "
                f"{', '.join(missing_files)} are held by no up site; bring its site back "
                f"and run the job again with the same id", {"missing": missing_files,
                        "lost_sites": sorted(n for n, x in self.rt.topo.sites.items()
                                             if x.status != "up")})
        return by_src

    def _run_site(self, fn: TaskFn | Sequence[TaskFn], site: str, tasks: list[Task],
                  output: str | None, rec: JobRecord, bar: Any) -> set[str]:
        """Copy what `site` lacks (a thread per source, in task order, in a few groups)
        and run the site's tasks, each as soon as the groups holding its chunks are in;
        returns the sites found lost."""
        d = self.driver
        need: dict[bytes, int] = {}
        for t in tasks:
            need.update(d.need(t.files))
        try:
            missing = set(d.missing(site, list(need))) if need else set()
        except (SiteLostError, ConnectionError) as e:
            log.warning("site %s lost: %s", site, e)
            return {site}
        by_src = self._by_source(site, tasks, need, missing, rec)
        src_of = {c: s for s, ids in by_src.items() for c in ids}
        ordered = sorted(tasks, key=lambda t: any(c in src_of for c in t.chunks))
        group_of: dict[bytes, tuple[str, int]] = {}
        groups: dict[str, list[list[bytes]]] = {}
        for src in by_src:
            seq = list(dict.fromkeys(c for t in ordered for c in t.chunks
                                     if src_of.get(c) == src))
            total = sum(need[c] for c in seq)
            n = pipeline_groups(total)
            parts: list[list[bytes]] = [[] for _ in range(n)]
            acc = 0
            for c in seq:
                k = min(n - 1, acc * n // max(total, 1))
                parts[k].append(c)
                acc += need[c]
            groups[src] = [p for p in parts if p]
            for k, p in enumerate(groups[src]):
                for c in p:
                    group_of[c] = (src, k)
        done: dict[tuple[str, int], Future[None]] = {
            (src, k): Future() for src, parts in groups.items() for k in range(len(parts))}
        lost: set[str] = set()
        xpool = ThreadPoolExecutor(max_workers=max(1, len(by_src)),
                                   thread_name_prefix="hutong-copy")
        try:
            for src, parts in groups.items():
                xpool.submit(self._fetch_groups, src, site, parts, need, done, rec)
            try:
                client = self.rt.dask(site)
            except Exception as e:  # the cluster of a lost site does not start
                log.warning("site %s lost: %s", site, e)
                return {site}
            futures: dict[str, Any] = {}
            for t in ordered:
                failed: str | None = None
                for g in sorted({group_of[c] for c in t.chunks if c in group_of}):
                    try:
                        done[g].result()
                    except _TransferFailed as e:
                        failed = e.site
                        break
                if failed is not None:
                    lost.add(failed)
                    if failed == site:
                        return lost
                    continue
                out = f"{output.rstrip('/')}/{t.id}" if output else None
                attempt = Attempt(site, time.time())
                with rec.lock:
                    tr = rec.tasks[t.id]
                    tr.attempts.append(attempt)
                    tr.site = site
                    tr.granted = d.note(t)
                    key = f"{rec.id}-{t.id}-{len(tr.attempts)}"
                try:
                    futures[t.id] = d.submit(client, site, fn, t, out, key=key,
                                             retries=self.retries)
                except Exception as e:
                    attempt.status, attempt.error = "failed", str(e)
                    lost.add(site)
                    return lost
            self._collect(futures, rec, site, lost, bar)
        finally:
            xpool.shutdown(wait=True)
        return lost

    def _collect(self, futures: dict[str, Any], rec: JobRecord, site: str,
                 lost: set[str], bar: Any) -> None:
        """Wait for the tasks submitted at `site` and record each outcome; a lost
        site goes into `lost`, a task that failed for good raises _TaskFailed."""
        for tid, fut in futures.items():
            attempt = rec.tasks[tid].attempts[-1]
            try:
                res = self._wait(fut, site)
            except SiteLostError as e:
                attempt.status, attempt.error = "failed", str(e)
                lost.add(site)
                continue
            except Exception as e:
                attempt.status = "failed"
                attempt.error = "".join(traceback.format_exception_only(e)).strip()
                if not self.rt.alive(site):
                    lost.add(site)
                    continue
                raise _TaskFailed(tid, site, attempt.error, False) from e
            out_site = self.driver.output_site(res["output"], site) if "output" in res else None
            with rec.lock:
                attempt.status, attempt.seconds = "done", res["seconds"]
                attempt.finished = time.time()
                tr = rec.tasks[tid]
                tr.status = "done"
                if "output" in res:
                    tr.output, tr.output_bytes = res["output"], res["output_bytes"]
                    tr.output_site = out_site
                if "value" in res:
                    tr.value = res["value"]
            self.rt.topo.compute_done(rec.id, tid)           # its slot is free again
            self.rt.save_record(rec)
            if bar is not None:
                bar.update(1)

    def _wait(self, fut: Any, site: str) -> dict[str, Any]:
        from distributed import TimeoutError as DaskTimeout

        while True:
            try:
                return dict(fut.result(timeout=POLL_SECONDS))
            except (DaskTimeout, TimeoutError):
                if not self.rt.alive(site):
                    raise SiteLostError(site, f"site {site} stopped answering") from None

    def _fetch_groups(self, src: str, dst: str, parts: list[list[bytes]],
                      need: Mapping[bytes, int], done: dict[tuple[str, int], Future[None]],
                      rec: JobRecord) -> None:
        """Fetch the groups of one source in order; a failure fails the rest too."""
        for k, ids in enumerate(parts):
            try:
                self._transfer(src, dst, ids, [need[c] for c in ids], rec, k)
            except Exception as e:
                lost = e.site if isinstance(e, SiteLostError) else \
                    src if self.rt.alive(dst) else dst
                log.warning("transfer %s -> %s failed (%s lost): %s", src, dst, lost, e)
                for j in range(k, len(parts)):
                    done[(src, j)].set_exception(_TransferFailed(lost, str(e)))
                return
            done[(src, k)].set_result(None)

    def _transfer(self, src: str, dst: str, ids: list[bytes], lengths: list[int],
                  rec: JobRecord, group: int) -> None:
        entry = TransferRecord(src, dst, group, len(ids), time.time(),
                               via=self.driver.via(src, dst))
        with rec.lock:
            rec.transfers.append(entry)
            key = f"{rec.id}-copy-{src}-{dst}-{len(rec.transfers)}"
        try:
            st = self._wait(self.driver.copy(src, dst, ids, lengths, key=key,
                                             retries=self.retries), dst)
        except Exception as e:
            entry.error = "".join(traceback.format_exception_only(e)).strip()
            raise
        with rec.lock:
            entry.bytes, entry.moved = int(st["bytes"]), int(st["chunks"])
            entry.seconds = round(float(st["seconds"]), 6)
            entry.via = st.get("via", entry.via)
            entry.retries = int(st.get("retries", 0))
            if "skipped" in st:
                entry.skipped = int(st["skipped"])
        self.rt.topo.observe(src, dst, entry.bytes, entry.moved, float(st["seconds"]))

    def _replan(self, pending: list[Task], rec: JobRecord,
                model: CostModel | None) -> dict[str, str]:
        ids = {c for t in pending for c in t.chunks}
        where = self.rt.catalog.locate(ids)
        constraints = model.constraints if model is not None else None
        jid = rec.id
        m = CostModel(self.rt.topo, where, constraints,
                      compute_rate=model.compute_rate if model is not None else None,
                      backlog=self.rt.topo.compute_backlog(exclude=jid), job=jid)
        down = sorted(s for s, x in self.rt.topo.sites.items() if x.status != "up")
        try:
            plan = self.planner.plan(pending, m)
        except PlanError as e:
            missing = sorted({f.path for t in pending for f in t.files
                              if any(not where.get(r.id) for r in f.manifest.chunks)})
            raise JobFailedError(
                f"job {rec.id}: sites {', '.join(down)} lost and {len(missing)} input "
                f"file(s) have chunks no other site holds: {', '.join(missing[:5])}; "
                f"bring the site back and run the job again with the same id ({e})",
                {"missing": missing, "lost_sites": down}) from None
        with rec.lock:
            rec.replans.append({"at": time.time(), "lost": down, "strategy": plan.strategy,
                                "placement": plan.placement})
        self.rt.topo.move_compute(jid, plan.placement)
        log.warning("sites %s lost: %d task(s) re-planned (%s)", down, len(pending),
                    plan.strategy)
        return plan.placement


def _bar(enabled: bool, total: int, desc: str, unit: str = "task") -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total or None, desc=desc, unit=unit, unit_scale=unit == "B",
                leave=False)


@contextlib.contextmanager
def runtime(topo: Topology, **kw: Any) -> Iterator[Runtime]:
    """A Runtime that is always closed."""
    rt = Runtime(topo, **kw)
    try:
        yield rt
    finally:
        rt.close()
