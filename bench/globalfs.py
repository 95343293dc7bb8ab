"""`python -m bench globalfs [--quick]`: the global namespace over an emulated WAN, beside JuiceFS.

Three hosts in network namespaces (gfs.testing.wan), each on a link of 1 Gbit/s
with 0.1% loss, 40 ms RTT between any two:

* A: the registry and bank-a's primary site;
* B: telco-b's primary site, holding the data set, and JuiceFS's servers
  (Redis for metadata, `weed server -s3` of SeaweedFS for data);
* C: the client: `hutong mount --profile` acting for telco-b with its keys,
  gfs:// reads in a process there, and a JuiceFS mount.

Measured in the same run: the RTT (UDP probes from C to B) and the link rate
(iperf3 from B to C with 1 and 4 streams; the link rate is the larger; 4 streams
again after the WAN rows, shown beside: a shared machine's load moves). On
loopback: the embedded mount (`hutong --state S mount`) of a store holding the
same tree, and the same federation on 127.0.0.x with our mount and gfs://.

The data set (bench._fsops): a 1 GiB random file, two directories of 10,000
empty files and 1,000 creates of 4 KiB. Rows: cold sequential read (every
client cache empty, the servers' page cache of the stored data dropped) and
warm re-read; `ls -l` of one directory and a stat of every file of the other,
in sequential round trips to B counted on the link from a packet capture on C
(bench._globalfs_trips; the verdict's measure; those on the link in all,
background renewals of the registry's records included, beside), the time in
RTTs and the RTTs beyond the embedded mount's time for the same on loopback
(the local cost of FUSE and of the program); creates per second (bounded in time).
Beside the mounts' cold reads, the CPU per MB of each process (the mount with its
children, the site serving it): the machine's load moves it far less than the rates.
Beside the rows, the connections and bytes in flight of the gfs:// cold read
(bench._globalfs_flight), and what the link did during our WAN rows: the TCP segments B sent
and retransmitted, and the packets the emulator's delay line dropped from its device
queue (0 unless it was kept off the CPU longer than its queue lasts; the link's
configured loss is apart). `--reads` measures only the reads, `--cold` only the cold
ones.
JuiceFS writes its copy through a mount on B (beside its servers) and reads
through a fresh mount on C, with its default options. The load average as
each phase ended is printed under the table.

Targets (issue 12): cold reads on the WAN >= 80% of the link rate (mount and
gfs://); on loopback >= 50% of the embedded mount's cold read; warm re-reads
>= 80% of the embedded mount's; `ls -l` and the stats within 3 round trips.
JuiceFS's figures stand beside ours; the targets hold either way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from bench import _federated, _juicefs
from bench._federated import Ours, fill_site
from bench._fsops import (
    Dataset,
    Timing,
    creates,
    fill_client,
    fill_dir,
    ls_l,
    make_dataset,
    sequential_read,
    stat_all,
)
from bench._globalfs_flight import Flight, FlightSampler
from bench._globalfs_trips import TripCounter, Trips
from bench._measure import cpu_seconds, hutong_cmd, mounted
from bench.report import headline, table
from gfs.client import Client
from gfs.federation.testing import Federation
from gfs.testing.wan import Link, Wan, emulated_wan, measure_udp, unavailable_reason
from gfs.units import size_arg

RTT = 0.040
LOSS = 0.001
RATE_BPS = 1e9
URL = "gfs://telco-b/bench/big.bin"
ROUND_TRIPS = 3.0
"""Target: a listing or the stats of a whole directory in at most this many RTTs."""


@dataclass(frozen=True)
class Plan:
    """Sizes and time bounds of one run."""

    size: int
    entries: int
    creates: int
    iperf_seconds: int
    budget: float
    """Seconds at most for the stats and for the creates of one system."""
    reads_only: bool = False
    """Only the cold and warm reads (`--reads`): no listings, stats, creates, JuiceFS."""
    cold_only: bool = False
    """Only the cold reads (`--cold`, with `reads_only`): no warm re-reads either."""


FULL = Plan(1 << 30, 10_000, 1_000, 6, 60.0)
QUICK = Plan(32 << 20, 1_000, 100, 2, 2.0)


@dataclass
class Tree:
    """What one system's tree measured (None: not measured)."""

    cold: Timing | None = None
    warm: Timing | None = None
    ls: Timing | None = None
    stat: Timing | None = None
    creates: Timing | None = None
    ls_trips: Trips | None = None
    stat_trips: Trips | None = None
    """Round trips counted on the link during the listing and the stats (WAN only)."""
    cold_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process of the system spent during the cold read, by role
    ("client": the mount and its children, "site": the site serving it): per MB, a
    figure the machine's load moves far less than the rate."""
    warm_trips: Trips | None = None
    """Round trips counted on the link during the warm re-read, its open included (WAN
    only): none while an open lease holds the file (docs/leases.md)."""


@dataclass
class Results:
    """Every figure of the run, by system."""

    rtt: float = RTT
    site_b: str = ""
    """Host B's address: the site holding the listed directories."""
    link_1: float = 0.0
    link_4: float = 0.0
    link_after: float = 0.0
    """4 streams again after the WAN rows (the machine's load moves; beside, not the
    reference)."""
    trees: dict[str, Tree] = field(default_factory=dict)
    gfs: dict[str, tuple[Timing, Timing | None]] = field(default_factory=dict)
    why_not: dict[str, str] = field(default_factory=dict)
    loads: list[tuple[str, float]] = field(default_factory=list)
    """The 1-minute load average as each phase ended (the machine is shared)."""
    wan_link: LinkCounters | None = None
    """What the link did during our WAN rows: B's TCP segments, the emulator's drops."""
    flight: Flight | None = None
    """The connections and bytes in flight of the gfs:// cold read on the WAN."""

    @property
    def link_mbs(self) -> float:
        return max(self.link_1, self.link_4) / 8 / 1e6


def measure_tree(base: Path, ds: Dataset, plan: Plan, drop: Sequence[Path] = (),
                 trips: TripCounter | None = None, cpu_of: Mapping[str, int] = MappingProxyType({})
                 ) -> Tree:
    """Every operation on the tree at `base` (a mount), in the order the rows show;
    with `trips`, the round trips of the listing and of the stats are counted; the CPU
    of the processes `cpu_of` (role -> pid, with their children) during the cold read."""
    t = Tree()
    before = {role: cpu_seconds(pid) for role, pid in cpu_of.items()}
    t.cold = sequential_read(base / "big.bin", ds.size, cold=True, drop=tuple(drop))
    t.cold_cpu = {role: cpu_seconds(pid) - before[role] for role, pid in cpu_of.items()}
    if plan.cold_only:
        return t
    if trips is None:
        t.warm = sequential_read(base / "big.bin", ds.size, cold=False)
    else:
        t.warm, t.warm_trips = trips.around(
            lambda: sequential_read(base / "big.bin", ds.size, cold=False))
    if plan.reads_only:
        return t

    def ls() -> Timing:
        return ls_l(base / "list", ds.entries, timeout=max(300.0, plan.budget))

    def stat() -> Timing:
        return stat_all(base / "stat", ds.entries, plan.budget)

    if trips is None:
        t.ls, t.stat = ls(), stat()
    else:
        t.ls, t.ls_trips = trips.around(ls)
        t.stat, t.stat_trips = trips.around(stat)
    t.creates = creates(base / "creates", ds.creates, plan.budget)
    return t


@dataclass(frozen=True)
class LinkCounters:
    """Counters of the emulated link: TCP segments host B sent and retransmitted, packets
    the delay line's device queue dropped (the link's configured loss is not counted
    there: it drops as packets leave the delay line)."""

    sent: int
    retransmitted: int
    queue_drops: int

    @classmethod
    def read(cls, wan: Wan, host: str = "b") -> LinkCounters:
        snmp = wan.run(host, ["cat", "/proc/net/snmp"]).stdout.splitlines()
        names, values = (line.split()[1:] for line in snmp if line.startswith("Tcp:"))
        tcp = dict(zip(names, map(int, values), strict=True))
        dev = json.loads(subprocess.run(["ip", "-s", "-j", "-n", wan.router, "link", "show",
                                         "delay0"], capture_output=True, text=True,
                                        check=True).stdout)
        return cls(tcp["OutSegs"], tcp["RetransSegs"], int(dev[0]["stats64"]["tx"]["dropped"]))

    def __sub__(self, before: LinkCounters) -> LinkCounters:
        return LinkCounters(self.sent - before.sent, self.retransmitted - before.retransmitted,
                            self.queue_drops - before.queue_drops)

    def describe(self) -> str:
        share = self.retransmitted / self.sent if self.sent else 0.0
        return (f"B sent {self.sent} TCP segments, {share:.2%} retransmitted; the delay "
                f"line's queue dropped {self.queue_drops} packets")


def _iperf(wan: Wan, seconds: int) -> tuple[float, float]:
    """Bits per second from B to C with 1 and with 4 TCP streams (the first second, slow
    start, left out); the iperf3 server stays for `_iperf_streams` later."""
    wan.popen("b", ["iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wan.wait_tcp("c", wan["b"].address, 5201)
    return _iperf_streams(wan, seconds, 1), _iperf_streams(wan, seconds, 4)


def _iperf_streams(wan: Wan, seconds: int, streams: int) -> float:
    """Bits per second from B to C with `streams` TCP streams (the server is up)."""
    for attempt in range(5):  # the server may still be busy with the readiness probe
        out = wan.run("c", ["iperf3", "-c", wan["b"].address, "-R", "-J", "-t",
                            str(seconds), "-O", "1", "-P", str(streams)],
                      timeout=seconds + 60, check=False)
        report = json.loads(out.stdout or "{}")
        if "sum_received" in report.get("end", {}):
            return float(report["end"]["sum_received"]["bits_per_second"])
        if attempt == 4:
            raise RuntimeError(f"iperf3 over the emulated WAN failed: "
                               f"{report.get('error') or out.stderr.strip()}")
        time.sleep(0.5)
    raise AssertionError("unreachable")


@dataclass
class Setup:
    """What the set-up phase started and filled, for the measuring phase."""

    ours: Ours | None = None
    wan_fed: Federation | None = None
    wan_pools: Path | None = None
    lo_fed: Federation | None = None
    lo_pools: Path | None = None
    jfs: _juicefs.Volume | None = None
    embedded: Path | None = None


def _start_federation(stack: contextlib.ExitStack, root: Path, ds: Dataset,
                      wan: Wan | None) -> tuple[Federation, Path]:
    """The registry (host A), bank-a's primary (A) and telco-b's (B, holding the data
    set); on loopback only the registry and telco-b's site."""
    fed = stack.enter_context(Federation(root, wan=wan, heartbeat=0.5, ttl=5.0))
    stack.callback(_kill_all, fed)  # runs first: a bench needs no graceful stop
    fed.registry(netns="a" if wan else None)
    if wan is not None:
        fed.site("a1", "bank-a", "cn-north", primary=True, netns="a")
    fed.site("b1", "telco-b", "cn-east", primary=True, netns="b" if wan else None)
    return fed, fill_site(fed, "b1", "/telco-b/bench", ds)


def _kill_all(fed: Federation) -> None:
    """kill -9 every process of `fed` (its state is thrown away with the work directory)."""
    for name in list(fed.procs):
        fed.kill(name, signal.SIGKILL)
    if fed.registry_proc is not None:
        fed.registry_proc.stop(signal.SIGKILL)
        fed.registry_proc = None


def _fill_juicefs(servers: _juicefs.Servers, wan: Wan, work: Path,
                  ds: Dataset) -> _juicefs.Volume:
    """Format the volume and write the data set through a JuiceFS mount on B."""
    volume = servers.format()
    mb = work / "mnt-jfs-b"
    with mounted(_juicefs.mount_argv(wan, "b", volume, mb, work / "jfs-cache-b"), mb,
                 work / "jfs-b.log"):
        fill_dir(mb, ds)
    return volume


def _fill_embedded(work: Path, ds: Dataset) -> Path:
    emb = work / "embedded"
    with Client.init(emb) as c:
        fill_client(c, "/bench", ds)
    return emb


def set_up(stack: contextlib.ExitStack, wan: Wan, servers: _juicefs.Servers | None,
           work: Path, ds: Dataset, ours_ok: bool) -> Setup:
    """Start and fill every system, ours and the embedded store at once (nothing is
    measured meanwhile)."""
    st = Setup()
    with ThreadPoolExecutor(3) as pool:
        emb = pool.submit(_fill_embedded, work, ds)
        feds = [pool.submit(_start_federation, stack, work / name, ds, w)
                for name, w in (("fed", wan), ("fed-lo", None))] if ours_ok else []
        st.embedded = emb.result()
        if feds:
            st.ours = Ours(work / "ours")
            st.wan_fed, st.wan_pools = feds[0].result()
            st.lo_fed, st.lo_pools = feds[1].result()
    # JuiceFS's fill alone: beside the others its 2 x entries creates over FUSE and
    # SeaweedFS's start-up slowed down six-fold (7.5 -> 44 s) on a 2-core machine.
    st.jfs = None if servers is None else _fill_juicefs(servers, wan, work, ds)
    return st


def measure_wan(st: Setup, wan: Wan, servers: _juicefs.Servers | None, work: Path,
                ds: Dataset, plan: Plan, res: Results, done: Callable[[str], None]) -> None:
    """Our global mount and gfs:// on host C, then JuiceFS's mount on host C."""
    if st.ours is not None and st.wan_fed is not None and st.wan_pools is not None:
        ours, fed = st.ours, st.wan_fed
        before = LinkCounters.read(wan)
        mnt = work / "mnt-ours"
        argv = wan["c"].net_argv(ours.mount_argv(ours.add_profile(fed, "telco-b", "b1"), mnt))
        counter = TripCounter(wan, "c", res.rtt)
        with mounted(argv, mnt, work / "mount-ours.log", env=ours.env) as proc:
            res.trees["hutong mount"] = measure_tree(
                mnt / "telco-b" / "bench", ds, plan, (st.wan_pools,), counter,
                {"client": proc.pid, "site": fed.procs["b1"].popen.pid})
        done("the global mount on C measured")
        port = int(fed.procs["b1"].url.rstrip("/").rsplit(":", 1)[1])
        with FlightSampler(wan, "b", port) as sampler:
            res.gfs["gfs://"] = ours.gfs_reads(wan["c"].net_argv([]), URL,
                                               ours.add_profile(fed, "telco-b", "b1"),
                                               ds.size, warm=not plan.cold_only)
        res.flight = sampler.summary()
        res.wan_link = LinkCounters.read(wan) - before
        done("gfs:// on C measured")
    if servers is not None and st.jfs is not None:
        mc = work / "mnt-jfs-c"
        with mounted(_juicefs.mount_argv(wan, "c", st.jfs, mc, work / "jfs-cache-c"), mc,
                     work / "jfs-c.log"):
            res.trees["juicefs mount"] = measure_tree(mc, ds, plan, (servers.root / "weed",))
        done("JuiceFS on C measured")


def measure_loopback(st: Setup, work: Path, ds: Dataset, plan: Plan, res: Results,
                     done: Callable[[str], None]) -> None:
    """The embedded mount, then our global mount and gfs:// on the loopback federation."""
    emb = st.embedded
    assert emb is not None
    mnt = work / "mnt-embedded"
    with mounted([*hutong_cmd(), "--state", str(emb), "mount", str(mnt)], mnt,
                 work / "mount-embedded.log") as proc:
        res.trees["embedded mount (lo)"] = measure_tree(mnt / "bench", ds, plan,
                                                        (emb / "pools",),
                                                        cpu_of={"client": proc.pid})
    done("the embedded mount measured")
    if st.ours is None or st.lo_fed is None or st.lo_pools is None:
        return
    ours, fed = st.ours, st.lo_fed
    mnt = work / "mnt-ours-lo"
    with mounted(ours.mount_argv(ours.add_profile(fed, "telco-b", "b1"), mnt), mnt,
                 work / "mount-ours-lo.log", env=ours.env) as proc:
        res.trees["hutong mount (lo)"] = measure_tree(
            mnt / "telco-b" / "bench", ds, plan, (st.lo_pools,),
            cpu_of={"client": proc.pid, "site": fed.procs["b1"].popen.pid})
    done("the global mount on loopback measured")
    res.gfs["gfs:// (lo)"] = ours.gfs_reads([], URL, ours.add_profile(fed, "telco-b", "b1"),
                                            ds.size, warm=not plan.cold_only)
    done("gfs:// on loopback measured")


class _Progress:
    """One line on stderr as each phase ends (a full run takes minutes), with the load
    average, kept in `res.loads` for the table."""

    def __init__(self, res: Results) -> None:
        self.t0 = self.t = time.perf_counter()
        self.res = res

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        load = os.getloadavg()[0]
        self.res.loads.append((phase, load))
        print(f"globalfs: {phase} ({now - self.t:.1f} s, {now - self.t0:.0f} s in all, "
              f"load {load:.1f})", file=sys.stderr, flush=True)
        self.t = now


def run(work: Path, plan: Plan) -> Results:
    """Build the topology, measure every system, tear everything down."""
    res = Results()
    done = _Progress(res)
    ds = make_dataset(work, plan.size, plan.entries, plan.creates)
    done("data set written")
    ours_why = _federated.unavailable_reason()
    jfs_why = "--reads/--cold: only our reads" if plan.reads_only else _juicefs.unavailable_reason()
    if ours_why:
        res.why_not["ours"] = ours_why
    if jfs_why:
        res.why_not["juicefs"] = jfs_why
    link = Link(delay=RTT / 4, rate_bps=RATE_BPS, loss=LOSS)
    with emulated_wan({"a": link, "b": link, "c": link}, nice=-5) as wan, \
            contextlib.ExitStack() as stack:
        servers = None if jfs_why else _juicefs.Servers(wan, "b", work / "jfs")
        probe = measure_udp(wan, "c", "b", count=20, interval=0.02)
        res.rtt = statistics.median(probe["rtts"])
        res.site_b = wan["b"].address
        res.link_1, res.link_4 = _iperf(wan, plan.iperf_seconds)
        done("RTT and link rate measured")
        st = set_up(stack, wan, servers, work, ds, not ours_why)
        done("every system started and filled")
        measure_wan(st, wan, servers, work, ds, plan, res, done)
        res.link_after = _iperf_streams(wan, plan.iperf_seconds, 4)
        done("link rate measured again")
        measure_loopback(st, work, ds, plan, res, done)
    done("torn down")
    return res


# -- the table ---------------------------------------------------------------------------

class Verdicts:
    """Rows of the table and whether each of our targets is met."""

    def __init__(self, res: Results, ds_size: int, entries: int) -> None:
        self.res, self.size, self.entries = res, ds_size, entries
        self.rows: list[list[object]] = []
        self.met: dict[str, bool] = {}
        self.figures: dict[str, object] = {}

    def ratio(self, key: str, where: str, op: str, system: str, t: Timing | None,
              ref: float | None, ref_name: str, want: float | None) -> None:
        """A throughput row: MB/s, and its ratio to `ref` MB/s against target `want`."""
        if t is None or ref is None or ref <= 0:
            self.rows.append([where, op, system, "n/a", ref_name, "n/a",
                              f">= {want:.0%} missed" if want else "peer"])
            if want:
                self.met[key] = False
                self.figures[key] = "n/a"
            return
        r = t.mbs / ref
        ok = want is None or r >= want
        self.rows.append([where, op, system, f"{t.mbs:.0f} MB/s", f"{ref_name} {ref:.0f} MB/s",
                          f"{r:.2f}", (f">= {want:.0%} " + ("met" if ok else "missed"))
                          if want else "peer"])
        if want is not None:
            self.met[key] = ok
        self.figures[key] = round(r, 3)

    def round_trips(self, key: str, op: str, system: str, t: Timing | None,
                    target: bool, local: Timing | None, trips: Trips | None = None) -> None:
        """A listing row. With `trips` (ours), the verdict is on the sequential round
        trips to the site holding the directory counted on the link
        (bench._globalfs_trips), those on the link in all beside; beside
        them the time in RTTs (extrapolated when the time budget ran out before the last
        entry) and the RTTs beyond `local`, the same operation on the embedded mount
        (FUSE's and the program's own cost, no network). Without `trips` (a peer),
        the time in RTTs."""
        if t is None:
            self.rows.append(["WAN", op, system, "n/a", "", "n/a",
                              f"<= {ROUND_TRIPS:g} RTT missed" if target else "peer"])
            if target:
                self.met[key] = False
                self.figures[key] = "n/a"
            return
        secs = t.seconds * (t.wanted / t.done) if t.done else float("inf")
        rtts = secs / self.res.rtt
        note = "" if t.complete else f" ({t.done} of {t.wanted} in the time bound)"
        note += f"; {rtts:.1f} RTT of time"
        beyond = None
        if local is not None and local.complete:
            beyond = (secs - local.seconds) / self.res.rtt
            note += f", {beyond:.1f} beyond the embedded mount's {local.seconds:.2f} s"
        site = trips.to(self.res.site_b) if trips is not None else None
        counted = float(site) if site is not None else rtts
        ok = t.complete and counted <= ROUND_TRIPS
        ratio = (f"{site} round trips to the site ({trips.round_trips} on the link in all, "
                 f"background renewals included; {trips.describe()})"
                 if trips is not None else f"{rtts:.1f} RTT")
        self.rows.append(["WAN", op, system, f"{secs:.2f} s{note}",
                          f"RTT {self.res.rtt * 1e3:.1f} ms", ratio,
                          (f"<= {ROUND_TRIPS:g} round trips " + ("met" if ok else "missed"))
                          if target else "peer"])
        if target:
            self.met[key] = ok
        self.figures[key] = site if site is not None else round(rtts, 1)
        if trips is not None:
            self.figures[f"{key}_link_all"] = trips.round_trips
        self.figures[f"{key}_time_rtts"] = round(rtts, 1)
        if beyond is not None:
            self.figures[f"{key}_beyond"] = round(beyond, 1)


def cpu_row(v: Verdicts, key: str, where: str, system: str, tree: Tree | None,
            size: int) -> None:
    """A row of the CPU each process of `system` spent per MB of its cold read (with
    figures `cold_KEY_ROLE_ms_mb`), when it was measured."""
    if tree is None or not tree.cold_cpu:
        return
    per = {role: 1e3 * s / (size / 1e6) for role, s in tree.cold_cpu.items()}
    v.rows.append([where, "cold read: CPU per MB", system,
                   ", ".join(f"{role} {ms:.2f} ms" for role, ms in per.items()), "", "", ""])
    for role, ms in per.items():
        v.figures[f"cold_{key}_{role}_ms_mb"] = round(ms, 2)


def report(res: Results, plan: Plan) -> tuple[str, bool, dict[str, object]]:
    """The table, whether every target is met, and the headline's figures."""
    v = Verdicts(res, plan.size, plan.entries)
    link = res.link_mbs
    v.rows.append(["WAN", "link rate (iperf3 B->C, 1 / 4 streams)", "iperf3",
                   f"{res.link_1 / 8e6:.0f} / {res.link_4 / 8e6:.0f} MB/s (4 streams after "
                   f"the WAN rows: {res.link_after / 8e6:.0f} MB/s)",
                   f"RTT {res.rtt * 1e3:.1f} ms", "", ""])
    trees, gfs = res.trees, res.gfs
    mount, lo_mount = trees.get("hutong mount"), trees.get("hutong mount (lo)")
    jfs, emb = trees.get("juicefs mount"), trees.get("embedded mount (lo)")
    g, g_lo = gfs.get("gfs://"), gfs.get("gfs:// (lo)")
    emb_cold = emb.cold.mbs if emb and emb.cold else None
    emb_warm = emb.warm.mbs if emb and emb.warm else None
    mib = f"{plan.size >> 20} MiB"
    v.ratio("cold_wan_mount", "WAN", f"cold read {mib}", "hutong mount",
            mount.cold if mount else None, link, "link", 0.8)
    v.ratio("cold_wan_gfs", "WAN", f"cold read {mib}", "gfs://", g[0] if g else None, link,
            "link", 0.8)
    v.ratio("cold_wan_jfs", "WAN", f"cold read {mib}", "juicefs mount",
            jfs.cold if jfs else None, link, "link", None)
    if res.flight is not None:
        v.rows.append(["WAN", "gfs:// cold read on the wire", "ss at B",
                       res.flight.describe(link * 1e6 * res.rtt), "", "", ""])
        v.figures["cold_wan_gfs_conns"] = res.flight.connections
        v.figures["cold_wan_gfs_inflight_mb"] = round(res.flight.median_bytes / 1e6, 1)
    if res.wan_link is not None:
        v.rows.append(["WAN", "the link during our rows", "emulator",
                       res.wan_link.describe(), "configured loss 0.1%", "", ""])
        v.figures["wan_retrans_pct"] = round(
            100 * res.wan_link.retransmitted / max(1, res.wan_link.sent), 2)
    warm = not plan.cold_only
    if warm:
        v.ratio("warm_wan_mount", "WAN", f"warm re-read {mib}", "hutong mount",
                mount.warm if mount else None, emb_warm, "embedded", 0.8)
    if mount is not None and mount.warm_trips is not None:
        wt = mount.warm_trips
        v.rows[-1][5] += (f"; {wt.to(res.site_b)} round trips to the site "
                          f"({wt.round_trips} on the link)")
        v.figures["warm_wan_mount_trips"] = wt.to(res.site_b)
    if warm:
        v.ratio("warm_wan_gfs", "WAN", f"warm re-read {mib}", "gfs://", g[1] if g else None,
                emb_warm, "embedded", 0.8)
        v.ratio("warm_wan_jfs", "WAN", f"warm re-read {mib}", "juicefs mount",
                jfs.warm if jfs else None, emb_warm, "embedded", None)
    listed = () if plan.reads_only else (("mount", "hutong mount", mount),
                                         ("jfs", "juicefs mount", jfs))
    for key, system, tree in listed:
        v.round_trips(f"ls_{key}_rtts", f"ls -l of {plan.entries} entries", system,
                      tree.ls if tree else None, key == "mount", emb.ls if emb else None,
                      tree.ls_trips if tree else None)
        v.round_trips(f"stat_{key}_rtts", f"stat of {plan.entries} files", system,
                      tree.stat if tree else None, key == "mount", emb.stat if emb else None,
                      tree.stat_trips if tree else None)
    for system, tree in () if plan.reads_only else (("hutong mount", mount),
                                                     ("juicefs mount", jfs),
                                                     ("embedded mount (lo)", emb)):
        c = tree.creates if tree else None
        v.rows.append(["WAN" if "lo" not in system else "loopback",
                       f"{plan.creates} creates of 4 KiB", system,
                       f"{c.rate:.0f} files/s" + ("" if c.complete else
                                                  f" ({c.done} in the time bound)")
                       if c else "n/a", "", "", ""])
        if c:
            v.figures[f"creates_{system.split()[0]}_per_s"] = round(c.rate, 1)
    v.ratio("cold_lo_mount", "loopback", f"cold read {mib}", "hutong mount",
            lo_mount.cold if lo_mount else None, emb_cold, "embedded", 0.5)
    v.ratio("cold_lo_gfs", "loopback", f"cold read {mib}", "gfs://", g_lo[0] if g_lo else None,
            emb_cold, "embedded", 0.5)
    for key, where, system, tree in (("wan_mount", "WAN", "hutong mount", mount),
                                     ("lo_mount", "loopback", "hutong mount", lo_mount),
                                     ("lo_embedded", "loopback", "embedded mount", emb)):
        cpu_row(v, key, where, system, tree, plan.size)
    if warm:
        v.ratio("warm_lo_mount", "loopback", f"warm re-read {mib}", "hutong mount",
                lo_mount.warm if lo_mount else None, emb_warm, "embedded", 0.8)
        v.ratio("warm_lo_gfs", "loopback", f"warm re-read {mib}", "gfs://",
                g_lo[1] if g_lo else None, emb_warm, "embedded", 0.8)
    if emb and emb.cold and emb.warm:
        v.rows.append(["loopback", f"cold / warm read {mib}", "embedded mount",
                       f"{emb.cold.mbs:.0f} / {emb.warm.mbs:.0f} MB/s", "", "", "reference"])
    for system, tree in (("hutong mount", lo_mount),):
        if tree and tree.ls and tree.stat:  # what the listings cost without a WAN
            v.rows.append(["loopback", f"ls -l / stat of {plan.entries}", system,
                           f"{tree.ls.seconds:.2f} / {tree.stat.seconds:.2f} s", "", "",
                           "reference"])
    text = table(["where", "operation", "system", "result", "against", "ratio", "target"],
                 v.rows)
    measured = [(p, load) for p, load in res.loads if "measured" in p]
    if measured:
        text += "\nload average (1 min, 2 cores shared) as each phase ended: " + "; ".join(
            f"{p.removesuffix(' measured')} {load:.1f}" for p, load in measured)
    for who, why in res.why_not.items():
        text += f"\n{who}: not measured: {why}"
    figures: dict[str, object] = {"rtt_ms": round(res.rtt * 1e3, 1),
                                  "load_max": round(max((x for _, x in measured), default=0), 1),
                                  "link_mbs": round(link),
                                  "link_after_mbs": round(res.link_after / 8e6), **v.figures,
                                  "size_mib": plan.size >> 20}
    return text, bool(v.met) and all(v.met.values()), figures


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench globalfs")
    ap.add_argument("--quick", action="store_true",
                    help="32 MiB file, 1,000 entries, 100 creates (about a minute)")
    ap.add_argument("--size", type=size_arg, help="large file size (1GiB)")
    ap.add_argument("--entries", type=int, help="entries per listed directory (10000)")
    ap.add_argument("--reads", action="store_true",
                    help="only the cold and warm read rows (no listings, stats, creates "
                         "nor JuiceFS)")
    ap.add_argument("--cold", action="store_true",
                    help="only the cold read rows (as --reads, without the warm re-reads)")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.size:
        plan = dataclasses.replace(plan, size=args.size)
    if args.entries:
        plan = dataclasses.replace(plan, entries=args.entries)
    if args.reads or args.cold:
        plan = dataclasses.replace(plan, reads_only=True, cold_only=args.cold)
    why = unavailable_reason()
    if why:
        print(f"bench globalfs: cannot build the emulated WAN: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-globalfs-", dir=args.dir))
    try:
        res = run(work, plan)
        text, met, figures = report(res, plan)
        print(text)
        print(headline("globalfs", met, **figures), flush=True)
    finally:  # several GiB: slow where the disk discards freed blocks
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
