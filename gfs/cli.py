"""`hutong`: the command line of the Hutong global file system.

The namespace commands (ls, stat, cat, put, get, mkdir, rm, mv, du) run on the
selected namespace: the federation of a profile (--profile NAME, $HUTONG_PROFILE,
`hutong profile use`; see gfs.profiles), else the embedded store of --state.
Commands that manage an embedded store (gc, fsck, pools, tiers, ...) refuse a
federated profile with a clear error.

Exit codes: 0 success; 1 the operation ran and failed (damage, I/O, no space, a
server down); 2 the request was wrong (usage, an invalid value, no such path,
a conflict); 130 interrupted; 141 standard output closed early (`| head`).
Every error is one line on stderr with a hint; `-v` adds the traceback.

Heavy modules (LMDB, aiohttp, Dask, TenSEAL) are imported by the commands that
use them, never at start-up: `hutong --help` loads none of them.
"""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import json
import logging
import os
import stat as statmod
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from gfs import detach
from gfs.env import DETACH_ENV, META_ENV, STATE_ENV

if TYPE_CHECKING:
    from gfs.client import Client
    from gfs.namespace_api import DuReport, Namespace, Stat

DESCRIPTION = """\
Hutong keeps files as deduplicated, compressed, content-defined chunks under
one namespace. Namespace paths are absolute (/lab/data/x.csv); local paths
are ordinary paths.

The state directory is --state DIR, else $HUTONG_STATE, else ~/.hutong.
Start with `hutong init`, then `hutong put LOCAL /PATH`.

With a profile (`hutong profile add`, then --profile NAME, $HUTONG_PROFILE or
`hutong profile use NAME`) the same commands work on the global tree of the
federation: /ENTITY/... for every entity you may see.
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
  hutong --profile work ls /bank-a       the federation's tree, through a profile
"""


#: Modules that add subcommands: each has `register(subparsers, common_parser)`,
#: adding parsers whose `func(args) -> int` default runs the command. They import
#: their heavy dependencies inside the commands.
EXTENSIONS: tuple[str, ...] = ("gfs.profile_cli", "gfs.mount_cli", "gfs.mover_cli", "gfs.tier_cli",
                               "gfs.state_cli", "gfs.meta_cli", "gfs.accesslog_cli",
                               "gfs.federation.cli", "dataflow.cli", "privacy.cli",
                               "gfs.gateway.cli")

def human(n: float) -> str:
    """Bytes in binary units (1.5 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _size(text: str) -> int:
    """An argparse type: a size (gfs.units.size_arg, imported only when `init` is given
    one: decimal and its regexes cost ~7 ms of every command's start-up)."""
    from gfs.units import size_arg

    return size_arg(text)


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number (0-65535)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range: use 0 (any free "
                                         "port) to 65535")
    return value


def print_json(obj: Any) -> None:
    """Print `obj` as one JSON document (the form of every `--json` output)."""
    print(json.dumps(obj, default=str))


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """The `--json` flag of a listing or report command."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


class _Bar:
    """A shown progress bar: called with the bytes done (on the command's thread);
    `found(n)`, from any thread, adds `n` to its total, taken in at the next update."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._found = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self._found:
            self.take_found()
        self._bar.update(n)

    def take_found(self) -> None:
        """Add what `found` gathered to the bar's total."""
        with self._lock:
            grown, self._found = self._found, 0
        if grown:
            self._bar.total = (self._bar.total or 0) + grown

    def found(self, n: int) -> None:
        with self._lock:
            self._found += n


@contextmanager
def _progress(args: argparse.Namespace, total: Callable[[], int | None],
              desc: str) -> Iterator[_Bar | None]:
    """A progress bar on stderr when it is a terminal and not --quiet, else None (no
    callback per file, and tqdm not imported: its import took 5% of the CPU of a
    quiet put of 6,800 files); `total` is only computed when the bar is shown (None:
    unknown at first, grown by the bar's `found`)."""
    if args.quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # imported here: it costs ~20 ms of start-up

    with tqdm(total=total(), desc=desc, unit="B", unit_scale=True,
              unit_divisor=1024, file=sys.stderr, leave=False) as bar:
        shown = _Bar(bar)
        yield shown
        shown.take_found()  # a walk's last sizes may come after the last bytes done


def _local_size(path: str) -> int:
    """The bytes of the regular files at or under local `path`: the total of a federated
    put's bar, walked first (an embedded put's bar grows with the put's own walk)."""
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


def open_client(args: argparse.Namespace) -> Client:
    """The embedded store of `args.state` (the one place commands open it); refused when
    a federated profile is selected, since the command manages a store."""
    from gfs.client import Client
    from gfs.profiles import ProfileError, selected

    name = selected(getattr(args, "profile", None))
    if name is not None:
        prog = getattr(args, "_prog", "hutong")
        raise ProfileError(f"`{prog}` needs an embedded store, but profile {name!r} selects "
                           "the federation; run it with --profile local (and --state DIR)")
    return Client(args.state)


def open_ns(args: argparse.Namespace) -> Namespace:
    """The selected namespace: the profile's federation, else the embedded store."""
    from gfs.profiles import open_namespace
    return open_namespace(getattr(args, "profile", None), state=args.state)


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[Namespace]:
    ns = open_ns(args)
    try:
        yield ns
    finally:
        ns.close()


def _copy_stream(src: Any, dst: Any) -> int:
    n = 0
    while True:
        block = src.read(1 << 20)
        if not block:
            return n
        dst.write(block)
        n += len(block)


def cmd_init(args: argparse.Namespace) -> int:
    from gfs.client import Client

    settings = {k: getattr(args, k) for k in ("zstd_level", "avg_size", "min_size", "max_size")}
    with Client.init(args.state, meta=getattr(args, "meta", None), encrypt=args.encrypt,
                     **settings) as fs:
        if not args.quiet:
            print(f"initialised Hutong store at {fs.state}")
    return 0


#: Set when `main` runs as the process's program: it then owns the garbage collector.
_OWNS_GC = False
#: Allocations between young collections while a put or a get runs (CPython's default: 700).
PUT_GEN0_THRESHOLD = 7000


def _settle_for_bulk() -> None:
    """Before a bulk command's loop (the program only): freeze the objects its imports
    and the store's opening made, as `main` froze the start-up's (the put's modules are
    imported after it), and collect the young generation every PUT_GEN0_THRESHOLD
    allocations: a put of the release series spent 0.13-0.23 s of CPU in 4 full and
    ~500 young collections, 0.05-0.06 s after this (each collection holds the GIL)."""
    if _OWNS_GC:
        gc.freeze()
        gc.set_threshold(PUT_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def cmd_put(args: argparse.Namespace) -> int:
    from gfs.put_listings import list_ahead

    # the source's listings begin beside the imports and the store's opening
    ahead = list_ahead(args.local) if args.local != "-" else None
    from gfs.client import Client

    if args.local == "-":
        with _opened(args) as fs, fs.open(args.path, "wb") as out:
            n = _copy_stream(sys.stdin.buffer, out)
        if args.json:
            print_json({"path": args.path, "bytes": n})
        elif not args.quiet:
            print(f"put {human(n)} from standard input to {args.path}", file=sys.stderr)
        return 0
    with _opened(args) as fs, \
            _progress(args, lambda: None if isinstance(fs, Client) else _local_size(args.local),
                      "put") as bar:
        _settle_for_bulk()
        if isinstance(fs, Client):  # the bar's total grows as the put's walk goes
            r = fs.put(args.local, args.path, progress=bar, listed_ahead=ahead,
                       found=bar.found if bar is not None else None)
        else:
            from gfs.ns_transfer import put_tree
            r = put_tree(fs, args.local, args.path, progress=bar)
    w = r.write
    if args.json:
        print_json(r.to_dict())
    elif not args.quiet and w is None:
        print(f"put {r.files} files, {r.dirs} dirs, {r.symlinks} symlinks, {human(r.bytes)}"
              + (f"; {r.unchanged} unchanged entries kept (resumed)" if r.unchanged else "")
              + (f"; skipped {r.skipped} special files" if r.skipped else ""))
    elif not args.quiet and w is not None:
        print(f"put {r.files} files, {r.dirs} dirs, {r.symlinks} symlinks, {human(r.bytes)}; "
              f"new data {human(w.new_raw_bytes)} stored as {human(w.new_stored_bytes)}"
              + (f"; {r.unchanged} unchanged files kept (resumed)" if r.unchanged else "")
              + (f"; skipped {r.skipped} special files" if r.skipped else ""))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from gfs.client import Client

    if args.local == "-":
        with _opened(args) as fs:
            if fs.stat(args.path).is_dir:
                from gfs.errors import IsADirError
                raise IsADirError(args.path, "a directory cannot be written to standard "
                                  "output; give a local path")
            with fs.open(args.path) as f:
                _copy_stream(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    with _opened(args) as fs, \
            _progress(args, lambda: fs.du(args.path).logical_bytes, "get") as bar:
        _settle_for_bulk()  # a get's plan decodes an inode and a manifest per entry
        if isinstance(fs, Client):
            r = fs.get(args.path, args.local, progress=bar, skip_damaged=args.skip_damaged)
        elif args.skip_damaged:
            from gfs.profiles import ProfileError
            raise ProfileError("--skip-damaged works on an embedded store; on the federation "
                               "every chunk is read from a verified replica")
        else:
            from gfs.ns_transfer import get_tree
            r = get_tree(fs, args.path, args.local, progress=bar)
    if args.json:
        print_json(r.to_dict())
    else:
        for path in r.damaged:
            print(f"hutong: damaged, not restored: {path}", file=sys.stderr)
        if not args.quiet:
            print(f"got {r.files} files, {r.dirs} dirs, {r.symlinks} symlinks, {human(r.bytes)}"
                  + (f"; {len(r.damaged)} damaged files not restored (see `hutong fsck`)"
                     if r.damaged else ""))
    return 1 if r.damaged else 0


def _long(st: Stat) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(st.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
    name = st.name + (f" -> {st.target}" if st.kind == "symlink" else "")
    return f"{statmod.filemode(st.mode)} {st.uid:>5} {st.gid:>5} {st.size:>12} {when} {name}"


def cmd_ls(args: argparse.Namespace) -> int:
    with _opened(args) as fs:
        entries = fs.ls(args.path)
    if args.json:
        print_json([st.to_dict() for st in entries])
        return 0
    for st in entries:
        print(_long(st) if args.long else st.name + ("/" if st.is_dir else ""))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with _opened(args) as fs, fs.open(args.path) as f:
        _copy_stream(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with _opened(args) as fs:
        info = fs.stat(args.path).to_dict()
    if args.json:
        print_json(info)
    else:
        for k, v in info.items():
            print(f"{k:>8}: {v}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _opened(args) as fs:
        for p in args.paths:
            fs.rm(p, recursive=args.recursive)
    return 0


def cmd_mv(args: argparse.Namespace) -> int:
    with _opened(args) as fs:
        fs.mv(args.src, args.dst)
    return 0


def cmd_mkdir(args: argparse.Namespace) -> int:
    with _opened(args) as fs:
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
    with _opened(args) as fs:
        r = fs.du(args.path)
    print(json.dumps(r.to_dict()) if args.json else _du_text(r))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    with open_client(args) as fs:
        r = fs.gc()
    if args.json:
        print_json(asdict(r))
    elif not args.quiet:
        print(f"gc: removed {r.chunks_removed} chunks, deleted {r.packs_deleted} packs, "
              f"repacked {r.packs_repacked} ({r.chunks_moved} chunks moved), "
              f"{r.orphan_packs} orphan packs; freed {human(r.bytes_freed)}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    with open_client(args) as fs:
        repair = None
        if args.repair:
            repair = fs.repair(sources=args.sources)
        with _progress(args, lambda: None, "fsck") as bar:
            r = fs.fsck(verify_data=not args.no_data, progress=bar)
    if args.json:
        print_json({"ok": r.ok, **asdict(r),
                    **({"repair": asdict(repair)} if repair is not None else {})})
        return 0 if r.ok else 1
    if repair is not None and repair.temporaries_removed:
        print(f"repair: removed {repair.temporaries_removed} temporaries of interrupted "
              "writes", file=sys.stderr)
    if repair is not None and repair.refcounts_raised:
        print(f"repair: raised the reference counts of {repair.refcounts_raised} chunks to "
              "the references to them (gc would have dropped them)", file=sys.stderr)
    if repair is not None and (repair.repaired or repair.dropped_copies or repair.lost):
        print(f"repair: {repair.repaired} chunks restored from other copies, "
              f"{repair.dropped_copies} damaged copies dropped, {len(repair.lost)} chunks "
              f"lost in {len(repair.damaged_files)} files", file=sys.stderr)
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
        if r.temporaries:
            print(f"fsck: {r.temporaries} temporaries of interrupted writes (spools, staging "
                  "files); `hutong fsck --repair` or `hutong gc` removes them", file=sys.stderr)
        if r.uncommitted_tails:
            print(f"fsck: {r.uncommitted_tails} packs end in bytes of an append that was "
                  "not committed (an interrupted mount); never read, gone when gc repacks "
                  "the pack", file=sys.stderr)
        if r.metadata_damaged:
            print("fsck: stopped before the namespace, index and data checks, which need "
                  "every metadata record\nhint: load a metadata dump taken before the "
                  "damage (`hutong meta load`), or copy back a backup of the state "
                  "directory", file=sys.stderr)
        elif not r.ok and not args.repair:
            print("hint: `hutong fsck --repair [--from OTHER_STATE]` restores damaged chunks "
                  "from any good copy and marks the rest lost", file=sys.stderr)
    return 0 if r.ok else 1


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a hint after a usage error (exit code 2, one line); records the
    innermost command's name (`hutong site init`) as `_prog` for hints."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, rest = super().parse_known_args(args, namespace)
        if not getattr(ns, "_prog", None):
            ns._prog = self.prog
        return ns, rest

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\nhint: `{self.prog} --help` lists the "
                     "arguments\n")


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked (importlib.metadata costs start-up time)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        print(f"hutong {_version()}")
        parser.exit(0)


def _version() -> str:
    """The installed distribution's version (importlib.metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hutong")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `hutong`; when `command` is one of the commands defined
    here, the EXTENSIONS' commands are left out (importing them and building their
    parsers took ~40 ms of CPU, a third of a plain command's start-up)."""
    common = _Parser(add_help=False)
    common.add_argument("--state", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"state directory (default: ${STATE_ENV}, else ~/.hutong)")
    common.add_argument("--profile", default=argparse.SUPPRESS, metavar="NAME",
                        help="work on the federation through profile NAME (`local`: the "
                        "embedded store; default: $HUTONG_PROFILE, else `hutong profile use`)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or summaries")
    p = _Parser(
        prog="hutong", description=DESCRIPTION, epilog=EPILOG, parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    p.add_argument("--version", action=_VersionAction, nargs=0,
                   help="print the installed version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                           parser_class=_Parser)

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
    sp.add_argument("--encrypt", action="store_true",
                    help="encrypt the default pool at rest under STATE/at-rest.key (or "
                    "$HUTONG_AT_REST_KEY); back the key up apart from the pools")
    sp.add_argument("--meta", metavar="URL",
                    help="keep the metadata on a database server "
                    "(postgresql://USER@HOST/DB?schema=NAME); default: embedded LMDB in the "
                    f"state directory (also ${META_ENV})")
    sp = add("put", cmd_put, "copy a local file or tree into the namespace "
             "(NS_PATH becomes the copy; NS_PATH/ puts it inside; `-` reads standard input)")
    sp.add_argument("local", metavar="LOCAL_PATH")
    sp.add_argument("path", metavar="NS_PATH")
    add_json_flag(sp)
    sp = add("get", cmd_get, "copy a namespace file or tree to a local path "
             "(`-` writes the file to standard output)")
    sp.add_argument("path", metavar="NS_PATH")
    sp.add_argument("local", metavar="LOCAL_PATH")
    sp.add_argument("--skip-damaged", action="store_true",
                    help="restore every readable file, list the damaged ones (exit 1)")
    add_json_flag(sp)
    sp = add("ls", cmd_ls, "list a directory")
    sp.add_argument("-l", "--long", action="store_true", help="mode, owner, size, time")
    sp.add_argument("path", metavar="NS_PATH", nargs="?", default="/")
    add_json_flag(sp)
    sp = add("cat", cmd_cat, "write a file's content to standard output")
    sp.add_argument("path", metavar="NS_PATH")
    sp = add("stat", cmd_stat, "show an entry's attributes")
    add_json_flag(sp)
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
    add_json_flag(sp)
    sp.add_argument("path", metavar="NS_PATH", nargs="?", default="/")
    sp = add("gc", cmd_gc, "reclaim unreferenced chunks and orphan packs")
    add_json_flag(sp)
    sp = add("fsck", cmd_fsck, "verify the namespace, the index and every chunk")
    sp.add_argument("--no-data", action="store_true", help="skip reading chunk data")
    sp.add_argument("--repair", action="store_true",
                    help="first restore damaged chunks from any good copy (another pool or "
                    "tier, or --from stores); mark chunks with no good copy lost")
    sp.add_argument("--from", dest="sources", action="append", default=[], metavar="STATE",
                    help="another store to take good copies from (repeatable)")
    add_json_flag(sp)
    sp = add("completion", cmd_completion, "print a shell completion script "
             "(e.g. `hutong completion bash > /etc/bash_completion.d/hutong`)")
    sp.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    if command is not None and command in sub.choices:
        return p
    for name in EXTENSIONS:
        importlib.import_module(name).register(sub, common)
    return p


#: Options of `hutong` itself: those that take a value, and flags.
_VALUED = ("--state", "--profile")
_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in `argv` (after `hutong`'s own options), or None when that is
    not plain to see (the whole parser then decides)."""
    rest = iter(argv)
    for arg in rest:
        if arg in _VALUED:
            next(rest, None)
        elif not (arg in _FLAGS or arg.startswith(tuple(f"{o}=" for o in _VALUED))):
            return None if arg.startswith("-") else arg
    return None


def _quiet_broken_pipe() -> int:
    """Standard output was closed early (`hutong ls | head`): say nothing, exit 141."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return 128 + 13


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hutong` with `argv`; returns the exit code.

    Run as the process's program (`argv` None), it first freezes the objects start-up
    made (`gc.freeze`): they live as long as the process, and each full collection
    traversed them all again (12% of the CPU of a quiet put of 3,658 small files).
    Callers that pass `argv` (tests, embedders) keep their collector as it is."""
    global _OWNS_GC
    if argv is None:
        gc.freeze()
        _OWNS_GC = True
    parser = build_parser(_command_of(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    args.state = getattr(args, "state", None)
    args.profile = getattr(args, "profile", None)
    args.quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hutong: %(levelname)s: %(message)s")
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("hutong: interrupted; committed files are intact", file=sys.stderr)
        return 130
    except Exception as e:  # every error is one line with a hint; -v adds the traceback
        if args.verbose:
            logging.getLogger("hutong").exception("traceback")
        if isinstance(e, OSError) and e.errno == errno.EPIPE:
            return _quiet_broken_pipe()
        known, bad_request, hint = _classify(e, getattr(args, "_prog", "hutong"))
        if not known:
            print(f"hutong: internal error: {type(e).__name__}: {_one_line(e)}\n"
                  "hint: run again with -v for the traceback and report it", file=sys.stderr)
            return 1
        print(f"hutong: error: {_one_line(e)}\nhint: {hint}", file=sys.stderr)
        return 2 if bad_request else 1


def _classify(e: BaseException, prog: str) -> tuple[bool, bool, str]:
    """(an expected error?, the request's fault?, a hint naming the remedy)."""
    from gfs.errors import (
        ChunkMissingError,
        CorruptChunkError,
        HutongError,
        MetadataDamagedError,
        NoSpaceError,
        StateError,
    )

    if isinstance(e, CorruptChunkError | ChunkMissingError):
        return True, False, ("`hutong fsck` lists the damaged files; `hutong fsck --repair "
                             "[--from OTHER_STATE]` restores chunks from good copies")
    if isinstance(e, MetadataDamagedError):
        return True, False, ("`hutong fsck` lists every damaged metadata record and chunk; "
                             "`hutong meta load` restores the metadata from a dump")
    if isinstance(e, NoSpaceError):
        return True, False, "free space, or add a pool with `hutong pool add`"
    if isinstance(e, StateError):
        return True, True, (f"create a store with `hutong init`, or point --state or "
                            f"${STATE_ENV} at one")
    if isinstance(e, FileNotFoundError | NotADirectoryError):
        return True, True, "check the path (`hutong ls` lists a directory)"
    if isinstance(e, FileExistsError | IsADirectoryError):
        return True, True, "choose another destination, or remove the existing entry first"
    if isinstance(e, PermissionError):
        return True, True, "check the permissions, or the token's scope and prefix"
    if isinstance(e, ConnectionError | TimeoutError):
        return True, False, "check that the server is running and that the URL is right"
    if isinstance(e, ValueError | LookupError):
        return True, True, f"`{prog} --help` shows the accepted values"
    if isinstance(e, HutongError | OSError):
        return True, False, f"`{prog} --help`; run with -v for details"
    return False, False, ""


def run() -> NoReturn:
    """The `hutong` program (console script and `python -m gfs.cli`): `main()`, then
    `exit_now` with its code. The store's upkeep after a write (metadata compaction)
    is left to a child that outlives the command (`gfs.detach`), unless $HUTONG_DETACH
    is 0."""
    if os.environ.get(DETACH_ENV, "1") != "0":
        detach.allow()
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once a command has returned, without the
    interpreter's teardown: after a put it freed every object, module and cache one by
    one (12-15 ms, and a full collection before it), about a fifth of a small command's
    time. What a normal exit does for the user still happens: the atexit handlers run
    (logging's flush, weakref finalizers), then standard output and error are flushed
    (a closed pipe gives the interpreter's own code for it, 120). With any other thread
    still alive, or where this interpreter has no way to run the atexit handlers first
    (`atexit._run_exitfuncs` is CPython's), the exit is the normal one. The upkeep the
    command left (`gfs.detach`) runs in a forked child after the flush, or here before
    a normal exit (a fork beside other threads is unsafe)."""
    import atexit
    import threading

    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if threading.active_count() > 1 or run_handlers is None:
        detach.finish(fork=False)
        sys.exit(code)
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream, as a normal exit meets it
            code = code or 120
    detach.finish(fork=True)
    os._exit(code)


if __name__ == "__main__":
    run()
