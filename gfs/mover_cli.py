"""`hutong mover serve` and `hutong copy`: the chunk mover on the command line.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from gfs.cli import add_json_flag, open_client, port, print_json
from gfs.env import MOVER_STREAMS
from gfs.errors import ConfigError

SECRET_ENV = "HUTONG_MOVER_SECRET"


def _secret(args: argparse.Namespace) -> bytes:
    """The session secret: --secret-file (raw bytes or hex) > $HUTONG_MOVER_SECRET (hex)."""
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            raw = f.read().strip()
        try:
            secret = bytes.fromhex(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            secret = raw
    elif os.environ.get(SECRET_ENV):
        try:
            secret = bytes.fromhex(os.environ[SECRET_ENV])
        except ValueError as e:
            raise ConfigError(f"${SECRET_ENV} must be hex (16 to 64 bytes)") from e
    else:
        raise ConfigError(f"no session secret: pass --secret-file FILE or set ${SECRET_ENV}")
    if not 16 <= len(secret) <= 64:
        raise ConfigError(f"the session secret must be 16 to 64 bytes, got {len(secret)}")
    return secret


def cmd_serve(args: argparse.Namespace) -> int:
    from gfs import mover

    secret = _secret(args)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    with open_client(args) as fs, mover.MoverServer(fs, secret, args.host, args.port,
                                                     sendfile=not args.no_sendfile,
                                                     congestion=args.congestion) as srv:
        print(f"hutong mover: serving {fs.state} on {srv.host}:{srv.port}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        if not args.quiet:
            print(f"hutong mover: stopped ({srv.counters()})", file=sys.stderr)
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    from gfs import mover
    from gfs.client import Client

    with open_client(args) as src, Client(args.to_state) as dst:
        ids = mover.tree_chunks(src, args.path)
        from tqdm import tqdm  # here: it costs ~20 ms of every command's start-up

        with tqdm(desc="copy", unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                  disable=True if args.quiet else None, leave=False) as bar:
            def advance(n: int) -> None:
                bar.update(n)

            report = mover.copy_tree(src, dst, args.path, args.dest, streams=args.streams,
                                     progress=advance)
    t = report.transfer
    if args.json:
        print_json({"files": report.files, "dirs": report.dirs, "symlinks": report.symlinks,
                    "logical_bytes": report.logical_bytes, "chunks": len(ids),
                    "chunks_moved": t.chunks, "bytes_moved": t.bytes, "seconds": t.seconds,
                    "streams": t.streams, "already_there": t.skipped, "retries": t.retries})
    elif not args.quiet:
        print(f"copied {report.files} files, {report.dirs} dirs, {report.symlinks} symlinks "
              f"({report.logical_bytes} bytes); {len(ids)} chunks: {t.chunks} moved "
              f"({t.bytes} bytes in {t.seconds:.2f} s, {t.streams} streams), "
              f"{t.skipped} already there, {t.retries} retries")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `mover serve` and `copy` to the `hutong` parser."""
    p = sub.add_parser("mover", help="run the chunk mover", parents=[common])
    msub = p.add_subparsers(dest="mover_command", metavar="COMMAND", required=True)
    sp = msub.add_parser("serve", parents=[common],
                         help="serve this store's chunks (fetch) and receive chunks (send)",
                         description=f"Serve until SIGTERM or Ctrl-C. The session secret "
                         f"comes from --secret-file or ${SECRET_ENV} (hex).")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    sp.add_argument("--port", type=port, default=0, help="port (0: any free port; printed)")
    sp.add_argument("--secret-file", metavar="FILE", help="file holding the session secret")
    sp.add_argument("--no-sendfile", action="store_true", help="send with pread + send")
    sp.add_argument("--congestion", metavar="NAME", default=None,
                    help="TCP congestion control of served streams, e.g. bbr for long lossy "
                    "links (default: the system's)")
    sp.set_defaults(func=cmd_serve)
    cp = sub.add_parser("copy", parents=[common],
                        help="copy a tree's chunks and files to another state directory",
                        description="Copy NS_PATH (a file or tree) of this store to DEST "
                        "(default: the same path) of the store in --to-state, through the "
                        "chunk mover. Run it again after an interruption to resume.")
    cp.add_argument("--to-state", required=True, metavar="DIR", help="destination store")
    cp.add_argument("--streams", type=int, default=MOVER_STREAMS,
                    help=f"parallel TCP streams ({MOVER_STREAMS})")
    cp.add_argument("path", metavar="NS_PATH")
    cp.add_argument("dest", metavar="DEST", nargs="?")
    add_json_flag(cp)
    cp.set_defaults(func=cmd_copy)
