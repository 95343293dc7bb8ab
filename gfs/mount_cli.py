"""`hutong mount`, `umount`, `cache stats` and `warmup`: the CLI of the FUSE mount.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from gfs.cli import add_json_flag, print_json
from gfs.env import CACHE_BYTES_ENV, CACHE_DIR_ENV
from gfs.errors import InvalidPathError, StateError
from gfs.eviction import DEFAULT_POLICY, POLICIES
from gfs.meta_cache import DEFAULT_MAX_ENTRIES, DEFAULT_TTL
from gfs.units import duration_arg, size_arg

if TYPE_CHECKING:
    from gfs.client import Client

#: Seconds `mount --background` waits for the mount to come up.
READY_TIMEOUT = 30.0
def _entries_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--meta-entries must be a whole number >= 1, "
                                         f"not {text!r}")
    return n


def _profile(args: argparse.Namespace) -> str | None:
    """The profile the mount uses (--profile, $HUTONG_PROFILE, `hutong profile use`);
    None: the embedded store."""
    from gfs.profiles import selected

    return selected(getattr(args, "profile", None))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the mount commands to the `hutong` parser."""
    sp = sub.add_parser("mount", parents=[common], help="mount the namespace with FUSE",
                        description="Mount the namespace at MOUNTPOINT (a stale mount left "
                        "there by a dead mount process is cleaned first). Stays in the "
                        "foreground until unmounted. Ctrl-C or SIGTERM refuse new opens, "
                        "commit what open files hold, wait --drain-timeout seconds for "
                        "them to be closed (each is committed at its close), commit what "
                        "is still open and unmount; a second Ctrl-C unmounts at once. "
                        "With a profile (--profile NAME, $HUTONG_PROFILE or `hutong profile "
                        "use`) it mounts "
                        "the global tree: / lists the entities you may see, metadata is "
                        "cached for --meta-ttl seconds, writes are committed when the file "
                        "is closed (docs/globalmount.md).")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.add_argument("--meta-ttl", type=duration_arg, default=DEFAULT_TTL, metavar="SECONDS",
                    help="with a profile: how long metadata (stats, listings) is trusted "
                    f"before it is fetched again ({DEFAULT_TTL:g})")
    sp.add_argument("--meta-entries", type=_entries_arg, default=DEFAULT_MAX_ENTRIES,
                    metavar="N", help="with a profile: stats and listed names the "
                    f"metadata cache keeps at most ({DEFAULT_MAX_ENTRIES})")
    sp.add_argument("--background", action="store_true",
                    help="detach once the mount is ready")
    sp.add_argument("--attr-timeout", type=duration_arg, default=1.0, metavar="SECONDS",
                    help="how long the kernel caches attributes and names (1)")
    sp.add_argument("--cache-size", type=size_arg, default=256 << 20, metavar="BYTES",
                    help="memory cache of decompressed chunks (256MiB)")
    sp.add_argument("--disk-cache", choices=("auto", "on", "off"), default="auto",
                    help="disk tier of stored chunks: auto = chunks of pools not on local "
                    "disk, on = every chunk, off (auto)")
    sp.add_argument("--disk-cache-dir", metavar="DIR",
                    help=f"disk tier directory (${CACHE_DIR_ENV}, else STATE/cache)")
    sp.add_argument("--disk-cache-size", type=size_arg, metavar="BYTES",
                    help=f"disk tier capacity (${CACHE_BYTES_ENV}, else 4GiB)")
    sp.add_argument("--cache-policy", choices=sorted(POLICIES), default=DEFAULT_POLICY,
                    help=f"eviction policy of both tiers ({DEFAULT_POLICY})")
    sp.add_argument("--commit-window", type=duration_arg, default=0.01,
                    metavar="DURATION",
                    help="how long a close waits for the closes of other files being "
                    "written at the same time, to commit them together (one pack write, "
                    "one metadata transaction); 0 = never (10ms)")
    sp.add_argument("--sync-interval", type=duration_arg, default=0.0, metavar="DURATION",
                    help="0: a close returns once its file is committed and durable "
                    "(metadata-only changes such as mkdir or chmod: committed at once, "
                    "durable at the next close, fsync or within 1 s); "
                    "else committed (visible, safe from a crash of the mount) at close and "
                    "durable at fsync, at unmount or within DURATION, packs and metadata "
                    "being synced in batches; an OS crash or power loss may lose or damage "
                    "files changed in the last DURATION and never fsynced (fsck reports "
                    "damage) (0)")
    sp.add_argument("--allow-other", action="store_true", help="let other users in")
    sp.add_argument("--log", metavar="FILE", help="with --background: write logs here")
    sp.add_argument("--fuse-debug", action="store_true", help="log every FUSE request")
    sp.add_argument("--drain-timeout", type=duration_arg, default=5.0,
                    metavar="DURATION",
                    help="on SIGINT/SIGTERM, how long to wait for open files to be closed "
                    "after committing them, before unmounting (5s)")
    sp.set_defaults(func=cmd_mount)
    sp = sub.add_parser("umount", parents=[common], help="unmount a Hutong FUSE mount",
                        description="Unmount MOUNTPOINT; a stale mount (its process "
                        "died) is cleaned.")
    sp.add_argument("mountpoint", metavar="MOUNTPOINT")
    sp.set_defaults(func=cmd_umount)
    sp = sub.add_parser("cache", parents=[common], help="local cache tiers")
    csub = sp.add_subparsers(dest="cache_command", metavar="SUBCOMMAND", required=True)
    cp = csub.add_parser("stats", parents=[common],
                         help="statistics of the cache tiers (of a running mount, or the "
                         "disk tier's saved ones)")
    cp.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                    help="a running mount (memory and disk tiers); without it, the disk "
                    "tier of the store")
    cp.add_argument("--disk-cache-dir", metavar="DIR",
                    help=f"disk tier directory (${CACHE_DIR_ENV}, else STATE/cache)")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_cache_stats)
    sp = sub.add_parser("warmup", parents=[common],
                        help="read files ahead of use: through a mount (a path in it), or "
                        "into the disk tier (a namespace path)")
    sp.add_argument("path", metavar="PATH")
    sp.add_argument("--disk-cache-dir", metavar="DIR",
                    help=f"disk tier directory (${CACHE_DIR_ENV}, else STATE/cache)")
    sp.add_argument("--disk-cache-size", type=size_arg, metavar="BYTES",
                    help=f"disk tier capacity (${CACHE_BYTES_ENV}, else 4GiB)")
    add_json_flag(sp)
    sp.set_defaults(func=cmd_warmup)


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "gfs.cli"]
    if args.state is not None:
        argv += ["--state", str(args.state)]
    argv += ["mount", os.path.abspath(args.mountpoint), "--attr-timeout",
             str(args.attr_timeout), "--cache-size", str(args.cache_size),
             "--disk-cache", args.disk_cache, "--cache-policy", args.cache_policy,
             "--commit-window", str(args.commit_window),
             "--sync-interval", str(args.sync_interval)]
    if args.disk_cache_dir:
        argv += ["--disk-cache-dir", os.path.abspath(args.disk_cache_dir)]
    if args.disk_cache_size is not None:
        argv += ["--disk-cache-size", str(args.disk_cache_size)]
    if args.allow_other:
        argv.append("--allow-other")
    if args.fuse_debug:
        argv.append("--fuse-debug")
    argv += ["--drain-timeout", str(args.drain_timeout)]
    profile = _profile(args)
    if profile is not None:
        argv += ["--profile", profile, "--meta-ttl", str(args.meta_ttl), "--meta-entries",
                 str(args.meta_entries)]
    return argv


def cmd_mount(args: argparse.Namespace) -> int:
    from gfs.client import Client
    from gfs.mount import MountOptions, run_mount
    from gfs.mount_points import prepare

    mp = args.mountpoint
    profile = _profile(args)
    if args.background:
        mp, report = prepare(mp)  # here, so that the report reaches the user
        if report is not None:
            print(f"hutong: {report}", file=sys.stderr)
        if profile is not None:  # fail here, not in the child, if it cannot be opened
            from gfs.profiles import open_namespace

            open_namespace(profile).close()
        else:
            Client(args.state).close()
        log: Any = open(args.log, "ab+") if args.log else tempfile.TemporaryFile()  # noqa: SIM115
        with log:
            child = subprocess.Popen(_child_argv(args), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + READY_TIMEOUT
            while not os.path.ismount(mp):
                if child.poll() is not None:
                    log.seek(0)
                    why = log.read().decode(errors="replace").strip().splitlines()
                    raise StateError(f"mount of {mp} failed: {why[-1] if why else 'no output'}")
                if time.monotonic() > deadline:
                    child.terminate()
                    raise StateError(f"mount of {mp} not ready after {READY_TIMEOUT:.0f} s")
                time.sleep(0.05)
        if not args.quiet:
            print(f"mounted at {mp} (pid {child.pid}); `hutong umount {mp}` to stop")
        return 0
    if profile is not None:
        return _mount_global(args, profile)
    opts = MountOptions(attr_timeout=args.attr_timeout, entry_timeout=args.attr_timeout,
                        cache_bytes=args.cache_size, disk_cache=args.disk_cache,
                        disk_cache_dir=args.disk_cache_dir,
                        disk_cache_bytes=args.disk_cache_size, cache_policy=args.cache_policy,
                        allow_other=args.allow_other, debug=args.fuse_debug,
                        drain_timeout=args.drain_timeout, commit_window=args.commit_window,
                        sync_interval=args.sync_interval)
    with _engine_flags(args), Client(args.state) as fs:
        run_mount(fs, mp, opts)
    return 0


def _engine_flags(args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """The embedded metadata environment opened (first, so the Client's engine shares
    it) with its meta-page flush left to the mount's syncs: at each close in the
    durable mode, in batches with --sync-interval; metadata-only changes share them."""
    from gfs.env import state_dir
    from gfs.meta import LmdbEngine
    from gfs.state import is_database_url, meta_location

    meta = meta_location(state_dir(args.state))
    if is_database_url(meta):
        return contextlib.nullcontext()
    return contextlib.closing(LmdbEngine(meta, metasync=False))


def _mount_global(args: argparse.Namespace, profile: str) -> int:
    from gfs.mount_global import GlobalMountOptions, run_global_mount
    from gfs.profiles import ProfileError, open_namespace

    if args.disk_cache_dir is not None or args.disk_cache_size is not None:
        raise ProfileError(f"profile {profile!r} mounts the federation, whose disk tier is "
                           "the profile's cache directory; drop --disk-cache-dir/"
                           "--disk-cache-size (or set the profile's cache directory)")

    opts = GlobalMountOptions(meta_ttl=args.meta_ttl, meta_entries=args.meta_entries,
                              allow_other=args.allow_other, debug=args.fuse_debug,
                              drain_timeout=args.drain_timeout)
    ns = open_namespace(profile, memory_bytes=args.cache_size)
    try:
        run_global_mount(ns, args.mountpoint, opts, label=f"profile {profile}")
    finally:
        ns.close()
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from gfs.mount_points import unmount

    report = unmount(args.mountpoint)
    if report is not None:
        print(f"hutong: {report}", file=sys.stderr)
    return 0


def _print_disk(d: dict[str, Any]) -> None:
    lookups = d["hits"] + d["misses"]
    ratio = d["hits"] / lookups if lookups else 0.0
    print(f"disk tier ({d['mode']}, {d['policy']}, {d['path']}): {d['bytes_cached']}/"
          f"{d['capacity']} bytes in {d['entries']} chunks; hits {d['hits']}, misses "
          f"{d['misses']} (hit ratio {ratio:.1%}); admitted {d['admitted']}; evictions "
          f"{d['evictions']}; damaged records dropped {d['corrupt_dropped']}")


def cmd_cache_stats(args: argparse.Namespace) -> int:
    from gfs.disk_cache import cache_dir, offline_stats
    from gfs.env import state_dir

    if args.mountpoint is None:  # no mount needed: the disk tier's saved counters
        root = cache_dir(state_dir(args.state), args.disk_cache_dir)
        found = offline_stats(root)
        if found is None:
            raise StateError(f"no disk cache at {root}; it is made by `hutong mount` or "
                             "`hutong warmup PATH` (or pass --disk-cache-dir)")
        disk = found.to_dict()
        if args.json:
            print(json.dumps({"disk": disk}, indent=2))
        else:
            _print_disk(disk)
        return 0
    try:
        raw = os.getxattr(args.mountpoint, "user.hutong.cache")
    except OSError as e:
        raise InvalidPathError(args.mountpoint, f"not a Hutong mount ({e.strerror}); "
                          "omit MOUNTPOINT for the disk tier's saved statistics") from None
    stats = json.loads(raw)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    lookups = stats["hits"] + stats["misses"]
    ratio = stats["hits"] / lookups if lookups else 0.0
    print(f"memory tier ({stats.get('policy', '?')}): {stats['bytes_cached']}/"
          f"{stats['capacity']} bytes in "
          f"{stats['entries']} chunks; hits {stats['hits']}, misses {stats['misses']} "
          f"(hit ratio {ratio:.1%}); prefetched {stats['prefetched']}; "
          f"evictions {stats['evictions']}; read from store {stats['bytes_from_store']} bytes")
    if stats.get("disk"):
        _print_disk(stats["disk"])
    return 0


def cmd_warmup(args: argparse.Namespace) -> int:
    from gfs.client import Client

    total = files = 0
    if os.path.exists(args.path):  # a path in a mount: read through it
        targets = ([args.path] if os.path.isfile(args.path) else
                   [os.path.join(r, f) for r, _, fs in os.walk(args.path) for f in fs])
        for t in targets:
            if os.path.islink(t) or not os.path.isfile(t):
                continue
            with open(t, "rb") as f:
                while data := f.read(8 << 20):
                    total += len(data)
            files += 1
        if args.json:
            print_json({"files": files, "bytes": total, "via": "mount"})
        elif not args.quiet:
            print(f"warmed {files} files, {total} bytes (through the mount)")
        return 0
    from gfs.disk_cache import DiskCache, cache_capacity, cache_dir

    with Client(args.state) as c:
        root = cache_dir(c.state, args.disk_cache_dir)
        disk = DiskCache(root, cache_capacity(args.disk_cache_size), admit_local=True)
        try:
            if not disk.owner:
                raise StateError(f"the disk cache {root} is in use by a running mount; warm "
                                 "up through the mount instead (`hutong warmup "
                                 "MOUNTPOINT/PATH`)")
            files, total, added = warm_disk_tier(c, disk, args.path)
            stats = disk.stats()
        finally:
            disk.close()
    if args.json:
        print_json({"files": files, "bytes": total, "via": "disk tier", "chunks_added": added,
                    "bytes_cached": stats.bytes_cached, "capacity": stats.capacity,
                    "entries": stats.entries})
    elif not args.quiet:
        print(f"warmed {files} files, {total} bytes: {added} chunks added to the disk tier "
              f"({stats.bytes_cached}/{stats.capacity} bytes in {stats.entries} chunks)")
    return 0


def warm_disk_tier(client: Client, disk: Any, path: str) -> tuple[int, int, int]:
    """Put the stored chunks of every file under namespace `path` in `disk`;
    returns (files, bytes, chunks added)."""
    from concurrent.futures import ThreadPoolExecutor

    from gfs.read import DiskTier

    tier = DiskTier(client.store.source, disk)  # the disk admits every chunk (admit_local)
    todo: dict[bytes, str] = {}
    files = total = 0
    for st in client.walk(path):
        if st.kind != "file":
            continue
        m = client.manifest(st.path)
        files += 1
        total += st.size
        for ref in m.chunks:
            if ref.id not in todo and ref.id not in disk:
                todo[ref.id] = st.path
    with ThreadPoolExecutor(4, thread_name_prefix="hutong-warmup") as pool:
        done = pool.map(lambda item: tier.get(item[0], path=item[1]), todo.items())
        for _ in done:
            pass
    tier.puts.close()  # the admissions its writer thread has queued, written before counting
    return files, total, sum(1 for cid in todo if cid in disk)
