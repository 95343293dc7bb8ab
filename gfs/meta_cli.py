"""`hutong meta ...` and `hutong init --meta URL`: where the metadata lives.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from gfs.state import META_ENV

Command = Callable[[argparse.Namespace], int]


def _with_meta(cmd: Command) -> Command:
    """`hutong init` with `--meta URL`: the URL reaches Client.init as $HUTONG_META."""
    def run(args: argparse.Namespace) -> int:
        if not args.meta:
            return cmd(args)
        saved = os.environ.get(META_ENV)
        os.environ[META_ENV] = args.meta
        try:
            return cmd(args)
        finally:
            if saved is None:
                os.environ.pop(META_ENV, None)
            else:
                os.environ[META_ENV] = saved
    return run


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `--meta` to `hutong init`."""
    init = sub.choices.get("init")
    if init is not None:
        init.add_argument("--meta", metavar="URL",
                          help="keep the metadata on a database server "
                               "(postgresql://USER@HOST/DB?schema=NAME); default: embedded "
                               f"LMDB in the state directory (also ${META_ENV})")
        init.set_defaults(func=_with_meta(init.get_default("func")))
