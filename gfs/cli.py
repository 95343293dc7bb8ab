"""`hutong`: the command line of the Hutong global file system (embedded mode).

Exit codes: 0 success; 1 the operation failed (one line on stderr says why);
2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import stat as statmod
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from gfs.client import Client, DuReport, Stat
from gfs.config import STATE_ENV
from gfs.errors import HutongError

DESCRIPTION = """\
Hutong keeps files as deduplicated, compressed, content-defined chunks under
one namespace. Namespace paths are absolute (/lab/data/x.csv); local paths
are ordinary paths.

The state directory is --state DIR, else $HUTONG_STATE, else ~/.hutong.
Start with `hutong init`, then `hutong put LOCAL /PATH`.
"""

EPILOG = """\
examples:
  hutong init
  hutong put ./dataset /lab/dataset      copy a local tree in
  hutong ls -l /lab/dataset
  hutong du /lab                         logical vs stored bytes, dedup ratio
  hutong get /lab/dataset ./restored     copy a tree out
  hutong fsck                            verify every chunk; exit 0 only if all is well
  hutong gc                              reclaim space of deleted files
"""


#: Modules that add subcommands: each has `register(subparsers, common_parser)`,
#: adding parsers whose `func(args) -> int` default runs the command.
EXTENSIONS: tuple[str, ...] = ("gfs.mount_cli", "gfs.mover_cli", "gfs.tier_cli",
                               "gfs.state_cli", "gfs.meta_cli",
                               "gfs.federation.cli", "dataflow.cli", "privacy.cli")


def human(n: float) -> str:
    """Bytes in binary units (1.5 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def _progress(args: argparse.Namespace, total: Callable[[], int | None],
              desc: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal and not --quiet; `total` is
    only computed when the bar is shown."""
    shown = not args.quiet and sys.stderr.isatty()
    from tqdm import tqdm  # imported here: it costs ~20 ms of start-up

    with tqdm(total=total() if shown else None, desc=desc, unit="B", unit_scale=True,
              unit_divisor=1024, disable=not shown, file=sys.stderr, leave=False) as bar:
        def update(n: int) -> None:
            bar.update(n)
        yield update


def _local_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if statmod.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def cmd_init(args: argparse.Namespace) -> int:
    settings = {k: getattr(args, k) for k in ("zstd_level", "avg_size", "min_size", "max_size")}
    with Client.init(args.state, **settings) as fs:
        print(f"initialised Hutong store at {fs.state}")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    with Client(args.state) as fs, \
            _progress(args, lambda: _local_size(args.local), "put") as bar:
        r = fs.put(args.local, args.path, progress=bar)
    w = r.write
    if not args.quiet and w is not None:
        print(f"put {r.files} files, {r.dirs} dirs, {r.symlinks} symlinks, {human(r.bytes)}; "
              f"new data {human(w.new_raw_bytes)} stored as {human(w.new_stored_bytes)}"
              + (f"; skipped {r.skipped} special files" if r.skipped else ""))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with Client(args.state) as fs, \
            _progress(args, lambda: fs.du(args.path).logical_bytes, "get") as bar:
        r = fs.get(args.path, args.local, progress=bar)
    if not args.quiet:
        print(f"got {r.files} files, {r.dirs} dirs, {r.symlinks} symlinks, {human(r.bytes)}")
    return 0


def _long(st: Stat) -> str:
    when = dt.datetime.fromtimestamp(st.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
    name = st.name + (f" -> {st.target}" if st.kind == "symlink" else "")
    return f"{statmod.filemode(st.mode)} {st.uid:>5} {st.gid:>5} {st.size:>12} {when} {name}"


def cmd_ls(args: argparse.Namespace) -> int:
    with Client(args.state) as fs:
        for st in fs.ls(args.path):
            if args.long:
                print(_long(st))
            else:
                print(st.name + ("/" if st.is_dir else ""))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with Client(args.state) as fs, fs.open(args.path) as f:
        out = sys.stdout.buffer
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            out.write(block)
        out.flush()
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with Client(args.state) as fs:
        st = fs.stat(args.path)
    info: dict[str, Any] = {
        "path": st.path, "kind": st.kind, "size": st.size, "mode": statmod.filemode(st.mode),
        "uid": st.uid, "gid": st.gid, "inode": st.ino, "version": st.version,
        "mtime": dt.datetime.fromtimestamp(st.mtime_ns / 1e9).isoformat(),
    }
    if st.kind == "symlink":
        info["target"] = st.target
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>8}: {v}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with Client(args.state) as fs:
        for p in args.paths:
            fs.rm(p, recursive=args.recursive)
    return 0


def cmd_mv(args: argparse.Namespace) -> int:
    with Client(args.state) as fs:
        fs.mv(args.src, args.dst)
    return 0


def cmd_mkdir(args: argparse.Namespace) -> int:
    with Client(args.state) as fs:
        for p in args.paths:
            fs.mkdir(p, parents=args.parents, exist_ok=args.parents)
    return 0


def _du_text(r: DuReport) -> str:
    return "\n".join([
        f"{r.path}: {r.files} files, {r.dirs} dirs, {r.symlinks} symlinks, {r.chunks} chunks",
        f"  logical bytes  {r.logical_bytes:>15,}  ({human(r.logical_bytes)})",
        f"  unique bytes   {r.unique_bytes:>15,}  ({human(r.unique_bytes)}, "
        f"dedup ratio {r.dedup_ratio:.2f}x)",
        f"  stored bytes   {r.stored_bytes:>15,}  ({human(r.stored_bytes)}, "
        f"compression ratio {r.compression_ratio:.2f}x)",
        f"  total ratio    {r.total_ratio:.2f}x",
    ])


def cmd_du(args: argparse.Namespace) -> int:
    with Client(args.state) as fs:
        r = fs.du(args.path)
    print(json.dumps(r.to_dict()) if args.json else _du_text(r))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with Client(args.state) as fs:
        r = fs.gc()
    if not args.quiet:
        print(f"gc: removed {r.chunks_removed} chunks, deleted {r.packs_deleted} packs, "
              f"repacked {r.packs_repacked} ({r.chunks_moved} chunks moved), "
              f"{r.orphan_packs} orphan packs; freed {human(r.bytes_freed)}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    with Client(args.state) as fs, _progress(args, lambda: None, "fsck") as bar:
        r = fs.fsck(verify_data=not args.no_data, progress=bar)
    if args.json:
        print(json.dumps({"ok": r.ok, "problems": r.problems, "damaged_files": r.damaged_files,
                          "files": r.files, "chunks": r.chunks, "packs": r.packs,
                          "chunks_verified": r.chunks_verified,
                          "unreferenced_chunks": r.unreferenced_chunks,
                          "orphan_packs": r.orphan_packs}))
    else:
        for p in r.problems:
            print(f"damage: {p}", file=sys.stderr)
        for f in r.damaged_files:
            print(f"damaged file: {f}", file=sys.stderr)
        if not args.quiet or not r.ok:
            state = "ok" if r.ok else f"DAMAGED ({len(r.problems)} problems)"
            print(f"fsck: {state}: {r.files} files, {r.dirs} dirs, {r.chunks} chunks in "
                  f"{r.packs} packs, {r.chunks_verified} chunks verified "
                  f"({human(r.bytes_verified)}); reclaimable by gc: {r.unreferenced_chunks} "
                  f"chunks, {r.orphan_packs} orphan packs")
    return 0 if r.ok else 1


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(t[:-1]) * units[t[-1]]
    return int(t)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hutong`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"state directory (default: ${STATE_ENV}, else ~/.hutong)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or summaries")
    p = argparse.ArgumentParser(
        prog="hutong", description=DESCRIPTION, epilog=EPILOG, parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str,
            ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(func=func)
        return sp

    sp = add("init", cmd_init, "create a store in the state directory")
    sp.add_argument("--zstd-level", type=int, help="zstd level for new chunks (default 3)")
    sp.add_argument("--avg-size", type=_size, help="average chunk size, power of two (64KiB)")
    sp.add_argument("--min-size", type=_size, help="minimum chunk size (16KiB)")
    sp.add_argument("--max-size", type=_size, help="maximum chunk size (256KiB)")
    sp = add("put", cmd_put, "copy a local file or tree into the namespace")
    sp.add_argument("local", metavar="LOCAL_PATH")
    sp.add_argument("path", metavar="NS_PATH")
    sp = add("get", cmd_get, "copy a namespace file or tree to a local path")
    sp.add_argument("path", metavar="NS_PATH")
    sp.add_argument("local", metavar="LOCAL_PATH")
    sp = add("ls", cmd_ls, "list a directory")
    sp.add_argument("-l", "--long", action="store_true", help="mode, owner, size, time")
    sp.add_argument("path", metavar="NS_PATH", nargs="?", default="/")
    sp = add("cat", cmd_cat, "write a file's content to standard output")
    sp.add_argument("path", metavar="NS_PATH")
    sp = add("stat", cmd_stat, "show an entry's attributes")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("path", metavar="NS_PATH")
    sp = add("rm", cmd_rm, "remove files or (with -r) directory trees")
    sp.add_argument("-r", "--recursive", action="store_true")
    sp.add_argument("paths", metavar="NS_PATH", nargs="+")
    sp = add("mv", cmd_mv, "rename or move an entry")
    sp.add_argument("src", metavar="SRC")
    sp.add_argument("dst", metavar="DST")
    sp = add("mkdir", cmd_mkdir, "create directories")
    sp.add_argument("-p", "--parents", action="store_true", help="make parents; ok if it exists")
    sp.add_argument("paths", metavar="NS_PATH", nargs="+")
    sp = add("du", cmd_du, "logical bytes, stored bytes, dedup and compression ratios")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("path", metavar="NS_PATH", nargs="?", default="/")
    add("gc", cmd_gc, "reclaim unreferenced chunks and orphan packs")
    sp = add("fsck", cmd_fsck, "verify the namespace, the index and every chunk")
    sp.add_argument("--no-data", action="store_true", help="skip reading chunk data")
    sp.add_argument("--json", action="store_true")
    for name in EXTENSIONS:
        importlib.import_module(name).register(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hutong` with `argv`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.state = getattr(args, "state", None)
    args.quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hutong: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("hutong: interrupted; committed files are intact", file=sys.stderr)
        return 130
    except (HutongError, OSError, ValueError) as e:
        print(f"hutong: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
