"""`python -m bench mover [--quick] [--only loopback|wan]`: the native chunk mover.

Measured in one run, on the same chunks:

* iperf3 (1 and 4 streams): the physical ceiling of loopback TCP;
* the mover fetching every chunk of a dataset into a fresh store, 1 and 4
  streams, end to end (digests verified, packs and index committed):
  plaintext streams (sendfile and pread + send) beside encrypted ones
  (AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 records; the default
  cipher is the one this CPU gets), each case twice with the cases
  interleaved, best run shown; and its wire alone (spools discarded
  unverified);
* CPU seconds per GB of every row (both ends, from the processes' rusage,
  not wall time: on a shared 2-core host the wall-clock ratio swings), and
  the record layer's own sealing rate of the default cipher on one core as
  its ceiling (AES-GCM: intel-ipsec-mb where built with it, else OpenSSL; the
  table names which), and `openssl speed` beside it;
* an aiohttp server/client pair moving the same blobs (length-prefixed,
  digests verified by the client);
* writing and fsyncing the same bytes, through the page cache and with O_DIRECT
  (as the mover writes its spools): the durable-write ceilings of the disk;
* rsync (daemon mode over loopback TCP) of the same files;
* dedup-aware resume: after version N, version N+1 moves only the chunks N
  lacks; bytes on the wire against rsync's delta transfer;
* an emulated WAN (gfs.testing.wan: two network namespaces, 40 ms RTT, 0.1%
  loss, 1 Gbit/s), twice: with the kernel's default congestion control for
  every flow, and with reno as the sites' default while the mover server
  asks for bbr on its sockets. The mover with several streams against one
  aiohttp stream, iperf3 moving as many bytes, and rsync.

Targets (issue 3): on loopback the mover end to end (its best stream count)
at >= 80% of single-stream iperf3 (the line also gives `best_vs_disk`, the
same rate against the disk's O_DIRECT durable-write ceiling); on the WAN
>= 80% of the link rate and >= 3x one HTTP stream (with bbr everywhere one
HTTP stream already holds a third or more of the link, so that run is held
to the link target only). Issue 13: the encrypted mover (default cipher)
keeps >= 90% of the plaintext mover's throughput on loopback (best of each)
and >= 80% of the link on the WAN, and its encrypted, verified, committed
transfer costs <= 1.5x iperf3's CPU seconds per GB.
"""
from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing
import os
import random
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.report import headline, load_average, table
from gfs import _mover, mover
from gfs.client import Client
from gfs.codec import decode_blob

SECRET = os.urandom(32)
DEFAULT_CIPHER = _mover.cipher_name(_mover.CIPHER_AUTO)
CIPHER_CODE = mover.CIPHERS[DEFAULT_CIPHER]
CIPHER_BACKEND = _mover.cipher_backend(CIPHER_CODE)  # intel-ipsec-mb or OpenSSL
T = TypeVar("T")


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its reaped children so far."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                  resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measured(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    """fn(*args) and the CPU seconds it took (this process and the children it reaped)."""
    start = _cpu()
    out = fn(*args)
    return out, _cpu() - start


def cipher_speed(cipher: str = DEFAULT_CIPHER) -> float | None:
    """Bytes per second of `openssl speed -evp CIPHER` on 256 KiB blocks (one core)."""
    if shutil.which("openssl") is None:
        return None
    out = subprocess.run(["openssl", "speed", "-evp", cipher, "-seconds", "1", "-bytes",
                          "262144"], capture_output=True, text=True, timeout=60)
    m = re.search(rf"^{re.escape(cipher)}\s+([\d.]+)k", out.stdout, re.M | re.I)
    return float(m.group(1)) * 1000 if m else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _make_data(root: Path, files: int, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i:03d}.bin").write_bytes(rnd.randbytes(size))


def _next_version(src: Path, dst: Path, seed: int) -> None:
    """Version N+1: a copy where one file in ten gets 4 KiB inserted in its middle."""
    rnd = random.Random(seed)
    shutil.copytree(src, dst)
    for i, f in enumerate(sorted(dst.iterdir())):
        if i % 10 == 0:
            data = f.read_bytes()
            mid = len(data) // 2
            f.write_bytes(data[:mid] + rnd.randbytes(4096) + data[mid:])


# -- iperf3 ----------------------------------------------------------------------------


def iperf3(streams: int, seconds: float) -> float | None:
    """Loopback bytes per second measured by iperf3 (None if it is not installed)."""
    if shutil.which("iperf3") is None:
        return None
    port = _free_port()
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        # The probe above used the server's one test; start another.
        server.wait(timeout=5)
        server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t",
                              str(seconds), "-P", str(streams), "-J"],
                             capture_output=True, text=True, timeout=seconds + 20, check=True)
        rate: float = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8
        return rate
    except (subprocess.SubprocessError, KeyError, ValueError):
        return None
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=5)


# -- mover ---------------------------------------------------------------------------------


def mover_fetch(src: Client, ids: list[bytes], work: Path, streams: int,
                sendfile: bool, cipher: str = "auto") -> tuple[float, int]:
    """(seconds, blob bytes) of fetching `ids` from `src` into a fresh store.

    `cipher` "none": plaintext streams (the server allows them for this run);
    an encrypted stream sends with pread + send whatever `sendfile` says.
    """
    dest = work / f"dst-{streams}-{int(sendfile)}"
    with Client.init(dest) as dst, mover.MoverServer(src, SECRET, sendfile=sendfile,
                                                     allow_plaintext=True) as srv:
        start = time.perf_counter()
        stats = mover.fetch(dst, srv.address, ids, SECRET, streams=streams, cipher=cipher)
        seconds = time.perf_counter() - start
    shutil.rmtree(dest)
    return seconds, stats.bytes


def disk_write(work: Path, nbytes: int, direct: bool = False) -> tuple[float, int] | None:
    """(seconds, bytes) of writing `nbytes` to a new file in `work` and fsyncing it: the
    ceiling of any durable receiver on this disk (the mover commits what it receives).

    `direct`: 4 MiB O_DIRECT writes from an aligned buffer by two threads (two
    writes in flight), as the mover's spools are written where the file system
    allows it (None where it does not).
    """
    if direct and not mover.direct_io_supported(str(work)):
        return None
    size = 4 << 20 if direct else 1 << 20
    block = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    block.write(os.urandom(size))
    path = work / "disk-ceiling.tmp"
    count = nbytes // size
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0),
                 0o600)
    try:
        if direct:
            failed: list[OSError] = []

            def writer(first: int) -> None:
                try:
                    for k in range(first, count, 2):
                        os.pwrite(fd, block, k * size)
                except OSError as e:
                    failed.append(e)

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if failed:
                raise failed[0]
        else:
            for _ in range(count):
                os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    block.close()
    return seconds, count * size


def mover_wire(src: Client, ids: list[bytes], work: Path, streams: int,
               cipher: str = "auto") -> tuple[float, int]:
    """The wire alone: spools are written as a receiver writes them (O_DIRECT where the
    disk allows it), then deleted unverified (what C moves, not a usable transfer)."""
    spool = work / "spool"
    spool.mkdir(exist_ok=True)
    direct = mover.TUNING.direct and mover.direct_io_supported(str(spool))

    def drop(path: str, entries: bytes) -> tuple[int, int]:
        os.unlink(path)
        return len(entries) // _mover.ENTRY_LEN, 0

    per = -(-len(ids) // streams)
    parts = [b"".join(ids[k : k + per]) for k in range(0, len(ids), per)]
    with mover.MoverServer(src, SECRET, allow_plaintext=True) as srv:
        start = time.perf_counter()
        res = _mover.transfer(_mover.OP_FETCH, "127.0.0.1", srv.port, SECRET, parts,
                              spool=drop, spool_dir=str(spool), spool_limit=64 << 20,
                              direct=direct, cipher=mover.CIPHERS[cipher])
        seconds = time.perf_counter() - start
    assert all(r[0] == 0 for r in res), res
    return seconds, sum(r[2] for r in res)


# -- aiohttp --------------------------------------------------------------------------------


def _aiohttp_server(state: str, port: int, ready: multiprocessing.synchronize.Event,
                    host: str = "127.0.0.1") -> None:
    _serve_http(state, host, port, ready.set)


def _serve_http(state: str, host: str, port: int, on_ready: Callable[[], object]) -> None:
    """Serve POST /chunks (a body of ids -> length-prefixed blobs) until killed."""
    import asyncio

    from aiohttp import web

    client = Client(state)
    source = mover.Source(client.store)

    async def chunks(request: web.Request) -> web.StreamResponse:
        ids = await request.read()
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        for path, off, length in (w for w in source.resolve(ids) if w is not None):
            with open(path, "rb") as f:
                f.seek(off)
                blob = f.read(length)
            await resp.write(struct.pack("<I", length) + blob)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/chunks", chunks)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        on_ready()
        await asyncio.Event().wait()

    asyncio.run(serve())


async def _http_fetch(host: str, port: int, ids: list[bytes],
                      max_seconds: float = 0.0) -> int:
    """Blob bytes fetched from the aiohttp server, every digest verified (one stream).

    With `max_seconds`, stops after the batch that passes it (slow links).
    """
    import aiohttp

    total = 0
    end = time.perf_counter() + max_seconds if max_seconds else None
    async with aiohttp.ClientSession() as session:
        for k in range(0, len(ids), 4096):
            batch = ids[k : k + 4096]
            url = f"http://{host}:{port}/chunks"
            async with session.post(url, data=b"".join(batch)) as resp:
                for cid in batch:
                    if end is not None and time.perf_counter() > end:
                        return total
                    (n,) = struct.unpack("<I", await resp.content.readexactly(4))
                    blob = await resp.content.readexactly(n)
                    decode_blob(blob, expect_id=cid)
                    total += n
    return total


def aiohttp_fetch(src: Client, ids: list[bytes]) -> tuple[float, int] | None:
    try:
        import asyncio

        import aiohttp  # noqa: F401
    except ImportError:
        return None
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_aiohttp_server, args=(str(src.state), port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            return None

        start = time.perf_counter()
        nbytes = asyncio.run(_http_fetch("127.0.0.1", port, ids))
        return time.perf_counter() - start, nbytes
    finally:
        proc.terminate()
        proc.join(5)


# -- rsync ------------------------------------------------------------------------------------


def _rsync_daemon(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    conf = work / "rsyncd.conf"
    conf.write_text(f"use chroot = no\n[data]\npath = {root}\nread only = yes\n")
    proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", "--address", "127.0.0.1",
                             "--port", str(port), "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def rsync(root: Path, dest: Path, work: Path, subdir: str) -> tuple[float, int] | None:
    """(seconds, bytes received by the client) of rsync'ing root/subdir/ to dest."""
    if shutil.which("rsync") is None:
        return None
    proc, port = _rsync_daemon(root, work)
    try:
        start = time.perf_counter()
        out = subprocess.run(["rsync", "-a", "--stats", "--no-inc-recursive",
                              f"rsync://127.0.0.1:{port}/data/{subdir}/", str(dest) + "/"],
                             capture_output=True, text=True, timeout=600, check=True)
        seconds = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(5)
    m = re.search(r"Total bytes received: ([\d,.]+)", out.stdout)
    return seconds, int(re.sub(r"[,.]", "", m.group(1))) if m else 0


# -- emulated WAN --------------------------------------------------------------------------

WAN_RTT, WAN_LOSS, WAN_RATE = 0.040, 0.001, 1e9
REPO = Path(__file__).resolve().parent.parent
_CHILD = "import sys; from bench.mover import _child; sys.exit(_child(sys.argv[1:]))"


def _child(argv: list[str]) -> int:
    """Halves of the WAN cases, run inside a site's namespace (prints JSON or `ready`)."""
    import asyncio

    cmd, *rest = argv
    if cmd == "http-serve":
        state, host, port = rest
        _serve_http(state, host, int(port), lambda: print("ready", flush=True))
        return 0
    ids_raw = Path(rest[-1]).read_bytes()
    ids = [ids_raw[k : k + 16] for k in range(0, len(ids_raw), 16)]
    start = time.perf_counter()
    if cmd == "http-fetch":
        nbytes = asyncio.run(_http_fetch(rest[0], int(rest[1]), ids, float(rest[2])))
        out: dict[str, object] = {"bytes": nbytes}
    elif cmd == "mover-fetch":
        dest, host, port, streams, cipher = rest[:5]
        with Client.init(dest) as dst:
            start = time.perf_counter()  # the transfer, not the new store's set-up
            stats = mover.fetch(dst, (host, int(port)), ids, bytes.fromhex(
                os.environ["HUTONG_MOVER_SECRET"]), streams=int(streams), cipher=cipher)
            end = time.perf_counter()
        out = {"bytes": stats.bytes, "chunks": stats.chunks, "retries": stats.retries,
               "seconds": end - start, "cipher": stats.cipher}
    else:
        raise SystemExit(f"bench.mover: unknown child command {cmd!r}")
    out.setdefault("seconds", time.perf_counter() - start)
    print(json.dumps(out))
    return 0


def wan_cases(src_state: Path, data: Path, ids: list[bytes], work: Path, quick: bool,
              congestion: str | None) -> tuple[list[list[object]], dict[str, float]] | str:
    """Rows of the WAN cases, or why the emulated WAN cannot be built here.

    `congestion`: None keeps the kernel's default congestion control for
    everything; a name (e.g. "reno") makes it the sites' default, and the
    mover server then asks for bbr on its own sockets.
    """
    from gfs.testing.wan import emulated_wan, unavailable_reason

    reason = unavailable_reason()
    if reason:
        return reason
    idsfile = work / "wan-ids"
    idsfile.write_bytes(b"".join(ids))
    env = {**os.environ, "HUTONG_MOVER_SECRET": SECRET.hex(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    py = sys.executable
    rates: dict[str, float] = {}
    rows: list[list[object]] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    total = 0  # blob bytes the mover moved: iperf3 then moves as many
    slow = congestion is not None  # loss-based default: single streams crawl

    def add(name: str, nbytes: int, seconds: float, note: str, bps: float | None = None) -> None:
        rate = bps if bps is not None else nbytes * 8 / seconds if seconds else 0.0
        rates[name] = rate
        rows.append([name, round(nbytes / 2**20) if nbytes else "-", round(seconds, 2),
                     round(rate / 1e6), f"{100 * rate / WAN_RATE:.0f}%", note])

    # The delay line is the emulated network: on a busy shared machine it runs at
    # a raised priority (root) so that other work does not stretch the link.
    with emulated_wan(("dst", "src"), rtt=WAN_RTT, loss=WAN_LOSS, rate_bps=WAN_RATE,
                      congestion=congestion, nice=-10 if os.geteuid() == 0 else 0) as wan:
        there = wan["src"].address
        serve = [py, "-m", "gfs.cli", "mover", "serve", "--state", str(src_state), "--host",
                 "0.0.0.0", "--port", "7070", "--quiet", "--allow-plaintext"]
        wan.popen("src", serve + (["--congestion", "bbr"] if congestion else []), env=env,
                  **quiet)
        wan.popen("src", [py, "-c", _CHILD, "http-serve", str(src_state), "0.0.0.0", "8080"],
                  env=env, cwd=REPO, **quiet)
        wan.wait_tcp("dst", there, 7070)
        wan.wait_tcp("dst", there, 8080)
        # Warm-up (first connections, the server's first reads): 1/16 of the chunks.
        warm = work / "wan-warm-ids"
        warm.write_bytes(b"".join(ids[: max(1, len(ids) // 16)]))
        wan.run("dst", [py, "-c", _CHILD, "mover-fetch", str(work / "wan-warm"), there, "7070",
                        "4", "auto", str(warm)], env=env, cwd=REPO, timeout=600)
        shutil.rmtree(work / "wan-warm", ignore_errors=True)
        for streams in ((4,) if quick and slow else (4, 8) if quick else (4, 8, 16)):
            for cipher in ("none", "auto"):
                out = wan.run("dst", [py, "-c", _CHILD, "mover-fetch",
                                      str(work / f"wan-{streams}"), there, "7070", str(streams),
                                      cipher, str(idsfile)], env=env, cwd=REPO, timeout=600,
                              check=False)
                shutil.rmtree(work / f"wan-{streams}", ignore_errors=True)
                if out.returncode:  # a failed transfer is a row saying why, not a crash
                    why = (out.stderr.strip().splitlines() or ["no message"])[-1]
                    rows.append([f"mover fetch, {streams} streams, {cipher}", "-", "-", "-",
                                 "-", f"failed: {why[:100]}"])
                    continue
                r = json.loads(out.stdout)
                total = r["bytes"]
                label = "plaintext" if r["cipher"] == "none" else r["cipher"]
                add(f"mover fetch, {streams} streams, {label}", r["bytes"], r["seconds"],
                    f"verified + committed, {r['retries']} retries"
                    + (", bbr sockets" if congestion else ""))
        bound = (4.0 if quick else 8.0) if slow else 0.0
        out = wan.run("dst", [py, "-c", _CHILD, "http-fetch", there, "8080", str(bound),
                              str(idsfile)], env=env, cwd=REPO, timeout=600)
        r = json.loads(out.stdout)
        add("aiohttp, 1 stream", r["bytes"], r["seconds"],
            "digests verified" + (f", first {bound:g} s" if slow else ""))
        if shutil.which("iperf3"):
            wan.popen("src", ["iperf3", "-s"], **quiet)
            wan.wait_tcp("dst", there, 5201)
            for p in ((1,) if slow else (4,)) if quick else (1, 4, 8):
                size = ["-t", "3"] if slow or not total else ["-n", str(total)]
                out = wan.run("dst", ["iperf3", "-c", there, "-R", "-J", "-P", str(p), *size],
                              timeout=120)
                end = json.loads(out.stdout)["end"]["sum_received"]
                add(f"iperf3, {p} stream{'s' * (p > 1)}", int(end["bytes"]), end["seconds"],
                    "TCP, same bytes as the mover" if size[0] == "-n" else "TCP, 3 s")
        if shutil.which("rsync") and not slow and not quick:
            conf = work / "rsyncd-wan.conf"
            conf.write_text(f"use chroot = no\n[data]\npath = {data}\nread only = yes\n")
            wan.popen("src", ["rsync", "--daemon", "--no-detach", "--address", "0.0.0.0",
                              "--port", "8730", "--config", str(conf)], **quiet)
            wan.wait_tcp("dst", there, 8730)
            start = time.perf_counter()
            out = wan.run("dst", ["rsync", "-a", "--stats", f"rsync://{there}:8730/data/v1/",
                                  str(work / "wan-rsync") + "/"], timeout=600)
            seconds = time.perf_counter() - start
            m = re.search(r"Total bytes received: ([\d,.]+)", out.stdout)
            add("rsync daemon, 1 stream", int(re.sub(r"[,.]", "", m.group(1))) if m else 0,
                seconds, "whole files")
            shutil.rmtree(work / "wan-rsync", ignore_errors=True)
    return rows, rates


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench mover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    p.add_argument("--only", choices=("loopback", "wan"),
                   help="run only the loopback or only the emulated-WAN cases")
    args = p.parse_args(argv)
    files, size = (16, 16 << 20) if args.quick else (64, 16 << 20)
    work = Path(tempfile.mkdtemp(prefix="hutong-bench-mover-", dir=args.work))
    try:
        return _run(work, files, size, 2.0 if args.quick else 5.0, args.quick, args.only)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gbs(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def _run(work: Path, files: int, size: int, iperf_seconds: float, quick: bool,
         only: str | None) -> int:
    data = work / "data"
    _make_data(data / "v1", files, size, 1)
    _next_version(data / "v1", data / "v2", 2)
    print(f"dataset: {files} files x {size >> 20} MiB of random bytes "
          f"(incompressible: blobs as large as the data); loopback; shared 2-core machine; "
          f"load {load_average()}")
    with Client.init(work / "src") as src:
        src.put(str(data / "v1"), "/v1")
        src.put(str(data / "v2"), "/v2")
        ids = mover.tree_chunks(src, "/v1")
        figures: dict[str, object] = {}
        met = True
        if only != "wan":
            met &= _loopback(work, data, src, ids, iperf_seconds, figures)
    if only != "loopback":
        met &= _wan(work, data, ids, quick, figures)
    figures["load"] = load_average()
    print(headline("mover", met, **figures))
    return 0


#: Loopback mover cases: (label, cipher, sendfile). Encrypted streams send with pread + send.
CASES = (("plaintext, sendfile", "none", True), ("plaintext, pread+send", "none", False),
         ("aes-128-gcm", "aes-128-gcm", False), ("aes-256-gcm", "aes-256-gcm", False),
         ("chacha20-poly1305", "chacha20-poly1305", False))


def _loopback(work: Path, data: Path, src: Client, ids: list[bytes], iperf_seconds: float,
              figures: dict[str, object]) -> bool:
    rows: list[list[object]] = []
    (ip1, ip1_cpu), (ip4, ip4_cpu) = (measured(iperf3, n, iperf_seconds) for n in (1, 4))
    base = ip1 or 0.0
    cpu_per_gb: dict[str, float] = {}

    def row(name: str, result: tuple[float, int] | None, note: str = "",
            cpu: float | None = None) -> float:
        if result is None:
            rows.append([name, "-", "-", "-", "-", "-", note or "not available"])
            return 0.0
        seconds, nbytes = result
        rate = nbytes / seconds if seconds else 0.0
        pct = f"{100 * rate / base:.0f}%" if base else "-"
        per_gb = cpu / (nbytes / 1e9) if cpu is not None and nbytes else None
        if per_gb is not None:
            cpu_per_gb[name] = per_gb
        rows.append([name, round(nbytes / 2**20), round(seconds, 2), round(rate / 1e9, 2),
                     pct, round(per_gb, 2) if per_gb is not None else "-", note])
        return rate

    for name, rate_or_none, cpu in (("iperf3, 1 stream", ip1, ip1_cpu),
                                    ("iperf3, 4 streams", ip4, ip4_cpu)):
        if rate_or_none is None:
            row(name, None)
        else:
            row(name, (iperf_seconds, int(rate_or_none * iperf_seconds)),
                "ceiling (both iperf3 processes' CPU)", cpu)
    ossl = cipher_speed()
    # Best of three short samples: a burst of load on the shared host hurts one.
    aes = max(_mover.cipher_rate(CIPHER_CODE, 0.3) for _ in range(3)) or None
    for label, speed, note in (
            (f"mover record layer, {DEFAULT_CIPHER}", aes,
             f"one core, 256 KiB records sealed in place by {CIPHER_BACKEND}: the cipher's "
             "ceiling (one pass)"),
            (f"openssl speed {DEFAULT_CIPHER}", ossl,
             "one core, 256 KiB blocks: system OpenSSL, for comparison")):
        rows.append([label, "-", "-", round(speed / 1e9, 2) if speed else "-",
                     f"{100 * speed / base:.0f}%" if speed and base else "-",
                     round(1 / (speed / 1e9), 2) if speed else "-", note])
    # Every case twice, the cases interleaved (a burst of load on the shared
    # host then hurts one run of each, not one case); the best run is shown.
    best: dict[str, tuple[tuple[float, int], float]] = {}
    for _ in range(2):
        for streams in (1, 4):
            for label, cipher, sendfile in CASES:
                name = f"mover fetch, {streams} stream{'s' * (streams > 1)}, {label}"
                res, cpu = measured(mover_fetch, src, ids, work, streams, sendfile, cipher)
                if name not in best or res[1] / res[0] > best[name][0][1] / best[name][0][0]:
                    best[name] = res, cpu
    results = {name: row(name, res, "verified + committed", cpu)
               for name, (res, cpu) in best.items()}
    for streams in (1, 4):
        for cipher in ("none", DEFAULT_CIPHER):
            res, cpu = measured(mover_wire, src, ids, work, streams, cipher)
            row(f"mover wire only, {streams} stream{'s' * (streams > 1)}, "
                f"{'plaintext' if cipher == 'none' else cipher}", res,
                "spools dropped, not verified", cpu)
    res_http, cpu = measured(aiohttp_fetch, src, ids)
    row("aiohttp, 1 stream", res_http, "digests verified", cpu)
    total = sum(p.stat().st_size for p in (data / "v1").iterdir())
    row("disk: write + fsync, same bytes", disk_write(work, total),
        "durable-write ceiling, page cache")
    disk = row("disk: O_DIRECT write + fsync", disk_write(work, total, direct=True),
               "durable-write ceiling, as spools")
    res_rsync, cpu = measured(rsync, data, work / "rsync-v1", work, "v1")
    row("rsync daemon, 1 stream", res_rsync, "whole files, no verify", cpu)
    # Dedup-aware resume: v1 is at the destination, then v2.
    v2 = mover.tree_chunks(src, "/v2")
    with Client.init(work / "resume") as dst, mover.MoverServer(src, SECRET) as srv:
        mover.fetch(dst, srv.address, ids, SECRET)
        delta = mover.fetch(dst, srv.address, v2, SECRET)
    rs = rsync(data, work / "rsync-v1", work, "v2")
    rows.append(["resume v1 -> v2: mover (KiB)", round(delta.bytes / 1024),
                 round(delta.seconds, 2), "-", "-", "-",
                 f"{delta.chunks} of {len(v2)} chunks sent, {delta.cipher}"])
    rows.append(["resume v1 -> v2: rsync (KiB)", round(rs[1] / 1024) if rs else "-",
                 round(rs[0], 2) if rs else "-", "-", "-", "-", "delta transfer"])
    print(table(["case", "MiB", "seconds", "GB/s", "of iperf3 1-stream", "CPU s/GB", "note"],
                rows))
    best_name = max(results, key=lambda k: results[k])
    one = max(v for k, v in results.items() if ", 1 stream," in k)
    top = results[best_name]
    print(f"best: {best_name}: " + (f"{top / base:.0%} of iperf3 1-stream (target 80%)"
                                    if base else "no iperf3 ceiling")
          + (f", {top / disk:.0%} of the O_DIRECT durable-write ceiling" if disk else ""))
    enc_met = _encryption_figures(results, cpu_per_gb, aes, figures)
    figures.update(one_stream_gbs=round(one / 1e9, 2),
                   four_stream_gbs=round(max(v for k, v in results.items() if "4 s" in k)
                                         / 1e9, 2),
                   iperf3_gbs=round(base / 1e9, 2),
                   ratio=round(one / base, 2) if base else 0.0,
                   best_ratio=round(top / base, 2) if base else 0.0,
                   best_vs_disk=round(top / disk, 2) if disk else "-",
                   cipher_gbs=round(aes / 1e9, 2) if aes else "-",
                   openssl_gbs=round(ossl / 1e9, 2) if ossl else "-",
                   resume_kib=round(delta.bytes / 1024),
                   rsync_resume_kib=round(rs[1] / 1024) if rs else "-")
    return bool(base) and top >= 0.8 * base and enc_met


def _encryption_figures(results: dict[str, float], cpu_per_gb: dict[str, float],
                        aes: float | None, figures: dict[str, object]) -> bool:
    """Print the issue-13 comparison and the cipher's floor; True if the loopback
    targets are met.

    The floor: sealing at one end and opening at the other cost at least two
    cipher passes (2 / `aes` s/GB) on top of what the plaintext mover spends,
    and on top of iperf3's bare copy.
    """
    plain = {k: v for k, v in results.items() if "plaintext" in k}
    enc = {k: v for k, v in results.items() if k.endswith(DEFAULT_CIPHER)}
    p_name, e_name = max(plain, key=lambda k: plain[k]), max(enc, key=lambda k: enc[k])
    ratio = enc[e_name] / plain[p_name] if plain[p_name] else 0.0
    ip_cpu = cpu_per_gb.get("iperf3, 1 stream")
    e_cpu, p_cpu = cpu_per_gb[e_name], cpu_per_gb[p_name]
    cpu_ratio = e_cpu / ip_cpu if ip_cpu else None
    print(f"encrypted ({DEFAULT_CIPHER}, the cipher this CPU gets): {e_name}: "
          f"{enc[e_name] / 1e9:.2f} GB/s = {ratio:.0%} of the best plaintext run "
          f"({p_name}: {plain[p_name] / 1e9:.2f} GB/s) (target 90%)")
    print(f"CPU s/GB, both ends: encrypted {e_cpu:.2f}, plaintext {p_cpu:.2f}, "
          f"iperf3 1-stream {ip_cpu:.2f}" if ip_cpu else "no iperf3 CPU figure", end="")
    print(f"; encrypted / iperf3 = {cpu_ratio:.1f}x (target <= 1.5x)" if cpu_ratio else "")
    if aes:
        cipher = 2 / (aes / 1e9)
        floor_ratio = p_cpu / (p_cpu + cipher)
        print(f"floor: the cipher at both ends costs {cipher:.2f} s/GB; plaintext + cipher = "
              f"{p_cpu + cipher:.2f} s/GB (encrypted measured {e_cpu:.2f}), so on a CPU-bound "
              f"host encrypted <= {floor_ratio:.0%} of plaintext"
              + (f"; iperf3 + cipher = {(ip_cpu + cipher) / ip_cpu:.1f}x iperf3" if ip_cpu
                 else ""))
        figures.update(cipher_floor_s_per_gb=round(cipher, 2),
                       enc_floor_vs_plain=round(floor_ratio, 2),
                       floor_vs_iperf3=round((ip_cpu + cipher) / ip_cpu, 2) if ip_cpu else "-")
    figures.update(cipher=DEFAULT_CIPHER, enc_gbs=round(enc[e_name] / 1e9, 2),
                   plain_gbs=round(plain[p_name] / 1e9, 2), enc_vs_plain=round(ratio, 2),
                   enc_cpu_s_per_gb=round(e_cpu, 2), plain_cpu_s_per_gb=round(p_cpu, 2),
                   iperf3_cpu_s_per_gb=round(ip_cpu, 2) if ip_cpu else "-",
                   enc_cpu_vs_iperf3=round(cpu_ratio, 2) if cpu_ratio else "-")
    return ratio >= 0.9 and cpu_ratio is not None and cpu_ratio <= 1.5


def _wan(work: Path, data: Path, ids: list[bytes], quick: bool,
         figures: dict[str, object]) -> bool:
    default = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    met = True
    for label, congestion in ((default, None), ("reno", "reno")):
        note = (f"every flow {default} (the kernel default)" if congestion is None else
                "sites default to reno (loss-based, like cubic); the mover server asks "
                "for bbr on its sockets")
        print(f"\nemulated WAN (gfs.testing.wan): {WAN_RTT * 1000:.0f} ms RTT, "
              f"{WAN_LOSS:.1%} loss each way, {WAN_RATE / 1e9:g} Gbit/s tbf, MTU 1500; "
              f"{note}; {len(ids)} chunks of v1")
        result = wan_cases(work / "src", data, ids, work, quick, congestion)
        if isinstance(result, str):
            print(f"emulated WAN skipped: {result}")
            return False
        rows, rates = result
        http = rates.get("aiohttp, 1 stream", 0.0)
        for row in rows:
            rate = rates.get(str(row[0]))
            row.insert(5, f"{rate / http:.1f}x" if http and rate is not None else "-")
        print(table(["case", "MiB", "seconds", "Mbit/s", "of link", "of HTTP", "note"], rows))
        # The targets hold the encrypted mover (what sites run); plaintext is beside it.
        best = max((v for k, v in rates.items() if k.startswith("mover")
                    and "plaintext" not in k), default=0.0)
        plain = max((v for k, v in rates.items() if k.startswith("mover") and "plaintext" in k),
                    default=0.0)
        link_ok, http_ok = best >= 0.8 * WAN_RATE, bool(http) and best >= 3 * http
        print(f"encrypted mover best {best / 1e6:.0f} Mbit/s: {best / WAN_RATE:.0%} of the "
              f"link ({'>=' if link_ok else '<'} 80%), {best / http if http else 0:.1f}x "
              f"single-stream HTTP ({'>=' if http_ok else '<'} 3x); plaintext best "
              f"{plain / 1e6:.0f} Mbit/s ({best / plain if plain else 0:.0%} of it encrypted)")
        figures[f"wan_{label}_plain_mbits"] = round(plain / 1e6)
        figures[f"wan_{label}_mover_mbits"] = round(best / 1e6)
        figures[f"wan_{label}_link_ratio"] = round(best / WAN_RATE, 2)
        figures[f"wan_{label}_vs_http"] = round(best / http, 1) if http else "-"
        # With bbr everywhere one HTTP stream already holds ~half the link, so 3x
        # is out of reach by construction; that case is held to the link target.
        met &= link_ok and (http_ok or congestion is None)
    return met
