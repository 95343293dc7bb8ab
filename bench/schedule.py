"""`python -m bench schedule [--quick] [--no-real]`: the dataflow planner against baselines.

**Simulation** (a scale we cannot run here): 24 sites in 4 regions (per region
one compute centre with many slots, one general site, four data sites with
few slots); links 10 Gbit/s inside a region, 0.3 to 2 Gbit/s between regions
with 20 to 70 ms round trips and 0.02 to 0.09 per GB. Datasets come in
families: each family has a base version at a data site and later versions
(15 % of the chunks rewritten) ingested at other data sites, plus reference
tables shared by many jobs. A trace of jobs arrives over time; a job runs a
function per file (optionally joined with a reference file, or comparing two
versions). Every policy is simulated on the same trace with the same truth:
the dedup-aware cost model with the true links and the chunks each site holds
at the job's arrival (chunks fetched by a job stay at its sites). Jobs that
overlap in time contend, for every policy alike: a site's slots finish earlier
jobs' work first (compute backlog), and the bytes earlier jobs' flows have
still to move are reserved on the links (`Topology.reserve`), so a new flow
shares its link and both NICs fairly with them (it is held up by each other
flow's bytes up to its own size); the planner sees this load too (on its
noisy links). Policies:

* `planner`: dataflow's Planner, seeing links with ±15 % measurement noise;
* `central`: every job moves its data to one central compute centre;
* `largest-input`: every job runs where the largest share of its input files live;
* `dask-like`: per task, Dask's `decide_worker` rule (docs: distributed,
  "Scheduling Policies"): among the workers holding a dependency, the one
  minimising occupancy + bytes to transfer / one global bandwidth (100 MB/s),
  dependencies counted as whole files (no dedup, no knowledge of chunk caches).

Reported: makespan (first arrival to last finish), bytes moved between sites,
bytes moved between regions, money. Target: at least 2x fewer bytes moved and
a lower makespan than the best baseline (the one with the lowest makespan).

**Real run** (needs root for network namespaces): three sites as processes in
an emulated WAN (gfs.testing.wan: tbf rate, nftables loss, delay line), each
serving its store with `hutong mover serve`; the job's driver runs inside the
compute site's namespace and its inputs come from the two others. The
planner's estimate is compared with the measured time. Target: within 25 %.

**Federation run** (the same WAN emulation): a registry and three `hutong site
serve` processes of one entity (fa: the primary, holding every input; fb:
holding half of them; fc: compute, holding nothing), the driver and fc's Dask
cluster in fc's namespace, the job through `FederatedDataflow` (catalog,
mover pulls between the sites, tasks reading through fc's API, the record at
the primary). Links into fc and fc's NIC are probed first with mover pulls of
probe files (not job data), a task's read rate from fc's API with a read of
the probed chunks; the estimate is compared with the executor's wall time
(records included). Target: within 25 % too.

**Two-driver run** (the same WAN emulation; `--only-two` runs just this): sites
a (80 Mbit/s, holds the inputs of jobs 1 and 2), b (60 Mbit/s, a second site of
the same entity holding half of job 2's bytes) and c (compute, 400 Mbit/s), movers
as processes; links into c probed first. Two drivers, two processes in c's
namespace, each run one real job at c; job 2 is planned once job 1's lease is
out, so both share the link a -> c. Done twice on a fresh c: `leases` (one home
store: each driver sees the other's lease; job 2 takes the chunks b also holds
from b, and job 1 is re-estimated when job 2's lease appears) and `blind` (the
drivers' homes apart: neither sees the other, as two entities before leases
were published at the registry). Reported per job: the plan's estimate, the
record's last re-estimate, the measured makespan and the error of the latest
estimate; the two jobs' makespan and WAN bytes. Target: every job's error
within 25 % with leases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.report import headline, table
from dataflow.cost import CostModel, Task
from dataflow.datasets import FileEntry
from dataflow.planner import Planner
from dataflow.sites import Link, Site, Topology
from gfs.meta import ChunkRef, Manifest

UNIT = 64 << 20                  # one simulated chunk: 64 MiB (chunk groups, for speed)
DASK_BANDWIDTH = 100e6           # distributed.scheduler.bandwidth default
REGIONS = ["north", "east", "west", "south"]


# -- the simulated world ------------------------------------------------------------


def build_topology(rnd: random.Random, per_region: int) -> tuple[Topology, Topology]:
    """(truth, what the planner sees: every link measured with noise)."""
    sites: dict[str, Site] = {}
    for r in REGIONS:
        for i in range(per_region):
            kind = "hpc" if i == 0 else "gen" if i == 1 else "dat"
            slots = {"hpc": 64, "gen": 8, "dat": 2}[kind]
            name = f"{r}-{kind}{i}"
            sites[name] = Site(name, r, f"ent-{r}-{i}", slots=slots, compute_mbps=160,
                               price_core_hour={"hpc": 0.04, "gen": 0.06, "dat": 0.08}[kind],
                               nic_mbps=NIC[kind] * 8 / 1e6)
    truth = Topology(dict(sites))
    pair: dict[tuple[str, str], tuple[float, float, float]] = {}
    for i, a in enumerate(REGIONS):
        for b in REGIONS[i + 1:]:
            pair[(a, b)] = pair[(b, a)] = (rnd.uniform(0.3, 2.0) * 1e9 / 8,
                                           rnd.uniform(0.020, 0.070), rnd.uniform(0.02, 0.09))
    for a, sa in sites.items():
        for b, sb in sites.items():
            if a == b:
                continue
            if sa.region == sb.region:
                truth.configured[(a, b)] = Link(a, b, min(_uplink(sa), _uplink(sb)),
                                                rnd.uniform(0.001, 0.004), 0.0)
            else:
                bw, rtt, price = pair[(sa.region, sb.region)]
                # the slower uplink of the two sites caps the path
                cap = min(_uplink(sa), _uplink(sb))
                truth.configured[(a, b)] = Link(a, b, min(bw, cap), rtt, price)
    seen = Topology(dict(sites))
    for k, lk in truth.configured.items():
        noise = math.exp(rnd.gauss(0, 0.15))
        seen.configured[k] = replace(lk, bandwidth=lk.bandwidth * noise, source="measured")
    return truth, seen


NIC = {"hpc": 10e9 / 8, "gen": 2e9 / 8, "dat": 1e9 / 8}
"""Each site's network interface (bytes/s): all its transfers share it."""


def _uplink(s: Site) -> float:
    return NIC[s.name.split("-")[1][:3]]


@dataclass
class World:
    """Files (as manifests of 64 MiB units), where each unit lives, the job trace."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    holdings: dict[bytes, dict[str, str]] = field(default_factory=dict)
    families: list[list[list[str]]] = field(default_factory=list)
    """family -> version -> file paths."""
    refs: list[list[str]] = field(default_factory=list)


def _cid(rnd: random.Random) -> bytes:
    return rnd.randbytes(16)


def build_world(rnd: random.Random, topo: Topology, families: int, files: int,
                units: int, versions: int) -> World:
    w = World()
    data_sites = [s for s in topo.sites if "-dat" in s]

    def add(path: str, ids: list[bytes], home: str) -> None:
        m = Manifest(1, tuple(ChunkRef(c, UNIT) for c in ids))
        w.files[path] = FileEntry(path, m, home, (home,))
        for c in ids:
            w.holdings.setdefault(c, {})[home] = "warm"
    for f in range(families):
        home = rnd.choice(data_sites)
        region = topo.sites[home].region
        cur = [[_cid(rnd) for _ in range(units)] for _ in range(files)]
        fam: list[list[str]] = []
        for v in range(versions):
            if v:
                cur = [[_cid(rnd) if rnd.random() < 0.15 else c for c in ids] for ids in cur]
                # later versions are ingested at another data site, usually in-region
                same = [s for s in data_sites if topo.sites[s].region == region and s != home]
                home = rnd.choice(same if rnd.random() < 0.7 else data_sites)
            paths = []
            for i, ids in enumerate(cur):
                p = f"/fam{f}/v{v}/part{i:03d}"
                add(p, ids, home)
                paths.append(p)
            fam.append(paths)
        w.families.append(fam)
    for r in range(3):
        home = rnd.choice(data_sites)
        paths = []
        for i in range(4):
            p = f"/ref{r}/table{i}"
            add(p, [_cid(rnd) for _ in range(2)], home)
            paths.append(p)
        w.refs.append(paths)
    return w


@dataclass(frozen=True)
class Job:
    arrival: float
    tasks: tuple[Task, ...]
    label: str


def build_trace(rnd: random.Random, w: World, jobs: int, gap: float) -> list[Job]:
    out = []
    t = 0.0
    for j in range(jobs):
        t += rnd.expovariate(1 / gap)
        fam = rnd.randrange(len(w.families))
        versions = w.families[fam]
        v = min(len(versions) - 1, int(rnd.triangular(0, len(versions), len(versions))))
        kind = rnd.choice(["scan", "join", "compare"])
        tasks = []
        for i, p in enumerate(versions[v]):
            fs = [w.files[p]]
            if kind == "join":
                ref = w.refs[fam % len(w.refs)]
                fs.append(w.files[ref[i % len(ref)]])
            elif kind == "compare" and v > 0:
                fs.append(w.files[versions[v - 1][i]])
            tasks.append(Task(f"t{i:03d}", tuple(fs)))
        out.append(Job(t, tuple(tasks), f"j{j}:{kind}:fam{fam}v{v}"))
    return out


# -- policies ----------------------------------------------------------------------


Replicas = dict[str, set[str]]
"""File path -> sites holding a copy of the whole file (what file-level systems know)."""


def policy_planner(job: Job, seen: Topology, hold: dict[bytes, dict[str, str]],
                   backlog: dict[str, float], central: str, files: Replicas) -> dict[str, str]:
    model = CostModel(seen, hold, backlog=backlog)
    return Planner("balanced").plan(list(job.tasks), model).placement


def policy_planner_time(job: Job, seen: Topology, hold: dict[bytes, dict[str, str]],
                        backlog: dict[str, float], central: str, files: Replicas
                        ) -> dict[str, str]:
    model = CostModel(seen, hold, backlog=backlog)
    return Planner("time").plan(list(job.tasks), model).placement


def policy_central(job: Job, seen: Topology, hold: dict[bytes, dict[str, str]],
                   backlog: dict[str, float], central: str, files: Replicas) -> dict[str, str]:
    return {t.id: central for t in job.tasks}


def policy_largest(job: Job, seen: Topology, hold: dict[bytes, dict[str, str]],
                   backlog: dict[str, float], central: str, files: Replicas) -> dict[str, str]:
    by: dict[str, int] = {}
    for t in job.tasks:
        for f in t.files:
            for s in files[f.path]:
                by[s] = by.get(s, 0) + f.size
    best = max(sorted(by), key=lambda s: by[s])
    return {t.id: best for t in job.tasks}


def policy_dask(job: Job, seen: Topology, hold: dict[bytes, dict[str, str]],
                backlog: dict[str, float], central: str, files: Replicas) -> dict[str, str]:
    occupancy = dict(backlog)     # seconds of queued work per site, as Dask tracks it
    out = {}
    for t in job.tasks:
        candidates = sorted({s for f in t.files for s in files[f.path]})
        def objective(s: str, t: Task = t) -> tuple[float, str]:
            comm = sum(f.size for f in t.files if s not in files[f.path])
            return (occupancy.get(s, 0.0) / seen.sites[s].slots + comm / DASK_BANDWIDTH, s)
        best = min(candidates, key=objective)
        out[t.id] = best
        occupancy[best] = occupancy.get(best, 0.0) + t.input_bytes / seen.sites[best].compute_rate
    return out


POLICIES = {"planner": policy_planner, "planner (time)": policy_planner_time,
            "central": policy_central,
            "largest-input": policy_largest, "dask-like": policy_dask}


@dataclass
class Outcome:
    makespan: float = 0.0
    moved: int = 0
    inter_region: int = 0
    money: float = 0.0
    plan_seconds: float = 0.0
    response: float = 0.0
    """Mean seconds from a job's arrival to its end."""
    queued: float = 0.0
    """Mean over jobs of the longest wait of a flow behind earlier jobs' transfers."""


def _file_level(tasks: tuple[Task, ...], files: Replicas
                ) -> tuple[list[Task], dict[bytes, dict[str, str]]]:
    """The same tasks seen by a file-level mover: one unit per file, held where copies are."""
    out, where = [], {}
    for t in tasks:
        fs = []
        for f in t.files:
            pid = f.path.encode().ljust(16, b"\0")[:8] + len(f.path).to_bytes(8, "big")
            pid = bytes(a ^ b for a, b in zip(pid, f.path.encode()[-16:].ljust(16, b"\0"),
                                               strict=True))
            where[pid] = dict.fromkeys(sorted(files[f.path]), "warm")
            fs.append(replace(f, manifest=Manifest(1, (ChunkRef(pid, f.size),))))
        out.append(Task(t.id, tuple(fs)))
    return out, where


@dataclass(frozen=True)
class InFlight:
    """A flow of an earlier job: its bytes cross the link from `start` (after its own
    queue) to `end`, at an even rate."""

    src: str
    dst: str
    chunks: int
    bytes: int
    start: float
    end: float

    def left(self, now: float) -> tuple[int, int]:
        """(chunks, bytes) still to move at `now`."""
        span = self.end - self.start
        frac = 1.0 if now <= self.start or span <= 0 else (self.end - now) / span
        return max(1, math.ceil(self.chunks * frac)), int(self.bytes * frac)


IN_FLIGHT = "earlier-jobs"
"""Reservation id of the unfinished flows of earlier jobs in the simulation."""


def simulate(name: str, trace: list[Job], truth: Topology, seen: Topology, world: World,
             central: str, chunk_mover: bool, drivers: int = 1,
             shared: bool = True) -> Outcome:
    """Run the trace under policy `name`; transfers by the chunk mover (missing chunks)
    or by file copies (whole files a site has no copy of).

    Jobs overlapping in time share links, NICs and slots, for every policy alike:
    before a job is planned and measured, what earlier jobs have still to move (each
    flow drains evenly until its end) is reserved on both topologies (`reserve`), so
    new flows queue behind it, and what they have still to compute is each site's
    backlog; the reservation is released after the job.

    With `drivers` > 1 the jobs are planned by that many drivers in turn (job i by
    driver i mod drivers); `shared` drivers see every driver's load (leases,
    `dataflow.leases`), isolated ones only their own jobs' (the truth has all)."""
    hold = {c: dict(v) for c, v in world.holdings.items()}
    files: Replicas = {p: {f.home} for p, f in world.files.items()}
    busy: dict[str, float] = {}
    mine_busy: list[dict[str, float]] = [{} for _ in range(drivers)]
    flying: list[InFlight] = []
    owner: dict[int, int] = {}                    # id(flow) -> the driver of its job
    out = Outcome()
    finish = 0.0
    policy = POLICIES[name]
    for i, job in enumerate(trace):
        me = i % drivers
        backlog = {s: max(0.0, b - job.arrival) for s, b in busy.items()}
        flying = [f for f in flying if f.end > job.arrival]
        ahead = [(f.src, f.dst, *f.left(job.arrival)) for f in flying]
        known = backlog if shared else {s: max(0.0, b - job.arrival)
                                         for s, b in mine_busy[me].items()}
        truth.reserve(IN_FLIGHT, ahead)
        seen.reserve(IN_FLIGHT, ahead if shared else
                     [(f.src, f.dst, *f.left(job.arrival)) for f in flying
                      if owner.get(id(f)) == me])
        try:
            t0 = time.perf_counter()
            placement = policy(job, seen, hold, known, central, files)
            out.plan_seconds += time.perf_counter() - t0
            if chunk_mover:
                est = CostModel(truth, hold, backlog=backlog).estimate(placement,
                                                                       list(job.tasks))
            else:
                ftasks, where = _file_level(job.tasks, files)
                est = CostModel(truth, where, backlog=backlog).estimate(placement, ftasks)
        finally:
            for topo in (seen, truth):
                topo.release(IN_FLIGHT)
        for f in est.flows:
            # the link is shared fairly: the flow moves from its start, slowed by the
            # others (its `queue` is that slowdown), until its planned end
            flying.append(InFlight(f.src, f.dst, f.chunks, f.bytes, job.arrival,
                                   job.arrival + f.seconds))
            owner[id(flying[-1])] = me
        for s, secs in est.site_seconds.items():
            busy[s] = job.arrival + secs
            mine_busy[me][s] = job.arrival + secs
            finish = max(finish, job.arrival + secs)
        out.response += est.seconds / len(trace)
        out.queued += est.queue_seconds / len(trace)
        out.moved += est.wan_bytes
        out.money += est.money
        for f in est.flows:
            if truth.sites[f.src].region != truth.sites[f.dst].region:
                out.inter_region += f.bytes
        for t in job.tasks:                     # what arrived stays at the site
            d = placement[t.id]
            for c in t.chunks:
                hold[c].setdefault(d, "warm")
            for fe in t.files:
                files[fe.path].add(d)
    out.makespan = finish - trace[0].arrival
    return out


def run_simulation(quick: bool, seed: int) -> tuple[bool, dict[str, object]]:
    rnd = random.Random(seed)
    per_region = 5 if quick else 6
    truth, seen = build_topology(rnd, per_region)
    world = build_world(rnd, truth, families=6 if quick else 8, files=10 if quick else 12,
                        units=8, versions=4)
    trace = build_trace(rnd, world, jobs=24 if quick else 48, gap=40.0)
    central = "north-hpc0"
    results = {n: simulate(n, trace, truth, seen, world, central, True)
               for n in POLICIES if n.startswith("planner")}
    for n in POLICIES:
        if not n.startswith("planner"):
            results[n] = simulate(n, trace, truth, seen, world, central, False)
    for n in POLICIES:
        if not n.startswith("planner"):
            results[f"{n} + chunk mover"] = simulate(n, trace, truth, seen, world, central,
                                                     True)
    # two drivers planning in turn: blind to each other, or sharing leases
    results["planner, 2 drivers, isolated"] = simulate("planner", trace, truth, seen, world,
                                                       central, True, drivers=2,
                                                       shared=False)
    results["planner, 2 drivers, leases"] = simulate("planner", trace, truth, seen, world,
                                                     central, True, drivers=2, shared=True)
    gib = 1 << 30
    print(f"simulation: {len(truth.sites)} sites in {len(REGIONS)} regions, "
          f"{len(world.files)} files ({len(world.holdings) * UNIT / gib:.0f} GiB unique), "
          f"{len(trace)} jobs over {trace[-1].arrival:.0f} s; seed {seed}")
    rows = []
    for n, o in results.items():
        rows.append([n, round(o.makespan, 1), round(o.response, 1),
                     round(o.inter_region / gib, 1), round(o.moved / gib, 1), round(o.money, 2),
                     round(o.queued, 2), round(o.plan_seconds * 1000 / len(trace), 1)])
    print(table(["policy", "makespan s", "mean job s", "WAN GiB", "all moved GiB", "money",
                 "link queue s/job", "plan ms/job"], rows))
    p = results["planner"]
    peers = {n: o for n, o in results.items() if n in POLICIES and not n.startswith("planner")}
    best = min(peers, key=lambda n: peers[n].makespan)
    b = peers[best]
    moved_ratio = b.moved / p.moved if p.moved else math.inf
    wan_ratio = b.inter_region / p.inter_region if p.inter_region else math.inf
    ablation = {n: o for n, o in results.items() if n.endswith("chunk mover")}
    best_ab = min(ablation, key=lambda n: ablation[n].makespan)
    figures = {"best_baseline": best, "makespan_ratio": round(b.makespan / p.makespan, 2),
               "mean_job_ratio": round(b.response / p.response, 2),
               "moved_ratio": round(moved_ratio, 2), "wan_ratio": round(wan_ratio, 2),
               "money_ratio": round(b.money / p.money if p.money else math.inf, 2),
               "vs_best_with_chunk_mover_makespan": round(
                   ablation[best_ab].makespan / p.makespan, 2),
               "vs_best_with_chunk_mover_moved": round(
                   ablation[best_ab].moved / p.moved if p.moved else math.inf, 2)}
    iso, lea = results["planner, 2 drivers, isolated"], results["planner, 2 drivers, leases"]
    figures["two_drivers"] = {
        "isolated": {"makespan": round(iso.makespan, 1), "wan_gib": round(
            iso.inter_region / gib, 2), "mean_job": round(iso.response, 1)},
        "leases": {"makespan": round(lea.makespan, 1), "wan_gib": round(
            lea.inter_region / gib, 2), "mean_job": round(lea.response, 1)}}
    print(f"two drivers (load average {os.getloadavg()[0]:.1f}): isolated / with leases: "
          f"makespan "
          f"{iso.makespan / lea.makespan if lea.makespan else math.inf:.2f}, mean job "
          f"{iso.response / lea.response if lea.response else math.inf:.2f}")
    print(f"baseline / planner, best baseline by makespan = {best} (file copies): makespan "
          f"{figures['makespan_ratio']}, mean job {figures['mean_job_ratio']}, WAN "
          f"(inter-region) bytes {figures['wan_ratio']}, all bytes moved between sites "
          f"{figures['moved_ratio']}, money {figures['money_ratio']}")
    ab_wan = ablation[best_ab].inter_region / p.inter_region if p.inter_region else math.inf
    print(f"baseline / planner, best baseline placement moved by our chunk mover "
          f"({best_ab}): makespan {figures['vs_best_with_chunk_mover_makespan']}, all bytes "
          f"moved {figures['vs_best_with_chunk_mover_moved']}, WAN bytes {ab_wan:.2f}")
    met = p.makespan < b.makespan and wan_ratio >= 2.0
    return met, figures


# -- the real run ----------------------------------------------------------------------

REAL_SITES = ("a", "b", "c")


def _real_job(inputs: list[object]) -> dict[str, int]:
    """The real run's task: read every input byte (checks the data arrived)."""
    total = 0
    for f in inputs:
        with f.open() as r:  # type: ignore[attr-defined]
            while chunk := r.read(1 << 20):
                total += len(chunk)
    return {"bytes": total}


def _driver(cfg: str) -> int:
    """Inside site c's namespace: probe links, plan, run; print estimate and measurement."""
    from dataflow.ops import Dataflow

    spec = json.loads(Path(cfg).read_text())
    with Dataflow.open(spec["sites"], progress=False) as df:
        ds = df.dataset("inputs", spec["inputs"])
        # Links into c measured with the mover (the probe fetches into a scratch store).
        t0 = time.monotonic()
        probed = []
        for src in ("a", "b"):
            probed.append(_probe_remote(df, src, "c"))
        nic = _probe_nic(df, ["a", "b"], "c", max(lk.rtt for lk in probed))
        probe_s = time.monotonic() - t0
        plan = df.plan(ds, at="c", compute_mbps=spec["compute_mbps"])
        df.rt.dask("c")                       # warm the cluster: not part of the job
        t0 = time.monotonic()
        job = df.run(_real_job, ds, at="c", output="/lab/out/real", job_id="real")
        measured = time.monotonic() - t0
        res = job.result
        auto = df.plan(ds)
    print(json.dumps({"estimate": plan.estimate.seconds, "measured": measured,
                      "est_bytes": plan.estimate.wan_bytes, "moved": res.wan_bytes,
                      "explain": plan.explain(), "auto": auto.explain(),
                      "probe_seconds": probe_s, "nic_mbps": nic * 8 / 1e6,
                      "links": [{"src": lk.src, "mbps": lk.bandwidth * 8 / 1e6,
                                 "rtt_ms": lk.rtt * 1e3} for lk in probed],
                      "transfers": res.record["transfers"],
                      "tasks": {k: v["attempts"] for k, v in res.record["tasks"].items()},
                      "t0": t0}))
    return 0


def _probe_remote(df: object, src: str, dst: str) -> Link:
    """Probe a site whose mover runs as its own process: two fetches into a scratch store."""
    from gfs import mover
    from gfs.client import Client

    rt = df.rt  # type: ignore[attr-defined]
    addr, secret = rt.mover(src)
    ids = json.loads(Path(os.environ["HUTONG_PROBE_IDS"]).read_text())[src]
    ids = [bytes.fromhex(c) for c in ids]
    with tempfile.TemporaryDirectory(prefix="hutong-probe-") as tmp, \
            Client.init(Path(tmp) / "s") as scratch:
        t0 = time.monotonic()
        mover.fetch(scratch, addr, ids[:1], secret, streams=1)
        t_small = time.monotonic() - t0
        t0 = time.monotonic()
        st = mover.fetch(scratch, addr, ids[1:], secret, streams=2)
        t_big = time.monotonic() - t0
    rtt = t_small / 3
    latency = rtt * (2 + math.ceil(len(ids[1:]) / 4096))
    bw = st.bytes / max(t_big - latency, 1e-6)
    link = Link(src, dst, bw, rtt, df.topo.link(src, dst).price_per_gb,  # type: ignore[attr-defined]
                "measured", time.time())
    df.topo.set_measured(link)  # type: ignore[attr-defined]
    return link


def _probe_nic(df: object, srcs: list[str], dst: str, rtt: float) -> float:
    """Fetch from every source at once: the rate `dst` receives in total is its NIC."""
    import threading

    from gfs import mover
    from gfs.client import Client

    rt = df.rt  # type: ignore[attr-defined]
    probe = json.loads(Path(os.environ["HUTONG_PROBE_IDS"]).read_text())
    got: list[int] = []
    with tempfile.TemporaryDirectory(prefix="hutong-probe-") as tmp:
        def one(src: str) -> None:
            addr, secret = rt.mover(src)
            ids = [bytes.fromhex(c) for c in probe[src]][1:]
            with Client.init(Path(tmp) / src) as scratch:
                got.append(mover.fetch(scratch, addr, ids, secret, streams=2).bytes)
        threads = [threading.Thread(target=one, args=(s,)) for s in srcs]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.monotonic() - t0
    nic = sum(got) / max(secs - 3 * rtt, 1e-6)
    site = df.topo.sites[dst]  # type: ignore[attr-defined]
    df.topo.sites[dst] = replace(site, nic_mbps=nic * 8 / 1e6)  # type: ignore[attr-defined]
    return nic


def run_real(work: Path, quick: bool) -> tuple[bool, dict[str, object]] | None:
    from gfs.client import Client
    from gfs.testing.wan import Link as WanLink
    from gfs.testing.wan import emulated_wan, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"real run skipped: {reason}")
        return None
    size = (8 if quick else 24) << 20
    rate = 80e6                              # 80 Mbit/s each site link
    links = {"a": WanLink(delay=0.010, rate_bps=rate, loss=0.0005),
             "b": WanLink(delay=0.015, rate_bps=rate / 2, loss=0.0005),
             "c": WanLink(delay=0.005, rate_bps=rate, loss=0.0)}
    rnd = random.Random(7)
    shared = rnd.randbytes(size)
    stores = {s: work / s for s in REAL_SITES}
    for p in stores.values():
        Client.init(p).close()
    probe_ids: dict[str, list[str]] = {}
    with Client(stores["a"]) as a:
        a.mkdir("/bank-a/in", parents=True)
        for i in range(3):
            a.write_bytes(f"/bank-a/in/a{i}", shared[i * size // 3:(i + 1) * size // 3] +
                          rnd.randbytes(size // 3))
        a.write_bytes("/bank-a/probe", rnd.randbytes(2 << 20))
    with Client(stores["b"]) as b:
        b.mkdir("/bank-b/in", parents=True)
        for i in range(3):               # half of b's bytes are chunks a holds too
            b.write_bytes(f"/bank-b/in/b{i}", shared[i * size // 3:(i + 1) * size // 3] +
                          rnd.randbytes(size // 6))
        b.write_bytes("/bank-b/probe", rnd.randbytes(2 << 20))
    for s, path in (("a", "/bank-a/probe"), ("b", "/bank-b/probe")):
        with Client(stores[s]) as c:
            probe_ids[s] = [r.id.hex() for r in c.manifest(path).chunks]
    secret = os.urandom(32).hex()
    with emulated_wan(links) as wan:
        procs = {}
        movers = {}
        for s in ("a", "b"):
            proc = wan.popen(s, [sys.executable, "-m", "gfs.cli", "mover", "serve", "--state",
                                 str(stores[s]), "--host", wan[s].address, "--port", "7070"],
                             env={**os.environ, "HUTONG_MOVER_SECRET": secret},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs[s] = proc
            wan.wait_tcp("c", wan[s].address, 7070)
            movers[s] = f"{wan[s].address}:7070"
        sites = work / "sites.toml"
        sites.write_text(
            f'secret = "{secret}"\n'
            f'[sites.a]\nregion = "r1"\nentity = "bank-a"\nstate = "{stores["a"]}"\n'
            f'mover = "{movers["a"]}"\n'
            f'[sites.b]\nregion = "r2"\nentity = "bank-b"\nstate = "{stores["b"]}"\n'
            f'mover = "{movers["b"]}"\n'
            f'[sites.c]\nregion = "r3"\nentity = "lab"\nstate = "{stores["c"]}"\n')
        (work / "probe.json").write_text(json.dumps(probe_ids))
        cfg = work / "driver.json"
        cfg.write_text(json.dumps({"sites": str(sites), "inputs": ["/bank-a/in/**",
                                                                   "/bank-b/in/**"],
                                   "probe_bytes": 2 << 20, "compute_mbps": 4000}))
        t0 = time.monotonic()
        r = wan.run("c", [sys.executable, "-m", "bench.schedule", "_driver", str(cfg)],
                    timeout=600, check=False, cwd=str(Path(__file__).parent.parent),
                    env={**os.environ, "HUTONG_PROBE_IDS": str(work / "probe.json"),
                         "PYTHONPATH": str(Path(__file__).parent.parent)})
        wall = time.monotonic() - t0
    if r.returncode != 0:
        print(f"real run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        return False, {"real": "failed"}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    est, meas = float(out["estimate"]), float(out["measured"])
    err = abs(est - meas) / meas
    print(f"real run: 3 sites in network namespaces (a: 80 Mbit/s 20 ms to core, "
          f"b: 40 Mbit/s 30 ms, c: 80 Mbit/s 10 ms; 0.05 % loss at a and b), "
          f"inputs {2 * size >> 20} MiB + {size * 5 // 6 >> 20} MiB, driver wall {wall:.1f} s")
    print("probed links into c: " + ", ".join(
        f"{lk['src']}: {lk['mbps']:.1f} Mbit/s rtt {lk['rtt_ms']:.1f} ms" for lk in out["links"])
        + f"; c receives {out['nic_mbps']:.1f} Mbit/s in total (probe {out['probe_seconds']:.1f}"
          " s)")
    print(out["explain"])
    print(table(["", "seconds", "bytes moved"],
                [["planner estimate", round(est, 2), out["est_bytes"]],
                 ["measured", round(meas, 2), out["moved"]]]))
    print(f"estimate error: {err * 100:.1f} %")
    if os.environ.get("HUTONG_BENCH_DEBUG"):
        t0 = out["t0"]
        for x in out["transfers"]:
            print("transfer", x["src"], x["dst"], x["bytes"], x["seconds"])
        for k, v in out["tasks"].items():
            print("task", k, [(a["site"], a.get("seconds")) for a in v])
    return err <= 0.25, {"estimate_s": round(est, 2), "measured_s": round(meas, 2),
                         "estimate_error": round(err, 3)}


# -- the real run with two drivers over one shared link ---------------------------------

TWO_RATES = {"a": 80e6, "b": 60e6, "c": 400e6}
"""Upload/download rate (bit/s) of each site's link in the two-driver run."""


def _wait_file(path: Path, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"two-driver run: {what} did not happen within {limit:.0f} s")
        time.sleep(0.02)


def _two_driver(cfg: str, role: str) -> int:
    """One of the two drivers, inside site c's namespace: load the probed links, warm
    the cluster, then (driver 1) start job 1 and signal once its lease is out, or
    (driver 2) wait for that signal and start job 2; print the plan, the record's
    re-estimates and the measured makespan."""
    from dataflow.ops import Dataflow

    spec = json.loads(Path(cfg).read_text())
    gates = Path(spec["gates"])
    home = spec["homes"][role]
    with Dataflow.open(spec["sites"], progress=False, home=home,
                       lease_seconds=spec["lease_seconds"]) as df:
        for lk in spec["links"]["links"]:
            df.topo.set_measured(Link(lk["src"], lk["dst"], lk["bandwidth"], lk["rtt"],
                                      source="measured", measured_at=time.time()))
        df.topo.sites["c"] = replace(df.topo.sites["c"],
                                     nic_mbps=spec["links"]["nic"] * 8 / 1e6)
        df.rt.dask("c").submit(int, 1).result()   # warm the cluster: not part of the job
        if role == "1":
            _wait_file(gates / "ready-2", "driver 2 getting ready")
        else:
            (gates / "ready-2").write_text("ready")
            _wait_file(gates / "started-1", "job 1 starting")
        t_wall = time.time()
        job = df.run(_real_job, spec["inputs"][role], at="c", job_id=f"job{role}",
                     wait=False, compute_mbps=spec["compute_mbps"])
        plan = job.plan
        if role == "1":
            deadline = time.monotonic() + 60
            while df.catalog.load_state("lease", job.id) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("job 1's lease was never published")
                time.sleep(0.01)
            (gates / "started-1").write_text("started")
        res = job.wait(600)
        end = time.time()
    # measured from the executor's start (the record's `created`): planning is not
    # part of what the estimate estimates
    start = float(res.record["created"])
    print(json.dumps({"estimate": plan.estimate.seconds, "measured": end - start,
                      "start": start, "end": end, "plan_seconds": start - t_wall,
                      "est_bytes": plan.estimate.wan_bytes, "moved": res.wan_bytes,
                      "flows": [(f.src, f.dst, f.bytes, round(f.seconds, 3), round(f.queue, 3))
                                for f in plan.estimate.flows],
                      "reestimates": res.record.get("reestimates", []),
                      "transfers": res.record["transfers"]}))
    return 0


def _two_probe(cfg: str) -> int:
    """Probe a -> c and b -> c with the mover (before the drivers start)."""
    from dataflow.ops import Dataflow

    spec = json.loads(Path(cfg).read_text())
    with Dataflow.open(spec["sites"], progress=False) as df:
        links = [_probe_remote(df, src, "c") for src in ("a", "b")]
        nic = _probe_nic(df, ["a", "b"], "c", max(lk.rtt for lk in links))
    print(json.dumps({"nic": nic, "links": [{"src": lk.src, "dst": lk.dst,
                                             "bandwidth": lk.bandwidth, "rtt": lk.rtt}
                                            for lk in links]}))
    return 0


def _two_data(work: Path, quick: bool) -> dict[str, list[str]]:
    """Stores a, b, c: job 1's files only at a; job 2's files at a, half of each file's
    bytes also at b (a second site of the same entity); probe files at a and b."""
    from gfs.client import Client

    size = (6 if quick else 16) << 20
    rnd = random.Random(5)
    for s in REAL_SITES:
        Client.init(work / s).close()
    probe: dict[str, list[str]] = {}
    with Client(work / "a") as a, Client(work / "b") as b:
        a.mkdir("/bank-a/one", parents=True)
        a.mkdir("/bank-a/two", parents=True)
        b.mkdir("/bank-a/mirror", parents=True)
        for i in range(3):
            a.write_bytes(f"/bank-a/one/x{i}", rnd.randbytes(size))
            both = rnd.randbytes(size // 2)
            a.write_bytes(f"/bank-a/two/y{i}", rnd.randbytes(size // 2) + both)
            b.write_bytes(f"/bank-a/mirror/y{i}", both)
        for name, c in (("a", a), ("b", b)):
            c.write_bytes(f"/bank-a/probe-{name}", rnd.randbytes(6 << 20))  # tbf bursts: not 2 MiB
            probe[name] = [r.id.hex() for r in c.manifest(f"/bank-a/probe-{name}").chunks]
    return probe


def _two_trial(wan: object, work: Path, mode: str, links: dict[str, Any], quick: bool
               ) -> list[dict[str, object]]:
    """Both drivers as processes in c's namespace; `mode` `leases` (one home store: each
    sees the other's leases) or `blind` (homes apart: neither does)."""
    from gfs.client import Client

    gates = work / f"gates-{mode}"
    gates.mkdir()
    shutil.rmtree(work / "c")                     # c starts empty in each trial
    Client.init(work / "c").close()
    cfg = work / f"two-{mode}.json"
    homes = {"1": "c", "2": "c" if mode == "leases" else "b"}
    cfg.write_text(json.dumps({"sites": str(work / "sites.toml"), "gates": str(gates),
                               "homes": homes, "links": links, "compute_mbps": 4000,
                               "lease_seconds": 3.0,
                               "inputs": {"1": "/bank-a/one/**", "2": "/bank-a/two/**"}}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    procs = [wan.popen("c", [sys.executable, "-m", "bench.schedule",  # type: ignore[attr-defined]
                             "_two_driver", str(cfg), role],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       cwd=str(Path(__file__).parent.parent), env=env)
             for role in ("1", "2")]
    out = []
    for role, proc in zip(("1", "2"), procs, strict=True):
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"two-driver run ({mode}): driver {role} failed "
                               f"(exit {proc.returncode}):\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def run_two(work: Path, quick: bool) -> tuple[bool, dict[str, object]] | None:
    """Two drivers (two processes) each running a real job at c over the shared link
    a -> c, with leases and blind (the baseline)."""
    from gfs.testing.wan import Link as WanLink
    from gfs.testing.wan import emulated_wan, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"two-driver run skipped: {reason}")
        return None
    work = work / "two"
    work.mkdir()
    probe = _two_data(work, quick)
    (work / "probe.json").write_text(json.dumps(probe))
    secret = os.urandom(32).hex()
    wl = {"a": WanLink(delay=0.010, rate_bps=TWO_RATES["a"], loss=0.0005),
          "b": WanLink(delay=0.015, rate_bps=TWO_RATES["b"], loss=0.0005),
          "c": WanLink(delay=0.005, rate_bps=TWO_RATES["c"], loss=0.0)}
    results: dict[str, list[dict[str, object]]] = {}
    with emulated_wan(wl) as wan:
        procs = []
        movers = {}
        try:
            for s in ("a", "b"):
                procs.append(wan.popen(s, [sys.executable, "-m", "gfs.cli", "mover", "serve",
                                           "--state", str(work / s), "--host", wan[s].address,
                                           "--port", "7070"],
                                       env={**os.environ, "HUTONG_MOVER_SECRET": secret},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                wan.wait_tcp("c", wan[s].address, 7070)
                movers[s] = f"{wan[s].address}:7070"
            (work / "sites.toml").write_text(
                f'secret = "{secret}"\n' + "".join(
                    f'[sites.{s}]\nregion = "r{i}"\nentity = "{ent}"\n'
                    f'state = "{work / s}"\n' + (f'mover = "{movers[s]}"\n' if s in movers
                                                  else 'slots = 2\n')
                    for i, (s, ent) in enumerate((("a", "bank-a"), ("b", "bank-a"),
                                                  ("c", "lab")), 1)))
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent),
                   "HUTONG_PROBE_IDS": str(work / "probe.json")}
            cfg = work / "probe-cfg.json"
            cfg.write_text(json.dumps({"sites": str(work / "sites.toml")}))
            r = wan.run("c", [sys.executable, "-m", "bench.schedule", "_two_probe", str(cfg)],
                        timeout=300, check=True, cwd=str(Path(__file__).parent.parent), env=env)
            links = json.loads(r.stdout.strip().splitlines()[-1])
            for mode in ("blind", "leases"):
                results[mode] = _two_trial(wan, work, mode, links, quick)
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
    return _two_report(results, links, quick)


def _two_error(job: dict[str, object]) -> tuple[float, float]:
    """(the job's latest estimate: re-estimated if it was, its error against measured)."""
    re = job["reestimates"]
    est = float(re[-1]["seconds"]) if re else float(job["estimate"])  # type: ignore[index]
    meas = float(job["measured"])  # type: ignore[arg-type]
    return est, abs(est - meas) / meas


def _two_report(results: dict[str, list[dict[str, object]]], links: dict[str, Any],
                quick: bool) -> tuple[bool, dict[str, object]]:
    mib = 1 << 20
    print(f"two-driver run (load average {os.getloadavg()[0]:.1f}): sites a (80 Mbit/s, "
          f"holds jobs 1 and 2), b (60 Mbit/s, holds half of job 2's bytes), c (compute, "
          f"400 Mbit/s) in network namespaces; both drivers at c, each runs one job at c; "
          f"job 2 starts once job 1's lease is out. Probed: " + ", ".join(
              f"{lk['src']}->c {float(lk['bandwidth']) * 8 / 1e6:.1f} Mbit/s"
              for lk in links["links"]) + f"; c receives {links['nic'] * 8 / 1e6:.1f} Mbit/s "
          f"in all")
    rows = []
    figures: dict[str, object] = {}
    met = True
    span: dict[str, float] = {}
    for mode, jobs in results.items():
        for i, j in enumerate(jobs, 1):
            _, err = _two_error(j)
            re = j["reestimates"]
            rows.append([mode, f"job {i}", round(float(j["estimate"]), 2),  # type: ignore[arg-type]
                         round(float(re[-1]["seconds"]), 2) if re else "-",  # type: ignore[index]
                         round(float(j["measured"]), 2), f"{err * 100:.0f} %",  # type: ignore[arg-type]
                         round(int(j["moved"]) / mib, 1),  # type: ignore[call-overload]
                         " ".join(f"{a}->{b}:{n / mib:.1f}MiB(q{q:.1f}s)"
                                  for a, b, n, _, q in j["flows"])])  # type: ignore[attr-defined]
            figures[f"{mode}_job{i}_error"] = round(err, 3)
            if i == 1:
                figures[f"{mode}_job1_reestimated"] = bool(re)
            else:
                figures[f"{mode}_job2_queue_s"] = max(
                    (float(f[4]) for f in j["flows"]), default=0.0)  # type: ignore[attr-defined]
            if mode == "leases":
                met = met and err <= 0.25
        span[mode] = max(float(j["end"]) for j in jobs) - min(  # type: ignore[arg-type]
            float(j["start"]) for j in jobs)  # type: ignore[arg-type]
        figures[f"{mode}_makespan_s"] = round(span[mode], 2)
        figures[f"{mode}_wan_mib"] = round(sum(int(j["moved"]) for j in jobs) / mib, 1)  # type: ignore[call-overload]
    print(table(["drivers", "job", "estimate s", "re-estimate s", "measured s", "error",
                 "moved MiB", "planned flows (queue)"], rows))
    print(f"two drivers: makespan blind {span['blind']:.2f} s, with leases "
          f"{span['leases']:.2f} s; WAN MiB blind {figures['blind_wan_mib']}, with leases "
          f"{figures['leases_wan_mib']}")
    return met, figures


# -- the real run in federation mode ----------------------------------------------------

FED_ENTITY = "lab"


def _fed_job(inputs: list[object]) -> dict[str, int]:
    """The federation run's task: read every input byte through the site APIs."""
    return {"bytes": sum(len(f.read()) for f in inputs)}  # type: ignore[attr-defined]


def _fed_probe(df: object, src: str, dst: str, ids: list[bytes]) -> Link:
    """Probe `src` -> `dst` the way jobs copy (`FederatedDataflow.probe_link`: mover pulls
    at `dst` of probe chunks of `src`, one chunk for the round trip, the rest for the
    bandwidth; the probe chunks stay at `dst`, not job data); the link is published to
    the registry."""
    return df.probe_link(src, dst, ids)  # type: ignore[attr-defined, no-any-return]


def _fed_probe_nic(df: object, probe: dict[str, list[bytes]], dst: str, rtt: float) -> float:
    """Pull fresh probe chunks from every source at once: what `dst` receives in total."""
    import threading

    from dataflow.federated import MOVER_STREAMS

    fc = df.rt.fc  # type: ignore[attr-defined]
    sessions = {src: fc.mover_session(src) for src in probe}
    got: list[int] = []

    def one(src: str) -> None:
        got.append(int(fc.mover_pull(dst, sessions[src], probe[src],
                                     streams=MOVER_STREAMS)["bytes"]))
    threads = [threading.Thread(target=one, args=(s,)) for s in probe]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    nic = sum(got) / max(secs - 3 * rtt, 1e-6)
    topo = df.topo  # type: ignore[attr-defined]
    topo.sites[dst] = replace(topo.sites[dst], nic_mbps=nic * 8 / 1e6)
    return nic


def _fed_probe_read(df: object, site: str, ids: list[tuple[bytes, int]]) -> float:
    """Bytes/s a task at `site` reads of chunks `site` holds (its API, as tasks read)."""
    from dataflow.federated import RemoteInputFile
    from gfs.meta import ChunkRef, Manifest

    m = Manifest(1, tuple(ChunkRef(c, n) for c, n in ids))
    creds = df.creds  # type: ignore[attr-defined]
    entity = creds.client(near=site).sites()[site]["entity"]  # chunks are read as its owner's
    f = RemoteInputFile(f"/{entity}/probe", m, site, (), creds)
    t0 = time.monotonic()
    n = len(f.read())
    return n / max(time.monotonic() - t0, 1e-6)


def _fed_driver(cfg: str) -> int:
    """Inside the compute site's namespace: probe, plan, run through the site APIs."""
    from dataflow.federated import FederatedDataflow, start_site_cluster
    from gfs.federation.auth import EntityKeys
    from gfs.federation.tls import trust_for

    spec = json.loads(Path(cfg).read_text())
    probe = {k: [bytes.fromhex(c) for c in v] for k, v in spec["probe"].items()}
    cluster = start_site_cluster("fc", slots=1)
    try:
        keys = EntityKeys.load(spec["keys"])
        topo = Topology.from_registry(spec["registry"], tls=trust_for(keys))
        with FederatedDataflow(spec["registry"], keys_dir=spec["keys"], topo=topo,
                               schedulers={"fc": str(cluster.scheduler_address)}) as df:
            t0 = time.monotonic()
            probed = [_fed_probe(df, src, "fc", probe[f"{src}-link"]) for src in ("fa", "fb")]
            nic = _fed_probe_nic(df, {s: probe[f"{s}-nic"] for s in ("fa", "fb")}, "fc",
                                 max(lk.rtt for lk in probed))
            read = _fed_probe_read(df, "fc", [(c, n) for c, n in zip(
                probe["fa-link"], spec["probe_lengths"]["fa-link"], strict=True)])
            probe_s = time.monotonic() - t0
            ds = df.dataset("inputs", "/lab/in/**")
            plan = df.plan(ds, at="fc", compute_mbps=read * 8 / 1e6)
            df.rt.dask("fc").submit(int, 1).result()     # warm the cluster: not the job
            t0 = time.monotonic()
            t_wall = time.time()
            res = df.rt.executor().run(_fed_job, plan)
            measured = time.monotonic() - t0
            done = max(a["finished"] for t in res.record["tasks"].values()
                       for a in t["attempts"] if "finished" in a)
            started = min(x["started"] for x in res.record["transfers"]) \
                if res.record["transfers"] else None
            auto = df.plan(ds)
            print(json.dumps({
                "estimate": plan.estimate.seconds, "measured": measured,
                "est_bytes": plan.estimate.wan_bytes, "moved": res.wan_bytes,
                "explain": plan.explain(), "auto": auto.explain(), "probe_seconds": probe_s,
                "nic_mbps": nic * 8 / 1e6, "read_mbps": read * 8 / 1e6,
                "links": [{"src": lk.src, "mbps": lk.bandwidth * 8 / 1e6,
                           "rtt_ms": lk.rtt * 1e3} for lk in probed],
                "vias": sorted({x["via"] for x in res.record["transfers"]}),
                "span": done - started if started else None,
                "tasks": {k: [(a["started"] - t_wall, a.get("finished", 0) - t_wall,
                               a.get("seconds")) for a in v["attempts"]]
                          for k, v in res.record["tasks"].items()},
                "transfers": res.record["transfers"]}))
    finally:
        cluster.close(timeout=10)
    return 0


def _seeded_site(fed: object, name: str, region: str, netns: str, files: dict[str, bytes],
                 *, primary: bool = False) -> None:
    """A site of FED_ENTITY whose store holds `files` before it starts (the primary's
    are the entity's files; another site's only give it their chunks)."""
    from gfs.client import Client
    from gfs.federation.auth import EntityKeys
    from gfs.federation.site import init_site

    f = fed  # the gfs.federation.testing.Federation
    first = next((s for s in f.sites.values() if s["entity"] == FED_ENTITY), None)  # type: ignore[attr-defined]
    state = f.root / name  # type: ignore[attr-defined]
    init_site(state, name=name, entity=FED_ENTITY, region=region,
              registry=f.registry_url, primary=primary,  # type: ignore[attr-defined]
              keys_from=first["state"] / "federation" if first else None,
              registry_ca=f.registry_ca)  # type: ignore[attr-defined]
    if first is None:  # the operator admits the entity (the registry's default admission)
        f.admit(FED_ENTITY, region, keys=EntityKeys.load(state / "federation"))  # type: ignore[attr-defined]
    with Client(state) as c:
        for path, data in files.items():
            c.mkdir(path.rsplit("/", 1)[0], parents=True, exist_ok=True)
            c.write_bytes(path, data)
    f.sites[name] = {"state": state, "entity": FED_ENTITY, "netns": netns,  # type: ignore[attr-defined]
                     "host": f.wan[netns].address, "mover": True}  # type: ignore[attr-defined]
    f.start(name)  # type: ignore[attr-defined]


def run_fed(work: Path, quick: bool) -> tuple[bool, dict[str, object]] | None:
    """Federation mode: registry and three sites of one entity as processes in network
    namespaces; the driver (and the compute site's Dask cluster) in the compute site's."""
    from gfs.client import Client
    from gfs.federation.testing import Federation
    from gfs.testing.wan import Link as WanLink
    from gfs.testing.wan import emulated_wan, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"federation run skipped: {reason}")
        return None
    size = (15 if quick else 24) << 20
    links = {"a": WanLink(delay=0.010, rate_bps=40e6, loss=0.0005),
             "b": WanLink(delay=0.015, rate_bps=80e6, loss=0.0005),
             "c": WanLink(delay=0.005, rate_bps=80e6, loss=0.0)}
    rnd = random.Random(11)
    shared = rnd.randbytes(size // 2)   # half of each file also in a file of the other set
    only_a = {f"/lab/in/a{i}": shared[i * size // 6:(i + 1) * size // 6] + rnd.randbytes(size // 6)
              for i in range(3)}
    at_b = {f"/lab/in/b{i}": shared[i * size // 6:(i + 1) * size // 6] + rnd.randbytes(size // 6)
            for i in range(3)}
    probes = {f"/lab/probe/{k}": rnd.randbytes(2 << 20) for k in ("a-link", "a-nic")}
    b_probes = {f"/lab/probe/{k}": rnd.randbytes(2 << 20) for k in ("b-link", "b-nic")}
    with emulated_wan(links) as wan, Federation(work / "fed", wan=wan, heartbeat=0.5,
                                                ttl=10.0) as fed:
        fed.registry(netns="c")
        _seeded_site(fed, "fa", "r1", "a", {**only_a, **at_b, **probes}, primary=True)
        _seeded_site(fed, "fb", "r2", "b", {**at_b, **b_probes})
        fed.site("fc", FED_ENTITY, "r3", netns="c")
        ids: dict[str, list[str]] = {}
        lengths: dict[str, list[int]] = {}
        for site, names in (("fa", ("a-link", "a-nic")), ("fb", ("b-link", "b-nic"))):
            with Client(fed.sites[site]["state"]) as c:
                for k in names:
                    refs = c.manifest(f"/lab/probe/{k}").chunks
                    key = f"f{k}"
                    ids[key] = [r.id.hex() for r in refs]
                    lengths[key] = [r.length for r in refs]
        cfg = work / "fed-driver.json"
        cfg.write_text(json.dumps({"registry": fed.registry_url,
                                   "keys": str(fed.sites["fa"]["state"] / "federation"),
                                   "probe": ids, "probe_lengths": lengths}))
        t0 = time.monotonic()
        r = wan.run("c", [sys.executable, "-m", "bench.schedule", "_fed_driver", str(cfg)],
                    timeout=600, check=False, cwd=str(Path(__file__).parent.parent),
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        wall = time.monotonic() - t0
    if r.returncode != 0:
        print(f"federation run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        return False, {"fed": "failed"}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    est, meas = float(out["estimate"]), float(out["measured"])
    err = abs(est - meas) / meas
    print(f"federation run: registry and 3 sites of one entity as processes in network "
          f"namespaces (fa: primary, 40 Mbit/s, 20 ms to core; fb: holds the b files, "
          f"80 Mbit/s, 30 ms; fc: compute, 80 Mbit/s, 10 ms; 0.05 % loss at fa and fb), "
          f"inputs 3 a files + 3 b files of {size // 3 >> 20} MiB (each pair shares half), "
          f"driver wall {wall:.1f} s")
    print("probed links into fc (mover pulls): " + ", ".join(
        f"{lk['src']}: {lk['mbps']:.1f} Mbit/s rtt {lk['rtt_ms']:.1f} ms" for lk in out["links"])
        + f"; fc receives {out['nic_mbps']:.1f} Mbit/s in total; a task reads "
          f"{out['read_mbps']:.0f} Mbit/s from fc's API (probe {out['probe_seconds']:.1f} s)")
    print(out["explain"])
    print(table(["", "seconds", "bytes moved"],
                [["planner estimate", round(est, 2), out["est_bytes"]],
                 ["measured (executor wall)", round(meas, 2), out["moved"]]]))
    print(f"transfers via {', '.join(out['vias']) or 'nothing'}; federation estimate error: "
          f"{err * 100:.1f} %")
    if os.environ.get("HUTONG_BENCH_DEBUG"):
        print("span first transfer -> last task", out["span"])
        for x in out["transfers"]:
            print("transfer", x["src"], x["dst"], x["bytes"], x["seconds"], x["via"])
        for k, v in out["tasks"].items():
            print("task", k, v)
        print(out["auto"])
    return err <= 0.25, {"fed_estimate_s": round(est, 2), "fed_measured_s": round(meas, 2),
                         "fed_estimate_error": round(err, 3)}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_driver":
        return _driver(argv[1])
    if argv and argv[0] == "_fed_driver":
        return _fed_driver(argv[1])
    if argv and argv[0] == "_two_driver":
        return _two_driver(argv[1], argv[2])
    if argv and argv[0] == "_two_probe":
        return _two_probe(argv[1])
    p = argparse.ArgumentParser(prog="python -m bench schedule", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smaller trace; of the real runs only the (smaller) two-driver one")
    p.add_argument("--no-real", action="store_true", help="simulation only")
    p.add_argument("--only-two", action="store_true",
                   help="only the real two-driver run (no simulation, no one-driver runs)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    args = p.parse_args(argv)
    print("machine: shared 2-core VM; simulation is deterministic for a seed")
    met, figures = (True, {}) if args.only_two else run_simulation(args.quick, args.seed)
    if not args.no_real:
        work = Path(tempfile.mkdtemp(prefix="hutong-bench-schedule-", dir=args.work))
        try:
            # --quick keeps the run under a minute: the two-driver run is the real part
            one = args.only_two or args.quick
            real = None if one else run_real(work, args.quick)
            fed = None if one else run_fed(work, args.quick)
            two = run_two(work, args.quick)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for part in (real, fed, two):
            if part is not None:
                met = met and part[0]
                figures.update(part[1])
    print(headline("schedule", met, **figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
