"""`python -m bench psi [--quick] [--sizes N,N]`: ECDH-PSI against OpenMined PSI.

Both sides get the same two sets of N phone-number strings overlapping by half.
Hutong runs a full `psi` job: two party processes over an authenticated
loopback channel, each reading its parquet table from the store, blinding on
one worker process per core. OpenMined PSI (pip openmined-psi, P-256, RAW
setup) runs its server and client in one process, as its examples do. Both
time both parties; bytes are what crossed between the parties.

Target: Hutong at least 3.5x faster than OpenMined at 1M x 1M (--quick: 100k).
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

TARGET = 3.5


def sets(n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """Two sets of n distinct phone numbers sharing n // 2."""
    rnd = random.Random(seed)
    pool = list({f"+86138{rnd.randrange(10**9):09d}" for _ in range(int(n * 1.6))})
    while len(pool) < 2 * n - n // 2:
        pool.append(f"+86139{rnd.randrange(10**9):09d}")
        pool = list(dict.fromkeys(pool))
    left = pool[:n]
    right = pool[n - n // 2: 2 * n - n // 2]
    return left, right


def hutong(state: Path, left: list[str], right: list[str]) -> tuple[float, int, int, float]:
    """Seconds (job wall time), bytes exchanged, intersection size, protocol seconds."""
    with Client(state) as fs:
        put_table(fs, "/bank-a/ids.parquet", pa.table({"phone": left}))
        put_table(fs, "/telco-b/ids.parquet", pa.table({"phone": right}))
    spec = JobSpec("psi", "/bank-a/ids.parquet", "/telco-b/ids.parquet", "phone",
                   output="intersection")
    t0 = time.perf_counter()
    res = run_job(spec, state)
    secs = time.perf_counter() - t0
    ans = res.answer
    return (secs, int(ans["bytes_sent"] + ans["bytes_received"]), int(ans["size"]),
            float(ans["seconds"]))


def openmined(left: list[str], right: list[str]) -> tuple[float, int, int]:
    """Seconds, bytes (setup + request + response) and intersection size."""
    import private_set_intersection.python as om

    t0 = time.perf_counter()
    server = om.server.CreateWithNewKey(True)
    client = om.client.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(left), right, om.DataStructure.RAW)
    request = client.CreateRequest(left)
    response = server.ProcessRequest(request)
    inter = client.GetIntersection(setup, response)
    secs = time.perf_counter() - t0
    size = setup.ByteSize() + request.ByteSize() + response.ByteSize()
    return secs, size, len(inter)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench psi")
    ap.add_argument("--quick", action="store_true", help="100k x 100k only")
    ap.add_argument("--sizes", help="comma-separated set sizes (default 100000,1000000)")
    args = ap.parse_args(argv)
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes else
             [100_000] if args.quick else [100_000, 1_000_000])
    rows = []
    ratios: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-psi-") as tmp:
        state = Path(tmp) / "state"
        with Client.init(state) as fs:
            for ent, partner in (("bank-a", "telco-b"), ("telco-b", "bank-a")):
                put_policy(fs, open_policy(ent, partner, f"/{ent}/ids.parquet"))
        for n in sizes:
            left, right = sets(n)
            want = len(set(left) & set(right))
            h_s, h_b, h_n, h_proto = hutong(state, left, right)
            o_s, o_b, o_n = openmined(left, right)
            if h_n != want or o_n != want:
                print(f"wrong intersection at n={n}: hutong {h_n}, openmined {o_n}, want {want}")
                return 1
            ratios[n] = o_s / h_s
            rows.append([f"{n:,} x {n:,}", f"hutong ECDH-PSI (X25519+Elligator2, {backend()})",
                         round(h_s, 2), round(h_proto, 2), f"{h_b / 1e6:.1f}", h_n])
            rows.append(["", "OpenMined PSI 2.0.6 (P-256, RAW)", round(o_s, 2), round(o_s, 2),
                         f"{o_b / 1e6:.1f}", o_n])
    print(table(["sets", "implementation", "seconds", "protocol s", "MB exchanged",
                 "|X∩Y|"], rows))
    biggest = max(sizes)
    met = biggest >= 1_000_000 and ratios[biggest] >= TARGET
    figures = {f"speedup_{n // 1000}k": round(r, 2) for n, r in ratios.items()}
    print(headline("psi", met, **figures, target_x=TARGET, at=f"{biggest:,}"))
    return 0
