"""Emulated WAN between network namespaces, for tests and benchmarks.

    with emulated_wan(("a", "b"), rtt=0.040, loss=0.001, rate_bps=1e9) as wan:
        server = wan.popen("b", ["iperf3", "-s", "-1"])
        wan.run("a", ["iperf3", "-c", wan["b"].address])

Topology: one namespace per site and a router namespace in the middle, each
site joined to the router by a veth pair (a star). On the router, every
packet a site sends is policy-routed into a TUN device served by the delay
line (native/delayline.c, module `gfs._delayline`, run in its own process),
which writes it back after delay(source site) + delay(destination site); the
kernel then forwards it to its destination. The link of a site has

* latency: `Link.delay` one way between the site and the router's core, so
  the RTT between sites a and b is 2 * (delay(a) + delay(b));
* rate: tbf on both ends of its veth (its upload and its download);
* loss: nftables `numgen random mod 1000000 < N drop` on the packets it
  sends, as they leave the delay line: there every packet is one wire
  packet (a TUN device without offloads gets TSO/GRO super-packets cut to
  the MTU), so loss is per 1500-byte packet, never a whole 64 KiB burst.

Kernels here have neither netem nor fq, and a TCP proxy that delays bytes
does not reproduce TCP under latency (it splits the connection), hence the
packet-level delay line. Namespaces are named `hutong-wan-<pid>-<n>-<role>`;
everything is removed when the block ends, on error too, and namespaces left
by a dead process (kill -9) are removed by the next set-up.

`python -m gfs.testing.wan echo PORT | probe HOST PORT COUNT INTERVAL`
are the UDP echo and probe used to measure RTT and loss inside namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import math
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gfs.errors import HutongError

PREFIX = "hutong-wan-"
TABLE = 100
_SEQ = itertools.count()


class WanUnavailableError(HutongError, OSError):
    """This machine cannot build the emulated WAN (no permission, a tool missing)."""


class WanSetupError(HutongError, RuntimeError):
    """A step of the emulated WAN's set-up failed (the command and its error are named)."""


@dataclass(frozen=True)
class Link:
    """The link between one site and the core: one-way delay (s), rate (bit/s), loss."""

    delay: float = 0.010
    rate_bps: float | None = 1e9
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.delay <= 5:
            raise ValueError(f"Link.delay must be 0 to 5 seconds, got {self.delay}")
        if self.rate_bps is not None and not 1e5 <= self.rate_bps <= 1e11:
            raise ValueError(f"Link.rate_bps must be 1e5 to 1e11 or None, got {self.rate_bps}")
        if not 0 <= self.loss < 1:
            raise ValueError(f"Link.loss must be a fraction in [0, 1), got {self.loss}")


@dataclass(frozen=True)
class Site:
    """One site: its namespace and its address on the emulated WAN."""

    name: str
    netns: str
    address: str
    link: Link
    router_dev: str = ""
    """Its veth on the router side."""

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this site's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def net_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run in this site's network namespace only: unlike `argv()` (whose
        `ip netns exec` gives the command a private mount namespace), a FUSE mount it
        makes is visible to every process on the machine."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]


@dataclass
class Wan:
    """The emulated WAN: sites by name, the router namespace, processes started in it."""

    sites: dict[str, Site]
    router: str
    mtu: int
    counters: dict[str, int] = field(default_factory=dict)
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    _cut_handles: dict[str, list[str]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise KeyError(f"no site {name!r} in this WAN (sites: {sorted(self.sites)})") \
                from None

    def rtt(self, a: str, b: str) -> float:
        """The configured round-trip time between sites `a` and `b` (seconds)."""
        return 2 * (self[a].link.delay + self[b].link.delay)

    def run(self, site: str, argv: Sequence[str], *, timeout: float = 60,
            check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `site`'s namespace to completion (text output captured)."""
        return subprocess.run(self[site].argv(argv), capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)

    def wait_tcp(self, site: str, host: str, port: int, timeout: float = 15.0) -> None:
        """Wait until a TCP connect from `site` to host:port succeeds (a server is up)."""
        code = ("import socket, sys, time\n"
                "end = time.monotonic() + float(sys.argv[3])\n"
                "while True:\n"
                "    try:\n"
                "        socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()\n"
                "        break\n"
                "    except OSError:\n"
                "        if time.monotonic() > end: sys.exit(1)\n"
                "        time.sleep(0.05)\n")
        if self.run(site, [sys.executable, "-c", code, host, str(port), str(timeout)],
                    check=False, timeout=timeout + 10).returncode:
            raise WanSetupError(f"nothing listens on {host}:{port} seen from site {site!r} "
                                f"after {timeout} s")

    def cut(self, site: str) -> None:
        """Drop every packet to and from `site` (a cable pulled: no RST, no ICMP)."""
        dev = self[site].router_dev
        if self._cut_handles.get(site):
            return
        handles = []
        for match in (f'iifname "{dev}"', f'oifname "{dev}"'):
            out = _sh(["ip", "netns", "exec", self.router, "nft", "--echo", "--handle",
                       "insert", "rule", "inet", f"{PREFIX}loss", "forward", *match.split(),
                       "drop"])
            handles.append(out.rsplit("# handle", 1)[-1].strip())
        self._cut_handles[site] = handles

    def restore(self, site: str) -> None:
        """Undo `cut(site)`."""
        for handle in self._cut_handles.pop(site, []):
            _sh(["ip", "netns", "exec", self.router, "nft", "delete", "rule", "inet",
                 f"{PREFIX}loss", "forward", "handle", handle])

    def popen(self, site: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` in `site`'s namespace; it is terminated when the WAN is torn down."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self[site].argv(argv), **kw)
        self._procs.append(proc)
        return proc


def _sh(argv: Sequence[str], *, timeout: float = 20, stdin: str | None = None) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                             input=stdin, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WanSetupError(f"emulated WAN: {' '.join(argv)}: {e}") from e
    if out.returncode:
        raise WanSetupError(f"emulated WAN: {' '.join(argv)} failed "
                            f"({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def unavailable_reason() -> str | None:
    """Why the emulated WAN cannot be built here (None when it can)."""
    if sys.platform != "linux":
        return "the emulated WAN needs Linux network namespaces"
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables"),
                      ("sysctl", "procps"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"the emulated WAN needs `{tool}`: install the Debian package {pkg}"
    if not os.path.exists("/dev/net/tun"):
        return "the emulated WAN needs /dev/net/tun (the tun module) for its delay line"
    try:
        import gfs._delayline  # noqa: F401
    except ImportError:
        return "gfs._delayline is not built: run `make setup`"
    probe = f"{PREFIX}{os.getpid()}-probe"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        return f"`ip netns add` is not permitted here: {out.stderr.strip()} (needs root " \
               f"or CAP_SYS_ADMIN + CAP_NET_ADMIN)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def sweep_stale() -> list[str]:
    """Delete namespaces of this module whose creating process is gone; return their names."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    removed = []
    for line in out.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            removed.append(name)
    return removed


def _delayline_so() -> str:
    import gfs._delayline

    path: str | None = gfs._delayline.__file__
    if path is None:
        raise WanUnavailableError("gfs._delayline has no file: run `make setup`")
    return path


_DELAYLINE_MAIN = """
import importlib.machinery, importlib.util, json, sys
so, tun, mtu, slots, rules = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \\
    json.loads(sys.argv[5])
loader = importlib.machinery.ExtensionFileLoader("gfs._delayline", so)
spec = importlib.util.spec_from_file_location("gfs._delayline", so, loader=loader)
dl = importlib.util.module_from_spec(spec)
loader.exec_module(dl)
fd = dl.open_tun(tun)
print("ready", flush=True)
rules = [(f, bytes.fromhex(p), b, d) for f, p, b, d in rules]
print(json.dumps(dl.run(fd, 0, rules, mtu=mtu, slots=slots)), flush=True)
"""


#: Seconds of the fastest link's packets the delay line's TUN device queues for it
#: while the delay line is not scheduled.
TUN_QUEUE_S = 0.1


def tun_queue(links: Iterable[Link], mtu: int) -> int:
    """Packets the delay line's device queues (its txqueuelen): TUN_QUEUE_S of the
    fastest link. With the kernel's 500 (7 ms at 1 Gbit/s), a delay line that another
    process kept off the CPU that long dropped packets there: on a loaded 2-core
    machine 15% of a WAN read's packets, against the link's configured 0.1%."""
    fastest = max((lk.rate_bps or 1e9 for lk in links), default=1e9)
    return max(1000, math.ceil(fastest / 8 * TUN_QUEUE_S / mtu))


def _tbf(ns: str, dev: str, rate_bps: float, queue_s: float) -> list[str]:
    rate = int(rate_bps)
    burst = max(16384, rate // 8 // 1000)            # 1 ms of the rate
    limit = max(burst + 65536, int(rate / 8 * queue_s))
    return ["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
            f"{rate}bit", "burst", str(burst), "limit", str(limit)]


@contextlib.contextmanager
def emulated_wan(sites: Sequence[str] | Mapping[str, Link] = ("a", "b"), *, rtt: float = 0.040,
                 rate_bps: float | None = 1e9, loss: float = 0.0, mtu: int = 1500,
                 slots: int | None = None, congestion: str | None = None,
                 nice: int = 0) -> Iterator[Wan]:
    """Build the WAN, yield it, always tear it down (namespaces and processes).

    `sites` names the sites, all with the same link (`rtt` between any two,
    `rate_bps` each way, `loss` per packet sent), or maps names to their own
    `Link`. `congestion` sets the sites' TCP congestion control (a name from
    net.ipv4.tcp_available_congestion_control; None keeps the kernel's).
    `nice` < 0 raises the delay line's priority (root only) so that other
    work on a busy machine does not stretch the emulated latency.
    Raises `WanUnavailableError` when this machine cannot build it.
    """
    links = dict(sites) if isinstance(sites, Mapping) else \
        {name: Link(delay=rtt / 4, rate_bps=rate_bps, loss=loss) for name in sites}
    if not 2 <= len(links) <= 200:
        raise ValueError(f"an emulated WAN has 2 to 200 sites, got {len(links)}")
    if not 576 <= mtu <= 65000:
        raise ValueError(f"mtu must be 576 to 65000, got {mtu}")
    reason = unavailable_reason()
    if reason:
        raise WanUnavailableError(reason)
    sweep_stale()
    base = f"{PREFIX}{os.getpid()}-{next(_SEQ)}"
    router = f"{base}-r"
    created: list[str] = []
    wan = Wan({}, router, mtu)
    delayline: subprocess.Popen[str] | None = None
    try:
        _sh(["ip", "netns", "add", router])
        created.append(router)
        _sh(["ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
             "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        _sh(["ip", "-n", router, "link", "set", "lo", "up"])
        rules: list[tuple[int, str, int, int]] = []
        nft = [f"table inet {PREFIX}loss {{", " chain forward {",
               "  type filter hook forward priority 0; policy accept;"]
        slowest = max(link.delay for link in links.values())
        for i, (name, link) in enumerate(links.items(), start=1):
            ns = f"{base}-s{i}"
            _sh(["ip", "netns", "add", ns])
            created.append(ns)
            net = ipaddress.ip_network(f"10.77.{i}.0/24")
            addr, gw = str(net.network_address + 2), str(net.network_address + 1)
            rdev = f"site{i}"
            _sh(["ip", "-n", ns, "link", "add", "wan0", "mtu", str(mtu), "type", "veth",
                 "peer", "name", rdev, "netns", router, "mtu", str(mtu)])
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            if congestion:
                _sh(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                     f"net.ipv4.tcp_congestion_control={congestion}"])
            _sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "wan0"])
            _sh(["ip", "-n", ns, "link", "set", "wan0", "up"])
            _sh(["ip", "-n", ns, "route", "add", "default", "via", gw])
            _sh(["ip", "-n", router, "addr", "add", f"{gw}/24", "dev", rdev])
            _sh(["ip", "-n", router, "link", "set", rdev, "up"])
            _sh(["ip", "-n", router, "rule", "add", "iif", rdev, "lookup", str(TABLE),
                 "pref", str(100 + i)])
            if link.rate_bps is not None:
                queue = max(0.020, 2 * (link.delay + slowest))
                _sh(_tbf(ns, "wan0", link.rate_bps, queue))
                _sh(_tbf(router, rdev, link.rate_bps, queue))
            if link.loss > 0:  # on the way out of the delay line: one wire packet each
                nft.append(f'  iifname "delay0" ip saddr {net} numgen random mod 1000000 < '
                           f"{round(link.loss * 1e6)} drop")
            rules.append((4, net.network_address.packed.hex(), 24, round(link.delay * 1e9)))
            wan.sites[name] = Site(name, ns, addr, link, rdev)
        nft += [" }", "}"]
        _sh(["ip", "netns", "exec", router, "nft", "-f", "-"], stdin="\n".join(nft) + "\n")
        # The delay line: a TUN device in the router, every site's packets routed into it.
        inflight = sum((lk.rate_bps or 1e9) / 8 * 2 * (lk.delay + slowest)
                       for lk in links.values())
        nslots = slots or int(min(1 << 20, max(4096, 2 * inflight / mtu + 2048)))
        delayline = subprocess.Popen(
            ["ip", "netns", "exec", router, "nice", "-n", str(nice), sys.executable, "-c",
             _DELAYLINE_MAIN,
             _delayline_so(), "delay0", str(mtu), str(nslots), json.dumps(rules)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert delayline.stdout is not None
        ready, _, _ = select.select([delayline.stdout], [], [], 15)
        line = delayline.stdout.readline() if ready else ""
        if line.strip() != "ready":
            err = delayline.stderr.read() if delayline.poll() is not None and \
                delayline.stderr else ""
            raise WanSetupError(f"emulated WAN: the delay line did not start: {err.strip()}")
        _sh(["ip", "-n", router, "link", "set", "delay0", "mtu", str(mtu), "txqueuelen",
             str(tun_queue(links.values(), mtu)), "up"])
        _sh(["ip", "-n", router, "route", "add", "default", "dev", "delay0", "table",
             str(TABLE)])
        yield wan
    finally:
        _teardown(wan, delayline, created)


def _teardown(wan: Wan, delayline: subprocess.Popen[str] | None, created: list[str]) -> None:
    """Stop our processes, then the delay line (EOF on its stdin), then delete namespaces."""
    try:
        for proc in reversed(wan._procs):
            with contextlib.suppress(Exception):
                _stop(proc)
        if delayline is not None:
            try:
                out, _ = delayline.communicate(timeout=5)
                last = out.strip().splitlines()[-1:] if out else []
                if last and last[0].startswith("{"):
                    wan.counters.update(json.loads(last[0]))
            except (subprocess.TimeoutExpired, OSError, ValueError):
                _stop(delayline)
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate one process we started (by its pid), then kill it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@contextlib.contextmanager
def wan_or_skip(*args: Any, **kw: Any) -> Iterator[Wan]:
    """`emulated_wan` for pytest: skips the test, naming the reason, where it cannot be built."""
    import pytest

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with emulated_wan(*args, **kw) as wan:
        yield wan


# -- UDP echo and probe (RTT and loss inside namespaces) ------------------------------------


def echo(port: int, seconds: float = 60.0) -> None:
    """Echo UDP datagrams on `port` for at most `seconds`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        s.settimeout(0.5)
        end = time.monotonic() + seconds
        print("ready", flush=True)
        while time.monotonic() < end:
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                continue
            s.sendto(data, peer)


def probe(host: str, port: int, count: int, interval: float) -> dict[str, Any]:
    """Send `count` numbered datagrams; return the RTTs (s) of those echoed and the loss."""
    sent: dict[int, float] = {}
    rtts: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        nxt = time.monotonic()
        deadline = None
        while True:
            now = time.monotonic()
            if len(sent) < count and now >= nxt:
                sent[len(sent)] = now
                s.sendto(len(sent).to_bytes(4, "big") + bytes(60), (host, port))
                nxt += interval
                if len(sent) == count:
                    deadline = now + 2.0
            if deadline is not None and (now > deadline or len(rtts) == count):
                break
            r, _, _ = select.select([s], [], [], max(0.0, min(nxt - now, 0.05)))
            while r:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                k = int.from_bytes(data[:4], "big") - 1
                if k in sent:
                    rtts.append(time.monotonic() - sent[k])
    return {"sent": count, "received": len(rtts), "loss": 1 - len(rtts) / count,
            "rtts": rtts}


def measure_udp(wan: Wan, src: str, dst: str, count: int = 20, interval: float = 0.01,
                port: int = 40007) -> dict[str, Any]:
    """RTTs and round-trip loss of `count` UDP probes from site `src` to site `dst`."""
    server = wan.popen(dst, [sys.executable, "-m", "gfs.testing.wan", "echo", str(port)],
                       stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 15)
        if not ready or server.stdout.readline().strip() != "ready":
            raise WanSetupError(f"the UDP echo in site {dst!r} did not start")
        out = wan.run(src, [sys.executable, "-m", "gfs.testing.wan", "probe",
                            wan[dst].address, str(port), str(count), str(interval)],
                      timeout=count * interval + 30)
        result: dict[str, Any] = json.loads(out.stdout)
        return result
    finally:
        _stop(server)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["echo"] and len(argv) == 2:
        echo(int(argv[1]))
        return 0
    if argv[:1] == ["probe"] and len(argv) == 5:
        print(json.dumps(probe(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))))
        return 0
    print("usage: python -m gfs.testing.wan echo PORT | probe HOST PORT COUNT INTERVAL",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
