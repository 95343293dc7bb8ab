"""Operations with progress and a notebook-friendly API.

With the sites, files and task functions of docs/dataflow.md ("Operations"),
which the test suite runs before these examples:

>>> df = Dataflow.open("sites.toml", progress=False)
>>> loans = df.dataset("loans", "/bank-a/loans/**")
>>> print(df.plan(loans).explain())                       # where, what moves, alternatives
plan: move data to a (3 tasks at a; objective balanced)
...
>>> a = df.run(score, loans, output="/bank-a/out/scores")             # a Job, done
>>> b = df.run(summarise, a, output="/bank-a/out/summary")            # chained on a's outputs
>>> sorted(a.result.values.values(), key=str)[0]
{'rows': 20000, 'total': ...}
>>> df.prefetch(loans, "b").files                 # chunks missing at b, through the mover
3
>>> df.migrate(loans, to="b").removed             # copy the files to b, then remove the others
3
>>> len(df.replicate(loans, copies=2, where="region=west"))
2
>>> sub = df.subscribe("/bank-a/incoming/*.csv", score, output="/bank-a/out/in")
>>> list(sub.poll().result.values.values())       # one job over the files new since last poll
[{'rows': 2, 'total': 6}]
>>> sub.poll() is None                            # nothing new
True
>>> df.close()

Every operation is resumable: run it again and it does only what is left
(the mover asks only for missing chunks; a job id skips done tasks; a
subscription remembers the file versions it has handled).
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataflow.catalog import Catalog, EmbeddedCatalog
from dataflow.cost import Constraints, CostModel, Task, reshared_seconds, tasks_of
from dataflow.datasets import Dataset, FileEntry, glob_regex, merge
from dataflow.errors import ConfigError, DatasetError, PlanError
from dataflow.executor import Executor, JobResult, Runtime, TaskFn
from dataflow.leases import LEASE_SECONDS, Lease, Leases
from dataflow.planner import Objective, Plan, Planner
from dataflow.records import Reestimate
from dataflow.sites import Topology

#: A subscription's name (it names a file in a federation).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _fingerprint(f: FileEntry) -> str:
    """A file version's identity: the digest of its chunk list."""
    return hashlib.sha256(b"".join(r.id for r in f.manifest.chunks)).hexdigest()[:32]


@dataclass
class TransferSummary:
    """What a prefetch, migrate or replicate moved."""

    site: str
    files: int = 0
    chunks: int = 0
    bytes: int = 0
    skipped: int = 0
    seconds: float = 0.0
    removed: int = 0
    """Copies removed (embedded: files deleted at other sites; federation: replica
    placements released)."""
    by_source: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What was kept or released, and why (federation `migrate`)."""


class Job:
    """A job submitted with `Dataflow.run`: its plan, and its result once done."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self._plan: Plan | None = None
        self._result: JobResult | None = None
        self._error: BaseException | None = None
        self._planned = threading.Event()
        self._done = threading.Event()

    def _set_plan(self, plan: Plan) -> None:
        self._plan = plan
        self._planned.set()

    def _finish(self, result: JobResult | None, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.set()
        self._planned.set()

    @property
    def plan(self) -> Plan:
        """The plan (waits until the jobs it runs after are done and it is planned)."""
        self._planned.wait()
        if self._plan is None:
            assert self._error is not None
            raise self._error
        return self._plan

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> JobResult:
        """The result (raises the job's error, or TimeoutError)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} is still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    @property
    def result(self) -> JobResult:
        return self.wait()

    def __repr__(self) -> str:
        state = "done" if self.done() else "planned" if self._plan else "waiting"
        strategy = self._plan.strategy if self._plan else "not planned yet"
        return f"<Job {self.id} {strategy} {state}>"


class Dataflow:
    """Sites, datasets and jobs: the entry point of the data-scheduling API."""

    def __init__(self, topo: Topology, catalog: Catalog | None = None,
                 runtime: Runtime | None = None, *, processes: bool = True,
                 home: str | None = None, progress: bool = True,
                 objective: Objective = "balanced", federation: Any = None,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        """A Dataflow composed of `topo`, a `catalog` (default: `runtime.catalog`) and
        a `runtime` (default: an embedded `Runtime` over `topo` with `processes`,
        `home`, `progress`). `federation` (a
        gfs.federation.FederationClient) makes `replicate` add rules.
        `lease_seconds`: lifetime of the leases that publish this driver's running
        jobs to other drivers (`dataflow.leases`; renewed every third of it)."""
        self.topo = topo
        self.rt = runtime if runtime is not None else Runtime(
            topo, processes=processes, home=home, progress=progress)
        self.catalog: Catalog = catalog if catalog is not None else self.rt.catalog
        self.objective: Objective = objective
        self.federation = federation
        self.datasets: dict[str, Dataset] = {}
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Plan, float]] = {}
        """Job id -> (plan, monotonic start) of this driver's running jobs."""
        self.leases = Leases(self.catalog, topo, ttl=lease_seconds, on_new=self._reshare)
        """This driver's leases, and the other drivers' load (`dataflow.leases`)."""

    @classmethod
    def open(cls, config: str, **kw: Any) -> Dataflow:
        """A Dataflow over the sites of sites file `config`."""
        return cls(Topology.from_config(config), **kw)

    def close(self) -> None:
        """Delete this driver's leases, stop the clusters and movers started here."""
        try:
            self.leases.close()
        finally:
            self.rt.close()

    def __enter__(self) -> Dataflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datasets ---------------------------------------------------------------------
    def dataset(self, name: str, selectors: str | Sequence[str]) -> Dataset:
        """Define (or redefine) the named dataset and resolve it now."""
        ds = self.catalog.resolve(name, selectors)
        self.datasets[name] = ds
        return ds

    def resolve(self, inputs: Any) -> Dataset:
        """A Dataset from a Dataset, a name, selectors, a finished Job or a list of datasets."""
        cat = self.catalog
        if isinstance(inputs, Dataset):
            return cat.refresh(inputs)
        if isinstance(inputs, Job):
            res = inputs.wait()
            out = res.record.get("output")
            if not out:
                raise DatasetError(f"job {inputs.id} wrote no output; give it output= to chain")
            return cat.resolve(f"job {inputs.id}", [out.rstrip("/") + "/**"])
        if isinstance(inputs, str):
            if inputs in self.datasets:
                ds = self.datasets[inputs]
                return cat.resolve(ds.name, ds.selectors)
            return cat.resolve(inputs, inputs)
        if isinstance(inputs, Sequence) and inputs and all(isinstance(d, Dataset)
                                                            for d in inputs):
            return merge("+".join(d.name for d in inputs), [cat.refresh(d) for d in inputs])
        if isinstance(inputs, Sequence) and all(isinstance(s, str) for s in inputs):
            return cat.resolve(",".join(inputs), list(inputs))
        raise ConfigError(f"inputs must be a Dataset, a dataset name, path(s) or glob(s), or a "
                          f"Job; got {type(inputs).__name__}")

    # -- planning and running -------------------------------------------------------------
    def plan(self, inputs: Any, *, at: str = "auto", per_task: int = 1,
             constraints: Constraints | None = None, compute_mbps: float | None = None,
             deadline: float | None = None, budget: float | None = None,
             objective: Objective | None = None) -> Plan:
        """Where to run a job over `inputs` and what to move (nothing runs)."""
        ds = self.resolve(inputs)
        tasks = tasks_of([ds], per_task=per_task)
        model = self._model(ds, tasks, constraints, compute_mbps)
        planner = Planner(objective or self.objective, deadline=deadline, budget=budget)
        return planner.plan(tasks, model, at=at)

    def _model(self, ds: Dataset, tasks: list[Task], constraints: Constraints | None,
               compute_mbps: float | None) -> CostModel:
        """The cost model of a job planned now: the flows and compute backlog of the
        jobs this Dataflow and every other driver (their leases) have started and not
        finished count on their links and at their sites."""
        self.leases.refresh()
        return CostModel(self.topo, ds.locations, constraints,
                         compute_rate=compute_mbps * 1e6 / 8 if compute_mbps else None,
                         backlog=self.topo.compute_backlog())

    def run(self, fn: TaskFn | Sequence[TaskFn], inputs: Any, *, at: str = "auto",
            output: str | None = None, after: Job | Sequence[Job] | None = None,
            job_id: str | None = None, per_task: int = 1,
            constraints: Constraints | None = None, compute_mbps: float | None = None,
            deadline: float | None = None, budget: float | None = None,
            wait: bool = True, retries: int = 2) -> Job:
        """Plan and run `fn` (or a pipeline: a list of functions) over `inputs`.

        `after` waits for other jobs first (and fails if one failed). With
        `wait=False` everything (waiting, planning, running) happens on a
        background thread: `job.plan`, `job.wait()`. With the `job_id` of an
        interrupted job, only its unfinished tasks run.
        """
        deps = [after] if isinstance(after, Job) else list(after or [])
        job = Job(job_id or uuid.uuid4().hex[:12])
        name = getattr(fn, "__name__", None) or "pipeline"

        def go() -> None:
            try:
                for j in deps:
                    j.wait()
                ds = self.resolve(inputs)
                tasks = tasks_of([ds], per_task=per_task)
                model = self._model(ds, tasks, constraints, compute_mbps)
                planner = Planner(self.objective, deadline=deadline, budget=budget)
                plan = planner.plan(tasks, model, at=at)
                job._set_plan(plan)
                res = self._run_reserved(job.id, plan, lambda: self._executor(
                    planner, retries).run(fn, plan, output=output, job_id=job.id, name=name,
                                          model=model), model)
            except BaseException as e:
                job._finish(None, e)
                return
            job._finish(res, None)
        if wait:
            go()
            if job._error is not None:
                raise job._error
        else:
            threading.Thread(target=go, name=f"hutong-job-{job.id}", daemon=True).start()
        return job

    def _run_reserved(self, job_id: str, plan: Plan, go: Callable[[], JobResult],
                      model: CostModel) -> JobResult:
        """Run `go` with the plan's transfers reserved on their links and its tasks'
        compute seconds at their sites (so jobs planned meanwhile queue behind them,
        or go elsewhere); the executor releases each task's seconds when it is done;
        the rest is released, and the links settled with the transfers the job's
        record reports, when the job ends, however it ends."""
        t0 = time.time()
        self.topo.reserve(job_id, [(f.src, f.dst, f.chunks, f.bytes)
                                   for f in plan.estimate.flows])
        self.topo.reserve_compute(job_id, [(t.id, plan.placement[t.id],
                                            model.task_seconds(t, plan.placement[t.id]))
                                           for t in plan.tasks])
        with self._lock:
            self._running[job_id] = (plan, time.monotonic())
        self.leases.publish(job_id)
        rec: dict[str, Any] | None = None
        try:
            res = go()
            rec = res.record
            return res
        finally:
            with self._lock:
                self._running.pop(job_id, None)
            self.topo.release_compute(job_id)
            if rec is None:
                try:
                    rec = self.rt.load_record(job_id)
                except Exception:  # the record is unreachable: settle without it
                    rec = None
            self.topo.release(job_id, _moved(rec, since=t0))
            self.leases.drop(job_id)
            self.rt.publish_links()           # what the job's transfers measured

    def _reshare(self, new: list[Lease]) -> None:
        """Other drivers' new leases: the running jobs of this driver whose links (or
        capped NICs) they share get their estimate re-shared (`reshared_seconds`),
        appended to their record's `reestimates`."""
        with self._lock:
            running = dict(self._running)
        for jid, (plan, t0) in running.items():
            rec = self.rt.live.get(jid)
            if rec is None:
                continue
            links = {(f.src, f.dst) for f in plan.estimate.flows}
            sharing = [lease.job for lease in new if any(
                (a, b) in links or any(self._nic_shared(a, b, s, d) for s, d in links)
                for a, b, _, _ in lease.flows)]
            if not sharing:
                continue
            elapsed = time.monotonic() - t0
            secs = reshared_seconds(self.topo, jid, plan.estimate, elapsed)
            with rec.lock:
                rec.reestimates.append(Reestimate(time.time(), round(elapsed, 3),
                                                  round(secs, 3), sharing))
            self.rt.save_record(rec)

    def _nic_shared(self, a: str, b: str, src: str, dst: str) -> bool:
        """Whether flow a -> b shares a capped NIC with flow src -> dst."""
        sites = self.topo.sites
        return (a == src and a in sites and sites[a].nic > 0) or \
            (b == dst and b in sites and sites[b].nic > 0)

    def _executor(self, planner: Planner, retries: int) -> Executor:
        """The executor of this Dataflow's runtime."""
        return self.rt.executor(planner, retries=retries)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job record of the home site, oldest first."""
        return self.rt.records()

    # -- data operations --------------------------------------------------------------------
    def prefetch(self, inputs: Any, site: str) -> TransferSummary:
        """Copy the chunks of `inputs` that `site` lacks into its store, from the best
        holders, through the runtime's driver (embedded: the native mover; a
        federation: mover pulls between the caller's sites, else the chunk API). The
        flows are reserved on their links while they run (jobs planned meanwhile
        queue behind them).

        Chunks only (no namespace entries): they serve later jobs at `site` and are
        reclaimed by gc unless a file there names them (use `migrate` or
        `replicate` to place files).
        """
        self.topo.site(site)
        ds = self.resolve(inputs)
        d = self.rt.driver()
        need = d.need(ds.files)
        missing = d.missing(site, list(need)) if need else []
        by_src, unheld = CostModel(self.topo, ds.locations).by_source(site, missing, need)
        if unheld:
            raise DatasetError(f"prefetch to {site}: chunk {unheld[0].hex()} of {ds.name} is "
                               f"held by no up site")
        out = TransferSummary(site, files=len(ds.files), skipped=len(need) - len(missing))
        t0 = time.monotonic()
        rid = uuid.uuid4().hex[:12]
        with self._reserving("prefetch", site, by_src, ds.lengths) as moved:
            futs = {src: d.copy(src, site, cids, [need[c] for c in cids],
                                key=f"prefetch-{rid}-{src}", retries=2)
                    for src, cids in sorted(by_src.items())}
            for src, fut in futs.items():
                st = fut.result()
                self.topo.observe(src, site, int(st["bytes"]), int(st["chunks"]),
                                  float(st["seconds"]))
                moved[(src, site)] = int(st["chunks"])
                out.chunks += int(st["chunks"])
                out.bytes += int(st["bytes"])
                out.by_source[src] = int(st["bytes"])
        out.seconds = time.monotonic() - t0
        self.rt.publish_links()
        return out

    @contextlib.contextmanager
    def _reserving(self, kind: str, dst: str, by_src: Mapping[str, Sequence[bytes]],
                   lengths: Mapping[bytes, int]) -> Iterator[dict[tuple[str, str], int]]:
        """Reserve the flows `src -> dst` of `by_src` (chunk ids per source) on their links
        while the block runs, so jobs planned meanwhile queue behind them; the block
        puts the chunks each link moved (reported to `Topology.observe`) in the dict it
        gets, and they are settled when the reservation is released, however it ends."""
        rid = f"{kind}-{uuid.uuid4().hex[:12]}"
        self.topo.reserve(rid, [(src, dst, len(ids), sum(lengths[c] for c in ids))
                                for src, ids in by_src.items()])
        self.leases.publish(rid)
        moved: dict[tuple[str, str], int] = {}
        try:
            yield moved
        finally:
            self.topo.release(rid, moved)
            self.leases.drop(rid)

    def migrate(self, inputs: Any, to: str, *, remove: bool = True) -> TransferSummary:
        """Copy every file of `inputs` to site `to`, then (with `remove`) delete the others.

        A copy is removed only after `to` has committed the same manifest, so a
        failure at any point loses nothing; run it again to finish.
        """
        out = self._copy(self.resolve(inputs), to)
        if remove:
            for f in self.resolve(inputs).files:
                dst = self.rt.stores.get(to)
                if [r.id for r in dst.manifest(f.path).chunks] != \
                        [r.id for r in f.manifest.chunks]:
                    continue  # changed since: keep every copy
                for s in f.sites:
                    if s != to:
                        self.rt.stores.get(s).rm(f.path)
                        out.removed += 1
        return out

    def _copy(self, ds: Dataset, to: str) -> TransferSummary:
        from gfs import mover

        self.topo.site(to)
        dst = self.rt.stores.get(to)
        out = TransferSummary(to, files=len(ds.files))
        t0 = time.monotonic()
        bar = _bytes_bar(self.rt.progress, ds.logical_bytes, f"copy to {to}")
        try:
            for f in ds.files:
                if to in f.sites and dst.exists(f.path) and \
                        dst.manifest(f.path).chunks == f.manifest.chunks:
                    out.skipped += 1
                    if bar is not None:
                        bar.update(f.size)
                    continue
                src = self.rt.stores.get(f.home)
                rep = mover.copy_tree(src, dst, f.path)
                out.chunks += rep.transfer.chunks
                out.bytes += rep.transfer.bytes
                out.by_source[f.home] = out.by_source.get(f.home, 0) + rep.transfer.bytes
                if bar is not None:
                    bar.update(f.size)
        finally:
            if bar is not None:
                bar.close()
        out.seconds = time.monotonic() - t0
        return out

    def replicate(self, inputs: Any, copies: int, where: str = "",
                  lifetime: float | None = None) -> list[TransferSummary] | list[dict[str, Any]]:
        """Keep `copies` copies of the files of `inputs` at sites matching `where`.

        In a federation this adds a rule (`FederationClient.rule_add`) per
        selector, which the owner's primary keeps true. Embedded, the files are
        copied now to the matching sites that hold the most of their chunks,
        and the replica is recorded (with its expiry) in the jobs table.
        """
        if not 1 <= copies <= 64:
            raise ConfigError(f"copies must be 1 to 64, got {copies}")
        if self.federation is not None:
            sels = [inputs] if isinstance(inputs, str) else list(
                inputs.selectors if isinstance(inputs, Dataset) else inputs)
            return [self.federation.rule_add(s, copies, where, lifetime) for s in sels]
        ds = self.resolve(inputs)
        sites = [s.name for s in self.topo.matching(where) if s.state]
        if len(sites) < copies:
            raise PlanError(f"replicate {ds.name}: {copies} copies wanted but only "
                            f"{len(sites)} up site(s) match {where!r}: {', '.join(sites)}")
        chosen = sorted(sites, key=lambda s: (-sum(1 for f in ds.files if s in f.sites),
                                              -ds.bytes_at(s), s))[:copies]
        results = [self._copy(ds, s) for s in chosen]
        rid = uuid.uuid4().hex[:12]
        rec = {"id": rid, "selectors": list(ds.selectors), "copies": copies, "where": where,
               "sites": chosen, "created": time.time(),
               "expires": time.time() + lifetime if lifetime else None}
        self._embedded("replicate").save_state("replica", rid, rec)
        return results

    def expire_replicas(self, now: float | None = None) -> int:
        """Remove the copies of expired embedded replicas (not the files' home copies)."""
        now = time.time() if now is None else now
        removed = 0
        states = self._embedded("expire_replicas")
        for key, rec in states.states("replica"):
            if rec.get("expires") is None or rec["expires"] > now:
                continue
            ds = Dataset.resolve(rec["id"], rec["selectors"], self.rt.stores, missing_ok=True)
            for f in ds.files:
                for s in rec["sites"]:
                    if s != f.home and s in f.sites:
                        self.rt.stores.get(s).rm(f.path)
                        removed += 1
            states.delete_state("replica", key)
        return removed

    # -- subscriptions --------------------------------------------------------------------------
    def subscribe(self, pattern: str, fn: TaskFn | Sequence[TaskFn], *, name: str | None = None,
                  at: str = "auto", output: str | None = None) -> Subscription:
        """Run `fn` over files matching `pattern` each time new ones appear (`poll`)."""
        if not pattern.startswith("/"):
            raise ConfigError(f"subscription pattern {pattern!r} must be an absolute glob")
        if name is not None and not _NAME.fullmatch(name):
            raise ConfigError(f"subscription name {name!r}: use 1 to 128 letters, digits, "
                              f"'.', '_' or '-' (it names a file)")
        glob_regex(pattern)
        return Subscription(self, name or uuid.uuid5(uuid.NAMESPACE_URL, pattern).hex[:12],
                            pattern, fn, at, output)

    def _embedded(self, what: str) -> EmbeddedCatalog:
        if not isinstance(self.catalog, EmbeddedCatalog):
            raise ConfigError(f"{what} works on embedded stores; in a federation, rules "
                              f"place copies (replicate adds them)")
        return self.catalog


class Subscription:
    """A trigger on new data: `poll()` runs one job over files not handled before."""

    def __init__(self, df: Dataflow, name: str, pattern: str, fn: TaskFn | Sequence[TaskFn],
                 at: str, output: str | None) -> None:
        self.df, self.name, self.pattern, self.fn = df, name, pattern, fn
        self.at, self.output = at, output
        self.jobs: list[Job] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _seen(self) -> dict[str, str]:
        rec = self.df.catalog.load_state("sub", self.name)
        return dict(rec.get("seen", {})) if rec else {}

    def pending(self) -> Dataset | None:
        """The new files (path and content not handled yet), or None."""
        files = self.df.catalog.files_now(self.pattern)
        seen = self._seen()
        new = [f for f in files if seen.get(f.path) != _fingerprint(f)]
        if not new:
            return None
        lengths = {r.id: r.length for f in new for r in f.manifest.chunks}
        return Dataset(f"{self.name} new", (self.pattern,), new, lengths,
                       self.df.catalog.locate(lengths))

    def start(self, interval: float = 5.0) -> None:
        """Poll every `interval` seconds on a background thread until `stop()`.

        Jobs it starts are kept in `jobs`; an error stops the loop and is kept
        in `error` (the files stay unhandled, so a restart retries them).
        """
        if not interval > 0:
            raise ConfigError(f"subscription interval must be > 0 seconds, got {interval}")
        if self._thread is not None:
            raise ConfigError(f"subscription {self.name} is already started")
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    job = self.poll()
                except Exception as e:  # kept for the caller: the loop must not die silently
                    self.error = e
                    return
                if job is not None:
                    self.jobs.append(job)
        self._thread = threading.Thread(target=loop, name=f"hutong-sub-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop polling (waits for a poll in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def poll(self) -> Job | None:
        """Run the function over the new files (one job); None when nothing is new.

        The files are marked handled only when the job succeeds, so a failed or
        interrupted poll is retried by the next one.
        """
        ds = self.pending()
        if ds is None:
            return None
        out = f"{self.output.rstrip('/')}/{int(time.time() * 1000)}" if self.output else None
        job = self.df.run(self.fn, ds, at=self.at, output=out)
        seen = self._seen()
        for f in ds.files:
            seen[f.path] = _fingerprint(f)
        self.df.catalog.save_state("sub", self.name, {"pattern": self.pattern, "seen": seen})
        return job


def _moved(rec: dict[str, Any] | None, since: float) -> dict[tuple[str, str], int]:
    """Chunks per link that the transfers of a job record started at or after `since`
    moved (each was reported to `Topology.observe`)."""
    out: dict[tuple[str, str], int] = {}
    for t in (rec or {}).get("transfers", []):
        if "moved" in t and "error" not in t and float(t.get("started", 0)) >= since - 1e-3:
            key = (str(t["src"]), str(t["dst"]))
            out[key] = out.get(key, 0) + int(t["moved"])
    return out


def _bytes_bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)
