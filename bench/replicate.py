"""`python -m bench replicate [--quick]`: replicating a dataset to a second site.

A registry and three sites run as processes on loopback addresses: a1 (bank-a's
primary), a2 (bank-a, replicas arrive through the native mover) and t1 (telco-b,
replicas arrive owner-encrypted over HTTP). Version N of a synthetic dataset is written
to /bank-a/ds, a rule places it on a2 and t1; then version N+1 (a tenth of the files
edited in place, a few added) is written and the rule reconciled again.

a1 stores with delta chunks on (`--no-delta`: off), so a changed chunk goes to a2 as a
delta against a base a2 holds (docs/format.md "Delta transfer"), and to t1 as a sealed
delta against a base t1 keeps whole ("Sealed delta blobs"; sealed blobs are padded to
their length bucket, which costs up to 12.5 % of each). Measured in one run: bytes on
the wire (the mover's counters plus chunk bytes received over HTTP at a2, chunk bytes
received at t1) against the dataset's logical and unique bytes, and rsync's bytes sent
(delta transfer, --no-whole-file) for the same N -> N+1 update between two local dirs.
a2 verifies every chunk it receives (deltas rebuilt and checked against their id); t1
cannot (it holds no key), its owner verifies on read and audit. Target (issue 17): the
N+1 replication to each site sends at most rsync's bytes, chunk bytes against rsync's
bytes sent and every byte both ways against rsync's sent + received (the headline takes
the worst).

The mover alone (docs/format.md "Delta transfer on the mover"): a second table fetches
N+1's chunks over the native mover from a store holding N and N+1 into one holding N
(two streams, AES-128-GCM records, through a loopback relay that counts every byte on
the wire both ways: handshake, frames, record headers and tags), once with the
destination's delta transfer off (every chunk whole) and once on (BASES/HAVE, delta
blobs); against rsync's bytes for the same update. `--mover-only` runs only that table.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import headline, table
from gfs import accesslog, mover
from gfs.client import Client
from gfs.federation.testing import Federation
from gfs.testing.relay import TcpRelay

TARGET = 1.0
"""N+1 wire bytes over rsync's, to each site (issue 17)."""


def _make(root: Path, files: int, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = rnd.random() < 0.5
        n = rnd.randrange(size // 4, size)
        data = ("".join(f"row {j},{rnd.random():.6f},value\n" for j in range(n // 24))
                .encode() if text else rnd.randbytes(n))
        (root / f"f{i:04d}.dat").write_bytes(data)


def _update(src: Path, dst: Path, seed: int) -> None:
    rnd = random.Random(seed)
    shutil.copytree(src, dst)
    files = sorted(dst.iterdir())
    for f in rnd.sample(files, max(1, len(files) // 10)):
        b = bytearray(f.read_bytes())
        pos = rnd.randrange(len(b))
        b[pos:pos] = rnd.randbytes(2000)
        f.write_bytes(bytes(b))
    for i in range(max(1, len(files) // 50)):
        (dst / f"new{i}.dat").write_bytes(rnd.randbytes(50_000))


def _meter(fed: Federation) -> np.ndarray:
    """[chunk bytes received at a2 (its mover, HTTP puts), at t1 (HTTP puts), every byte
    exchanged with a2 (HTTP both ways, mover), with t1 (HTTP both ways)] so far."""
    mover = fed.metric("a2", "mover_bytes")
    return np.array([mover + fed.metric("a2", "chunk_bytes_in_total"),
                     fed.metric("t1", "chunk_bytes_in_total"),
                     mover + sum(_http_bytes(fed, "a2").values()),
                     sum(_http_bytes(fed, "t1").values())], dtype=float)


def _http_bytes(fed: Federation, site: str, since: float | None = None) -> dict[str, int]:
    """HTTP bytes a1 (entity bank-a) exchanged with `site` (since `since`), both
    directions, by operation (has-lists, pins, manifests, chunks): the site's access log.
    The bench's own reads of the site's /metrics are left out."""
    out: dict[str, int] = {}
    for a in accesslog.read(Path(str(fed.sites[site]["state"])), since=since,
                            entity="bank-a"):
        if a.op != "/metrics":
            out[a.op] = out.get(a.op, 0) + a.bytes_in + a.bytes_out
    return out


def _rsync_bytes(src: Path, dst: Path) -> tuple[int, int]:
    """rsync's (bytes sent, bytes sent + received) for updating `dst` to `src`."""
    out = subprocess.run(["rsync", "-a", "--no-whole-file", "--stats", f"{src}/", f"{dst}/"],
                         capture_output=True, text=True, check=True).stdout
    sent = re.search(r"Total bytes sent: ([\d,]+)", out)
    got = re.search(r"Total bytes received: ([\d,]+)", out)
    if not sent or not got:
        return -1, -1
    n = int(sent.group(1).replace(",", ""))
    return n, n + int(got.group(1).replace(",", ""))


def _store_tree(c: Client, root: Path, dest: str) -> None:
    c.mkdir(dest, parents=True, exist_ok=True)
    for f in sorted(root.iterdir()):
        c.write_bytes(f"{dest}/{f.name}", f.read_bytes())


def _file_chunks(c: Client, root: Path, dest: str) -> list[bytes]:
    """The chunk ids the files of `dest` name (what a user moves: no group chunks nor
    dictionaries, which stay inside the store that made them)."""
    ids = (r.id for f in sorted(root.iterdir()) for r in c.manifest(f"{dest}/{f.name}").chunks)
    return list(dict.fromkeys(ids))


def _lacking(c: Client, ids: list[bytes]) -> list[bytes]:
    with c.engine.read() as txn:
        return [cid for cid in ids if not txn.has_chunk(cid)]


def _mover_rows(root: Path, v1: Path, v2: Path, rs2: int, rs2_all: int) -> list[tuple[object, ...]]:
    """N -> N+1 over the mover alone, whole chunks and deltas: (path, chunks, deltas,
    blob B, wire B, wire/rsync, wire/rsync all, seconds) rows."""
    src = Client.init(root / "mv-src", delta=True)
    rows: list[tuple[object, ...]] = []
    try:
        _store_tree(src, v1, "/ds")
        _store_tree(src, v2, "/ds2")
        secret = os.urandom(32)
        for on in (False, True):
            dst = Client.init(root / f"mv-dst-{on}", delta=on)
            try:
                _store_tree(dst, v1, "/ds")
                missing = _lacking(dst, _file_chunks(src, v2, "/ds2"))
                with mover.MoverServer(src, secret) as srv:
                    relay = TcpRelay(srv.address)
                    try:
                        t0 = time.perf_counter()
                        st = mover.fetch(dst, relay.address, missing, secret, streams=2)
                        seconds = time.perf_counter() - t0
                    finally:
                        relay.close()
                assert st.committed == len(missing), (st.committed, len(missing))
                name = "mover + delta" if on else "mover (whole chunks)"
                rows.append((name, len(missing), st.deltas, st.bytes, relay.bytes,
                             relay.bytes / max(1, rs2), relay.bytes / max(1, rs2_all), seconds))
            finally:
                dst.close()
    finally:
        src.close()
    return rows


def _mover_only(root: Path, v1: Path, v2: Path) -> int:
    dest = root / "rsync-dest"
    _rsync_bytes(v1, dest)
    rs2, rs2_all = _rsync_bytes(v2, dest)
    rows = _mover_rows(root, v1, v2, rs2, rs2_all)
    rows.append(("rsync (local)", "-", "-", "-", rs2_all, rs2_all / max(1, rs2), 1.0, "-"))
    _print_mover(rows)
    whole, with_delta = rows[0][4], rows[1][4]
    assert isinstance(whole, int) and isinstance(with_delta, int)
    print(headline("replicate-mover", with_delta <= rs2, n1_mover_delta_over_rsync=round(
        with_delta / max(1, rs2), 3), n1_mover_whole_over_rsync=round(whole / max(1, rs2), 3)))
    return 0


def _print_mover(rows: list[tuple[object, ...]]) -> None:
    print("N -> N+1 over the mover alone (fetch, 2 streams, AES-128-GCM):")
    print(table(["path", "chunks", "deltas", "blob B", "wire B", "wire/rsync",
                 "wire/rsync all", "seconds"], rows))
    print("wire B: every byte on the mover's sockets both ways (handshake, frames, record "
          "headers and tags; rsync: sent + received); wire/rsync: against rsync's bytes "
          f"sent; loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _write_tree(fc: object, root: Path, dest: str) -> int:
    total = 0
    for f in sorted(root.iterdir()):
        data = f.read_bytes()
        fc.write_bytes(f"{dest}/{f.name}", data)  # type: ignore[attr-defined]
        total += len(data)
    return total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench replicate")
    ap.add_argument("--quick", action="store_true", help="small dataset (under a minute)")
    ap.add_argument("--no-delta", dest="delta", action="store_false",
                    help="a1 without delta chunks, so every changed chunk is sent whole")
    ap.add_argument("--mover-only", action="store_true",
                    help="only N -> N+1 over the mover alone, with and without deltas")
    args = ap.parse_args(argv)
    files, size = (40, 200_000) if args.quick else (200, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-replicate-") as tmp:
        root = Path(tmp)
        v1, v2 = root / "v1", root / "v2"
        _make(v1, files, size, 1)
        _update(v1, v2, 2)
        if args.mover_only:
            return _mover_only(root, v1, v2)
        rows = []
        with Federation(root / "fed", heartbeat=1.0) as fed:
            fed.registry()
            fed.site("a1", "bank-a", "cn-west", primary=True,
                     env={"HUTONG_DELTA": "1"} if args.delta else None)
            fed.site("a2", "bank-a", "cn-east")
            fed.site("t1", "telco-b", "cn-east", primary=True)
            with fed.client("telco-b") as tc:
                tc.agreement_add("t1", "bank-a", 1 << 40)
            with fed.client("bank-a") as fc:
                fc.mkdir("/bank-a/ds", parents=True, exist_ok=True)
                logical = _write_tree(fc, v1, "/bank-a/ds")
                fc.rule_add("/bank-a/ds/**", 3, "entity=bank-a | entity=telco-b")
                m0 = _meter(fed)
                t0 = time.perf_counter()
                [r1] = fc.reconcile("bank-a")
                s1 = time.perf_counter() - t0
                d1 = _meter(fed) - m0
                logical2 = _write_tree(fc, v2, "/bank-a/ds")
                m1 = _meter(fed)
                t0, since = time.perf_counter(), time.time()
                [r2] = fc.reconcile("bank-a")
                s2 = time.perf_counter() - t0
                d2 = _meter(fed) - m1
                ops = {name: _http_bytes(fed, name, since) for name in ("a2", "t1")}
        dest = root / "rsync-dest"
        rs1, rs1_all = _rsync_bytes(v1, dest)
        rs2, rs2_all = _rsync_bytes(v2, dest)
        new_unique = r2["bytes"] - r1["bytes"]
        u1 = max(1, r1["bytes"])
        rows.append(("N", "a2 (mover)", logical, r1["bytes"], int(d1[0]), int(d1[2]), "-",
                     d1[0] / u1, "-", s1))
        rows.append(("N", "t1 (encrypted)", logical, r1["bytes"], int(d1[1]), int(d1[3]), "-",
                     d1[1] / u1, "-", s1))
        a2 = "a2 (mover+delta)" if args.delta else "a2 (mover)"
        t1 = "t1 (sealed+delta)" if args.delta else "t1 (encrypted)"
        for i, name in ((0, a2), (1, t1)):
            rows.append(("N+1", name, logical2, r2["bytes"], int(d2[i]), int(d2[i + 2]), rs2,
                         d2[i] / max(1, rs2), d2[i + 2] / max(1, rs2_all), s2))
        rows.append(("N", "rsync (local)", logical, "-", rs1, rs1_all, rs1, 1.0, 1.0, "-"))
        rows.append(("N+1", "rsync (local)", logical2, "-", rs2, rs2_all, rs2, 1.0, 1.0, "-"))
        print(table(["version", "to", "logical B", "unique B", "chunk B", "all B",
                     "rsync B", "chunk/unique or chunk/rsync", "all/rsync all", "seconds"],
                    rows))
        print("chunk B: chunk bytes received (mover, chunk puts); all B: every byte both "
              "ways (HTTP requests and answers of bank-a at the site: has-lists, pins, "
              "manifests, chunks; plus the mover's); rsync all: sent + received")
        for name, by_op in ops.items():
            print(f"N+1 HTTP bytes with {name} by operation: " + ", ".join(
                f"{op} {n}" for op, n in sorted(by_op.items(), key=lambda x: -x[1])))
        _print_mover(_mover_rows(root, v1, v2, rs2, rs2_all))
        print(f"new unique bytes in N+1 (grown union): {new_unique}; states: {r1['state']}, "
              f"{r2['state']}; delta transfer: {'on' if args.delta else 'off'}; "
              f"loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        ratio = max(d2[0], d2[1]) / max(1, rs2)
        ratio_all = max(d2[2], d2[3]) / max(1, rs2_all)
        print(headline("replicate", max(ratio, ratio_all) <= TARGET and r2["state"] == "ok",
                       n_wire_over_unique=round(d1[0] / u1, 3),
                       n1_wire_over_rsync=round(ratio, 3),
                       n1_a2_over_rsync=round(d2[0] / max(1, rs2), 3),
                       n1_t1_over_rsync=round(d2[1] / max(1, rs2), 3),
                       n1_a2_all_over_rsync_all=round(d2[2] / max(1, rs2_all), 3),
                       n1_t1_all_over_rsync_all=round(d2[3] / max(1, rs2_all), 3)))
    return 0
