"""`python -m bench load [--quick]`: a site under load, then under a connection flood.

A registry and one site run as real processes on loopback (TLS 1.3). 64
clients (asyncio in 4 processes, one connection each, reconnecting every 16
requests as clients come and go) put and get files of 4 KiB and 4 MiB (one op in 8) with a
write token for a fixed time, and verify every byte read. Then the same while
an attacker process holds up to 20,000 idle TCP connections to the site (no
byte sent; spread over 100 source addresses so each stays under the per-peer
limit; a connection the site closes is opened again after 1 s). Rows:
ops/s, p50/p99 latency, errors, the site's RSS, connections held by the
attacker. Target: no errors, and the legitimate p99 under attack within 2x of
the undisturbed run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization

from bench._measure import cpu_seconds
from gfs.federation.testing import Federation

SMALL, BIG = 4 << 10, 4 << 20
BIG_EVERY = 8
RECONNECT_EVERY = 16
ATTACK_PEERS = 100
PROCESSES = 4

ATTACKER = r"""
import resource, selectors, socket, sys, time
host, port, want, peers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
want = min(want, hard - 64)
print(f"limit {want}", flush=True)
sel = selectors.DefaultSelector()
retry = []  # (when, index)
n = 0
def open_one(i):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((f"127.0.{1 + i % peers // 250}.{1 + i % peers % 250}", 0))
    s.setblocking(False)
    s.connect_ex((host, port))
    sel.register(s, selectors.EVENT_READ, i)
for i in range(want):
    try:
        open_one(i)
        n += 1
    except OSError as e:
        print(f"stopped at {n}: {e}", flush=True)
        break
print(f"opened {n}", flush=True)
last = 0.0
while True:
    for key, _ in sel.select(0.2):
        s = key.fileobj
        sel.unregister(s)
        s.close()
        retry.append((time.monotonic() + 1.0, key.data))
    now = time.monotonic()
    while retry and retry[0][0] <= now:
        _, i = retry.pop(0)
        try:
            open_one(i)
        except OSError:
            retry.append((now + 1.0, i))
    if now - last >= 1.0:
        last = now
        print(f"held {len(sel.get_map())}", flush=True)
"""


@dataclass
class Phase:
    """What one run of the clients measured."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    bytes: int = 0
    rss_kib: int = 0
    held: int = 0
    site_cpu: float = 0.0  #: CPU seconds the site process used in the phase
    client_cpu: float = 0.0  #: CPU seconds the client processes used

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")

    @property
    def ops_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _client(i: int, url: str, ctx: ssl.SSLContext, name: str, token: str,
                  stop: float, phase: Phase) -> None:
    rnd = random.Random(i)
    written: dict[str, bytes] = {}
    headers = {"Authorization": f"Bearer {token}"}
    session: aiohttp.ClientSession | None = None
    n = 0
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < stop:
            if session is None or n % RECONNECT_EVERY == 0:
                if session is not None:
                    await session.close()
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ctx, limit=1),
                    timeout=aiohttp.ClientTimeout(total=60))
            n += 1
            size = BIG if n % BIG_EVERY == 0 else SMALL
            path = f"/bank-a/load/c{i}/{size}-{rnd.randrange(4)}"
            put = path not in written or rnd.random() < 0.5
            t = time.perf_counter()
            try:
                if put:
                    data = os.urandom(size)
                    async with session.post(f"{url}/v1/ns/write", params={"path": path},
                                            data=data, headers=headers,
                                            server_hostname=name) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"put {path}: HTTP {r.status}")
                    written[path] = data
                else:
                    async with session.get(f"{url}/v1/ns/read", params={"path": path},
                                           headers=headers, server_hostname=name) as r:
                        got = await r.read()
                        if r.status != 200 or got != written[path]:
                            raise RuntimeError(f"get {path}: HTTP {r.status}, "
                                               f"{len(got)} bytes, verified "
                                               f"{got == written[path]}")
                phase.latencies.append(time.perf_counter() - t)
                phase.bytes += size
            except (TimeoutError, aiohttp.ClientError, RuntimeError) as e:
                phase.errors += 1
                phase.first_error = phase.first_error or f"{type(e).__name__}: {e}"
    finally:
        if session is not None:
            await session.close()


async def _mkdirs(clients: int, url: str, ctx: ssl.SSLContext, name: str,
                  token: str) -> None:
    """The clients' directories (not timed)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        for i in range(clients):
            async with session.post(f"{url}/v1/ns/mkdir", json={
                    "path": f"/bank-a/load/c{i}", "parents": True, "exist_ok": True},
                    headers={"Authorization": f"Bearer {token}"},
                    server_hostname=name) as r:
                if r.status != 200:
                    raise RuntimeError(f"mkdir /bank-a/load/c{i}: HTTP {r.status} "
                                       f"{await r.text()}")


async def _clients(first: int, count: int, seconds: float, url: str, ca: str, name: str,
                   token: str) -> Phase:
    ctx = ssl.create_default_context(cadata=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    phase = Phase("")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(_client(i, url, ctx, name, token, started + seconds, phase)
                           for i in range(first, first + count)))
    phase.seconds = loop.time() - started
    return phase


def _worker(job: tuple[int, int, float, str, str, str, str]) -> Phase:
    """One client process: its clients' latencies, errors, bytes and CPU seconds."""
    cpu = time.process_time()
    p = asyncio.run(_clients(*job))
    p.client_cpu = time.process_time() - cpu
    return p


def _run(phase: Phase, clients: int, seconds: float, url: str, ca: str, name: str,
         token: str) -> None:
    """Run the clients in PROCESSES processes (one Python process cannot drive 64 TLS
    clients at the rate a site answers them)."""
    per = -(-clients // PROCESSES)
    jobs = [(first, min(per, clients - first), seconds, url, ca, name, token)
            for first in range(0, clients, per)]
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as ex:
        for r in ex.map(_worker, jobs):
            phase.latencies += r.latencies
            phase.errors += r.errors
            phase.first_error = phase.first_error or r.first_error
            phase.bytes += r.bytes
            phase.seconds = max(phase.seconds, r.seconds)
            phase.client_cpu += r.client_cpu


def _attack(host: str, port: int, want: int, work: Path) -> tuple[subprocess.Popen[str], int]:
    """Start the attacker; return it and the connections it holds once it has opened them
    (waits at most 60 s)."""
    proc = subprocess.Popen([sys.executable, "-c", ATTACKER, host, str(port), str(want),
                             str(ATTACK_PEERS)], stdout=subprocess.PIPE,
                            stderr=open(work / "attacker.log", "w"), text=True)  # noqa: SIM115
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    held = 0
    for line in proc.stdout:
        if line.startswith("held"):
            held = int(line.split()[1])
            break
        if time.monotonic() > deadline:
            break
    return proc, held


def _held(proc: subprocess.Popen[str]) -> int:
    """The attacker's last report of connections held (reads what it printed so far)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    held = -1
    for line in proc.stdout:
        if line.startswith("held"):
            held = int(line.split()[1])
    return held


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench load")
    ap.add_argument("--quick", action="store_true", help="20 s per phase (default 60 s)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    ap.add_argument("--idle", type=int, default=20_000,
                    help="idle connections the attacker holds (20000)")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.idle < 0:
        ap.error("--clients must be >= 1 and --idle >= 0")
    seconds = 20.0 if args.quick else 60.0
    print(f"load {os.getloadavg()[0]:.1f}  {args.clients} clients, {seconds:.0f} s per "
          f"phase, files of {SMALL >> 10} KiB and {BIG >> 20} MiB (1 in {BIG_EVERY}), TLS 1.3")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # the attacker raises its own
    phases = [Phase("undisturbed"), Phase("under attack")]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as d, \
            Federation(Path(d), ttl=5.0, heartbeat=1.0) as fed:
        fed.registry()
        fed.site("a1", "bank-a", "cn-west", primary=True, mover=False)
        url, host = str(fed.sites["a1"]["url"]), str(fed.sites["a1"]["host"])
        pid = fed.procs["a1"].popen.pid
        token = fed.keys("bank-a").mint_token("load", "write", "/bank-a", ttl=3600)
        ctx, name = fed.trust.client_context(url, site="a1", entity="bank-a")
        ca = fed.trust.entity_ca("bank-a").public_bytes(serialization.Encoding.PEM).decode()
        asyncio.run(_mkdirs(args.clients, url, ctx, name, token))
        cpu = cpu_seconds(pid, tree=False)
        _run(phases[0], args.clients, seconds, url, ca, name, token)
        phases[0].rss_kib, phases[0].site_cpu = _rss_kib(pid), cpu_seconds(pid, tree=False) - cpu
        proc, phases[1].held = _attack(host, int(url.rsplit(":", 1)[1]), args.idle, Path(d))
        try:
            cpu = cpu_seconds(pid, tree=False)
            _run(phases[1], args.clients, seconds, url, ca, name, token)
            phases[1].rss_kib = _rss_kib(pid)
            phases[1].site_cpu = cpu_seconds(pid, tree=False) - cpu
            now = _held(proc)
            phases[1].held = now if now >= 0 else phases[1].held
        finally:
            proc.kill()
            proc.wait()
    print(f"attacker: asked for {args.idle} idle connections (file limit {hard}); "
          f"held at the end: {phases[1].held}")
    print(f"{'phase':<14} {'ops/s':>7} {'MB/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'site RSS MiB':>13} {'site CPU %':>10} {'client CPU %':>12} {'held':>6}")
    for p in phases:
        print(f"{p.name:<14} {p.ops_s:>7.0f} {p.bytes / 1e6 / p.seconds:>7.1f} "
              f"{p.pct(0.5):>8.1f} {p.pct(0.99):>8.1f} {p.errors:>7} "
              f"{p.rss_kib / 1024:>13.0f} {100 * p.site_cpu / p.seconds:>10.0f} "
              f"{100 * p.client_cpu / p.seconds:>12.0f} {p.held:>6}")
    for p in phases:
        if p.first_error:
            print(f"first error ({p.name}): {p.first_error}")
    base, attacked = phases
    ratio = attacked.pct(0.99) / base.pct(0.99)
    errors = base.errors + attacked.errors
    met = errors == 0 and ratio <= 2.0
    print(f"load: ops_s={base.ops_s:.0f} p99_ms={base.pct(0.99):.1f} "
          f"p99_under_attack_ratio={ratio:.2f} errors={errors} "
          f"held={attacked.held} load={os.getloadavg()[0]:.1f} "
          f"target={'met' if met else 'missed'}")
    return 0
