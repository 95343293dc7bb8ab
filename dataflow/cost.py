"""The dedup-aware cost model (docs/dataflow.md, "Cost model").

A *placement* maps each task to a site. For a destination site d:

* missing(d) = (union of the chunks of d's tasks) - (chunks d holds): shared
  chunks count once, chunks d holds count zero. Each missing chunk comes from
  the holder with the fastest link to d (cheaper price breaks ties), unless
  other jobs' queues make another holder sooner (queue, below).
* flow(s,d) = rtt(s,d) * (2 + ceil(n(s,d) / 4096)) + max(bytes(s,d) /
  bandwidth(s,d), out(s) / nic(s)): sources are fetched in parallel, but the
  flows leaving one site share its network interface (`Site.nic`, 0: no cap);
  transfer(d) = max(max over s of flow(s,d), in(d) / nic(d)).
* queue(s,d): transfers of jobs already started (`Topology.reserve`, and other
  drivers' leases) share the link and the source's and destination's NICs
  fairly with a new flow of B bytes: it is held up by each other job's
  pending bytes up to B, at the link's (or NIC's) rate: flow(s,d) +=
  queue(s,d), and the destination NIC term becomes queue_in(d) + in(d) / nic(d).
  A busy link is avoided by placing tasks elsewhere or by taking a chunk from
  another holder: the source of a chunk is the holder with the least
  queue(s,d) + max(fetch(d), 16 MiB) / bandwidth(s,d), fetch(d) being all d
  fetches (without queues: the fastest link). A job's own reservation is no
  queue for it (`job=`): the executor passes its job id and so picks the
  sources the plan picked.
* compute(d) = sum of task input bytes / compute rate, spread over d's slots
  but never shorter than its longest task; tasks whose inputs are all local
  start at once, the others after the prefetch:
  time(d) = backlog(d) + max(transfer(d), local(d)) + remote(d), backlog(d)
  being the seconds d's slots stay busy with the tasks of jobs started
  earlier (`Topology.compute_backlog`, which `Dataflow` passes).
* makespan = max over used d of time(d).
* money = sum bytes(s,d) * price(s,d) / 1e9 + compute seconds * price per core
  hour / 3600 + bytes read from cold tiers * COLD_READ_PRICE / 1e9.

Constraints: the data of entity O may be processed at site S only if S belongs
to O or O granted S's entity read on the path, and S matches O's owner
expression; a job may forbid sites or restrict them with its own expression.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from dataflow.datasets import Dataset, FileEntry, glob_regex
from dataflow.errors import PlanError
from dataflow.sites import Link, Topology

#: Price per GB read from a cold-tier copy (retrieval), added to the money estimate.
COLD_READ_PRICE = 0.01
#: Least bytes a chunk's source is judged by (queue + these bytes at the link's rate).
SOURCE_REF_BYTES = 16 << 20


@dataclass(frozen=True)
class Task:
    """A unit of work: a function over some files, placed at one site."""

    id: str
    files: tuple[FileEntry, ...]

    @cached_property
    def chunks(self) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for f in self.files:
            for r in f.manifest.chunks:
                out[r.id] = r.length
        return out

    @cached_property
    def input_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def owners(self) -> frozenset[str]:
        return frozenset(f.owner for f in self.files)


@dataclass(frozen=True)
class Flow:
    """Bytes one placement moves from `src` to `dst`."""

    src: str
    dst: str
    chunks: int
    bytes: int
    seconds: float
    money: float
    queue: float = 0.0
    """Seconds of `seconds` spent waiting for transfers of jobs started earlier."""


@dataclass
class Estimate:
    """What a placement costs: makespan, WAN bytes, money, and the detail behind them."""

    seconds: float
    wan_bytes: int
    money: float
    flows: list[Flow] = field(default_factory=list)
    site_seconds: dict[str, float] = field(default_factory=dict)
    logical_bytes: int = 0
    """Bytes a file-level mover (no dedup) would send for the same placement."""
    backlog: dict[str, float] = field(default_factory=dict)
    """Seconds each used site's slots stay busy with earlier jobs' tasks first."""

    @property
    def queue_seconds(self) -> float:
        """The longest wait of a flow behind transfers of earlier jobs (0: links free)."""
        return max((f.queue for f in self.flows), default=0.0)

    def to_dict(self) -> dict[str, object]:
        return {"seconds": round(self.seconds, 4), "wan_bytes": self.wan_bytes,
                "money": round(self.money, 6), "logical_bytes": self.logical_bytes,
                "site_seconds": {k: round(v, 4) for k, v in self.site_seconds.items()},
                "compute_queue": {k: round(v, 4) for k, v in self.backlog.items()},
                "flows": [{"src": f.src, "dst": f.dst, "chunks": f.chunks, "bytes": f.bytes,
                           "seconds": round(f.seconds, 4), "queue": round(f.queue, 4)}
                          for f in self.flows]}


@dataclass(frozen=True)
class Constraints:
    """Where a job may run: owner rules of the topology plus the job's own limits."""

    forbid: frozenset[str] = frozenset()
    only: str = ""
    """A site expression the job restricts itself to (empty: any)."""
    runner: str | None = None
    """The entity running the job (None: the data's owners themselves)."""


class CostModel:
    """Estimates placements of tasks over a topology, given where chunks live."""

    def __init__(self, topo: Topology, locations: Mapping[bytes, Mapping[str, str]],
                 constraints: Constraints | None = None, *,
                 compute_rate: float | None = None,
                 backlog: Mapping[str, float] | None = None,
                 startup: float = 0.0, job: str | None = None) -> None:
        """`backlog`: seconds of started jobs' tasks queued per site
        (`Topology.compute_backlog`); `job`: the id of the job this model serves,
        whose own link reservations do not count as queue ahead of it."""
        self.topo = topo
        self.job = job
        self.locations = locations
        self.constraints = constraints or Constraints()
        self.compute_rate = compute_rate
        self.backlog = dict(backlog or {})
        self.startup = startup
        self._only = set(s.name for s in topo.matching(self.constraints.only)) \
            if self.constraints.only else None
        self._owner_ok: dict[str, set[str]] = {
            ent: {s.name for s in topo.matching(where)} for ent, where in topo.owners.items()}
        self._links: dict[tuple[str, str], Link] = {}
        self._queues: dict[tuple[str, str, float], float] = {}
        self._in_queues: dict[tuple[str, float], float] = {}

    # -- constraints ----------------------------------------------------------------
    def refusal(self, task: Task, site: str) -> str | None:
        """Why `task` may not run at `site`, or None when it may."""
        s = self.topo.site(site)
        if s.status != "up":
            return f"site {site} is {s.status}"
        if site in self.constraints.forbid:
            return f"site {site} is forbidden by the job"
        if self._only is not None and site not in self._only:
            return f"site {site} does not match the job's expression {self.constraints.only!r}"
        for f in task.files:
            owner = f.owner
            allowed = self._owner_ok.get(owner)
            if allowed is not None and site not in allowed:
                return (f"owner {owner} allows its data only at "
                        f"{self.topo.owners[owner]!r} ({f.path})")
            if s.entity != owner and not self._granted(owner, s.entity, f.path):
                return f"{owner} has granted {s.entity} no read of {f.path}"
        return None

    def _granted(self, owner: str, to: str, path: str) -> bool:
        if owner not in self.topo.grants and owner not in self.topo.owners:
            return True  # an owner with no policy on record: no constraint known
        return any(g == to and glob_regex(pat).match(path)
                   for pat, g in self.topo.grants.get(owner, []))

    def allowed_sites(self, task: Task) -> list[str]:
        """Up sites where `task` may run."""
        return [s.name for s in self.topo.up() if self.refusal(task, s.name) is None]

    # -- estimates --------------------------------------------------------------------
    def link(self, src: str, dst: str) -> Link:
        key = (src, dst)
        lk = self._links.get(key)
        if lk is None:
            lk = self._links[key] = self.topo.link(src, dst)
        return lk

    def queue(self, src: str, dst: str, nbytes: float) -> float:
        """Seconds started jobs' transfers hold up a new transfer of `nbytes` from `src`
        to `dst`, the link and NICs shared fairly (`Topology.queue_seconds`, read once
        per model and size)."""
        key = (src, dst, nbytes)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = self.topo.queue_seconds(src, dst, exclude=self.job,
                                                            nbytes=nbytes)
        return q

    def _in_queue(self, dst: str, nbytes: float) -> float:
        q = self._in_queues.get((dst, nbytes))
        if q is None:
            q = self._in_queues[(dst, nbytes)] = self.topo.inbound_queue_seconds(
                dst, exclude=self.job, nbytes=nbytes)
        return q

    def missing_bytes(self, chunks: Mapping[bytes, int], dst: str) -> int:
        """Bytes of `chunks` that `dst` does not hold (what it has to fetch)."""
        return sum(n for c, n in chunks.items() if dst not in self.locations.get(c, ()))

    def source(self, cid: bytes, dst: str, fetch_bytes: int = 0) -> str | None:
        """The holder of `cid` from which `dst` would have it soonest (None: no up
        holder): the least queue(s, dst) + max(`fetch_bytes`, SOURCE_REF_BYTES) /
        bandwidth(s, dst), then the faster link, the cheaper, the name. Without
        queues this is the fastest link. `fetch_bytes` is all `dst` has to fetch
        (`missing_bytes`), so plan and executor weigh a queue the same way."""
        ref = max(fetch_bytes, SOURCE_REF_BYTES)
        best: tuple[float, float, float, str] | None = None
        for s in self.locations.get(cid, {}):
            if s == dst:
                return s
            if self.topo.sites.get(s) is None or self.topo.sites[s].status != "up":
                continue
            lk = self.link(s, dst)
            key = (round(self.queue(s, dst, ref) + ref / lk.bandwidth, 9), -lk.bandwidth,
                   lk.price_per_gb, s)
            if best is None or key < best:
                best = key
        return best[3] if best else None

    def by_source(self, dst: str, missing: Iterable[bytes], lengths: Mapping[bytes, int]
                  ) -> tuple[dict[str, list[bytes]], list[bytes]]:
        """The chunks `dst` lacks (`missing`) grouped by the holder each is fetched from
        (`source`, weighing all of them), and those no up site holds."""
        missing = list(missing)
        fetch = sum(lengths[c] for c in missing)
        by_src: dict[str, list[bytes]] = {}
        unheld: list[bytes] = []
        for c in missing:
            src = self.source(c, dst, fetch)
            if src is None:
                unheld.append(c)
            else:
                by_src.setdefault(src, []).append(c)
        return by_src, unheld

    def task_seconds(self, task: Task, site: str) -> float:
        rate = self.compute_rate or self.topo.site(site).compute_rate
        return task.input_bytes / rate

    def estimate(self, placement: Mapping[str, str], tasks: Sequence[Task]) -> Estimate:
        """Cost of running each task at `placement[task.id]`.

        Raises PlanError naming the chunks no up site holds and the refusals of
        the constraints.
        """
        by_site: dict[str, list[Task]] = {}
        for t in tasks:
            site = placement[t.id]
            why = self.refusal(t, site)
            if why is not None:
                raise PlanError(f"task {t.id} at {site}: {why}")
            by_site.setdefault(site, []).append(t)
        flows: list[Flow] = []
        site_seconds: dict[str, float] = {}
        wan = 0
        money = 0.0
        logical = 0
        per_pair: dict[tuple[str, str], list[int]] = {}
        compute: dict[str, tuple[float, float, float, float]] = {}
        for d, ts in sorted(by_site.items()):
            need: dict[bytes, int] = {}
            for t in ts:
                need.update(t.chunks)
            cold = 0
            unavailable: list[bytes] = []
            missing_ids: set[bytes] = set()
            fetch = self.missing_bytes(need, d)
            for cid, n in need.items():
                src = self.source(cid, d, fetch)
                if src is None:
                    unavailable.append(cid)
                    continue
                if src == d:
                    continue
                missing_ids.add(cid)
                acc = per_pair.setdefault((src, d), [0, 0])
                acc[0] += 1
                acc[1] += n
                if self.locations[cid].get(src) == "cold":
                    cold += n
            if unavailable:
                raise PlanError(f"{len(unavailable)} chunk(s) of the inputs are held by no up "
                                f"site (first {unavailable[0].hex()}); restore the lost site "
                                f"or re-create the files")
            money += cold * COLD_READ_PRICE / 1e9
            local = remote = longest_local = longest_remote = 0.0
            for t in ts:
                secs = self.task_seconds(t, d)
                if any(c in missing_ids for c in t.chunks):
                    remote += secs
                    longest_remote = max(longest_remote, secs)
                    logical += sum(f.size for f in t.files if d not in f.sites)
                else:
                    local += secs
                    longest_local = max(longest_local, secs)
            compute[d] = (local, remote, longest_local, longest_remote)
        # Flows out of one site share its NIC, flows into one site share its NIC.
        out_bytes: dict[str, int] = {}
        in_bytes: dict[str, int] = {}
        for (src, d), (_, nbytes) in per_pair.items():
            out_bytes[src] = out_bytes.get(src, 0) + nbytes
            in_bytes[d] = in_bytes.get(d, 0) + nbytes
        transfer: dict[str, float] = {}
        for (src, d), (nchunks, nbytes) in sorted(per_pair.items()):
            lk = self.link(src, d)
            secs = lk.transfer_seconds(nbytes, nchunks)
            nic = self.topo.sites[src].nic
            if nic > 0:
                secs = max(secs, secs - nbytes / lk.bandwidth + out_bytes[src] / nic)
            q = self.queue(src, d, nbytes)
            secs += q
            m = nbytes * lk.price_per_gb / 1e9
            flows.append(Flow(src, d, nchunks, nbytes, secs, m, q))
            transfer[d] = max(transfer.get(d, 0.0), secs)
            wan += nbytes
            money += m
        for d, (local, remote, long_l, long_r) in compute.items():
            info = self.topo.site(d)
            xfer = transfer.get(d, 0.0)
            if info.nic > 0 and in_bytes.get(d, 0):
                xfer = max(xfer, self._in_queue(d, in_bytes[d]) + in_bytes[d] / info.nic)
            money += (local + remote) * info.price_core_hour / 3600
            slots = max(1, info.slots)
            site_seconds[d] = self.backlog.get(d, 0.0) + max(xfer, local / slots, long_l) + \
                max(remote / slots, long_r)
        seconds = self.startup + max(site_seconds.values(), default=0.0)
        queued = {d: self.backlog[d] for d in sorted(compute) if self.backlog.get(d, 0.0) > 0}
        return Estimate(seconds, wan, money, flows, site_seconds, logical, queued)


def reshared_seconds(topo: Topology, job: str, est: Estimate, elapsed: float) -> float:
    """Job `job`'s whole makespan re-estimated `elapsed` seconds after it started, its
    flows sharing their links and NICs fairly with the loads `topo` knows now (other
    drivers' leases included): a flow has moved at its planned rate until now, or
    what the topology saw leave if that is less or the flow is overdue; the rest
    shares the link from now on; a site's compute after its transfer is as planned;
    sites without flows left keep their plan.
    """
    left = {(a, b): n for a, b, _, n in topo.job_flows(job)}
    after: dict[str, float] = {}
    for f in est.flows:
        after[f.dst] = max(after.get(f.dst, 0.0), f.seconds)
    remaining = 0.0
    for d, planned in est.site_seconds.items():
        xfer = 0.0
        for f in est.flows:
            if f.dst != d or (f.src, d) not in left:
                continue
            nbytes = left[(f.src, d)]
            if elapsed < f.seconds:
                nbytes = min(nbytes, int(f.bytes * (1 - elapsed / f.seconds)))
            xfer = max(xfer, nbytes / topo.link(f.src, d).bandwidth +
                       topo.queue_seconds(f.src, d, exclude=job, nbytes=nbytes))
        tail = max(0.0, planned - after.get(d, 0.0))
        remaining = max(remaining, xfer + tail if xfer > 0 else max(0.0, planned - elapsed))
    return elapsed + remaining


def tasks_of(datasets: Iterable[Dataset], *, per_task: int = 1) -> list[Task]:
    """One task per `per_task` files of the datasets' files, in path order."""
    files: dict[str, FileEntry] = {}
    for d in datasets:
        for f in d.files:
            files.setdefault(f.path, f)
    ordered = [files[p] for p in sorted(files)]
    n = max(1, per_task)
    return [Task(f"t{i // n:04d}", tuple(ordered[i:i + n])) for i in range(0, len(ordered), n)]


def total_seconds(est: Estimate) -> float:
    """The makespan, rounded up to a millisecond (for stable comparisons)."""
    return math.ceil(est.seconds * 1000) / 1000
