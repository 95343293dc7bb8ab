"""`hutong meta ...` and `hutong init --meta URL`: where the metadata lives.

`meta load` into an existing state directory moves its store to another
engine (LMDB <-> PostgreSQL): the pools stay, the new metadata is loaded
from the dump, then config.toml points at it (the replaced LMDB environment
is kept as meta.replaced-TIME). Into a new directory it makes a store from
the dump's settings.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gfs.env import CONFIG_FILE, state_dir
from gfs.errors import ConfigError, StateError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `meta dump` and `meta load` (`hutong init --meta` is in gfs.cli)."""

    meta = sub.add_parser("meta", help="the metadata: dump, load, move between engines",
                          parents=[common])
    msub = meta.add_subparsers(dest="meta_command", metavar="ACTION", required=True)
    sp = msub.add_parser("dump", help="write the metadata to FILE (zstd JSON lines)",
                         parents=[common])
    sp.add_argument("file", metavar="FILE")
    sp.set_defaults(func=cmd_dump)
    sp = msub.add_parser("load", help="load a dump into a new engine (--meta URL, or the "
                         "embedded one) and make the state directory use it",
                         parents=[common])
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--meta", metavar="URL", help="postgresql://... (default: embedded LMDB)")
    sp.set_defaults(func=cmd_load)
    sp = msub.add_parser("compact", help="rewrite the embedded metadata packed (no other "
                         "process may have the store open)", parents=[common])
    sp.add_argument("--min-free", type=float, default=0.0, metavar="PERCENT",
                    help="only when at least PERCENT of the file is free (default 0: always)")
    sp.set_defaults(func=cmd_compact)



def cmd_dump(args: argparse.Namespace) -> int:
    from gfs.cli import open_client
    from gfs.meta.dump import dump
    from gfs.state import settings_toml

    path = Path(args.file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open_client(args) as fs:
        try:
            with open(tmp, "wb") as f:
                counts = dump(fs.engine, f, config=settings_toml(fs.state), source=repr(fs.engine))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if not args.quiet:
        print(f"dumped {_counts(counts)} to {path}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from gfs.meta import open_engine
    from gfs.meta.dump import load, read_header
    from gfs.state import is_database_url, meta_location, settings_toml, write_config

    state = state_dir(args.state)
    meta: str | None = args.meta or None
    if meta is not None and not is_database_url(meta):
        raise ConfigError(f"--meta {meta!r}: use postgresql://USER@HOST/DB?schema=NAME, or "
                          "leave it out to load into the embedded engine")
    existing = (state / CONFIG_FILE).exists()
    if existing and meta is not None and meta_location(state) == meta:
        raise ConfigError(f"{state} already keeps its metadata at {meta}; load into another "
                          "schema or database")
    target = meta or str(state / ("meta.loading" if existing else "meta"))
    if meta is None and Path(target).exists():
        raise StateError(f"{target} exists: a load was interrupted or another runs; remove "
                         "it and load again")
    with open(args.file, "rb") as f:
        header, recs = read_header(f)
        if not existing:
            for sub in ("locks", "pools/default"):
                (state / sub).mkdir(parents=True, exist_ok=True)
        engine = open_engine(target)
        try:
            counts = load(engine, recs)
        finally:
            engine.close()
    if existing:
        settings = settings_toml(state)
        old = state / "meta"
        if old.exists():  # the replaced embedded environment is kept aside
            os.rename(old, state / f"meta.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        if meta is None:
            os.rename(target, old)
    else:
        settings = str(header.get("config") or "")
    write_config(state, settings, meta)
    if not args.quiet:
        print(f"loaded {_counts(counts)} into {meta or state / 'meta'}; {state} uses it now")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from gfs.meta.compact import compact_now
    from gfs.state import meta_location

    if not 0.0 <= args.min_free <= 100.0:
        raise ConfigError(f"--min-free {args.min_free:g}: give a percentage from 0 to 100")
    state = state_dir(args.state)
    if not (state / CONFIG_FILE).exists():
        raise StateError(f"no store at {state}; pass --state DIR of a store (`hutong init`)")
    where = meta_location(state)
    if where != str(state / "meta"):
        raise ConfigError(f"{state} keeps its metadata at {where}: compaction is for the "
                          "embedded engine (on PostgreSQL, VACUUM FULL does this)")
    done = compact_now(where, min_free=args.min_free / 100)
    if not args.quiet:
        if done is None:
            print(f"{where}: less than {args.min_free:g}% would be freed; unchanged")
        else:
            print(f"compacted {where}: {done.before / 1e6:.2f} MB -> {done.after / 1e6:.2f} MB "
                  f"in {done.seconds:.2f} s")
    return 0


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {t}s" for t, n in sorted(counts.items())) or "nothing"
