"""`python -m bench psi [--quick] [--sizes N,N] [--ecdh] [--no-openmined]`: PSI
jobs against OpenMined PSI.

Both sides get the same two sets of N phone-number strings overlapping by half.
Hutong runs full `psi` jobs (output = intersection): two party processes over an
authenticated loopback channel, each reading its parquet table from the store.
The OT rows run the KKRT16 OT-extension PSI (privacy.psi_ot: AES and SHA-256
through OpenSSL, SSE2, no AVX-512: the portable path on any x86-64); the ECDH
rows (--ecdh) run ECDH-PSI once per backend, each forced in both parties and their
workers with HUTONG_EC_BACKEND: "portable" (radix 2^51 C, any x86-64) always, and
"ifma" (AVX-512 IFMA) where the CPU has it, as a separate row. OpenMined PSI (pip
openmined-psi, P-256, RAW setup) runs its server and client in one process, as its
examples do. Both time both parties (wall seconds, and CPU seconds of all their
processes: on a shared machine the CPU figure is the steadier one); bytes are what
crossed between the parties;
peak RSS is the larger party process's own (Hutong: VmHWM, which each party reports)
or this process's (OpenMined).

Target: Hutong OT-PSI at least 10x faster than OpenMined at 1M x 1M (the largest
size OpenMined ran at). Sizes without OpenMined (e.g. --sizes 10000000
--no-openmined) report time and peak RSS only. --quick: 100k x 100k, < 1 minute.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench.report import headline, table
from gfs.client import Client
from privacy.ec import BACKEND_ENV, set_backend
from privacy.jobs import JobSpec, run_job
from privacy.testing import open_policy, put_policy, put_table

TARGET = 10.0
#: The memory budget of one OT-PSI party (peak RSS), printed with every run.
OT_BUDGET_MB = 1024


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


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def hutong(state: Path, protocol: str, ec: str | None = None,
           ) -> tuple[float, int, int, float, float, float]:
    """Seconds (job wall time), bytes exchanged, intersection size, protocol seconds,
    peak RSS (MB) of the larger party process (its own VmHWM: getrusage would count
    this process's memory, inherited at fork), CPU seconds of both parties.
    `ec` forces the ECDH backend of both parties (checked in their answers)."""
    spec = JobSpec("psi", "/bank-a/ids.parquet", "/telco-b/ids.parquet", "phone",
                   output="intersection", protocol=protocol, timeout=1200)
    c0 = _cpu(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = run_job(spec, state, env={BACKEND_ENV: ec} if ec else None)
    secs = time.perf_counter() - t0
    ans = res.answer
    if ec and (res.left.get("ec_backend"), res.right.get("ec_backend")) != (ec, ec):
        raise RuntimeError(f"asked for the {ec} backend, the parties ran "
                           f"{res.left.get('ec_backend')}/{res.right.get('ec_backend')}")
    return (secs, int(ans["bytes_sent"] + ans["bytes_received"]), int(ans["size"]),
            float(ans["seconds"]),
            max(float(r.get("peak_rss_mb", 0.0)) for r in (res.left, res.right)),
            _cpu(resource.RUSAGE_CHILDREN) - c0)


def openmined(left: list[str], right: list[str]) -> tuple[float, int, int, float]:
    """Seconds, bytes (setup + request + response), intersection size, CPU seconds."""
    import private_set_intersection.python as om

    c0 = _cpu(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    server = om.server.CreateWithNewKey(True)
    client = om.client.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(left), right, om.DataStructure.RAW)
    request = client.CreateRequest(left)
    response = server.ProcessRequest(request)
    inter = client.GetIntersection(setup, response)
    secs = time.perf_counter() - t0
    size = setup.ByteSize() + request.ByteSize() + response.ByteSize()
    return secs, size, len(inter), _cpu(resource.RUSAGE_SELF) - c0


def ec_backends() -> list[str]:
    """The ECDH backends this CPU runs: portable, and ifma where present."""
    try:
        set_backend("ifma")
    except RuntimeError:
        return ["portable"]
    finally:
        set_backend("auto")
    return ["portable", "ifma"]


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench psi")
    ap.add_argument("--quick", action="store_true", help="20k x 20k only (< 1 minute)")
    ap.add_argument("--sizes", help="comma-separated set sizes (default 100000,1000000)")
    ap.add_argument("--ecdh", action="store_true",
                    help="also run ECDH-PSI: a portable row, and an ifma row where the CPU has it")
    ap.add_argument("--no-openmined", action="store_true", help="Hutong rows only")
    args = ap.parse_args(argv)
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes else
             [20_000] if args.quick else [100_000, 1_000_000])
    rows = []
    ratios: dict[int, float] = {}
    cpu_ratios: dict[int, float] = {}
    ot_rss = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-psi-") as tmp:
        state = Path(tmp) / "state"
        with Client.init(state) as fs:
            for ent, partner in (("bank-a", "telco-b"), ("telco-b", "bank-a")):
                put_policy(fs, open_policy(ent, partner, f"/{ent}/ids.parquet"))
        for n in sorted(sizes):
            left, right = sets(n)
            want = len(set(left) & set(right))
            with Client(state) as fs:
                put_table(fs, "/bank-a/ids.parquet", pa.table({"phone": left}))
                put_table(fs, "/telco-b/ids.parquet", pa.table({"phone": right}))
            label = f"{n:,} x {n:,}"
            runs: list[tuple[str, str, str | None]] = [
                ("ot", "hutong OT-PSI (KKRT16, portable: AES-NI/SSE2 via OpenSSL)", None)]
            if args.ecdh:
                runs += [("ecdh", f"hutong ECDH-PSI (X25519+Elligator2, {b} forced)", b)
                         for b in ec_backends()]
            ot_s = ot_cpu = 0.0
            for proto, name, ec in runs:
                h_s, h_b, h_n, h_proto, rss, h_cpu = hutong(state, proto, ec)
                if h_n != want:
                    print(f"wrong intersection at n={n} ({proto}): {h_n}, want {want}")
                    return 1
                if proto == "ot":
                    ot_s, ot_cpu = h_s, h_cpu
                    ot_rss = max(ot_rss, rss)
                rows.append([label, name, round(h_s, 2), round(h_proto, 2), round(h_cpu, 1),
                             f"{h_b / 1e6:.1f}", f"{rss:.0f}", h_n, _load()])
                label = ""
            if not args.no_openmined:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                o_s, o_b, o_n, o_cpu = openmined(left, right)
                if o_n != want:
                    print(f"wrong intersection at n={n}: openmined {o_n}, want {want}")
                    return 1
                ratios[n] = o_s / ot_s
                cpu_ratios[n] = o_cpu / ot_cpu
                rss = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                rows.append(["", "OpenMined PSI 2.0.6 (P-256, RAW)", round(o_s, 2),
                             round(o_s, 2), round(o_cpu, 1), f"{o_b / 1e6:.1f}",
                             f"<= {rss:.0f}", o_n, _load()])
            del left, right
    print(table(["sets", "implementation", "seconds", "protocol s", "CPU s", "MB exchanged",
                 "peak RSS MB", "|X∩Y|", "load 1/5/15"], rows))
    print(f"OT-PSI memory budget {OT_BUDGET_MB} MB per party: largest party peaked at "
          f"{ot_rss:.0f} MB ({'within' if ot_rss <= OT_BUDGET_MB else 'OVER'})")
    if not ratios:
        print(headline("psi", False, at=f"{max(sizes):,}", note="no OpenMined row to compare"))
        return 0
    biggest = max(ratios)
    met = biggest >= 1_000_000 and ratios[biggest] >= TARGET
    figures = {f"ot_speedup_{n // 1000}k": round(r, 2) for n, r in ratios.items()}
    figures.update({f"ot_cpu_ratio_{n // 1000}k": round(r, 2) for n, r in cpu_ratios.items()})
    print(headline("psi", met, **figures, target_x=TARGET, at=f"{biggest:,}"))
    return 0
