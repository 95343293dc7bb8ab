"""`python -m bench pjc [--quick] [--rows N] [--keys K] [--sites]`: a private fact-dimension join.

The fact table (N rows over K keys, many rows per key, a group column `g`) is
one entity's, the dimension table (one row per key, an integer value `v` and a
real value `vf`) the other's. Hutong runs the full `join` job

    SELECT g, count(*), sum(v), avg(v) FROM fact JOIN dim USING (k) GROUP BY g

(BFV for `v`, CKKS for `vf`): two party processes over an authenticated
loopback channel on one host, the group column on the fact side, the value on
the dimension side; with `--sites` also the BFV join between two sites on two
network-namespace hosts over the emulated WAN (40 ms RTT, 0.1% loss), each
half at its entity's primary site, talking mutual TLS (bench/_pjc_sites.py).
DuckDB runs the same SQL on the plaintext at one site in the same run.

Target: the answer equals DuckDB's exactly for `v` (BFV) and within
0.05 + 1e-9 |sum| per group for `vf` (CKKS). Reported: seconds, bytes exchanged,
the largest error over the groups.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from bench.report import headline, table
from gfs.client import Client
from privacy.ec import backend
from privacy.jobs import JobSpec, run_job
from privacy.testing import open_policy, put_policy, put_table

FACT = "/shop-a/fact.parquet"
DIM = "/ref-b/dim.parquet"
GROUPS = 8


def data(n: int, keys: int, seed: int = 3) -> tuple[pa.Table, pa.Table]:
    """The fact table (n rows over `keys` keys plus 10% unmatched) and the dimension."""
    rnd = random.Random(seed)
    fact = pa.table({"k": [rnd.randrange(keys + keys // 10) for _ in range(n)],
                     "g": [f"g{rnd.randrange(GROUPS)}" for _ in range(n)]})
    vs = [rnd.randrange(0, 100_000) for _ in range(keys)]
    dim = pa.table({"k": list(range(keys)), "v": vs, "vf": [v / 7 for v in vs]})
    return fact, dim


def plaintext(fact: pa.Table, dim: pa.Table, col: str) -> tuple[float, dict[str, Any]]:
    """Seconds and the answer of the same SQL in DuckDB on the plaintext."""
    con = duckdb.connect()
    con.register("fact", fact)
    con.register("dim", dim)
    t0 = time.perf_counter()
    rows = con.execute(f"SELECT g, count(*), sum({col}) FROM fact JOIN dim USING (k) "
                       f"GROUP BY g").fetchall()
    return time.perf_counter() - t0, {g: (int(c), float(s)) for g, c, s in rows}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench pjc")
    ap.add_argument("--quick", action="store_true", help="100k fact rows over 10k keys")
    ap.add_argument("--rows", type=int, help="fact rows (default 1,000,000)")
    ap.add_argument("--keys", type=int, help="dimension rows (default rows / 10)")
    ap.add_argument("--sites", action="store_true",
                    help="also between two sites on two network-namespace hosts (WAN)")
    args = ap.parse_args(argv)
    n = args.rows or (100_000 if args.quick else 1_000_000)
    keys = args.keys or n // 10
    fact, dim = data(n, keys)
    rows = []
    ok = True
    errors: dict[str, float] = {}
    policies = {"shop-a": open_policy("shop-a", "ref-b", FACT, key="k", columns=["g"],
                                      group_by=["g"]),
                "ref-b": open_policy("ref-b", "shop-a", DIM, key="k", columns=["v", "vf"])}
    with tempfile.TemporaryDirectory(prefix="bench-pjc-") as tmp:
        state = Path(tmp) / "state"
        with Client.init(state) as fs:
            put_table(fs, FACT, fact)
            put_table(fs, DIM, dim)
            for doc in policies.values():
                put_policy(fs, doc)
        for col, scheme in (("v", "bfv"), ("vf", "ckks")):
            p_s, want = plaintext(fact, dim, col)
            spec = JobSpec("join", FACT, DIM, "k", aggs=f"count(*),sum({col})", group_by="g",
                           scheme=scheme)
            t0 = time.perf_counter()
            ans = run_job(spec, state).answer
            secs = time.perf_counter() - t0
            good, err = _compare(ans, want, col, scheme)
            ok, errors[scheme] = ok and good, err
            rows.append(_row(f"{n:,} x {keys:,}", f"hutong join {scheme} ({backend()}), "
                             f"one host", secs, ans, err))
            rows.append(["", f"DuckDB plaintext ({col}), one site", round(p_s, 3), "-", "0",
                         len(want), "0", _load()])
        if args.sites:
            from bench import _pjc_sites

            p_s, want = plaintext(fact, dim, "v")
            spec = JobSpec("join", FACT, DIM, "k", aggs="count(*),sum(v)", group_by="g",
                           scheme="bfv")
            ans = _pjc_sites.run(Path(tmp), {"fact": ("a1", FACT, fact),
                                             "dim": ("b1", DIM, dim)}, policies, [spec])[0]
            good, err = _compare(ans, want, "v", "bfv")
            ok, errors["sites"] = ok and good, err
            rows.append(_row("", f"hutong join bfv, two netns sites (WAN "
                                 f"{_pjc_sites.RTT * 1e3:.0f} ms, mTLS)",
                             float(ans["wall"]), ans, err))
            rows.append(["", "DuckDB plaintext (v), one site", round(p_s, 3), "-", "0",
                         len(want), "0", _load()])
    print(table(["fact x dim rows", "implementation", "seconds", "protocol s",
                 "MB exchanged", "groups", "max abs error of sum", "load 1/5/15"], rows))
    extra = {"sites_s": rows[4][2], "sites_error": errors["sites"]} if args.sites else {}
    print(headline("pjc", ok, rows=n, keys=keys, bfv_s=rows[0][2], ckks_s=rows[2][2],
                   duckdb_s=rows[1][2], bfv_error=errors["bfv"], ckks_error=errors["ckks"],
                   **extra))
    return 0 if ok else 1


def _compare(ans: dict[str, Any], want: dict[str, tuple[int, float]], col: str,
             scheme: str) -> tuple[bool, float]:
    """Whether the released groups equal the SQL answer (counts exactly, sums exactly
    for BFV, within 0.05 + 1e-9 |sum| for CKKS) and the largest sum error."""
    got = {r["g"]: (int(r["count(*)"]), float(r[f"sum({col})"])) for r in ans["groups"]}
    err = max((abs(got[g][1] - s) for g, (_, s) in want.items() if g in got), default=0.0)
    tol = max((0.0 if scheme == "bfv" else 5e-2 + 1e-9 * abs(s)) for _, s in want.values())
    good = set(got) == set(want) and err <= tol and all(
        got[g][0] == c for g, (c, _) in want.items())
    return good, err


def _row(label: str, what: str, secs: float, ans: dict[str, Any], err: float) -> list[Any]:
    return [label, what, round(secs, 2), round(float(ans["seconds"]), 2),
            f"{(ans['bytes_sent'] + ans['bytes_received']) / 1e6:.1f}", len(ans["groups"]),
            f"{err:.3g}", _load()]


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())
