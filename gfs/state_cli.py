"""`hutong state ...`: the state directory's identity and pools that moved.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_show(args: argparse.Namespace) -> int:
    from gfs.cli import open_client
    from gfs.state import STATE_PATH, STORE_ID, is_private_url

    with open_client(args) as fs, fs.engine.read() as txn:
        sid = txn.get_meta(STORE_ID) or b""
        path = (txn.get_meta(STATE_PATH) or b"").decode()
        pools = list(txn.iter_pools())
    print(f"store id {sid.hex()} (owner tag {sid[:8].hex()}) at {path or fs.engine!r}")
    for rec in pools:
        kind = "private" if is_private_url(rec.url) else "shared"
        print(f"{rec.id:>3} {rec.name:<12} {kind:<7} {rec.url}")
    return 0


def cmd_relocate(args: argparse.Namespace) -> int:
    from gfs.cli import open_client

    with open_client(args) as fs:
        changed = fs.relocate(args.old, args.new)
    for rec in changed:
        print(f"pool {rec.name} (id {rec.id}) now at {rec.url}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `state` to the `hutong` command line."""
    state = sub.add_parser("state", help="the state directory: identity, moved pools",
                           parents=[common])
    ssub = state.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    sp = ssub.add_parser("show", help="store id, recorded path, private and shared pools",
                         parents=[common])
    sp.set_defaults(func=cmd_show)
    sp = ssub.add_parser("relocate", help="point pools whose URL starts with OLD at NEW",
                         parents=[common])
    sp.add_argument("old", metavar="OLD", help="old directory or URL prefix")
    sp.add_argument("new", metavar="NEW", help="where those pools are now")
    sp.set_defaults(func=cmd_relocate)
