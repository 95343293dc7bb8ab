"""`python -m bench fuse [--quick]`: reading through gfs:// and the FUSE mount.

Sequential read of one large file (random bytes, so nothing compresses or
dedups) through: local disk, gfs:// (fsspec), the Hutong FUSE mount and an
`rclone mount` of the local directory holding the same bytes; each cold (the
OS page cache of the backing files dropped with posix_fadvise, a fresh
process-level cache) and warm (read again). Then small files: create, stat and
read N small files on local disk, the Hutong mount and the rclone mount, and
N/2 creates by 4 writer threads at once (the mount commits them in groups).

Targets (issue 5): warm FUSE reads >= 50% of warm local-disk reads and ahead
of rclone; warm gfs:// reads >= 1 GB/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._measure import drop_page_cache, mounted, read_file, write_random
from bench.report import headline, table
from gfs.units import size_arg

BLOCK = 8 << 20


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn()
    return time.perf_counter() - t, n


def _small_files(root: Path, n: int, size: int, sub: str) -> tuple[float, float, float]:
    """Files per second for create, stat and read of `n` files of `size` bytes."""
    d = root / sub
    d.mkdir()
    payload = [os.urandom(size) for _ in range(16)]
    t = time.perf_counter()
    for i in range(n):
        with open(d / f"f{i:05d}", "wb") as f:
            f.write(payload[i % 16])
    create = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        os.stat(d / f"f{i:05d}")
    stat = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        with open(d / f"f{i:05d}", "rb") as f:
            f.read()
    read = n / (time.perf_counter() - t)
    return create, stat, read


def _parallel_creates(root: Path, n: int, size: int, sub: str, writers: int = 4) -> float:
    """Files per second for `n` files of `size` bytes created by `writers` threads."""
    import threading

    d = root / sub
    d.mkdir()
    payload = os.urandom(size)

    def work(k: int) -> None:
        for i in range(k, n, writers):
            with open(d / f"f{i:05d}", "wb") as f:
                f.write(payload)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return n / (time.perf_counter() - t)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench fuse")
    ap.add_argument("--quick", action="store_true", help="256 MiB file, 1,000 small files")
    ap.add_argument("--size", type=size_arg, help="large file size (2GiB)")
    ap.add_argument("--files", type=int, help="small files (10000)")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    size = args.size or (256 if args.quick else 2048) << 20
    nfiles = args.files or (1000 if args.quick else 10_000)
    have_rclone = shutil.which("rclone") is not None
    from gfs.client import Client
    from gfs.fsspec_fs import HutongFileSystem

    work = Path(tempfile.mkdtemp(prefix="bench-fuse-", dir=args.dir))
    rows: list[list[object]] = []
    figures: dict[str, float] = {}
    par: dict[str, float] = {}
    try:
        local = work / "local"
        local.mkdir()
        big = write_random(local / "big.bin", size)
        state = work / "state"
        with Client.init(state) as c:
            c.put(big, "/big.bin")

        def seq(name: str, path: Path, drop: list[Path]) -> None:
            for label in ("cold", "warm"):
                if label == "cold":
                    for p in drop:
                        drop_page_cache(p)
                secs, n = _timed(lambda: read_file(path))
                assert n == size, f"{name}: read {n} of {size} bytes"
                mbs = n / secs / 1e6
                figures[f"{name}_{label}"] = mbs
                rows.append([name, f"sequential read {label}", f"{mbs:.0f} MB/s"])

        seq("local", big, [big])

        def gfs_read(fs: HutongFileSystem) -> int:
            n = 0
            with fs.open("/big.bin", "rb", block_size=BLOCK, cache_type="none") as f:
                while data := f.read(BLOCK):
                    n += len(data)
            return n

        drop_page_cache(state / "pools")
        fs = HutongFileSystem(str(state), skip_instance_cache=True,
                              cache_bytes=min(size + (64 << 20), 3 << 30))
        for label in ("cold", "warm"):
            secs, n = _timed(lambda: gfs_read(fs))
            assert n == size
            figures[f"gfs_{label}"] = n / secs / 1e6
            rows.append(["gfs://", f"sequential read {label}", f"{n / secs / 1e6:.0f} MB/s"])
        fs.close()

        mnt = work / "mnt"
        hutong = [sys.executable, "-m", "gfs.cli", "--state", str(state), "mount", str(mnt),
                  "--cache-size", str(512 << 20)]
        with mounted(hutong, mnt, work / "mount.log"):
            seq("hutong mount", mnt / "big.bin", [state / "pools"])
            fuse_small = _small_files(mnt, nfiles, 4096, "small-hutong")
            par["hutong mount"] = _parallel_creates(mnt, nfiles // 2, 4096, "par-hutong")
        rmnt = work / "rmnt"
        rclone_small = None
        if have_rclone:
            rclone = ["rclone", "mount", str(local), str(rmnt), "--vfs-cache-mode", "off",
                      "--read-only=false"]
            with mounted(rclone, rmnt, work / "rclone.log"):
                seq("rclone mount", rmnt / "big.bin", [big])
                rclone_small = _small_files(rmnt, nfiles, 4096, "small-rclone")
                par["rclone mount"] = _parallel_creates(rmnt, nfiles // 2, 4096, "par-rclone")
        local_small = _small_files(local, nfiles, 4096, "small-local")
        par["local"] = _parallel_creates(local, nfiles // 2, 4096, "par-local")
        for name, r in (("local", local_small), ("hutong mount", fuse_small),
                        ("rclone mount", rclone_small)):
            if r is not None:
                rows.append([name, f"{nfiles} x 4 KiB create/stat/read",
                             f"{r[0]:.0f} / {r[1]:.0f} / {r[2]:.0f} files/s"])
        for name, rate in par.items():
            rows.append([name, f"{nfiles // 2} x 4 KiB create, 4 writers", f"{rate:.0f} files/s"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(["target", "operation", "result"], rows))
    fuse_warm = figures["hutong mount_warm"]
    local_warm = figures["local_warm"]
    rclone_warm = figures.get("rclone mount_warm", 0.0)
    met = (fuse_warm >= 0.5 * local_warm and fuse_warm > rclone_warm
           and figures["gfs_warm"] >= 1000)
    print(headline("fuse", met, fuse_warm_mbs=round(fuse_warm),
                   local_warm_mbs=round(local_warm), rclone_warm_mbs=round(rclone_warm),
                   gfs_warm_mbs=round(figures["gfs_warm"]), size_mib=size >> 20))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
