"""Names and defaults every layer shares: environment variables, tier classes, the
state directory rule. Standard library only, so the command line can import it
without loading pydantic, LMDB or aiohttp."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.toml"
STATE_ENV = "HUTONG_STATE"
#: a database URL for the metadata (`hutong init --meta URL`)
META_ENV = "HUTONG_META"
#: parallel TCP streams of the chunk mover unless asked otherwise
MOVER_STREAMS = 4
#: tier classes of pools, fastest first
TIERS: tuple[str, ...] = ("hot", "warm", "cold")
#: the disk cache tier of readers (mount, gfs://): its directory and capacity
CACHE_DIR_ENV = "HUTONG_DISK_CACHE"
CACHE_BYTES_ENV = "HUTONG_DISK_CACHE_BYTES"
#: the key file of pools encrypted at rest (default STATE/at-rest.key)
AT_REST_KEY_ENV = "HUTONG_AT_REST_KEY"
#: the metadata database of a new store (`hutong init --meta URL`)
META_ENV = "HUTONG_META"
#: "0": a command does its store's upkeep (metadata compaction) before it exits, instead
#: of leaving it to a detached child (gfs.detach)
DETACH_ENV = "HUTONG_DETACH"


def state_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: `arg`, else $HUTONG_STATE, else ~/.hutong."""
    if arg:
        return Path(arg).expanduser().absolute()
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return (Path.home() / ".hutong").absolute()
