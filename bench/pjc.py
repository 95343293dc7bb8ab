"""`python -m bench pjc [--quick] [--rows N]`: private join-and-sum.

The value holder has N rows (phone, balance), the selector N rows (phone);
half the phones are shared, with a few duplicates. Hutong runs a full `join`
job (`count(*),sum(balance)`): two party processes over an authenticated
loopback channel, ECDH blinding on worker processes, TenSEAL BFV (integer
balances, exact) and CKKS (real balances). The plaintext answer (pandas merge +
sum, no privacy; the selector's keys are distinct, so this semi-join is the SQL
inner join the private job computes) is measured in the same run as the
reference.

Target: the BFV sum equals the plaintext sum exactly and the CKKS sum is within
0.05 + 1e-9 |sum| of it (tests/test_privacy_pjc.py).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench.report import headline, table
from gfs.client import Client
from privacy.ec import backend
from privacy.jobs import JobSpec, run_job
from privacy.testing import open_policy, put_policy, put_table

V = "/bank-a/accounts.parquet"
S = "/telco-b/subscribers.parquet"


def data(n: int, seed: int = 3) -> tuple[pa.Table, pa.Table]:
    """The two tables of the benchmark."""
    rnd = random.Random(seed)
    phones = [f"+86138{i:09d}" for i in rnd.sample(range(10**9), 2 * n - n // 2)]
    v_keys = phones[:n]
    s_keys = phones[n - n // 2:]
    for i in range(0, n, 97):  # some customers hold two accounts
        v_keys[i] = v_keys[i + 1] if i + 1 < n else v_keys[i]
    balances = [rnd.randrange(0, 1_000_000) for _ in range(n)]
    bank = pa.table({"phone": v_keys, "balance": balances,
                     "balance_f": [b / 100 for b in balances]})
    return bank, pa.table({"phone": s_keys})


def plaintext(bank: pa.Table, telco: pa.Table, col: str) -> tuple[float, int, float]:
    """Seconds, count and sum of the plaintext semi-join."""
    t0 = time.perf_counter()
    b = bank.to_pandas()
    keys = set(telco.column("phone").to_pylist())
    m = b[b.phone.isin(keys)]
    count, total = len(m), float(m[col].sum())
    return time.perf_counter() - t0, count, total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench pjc")
    ap.add_argument("--quick", action="store_true", help="100k x 100k")
    ap.add_argument("--rows", type=int, help="rows per party (default 1,000,000)")
    args = ap.parse_args(argv)
    n = args.rows or (100_000 if args.quick else 1_000_000)
    bank, telco = data(n)
    rows = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-pjc-") as tmp:
        state = Path(tmp) / "state"
        with Client.init(state) as fs:
            put_table(fs, V, bank)
            put_table(fs, S, telco)
            put_policy(fs, open_policy("bank-a", "telco-b", V,
                                       columns=["balance", "balance_f"]))
            put_policy(fs, open_policy("telco-b", "bank-a", S))
        for col, scheme in (("balance", "bfv"), ("balance_f", "ckks")):
            p_s, p_count, p_sum = plaintext(bank, telco, col)
            spec = JobSpec("join", V, S, "phone", aggs=f"count(*),sum({col})", scheme=scheme)
            t0 = time.perf_counter()
            res = run_job(spec, state)
            secs = time.perf_counter() - t0
            ans = res.answer
            g = ans["groups"][0]
            err = abs(float(g[f"sum({col})"]) - p_sum)
            tol = 0.0 if scheme == "bfv" else 5e-2 + 1e-9 * abs(p_sum)
            ok = ok and err <= tol and int(g["count(*)"]) == p_count
            rows.append([f"{n:,} x {n:,}", f"hutong join {scheme} ({backend()})", round(secs, 2),
                         round(float(ans["seconds"]), 2),
                         f"{(ans['bytes_sent'] + ans['bytes_received']) / 1e6:.1f}",
                         int(g["count(*)"]), f"{err:.3g}"])
            rows.append(["", f"plaintext pandas semi-join ({col})", round(p_s, 2), "-", "0",
                         p_count, "0"])
    print(table(["rows", "implementation", "seconds", "protocol s", "MB exchanged", "count",
                 "abs error of sum"], rows))
    print(headline("pjc", ok, rows=n, bfv_s=rows[0][2], ckks_s=rows[2][2],
                   bfv_error=rows[0][6], ckks_error=rows[2][6]))
    return 0 if ok else 1
