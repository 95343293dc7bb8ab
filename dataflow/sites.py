"""Sites and the links between them (docs/dataflow.md, "Sites and links").

    topo = Topology.from_config("sites.toml")       # embedded: one store per site
    topo.link("a", "b").bandwidth                    # bytes/s, measured or configured
    probe_link(topo, "a", "b")                       # a mover transfer refreshes it

A link's figures come, in this order, from a fresh measurement (a probe or a
real transfer seen by the executor), a configured value (the sites file or the
registry's `/v1/links`), the configured defaults for a pair inside one region
or across regions. The link from a site to itself is free and instant.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StrictStr, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from dataflow.errors import ConfigError, SchemaError, UnknownSiteError
from dataflow.records import to_json
from gfs.federation import expr
from gfs.schema import Schema, load, validate

#: A measurement older than this (seconds) is stale: configured values are used again.
FRESH_SECONDS = 600.0
#: Weight of a new observation in the running estimate of a measured link.
EWMA = 0.5
#: Mover protocol: ids per WANT/OFFER batch (docs/format.md, "Mover protocol").
BATCH_IDS = 4096
#: The executor fetches a source's chunks in task order, in up to PIPELINE_MAX
#: groups of at least PIPELINE_BYTES, so the first tasks start before the last bytes.
PIPELINE_BYTES = 16 << 20
PIPELINE_MAX = 4


def pipeline_groups(nbytes: int) -> int:
    """How many sequential fetches the executor makes for `nbytes` from one source."""
    return max(1, min(PIPELINE_MAX, nbytes // PIPELINE_BYTES))


@dataclass(frozen=True)
class Link:
    """One direction between two sites: bandwidth (bytes/s), round trip (s), price per GB."""

    src: str
    dst: str
    bandwidth: float
    rtt: float
    price_per_gb: float = 0.0
    source: str = "configured"
    """`local`, `measured`, `configured` or `default`."""
    measured_at: float = 0.0

    def transfer_seconds(self, nbytes: int, chunks: int) -> float:
        """Time to move `chunks` chunks of `nbytes` bytes the way the executor does:
        per fetch a handshake (2 round trips), then one round trip per batch of ids."""
        if nbytes <= 0 and chunks <= 0:
            return 0.0
        if self.src == self.dst:
            return 0.0
        groups = pipeline_groups(nbytes)
        rounds = 2 * groups + max(groups, math.ceil(max(chunks, 1) / BATCH_IDS))
        return self.rtt * rounds + nbytes / self.bandwidth


@dataclass(frozen=True)
class LinkDefaults:
    """Figures for pairs without a measured or configured link."""

    intra_bandwidth: float = 125e6
    intra_rtt: float = 0.002
    intra_price: float = 0.0
    inter_bandwidth: float = 12.5e6
    inter_rtt: float = 0.040
    inter_price: float = 0.05


def _name(v: str) -> str:
    if not v or len(v) > 64 or not v.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"must be letters, digits, '-' or '_', got {v!r}")
    return v


def _hex(text: str) -> str:
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ValueError("must be hex") from None
    return text


Name = Annotated[str, Field(strict=True), AfterValidator(_name)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
_LD = LinkDefaults()


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Site:
    """A place with storage and compute, run by one entity in one region; also one
    `[sites.NAME]` table of a sites file as written (its name is the table's key, its
    entity defaults to its name, `Topology.from_config`)."""

    name: StrictStr = ""
    region: Name = "default"
    entity: StrictStr = ""
    slots: Annotated[int, Field(ge=1, le=4096, strict=True)] = 1
    """Dask worker threads this site offers to jobs."""
    state: StrictStr | None = None
    """Embedded mode: the site's store (state directory)."""
    mover: StrictStr | None = None
    """`host:port` of a running mover server for the site's store (else one is started)."""
    scheduler: StrictStr | None = None
    """Address of the site's Dask scheduler (else a LocalCluster is started)."""
    compute_mbps: Positive = 1600
    """Input one slot processes per second, Mbit/s (a job may override it)."""
    price_core_hour: NonNegative = 0.0
    tier: StrictStr = "warm"
    status: Literal["up", "down"] = "up"
    nic_mbps: NonNegative = 0
    """Mbit/s all of the site's transfers share, each way (0: links are independent)."""

    @property
    def compute_rate(self) -> float:
        """Bytes of input one slot processes per second."""
        return self.compute_mbps * 1e6 / 8

    @property
    def nic(self) -> float:
        """Bytes/s all of the site's transfers share, each way (0: no cap)."""
        return self.nic_mbps * 1e6 / 8

    def attrs(self) -> dict[str, object]:
        """Attributes for site expressions (`region=cn-west & entity=bank-a`)."""
        return {"site": self.name, "region": self.region, "entity": self.entity,
                "status": self.status, "tier": self.tier, "slots": self.slots}


class DefaultsSpec(Schema):
    """`[defaults]` of a sites file: figures of pairs with no link of their own."""

    intra_mbps: Positive = _LD.intra_bandwidth * 8 / 1e6
    intra_rtt_ms: NonNegative = _LD.intra_rtt * 1e3
    intra_price_per_gb: NonNegative = _LD.intra_price
    inter_mbps: Positive = _LD.inter_bandwidth * 8 / 1e6
    inter_rtt_ms: NonNegative = _LD.inter_rtt * 1e3
    inter_price_per_gb: NonNegative = _LD.inter_price


class LinkSpec(Schema):
    """One `[[links]]` entry of a sites file."""

    a: str
    b: str
    mbps: Positive
    rtt_ms: NonNegative = 0.0
    price_per_gb: NonNegative = 0.0
    symmetric: bool = True


class GrantSpec(Schema):
    """A read grant of an owner: `{pattern = "/ENTITY/...", to = "entity"}`."""

    pattern: str
    to: str


class OwnerSpec(Schema):
    """`[owners.ENTITY]` of a sites file."""

    allow: Annotated[str, AfterValidator(expr.checked)] = ""
    grants: list[GrantSpec] = Field(default_factory=list)


def _some_sites(sites: dict[str, Site]) -> dict[str, Site]:
    if not sites:
        raise ValueError("[sites.NAME] tables are required (at least one)")
    return sites


class SitesSpec(Schema):
    """A sites file as written (docs/dataflow.md, "Sites and links")."""

    sites: Annotated[dict[Name, Site], AfterValidator(_some_sites)] = Field(
        default_factory=dict, validate_default=True)
    links: list[LinkSpec] = Field(default_factory=list)
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    owners: dict[str, OwnerSpec] = Field(default_factory=dict)
    secret: Annotated[str, AfterValidator(_hex)] = ""

    @model_validator(mode="after")
    def _links_join_known_sites(self) -> SitesSpec:
        for i, lk in enumerate(self.links):
            for end in (lk.a, lk.b):
                if end not in self.sites:
                    raise ValueError(f"links[{i}]: unknown site {end!r}; define it under "
                                     f"[sites]")
            if lk.a == lk.b:
                raise ValueError(f"links[{i}]: a link joins two different sites")
        return self


@dataclass
class Topology:
    """Sites by name and the link matrix between them."""

    sites: dict[str, Site]
    configured: dict[tuple[str, str], Link] = field(default_factory=dict)
    measured: dict[tuple[str, str], Link] = field(default_factory=dict)
    defaults: LinkDefaults = field(default_factory=LinkDefaults)
    owners: dict[str, str] = field(default_factory=dict)
    """Entity -> site expression where that entity's data may be processed or copied."""
    grants: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Owner entity -> (path pattern, grantee entity) read grants."""
    secret: bytes = b""
    """Mover session secret for sites whose mover runs as its own process."""
    fresh: float = FRESH_SECONDS
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _reserved: dict[tuple[str, str], dict[str, list[int]]] = field(
        default_factory=dict, repr=False, compare=False)
    """Link -> job -> [chunks, bytes] its started transfers plan to move over the link."""
    _drained: dict[tuple[str, str], int] = field(default_factory=dict, repr=False,
                                                 compare=False)
    """Link -> chunks observed moving over it while it had reservations (not settled)."""
    _compute: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict,
                                                              repr=False, compare=False)
    """Job -> task -> (site, planned compute seconds) of its tasks not finished yet."""
    _external: dict[str, tuple[list[tuple[str, str, int, int]], list[tuple[str, str, float]]]
                    ] = field(default_factory=dict, repr=False, compare=False)
    """Job of another driver -> (flows: src, dst, chunks, bytes still to move; compute:
    task, site, seconds still to run), from its lease (`dataflow.leases`)."""

    # -- lookup -----------------------------------------------------------------------
    def site(self, name: str) -> Site:
        """Site `name` (UnknownSiteError names the known ones)."""
        try:
            return self.sites[name]
        except KeyError:
            raise UnknownSiteError(f"unknown site {name!r}; known sites: "
                                   f"{', '.join(sorted(self.sites)) or 'none'}") from None

    def up(self) -> list[Site]:
        """Sites whose status is `up`, by name."""
        return [s for _, s in sorted(self.sites.items()) if s.status == "up"]

    def matching(self, where: str) -> list[Site]:
        """Up sites matching the attribute expression `where` (empty: all)."""
        try:
            pred = expr.parse(where)
        except expr.ExpressionError as e:
            raise ConfigError(f"site expression {where!r}: {e}") from None
        return [s for s in self.up() if pred(s.attrs())]

    def link(self, src: str, dst: str) -> Link:
        """The best current figures for moving bytes from `src` to `dst`."""
        a, b = self.site(src), self.site(dst)
        if src == dst:
            return Link(src, dst, math.inf, 0.0, 0.0, "local")
        with self._lock:
            m = self.measured.get((src, dst))
        if m is not None and time.time() - m.measured_at <= self.fresh:
            return m
        c = self.configured.get((src, dst))
        if c is not None:
            return c
        d = self.defaults
        if a.region == b.region:
            return Link(src, dst, d.intra_bandwidth, d.intra_rtt, d.intra_price, "default")
        return Link(src, dst, d.inter_bandwidth, d.inter_rtt, d.inter_price, "default")

    # -- link backlog (transfers of started jobs) -------------------------------------------
    def reserve(self, job: str, flows: Iterable[tuple[str, str, int, int]]) -> None:
        """Record that `job` has started and will move (src, dst, chunks, bytes) per flow:
        until it is released, the cost model makes new transfers on those links (and
        NICs) queue behind these bytes."""
        with self._lock:
            for src, dst, chunks, nbytes in flows:
                if src == dst or (chunks <= 0 and nbytes <= 0):
                    continue
                acc = self._reserved.setdefault((src, dst), {}).setdefault(job, [0, 0])
                acc[0] += max(0, chunks)
                acc[1] += max(0, nbytes)

    def release(self, job: str, moved: Mapping[tuple[str, str], int] | None = None) -> None:
        """`job` ended: drop its reservations. `moved` gives the chunks its own transfers
        moved per link (they were counted by `observe` and are settled here)."""
        moved = moved or {}
        with self._lock:
            for key in set(self._reserved) | set(moved):
                per = self._reserved.get(key)
                if per is None:
                    continue
                per.pop(job, None)
                if not per:
                    del self._reserved[key]
                    self._drained.pop(key, None)
                elif key in self._drained:
                    self._drained[key] = max(0, self._drained[key] - moved.get(key, 0))

    def _drain(self, src: str, dst: str, chunks: int) -> None:
        with self._lock:
            if (src, dst) in self._reserved:
                self._drained[(src, dst)] = self._drained.get((src, dst), 0) + max(0, chunks)

    def set_external(self, leases: Mapping[str, tuple[Iterable[tuple[str, str, int, int]],
                                                      Iterable[tuple[str, str, float]]]]
                     ) -> None:
        """Replace the load of other drivers' running jobs (job -> (flows, compute), what
        each has still to move and to compute): it counts in every queue and backlog
        like this driver's own reservations."""
        with self._lock:
            self._external = {j: ([(a, b, int(c), int(n)) for a, b, c, n in fl if a != b],
                                  [(t, s, float(x)) for t, s, x in cp])
                              for j, (fl, cp) in leases.items()}

    def _by_job_locked(self, key: tuple[str, str]) -> dict[str, float]:
        """Job -> bytes it has yet to move over link `key` (own reservations less the
        link's share observed moving; other drivers' as their leases say)."""
        out: dict[str, float] = {}
        per = self._reserved.get(key)
        if per:
            chunks = sum(c for c, _ in per.values())
            done = min(1.0, self._drained.get(key, 0) / chunks) if chunks else 0.0
            for job, (_, nbytes) in per.items():
                out[job] = nbytes * (1.0 - done)
        for job, (flows, _) in self._external.items():
            for src, dst, _, n in flows:
                if (src, dst) == key and n > 0:
                    out[job] = out.get(job, 0.0) + n
        return out

    def _links_locked(self) -> set[tuple[str, str]]:
        return set(self._reserved) | {(a, b) for fl, _ in self._external.values()
                                      for a, b, _, _ in fl}

    def _pending_locked(self, key: tuple[str, str], exclude: str | None = None) -> float:
        return sum(b for j, b in self._by_job_locked(key).items() if j != exclude)

    def pending(self, src: str, dst: str, *, exclude: str | None = None) -> float:
        """Bytes that started jobs (but `exclude`) have yet to move from `src` to `dst`
        (their planned bytes, less the share of the link's planned chunks observed
        moving since; other drivers' jobs as their leases say)."""
        with self._lock:
            return self._pending_locked((src, dst), exclude)

    def backlog(self) -> dict[tuple[str, str], float]:
        """Every link with bytes still to move for started jobs."""
        with self._lock:
            out = {k: self._pending_locked(k) for k in self._links_locked()}
        return {k: v for k, v in out.items() if v > 0}

    def job_flows(self, job: str) -> list[tuple[str, str, int, int]]:
        """(src, dst, chunks, bytes) job `job` of this driver has still to move (what its
        lease publishes)."""
        out = []
        with self._lock:
            for key, per in sorted(self._reserved.items()):
                if job not in per:
                    continue
                chunks = sum(c for c, _ in per.values())
                done = min(1.0, self._drained.get(key, 0) / chunks) if chunks else 0.0
                c, b = per[job]
                out.append((key[0], key[1], math.ceil(c * (1 - done)), int(b * (1 - done))))
        return out

    def job_compute(self, job: str) -> list[tuple[str, str, float]]:
        """(task, site, seconds) of job `job`'s tasks not finished (its lease's compute)."""
        with self._lock:
            return [(t, s, x) for t, (s, x) in sorted(self._compute.get(job, {}).items())]

    def _wait_locked(self, keys: Iterable[tuple[str, str]], rate: float,
                     exclude: str | None, nbytes: float | None) -> float:
        """Seconds the jobs' bytes over `keys` hold up a new flow of `nbytes` at `rate`:
        all of them (FIFO, `nbytes` None) or, with fair sharing, each job's bytes up to
        `nbytes` (the new flow finishes after every other has moved as much as it)."""
        per: dict[str, float] = {}
        for k in keys:
            for j, b in self._by_job_locked(k).items():
                if j != exclude:
                    per[j] = per.get(j, 0.0) + b
        if nbytes is None:
            return sum(per.values()) / rate
        return sum(min(b, nbytes) for b in per.values()) / rate

    def queue_seconds(self, src: str, dst: str, *, exclude: str | None = None,
                      nbytes: float | None = None) -> float:
        """How long started jobs' transfers hold up a transfer of `nbytes` started now
        from `src` to `dst`: the longest of the delay on the link at its bandwidth,
        on `src`'s NIC (every link leaving it) and on `dst`'s NIC (every link entering
        it), at their rates. The link and the NICs are shared fairly among the flows
        on them: the new flow is held up by each other job's bytes up to its own
        `nbytes`; without `nbytes` it waits for all of them (FIFO). `exclude` (a job
        id) leaves that job's own reservation out: a running job does not wait for
        itself."""
        if src == dst:
            return 0.0
        a, b = self.site(src), self.site(dst)
        bw = self.link(src, dst).bandwidth
        with self._lock:
            links = self._links_locked()
            if not links:
                return 0.0
            wait = self._wait_locked([(src, dst)], bw, exclude, nbytes)
            if a.nic > 0:
                wait = max(wait, self._wait_locked([k for k in links if k[0] == src], a.nic,
                                                   exclude, nbytes))
            if b.nic > 0:
                wait = max(wait, self._wait_locked([k for k in links if k[1] == dst], b.nic,
                                                   exclude, nbytes))
        return wait

    def inbound_queue_seconds(self, dst: str, *, exclude: str | None = None,
                              nbytes: float | None = None) -> float:
        """How long the bytes entering `dst` hold up its NIC for a new inbound transfer
        of `nbytes` (fairly shared; all of them without `nbytes`), without job
        `exclude`'s own reservation (0: no NIC cap)."""
        nic = self.site(dst).nic
        if nic <= 0:
            return 0.0
        with self._lock:
            return self._wait_locked([k for k in self._links_locked() if k[1] == dst], nic,
                                     exclude, nbytes)

    # -- compute backlog (tasks of started jobs) ----------------------------------------
    def reserve_compute(self, job: str, tasks: Iterable[tuple[str, str, float]]) -> None:
        """Record that `job` has started and will compute (task, site, seconds) per task:
        until each task is done (`compute_done`) or the job is released, its seconds
        are queued work at its site (`compute_backlog`). A task reserved again moves."""
        with self._lock:
            per = self._compute.setdefault(job, {})
            for task, site, secs in tasks:
                per[task] = (site, max(0.0, float(secs)))

    def move_compute(self, job: str, placement: Mapping[str, str]) -> None:
        """`job` was re-planned: its reserved tasks named in `placement` move there
        (a job with no reservation is left alone)."""
        with self._lock:
            per = self._compute.get(job)
            for task, site in placement.items():
                if per is not None and task in per:
                    per[task] = (site, per[task][1])

    def compute_done(self, job: str, task: str) -> None:
        """Task `task` of `job` finished: its seconds leave its site's backlog."""
        with self._lock:
            per = self._compute.get(job)
            if per is not None:
                per.pop(task, None)

    def release_compute(self, job: str) -> None:
        """`job` ended, however it ended: none of its tasks is queued work any more."""
        with self._lock:
            self._compute.pop(job, None)

    def compute_backlog(self, *, exclude: str | None = None) -> dict[str, float]:
        """Seconds each site's slots are busy with the unfinished tasks of started jobs
        (but `exclude`): their planned compute seconds over the site's slots."""
        with self._lock:
            work: dict[str, float] = {}
            for job, per in self._compute.items():
                if job == exclude:
                    continue
                for site, secs in per.values():
                    work[site] = work.get(site, 0.0) + secs
            for job, (_, tasks) in self._external.items():
                if job == exclude:
                    continue
                for _, site, secs in tasks:
                    work[site] = work.get(site, 0.0) + secs
        return {s: w / max(1, self.sites[s].slots if s in self.sites else 1)
                for s, w in sorted(work.items()) if w > 0}

    # -- changes ----------------------------------------------------------------------
    def observe(self, src: str, dst: str, nbytes: int, chunks: int, seconds: float) -> Link:
        """Fold a real transfer into the measured link (passive measurement), and count
        its chunks against the link's backlog (`reserve`).

        Transfers too small to tell bandwidth from latency only refresh the
        round trip when it is the only unknown.
        """
        self._drain(src, dst, chunks)
        base = self.link(src, dst)
        rounds = 2 + math.ceil(max(chunks, 1) / BATCH_IDS)
        if seconds <= 0:
            return base
        latency = base.rtt * rounds
        if nbytes >= 1 << 20 and seconds > latency:
            bw = nbytes / (seconds - latency)
            bw = bw if base.source != "measured" else EWMA * bw + (1 - EWMA) * base.bandwidth
            new = replace(base, bandwidth=bw, source="measured", measured_at=time.time())
        else:
            return base
        with self._lock:
            self.measured[(src, dst)] = new
        return new

    def set_measured(self, link: Link) -> None:
        """Record a probe's measurement."""
        self.site(link.src)
        self.site(link.dst)
        with self._lock:
            self.measured[(link.src, link.dst)] = replace(link, source="measured",
                                                         measured_at=link.measured_at or
                                                         time.time())

    def mark_down(self, name: str) -> None:
        """Mark site `name` as lost (it is no longer planned on nor read from)."""
        self.sites[name] = replace(self.site(name), status="down")

    def to_dict(self) -> dict[str, Any]:
        """Sites and every current link, for job records and `--json` output."""
        names = sorted(self.sites)
        return {"sites": [to_json(self.sites[n], keep_none=True) for n in names],
                "links": [{"src": a, "dst": b, "mbps": round(lk.bandwidth * 8 / 1e6, 3),
                           "rtt_ms": round(lk.rtt * 1e3, 3), "price_per_gb": lk.price_per_gb,
                           "source": lk.source}
                          for a in names for b in names if a != b
                          for lk in [self.link(a, b)]]}

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | Mapping[str, Any]) -> Topology:
        """Sites, links, defaults and owner constraints from a TOML or JSON file (or a dict).

        Relative `state` paths are relative to the file. See docs/dataflow.md for the format.
        """
        if isinstance(path, Mapping):
            spec = validate(SitesSpec, path, where="sites", error=SchemaError)
            base = Path.cwd()
        else:
            spec = load(SitesSpec, path, what="sites file", error=SchemaError)
            base = Path(path).parent.absolute()
        return cls._from_spec(spec, base)

    @classmethod
    def _from_spec(cls, spec: SitesSpec, base: Path) -> Topology:
        sites = {name: replace(s, name=name, entity=s.entity or name,
                               state=str((base / s.state).absolute()) if s.state else None)
                 for name, s in spec.sites.items()}
        d = spec.defaults
        defaults = LinkDefaults(
            intra_bandwidth=d.intra_mbps * 1e6 / 8, intra_rtt=d.intra_rtt_ms / 1e3,
            intra_price=d.intra_price_per_gb, inter_bandwidth=d.inter_mbps * 1e6 / 8,
            inter_rtt=d.inter_rtt_ms / 1e3, inter_price=d.inter_price_per_gb)
        topo = cls(sites, defaults=defaults, secret=bytes.fromhex(spec.secret))
        for lk in spec.links:
            bw, rtt = lk.mbps * 1e6 / 8, lk.rtt_ms / 1e3
            topo.configured[(lk.a, lk.b)] = Link(lk.a, lk.b, bw, rtt, lk.price_per_gb)
            if lk.symmetric:
                topo.configured[(lk.b, lk.a)] = Link(lk.b, lk.a, bw, rtt, lk.price_per_gb)
        for ent, o in spec.owners.items():
            topo.owners[ent] = o.allow
            for g in o.grants:
                topo.grants.setdefault(ent, []).append((g.pattern, g.to))
        return topo

    @classmethod
    def from_registry(cls, registry: str, *, config: str | os.PathLike[str] | None = None,
                      timeout: float = 10.0, tls: Any = None) -> Topology:
        """Sites (region, entity, status) and measured links from a federation registry.

        Prices, slots and defaults come from `config` (a sites file whose sites
        may be a subset); links the registry measured win over configured ones.
        `tls` (a gfs.federation.tls.Trust) checks the registry's certificate.
        """
        from gfs.federation.http import HttpClient

        base = cls.from_config(config) if config is not None else None
        h = HttpClient(registry, timeout=timeout, tls=tls)
        try:
            rsites = h.call("GET", "/v1/sites")["sites"]
            rlinks = h.call("GET", "/v1/links")["links"]
        finally:
            h.close()
        sites: dict[str, Site] = {}
        for s in rsites:
            known = base.sites.get(s["name"]) if base else None
            tiers = {p["tier"] for p in s.get("pools", [])}
            site = Site(s["name"], s["region"], s["entity"], status=s.get("status", "up"),
                        tier="hot" if "hot" in tiers else "warm" if "warm" in tiers else "cold")
            if known is not None:
                site = replace(known, region=site.region, entity=site.entity,
                               status=site.status)
            sites[site.name] = site
        topo = cls(sites)
        if base is not None:
            topo.defaults, topo.owners, topo.grants = base.defaults, base.owners, base.grants
            topo.configured = {k: v for k, v in base.configured.items()
                               if k[0] in sites and k[1] in sites}
            topo.secret = base.secret
        for lk in rlinks:
            a, b = lk["a"], lk["b"]
            if a in sites and b in sites and lk.get("mbps"):
                price = topo.link(a, b).price_per_gb
                topo.measured[(a, b)] = Link(a, b, float(lk["mbps"]) * 1e6 / 8,
                                             float(lk["rtt_ms"]) / 1e3, price, "measured",
                                             float(lk.get("measured", time.time())))
        return topo


# -- probes -------------------------------------------------------------------------------


def _sample_chunks(client: Any, want_bytes: int) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    total = 0
    with client.engine.read() as txn:
        for rec in txn.iter_chunks():
            out.append((rec.id, rec.stored_len))
            total += rec.stored_len
            if total >= want_bytes:
                break
    return out


def probe_link(topo: Topology, src: str, dst: str, *, nbytes: int = 8 << 20,
               stores: Mapping[str, Any] | None = None) -> Link:
    """Measure `src` -> `dst` with two mover fetches of `src`'s chunks and record it.

    A one-chunk fetch gives the round trip (handshake and one batch: three
    round trips), a fetch of about `nbytes` gives the bandwidth. The chunks
    land in a scratch store that is deleted afterwards, so neither site's
    store changes. Embedded sites only (the prober runs where `dst` is).
    """
    from gfs import mover
    from gfs.client import Client

    s = topo.site(src)
    topo.site(dst)
    if s.state is None:
        raise ConfigError(f"probe {src} -> {dst}: site {src!r} has no store (state) here")
    own = stores is None or src not in stores
    client = Client(s.state) if own else stores[src]  # type: ignore[index]
    try:
        sample = _sample_chunks(client, nbytes)
        if len(sample) < 2:
            raise ConfigError(f"probe {src} -> {dst}: site {src!r} holds too few chunks to "
                              f"measure; configure the link in the sites file instead")
        secret = os.urandom(32)
        with tempfile.TemporaryDirectory(prefix="hutong-probe-") as tmp, \
                Client.init(Path(tmp) / "scratch") as scratch, \
                mover.MoverServer(client, secret) as server:
            first = sample[:1]
            t0 = time.monotonic()
            mover.fetch(scratch, server.address, [c for c, _ in first], secret, streams=1)
            t_small = time.monotonic() - t0
            rest = sample[1:]
            t0 = time.monotonic()
            st = mover.fetch(scratch, server.address, [c for c, _ in rest], secret, streams=1)
            t_big = time.monotonic() - t0
        rtt = t_small / 3
        big = st.bytes
        latency = rtt * (2 + math.ceil(len(rest) / BATCH_IDS))
        bw = big / (t_big - latency) if t_big > latency else big / max(t_big, 1e-6)
    finally:
        if own:
            client.close()
    link = Link(src, dst, max(bw, 1.0), rtt, topo.link(src, dst).price_per_gb, "measured",
                time.time())
    topo.set_measured(link)
    return link


def refresh_links(topo: Topology, pairs: Iterable[tuple[str, str]] | None = None, *,
                  nbytes: int = 8 << 20) -> list[Link]:
    """Probe every stale pair (or `pairs`) of up embedded sites; returns the new links."""
    names = [s.name for s in topo.up() if s.state]
    todo = list(pairs) if pairs is not None else [(a, b) for a in names for b in names
                                                  if a != b]
    out = []
    for a, b in todo:
        cur = topo.link(a, b)
        if pairs is None and cur.source == "measured":
            continue
        out.append(probe_link(topo, a, b, nbytes=nbytes))
    return out


def publish_links(topo: Topology, registry: str, keys: Any, *,
                  timeout: float = 10.0, since: float = 0.0) -> int:
    """Send the measured links whose source belongs to `keys`' entity (and, with
    `since`, that were measured after that time) to the registry.

    The registry keeps them (`GET /v1/links`), so every planner of the
    federation starts from them (`Topology.from_registry`). Returns how many.
    """
    from gfs.federation.http import HttpClient

    h = HttpClient(registry, keys=keys, timeout=timeout)
    n = 0
    try:
        with topo._lock:
            links = list(topo.measured.values())
        for lk in links:
            if topo.sites[lk.src].entity != keys.name or lk.measured_at <= since:
                continue
            h.call("PUT", f"/v1/links/{lk.src}/{lk.dst}",
                   {"rtt_ms": lk.rtt * 1e3, "mbps": lk.bandwidth * 8 / 1e6})
            n += 1
    finally:
        h.close()
    return n
