"""`python -m bench metaops [--quick]`: namespace operations per second through a site.

A registry and one primary site run as processes on loopback. A federation client
(signed requests, one keep-alive connection) creates files (write of 100 bytes:
has, put, commit), makes directories, stats and lists; the same operations run
on a local directory (os calls) in the same run for the ratio. Target: stat through the
site at >= 1000 ops/s (a round trip with an Ed25519 signature and verification each).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import headline, table
from gfs.federation.testing import Federation


def _rate(n: int, op: Callable[[int], object]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        op(i)
    return n / (time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench metaops")
    ap.add_argument("--quick", action="store_true", help="fewer operations (under a minute)")
    args = ap.parse_args(argv)
    n = 200 if args.quick else 2000
    payload = b"x" * 100
    with tempfile.TemporaryDirectory(prefix="bench-metaops-") as tmp:
        root = Path(tmp)
        local = root / "local"
        local.mkdir()
        loc: dict[str, float] = {
            "mkdir": _rate(n, lambda i: os.mkdir(local / f"d{i}")),
            "create": _rate(n, lambda i: (local / f"d{i}" / "f").write_bytes(payload)),
            "stat": _rate(n, lambda i: os.stat(local / f"d{i}" / "f")),
            "ls": _rate(n, lambda i: os.listdir(local / f"d{i}")),
        }
        with Federation(root / "fed", heartbeat=2.0) as fed:
            fed.registry()
            fed.site("m1", "bank-m", "cn-west", primary=True)
            with fed.client("bank-m") as fc:
                fc.primary("/bank-m")
                site = fc.site("m1")
                fed_rates: dict[str, float] = {
                    "mkdir": _rate(n, lambda i: fc.mkdir(f"/bank-m/d{i}")),
                    "create": _rate(n, lambda i: fc.write_bytes(f"/bank-m/d{i}/f", payload)),
                    "stat": _rate(n, lambda i: site.call(
                        "GET", "/v1/ns/stat", query={"path": f"/bank-m/d{i}/f"})),
                    "ls": _rate(n, lambda i: site.call(
                        "GET", "/v1/ns/list", query={"path": f"/bank-m/d{i}"})),
                }
    rows = [(op, round(fed_rates[op]), round(loc[op]), fed_rates[op] / loc[op])
            for op in ("mkdir", "create", "stat", "ls")]
    print(f"{n} operations each; site on loopback, signed requests, one connection")
    print(table(["op", "site ops/s", "local dir ops/s", "site/local"], rows))
    print(headline("metaops", fed_rates["stat"] >= 1000, stat_ops=round(fed_rates["stat"]),
                   create_ops=round(fed_rates["create"]), mkdir_ops=round(fed_rates["mkdir"])))
    return 0
