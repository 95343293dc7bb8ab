"""Metadata engines: the interface, the records, and the embedded LMDB engine."""

from __future__ import annotations

from typing import Any

from gfs.meta.engine import VALUE_TABLES, MetaEngine, ReadTxn, WriteTxn
from gfs.meta.lmdb_engine import LmdbEngine
from gfs.meta.records import (
    CHUNK_ID_LEN,
    PACK_ID_LEN,
    ROOT_INO,
    ChunkRecord,
    ChunkRef,
    Inode,
    Kind,
    Location,
    Manifest,
    PackRecord,
    PendingPack,
    PoolRecord,
)

__all__ = [
    "CHUNK_ID_LEN",
    "PACK_ID_LEN",
    "ROOT_INO",
    "VALUE_TABLES",
    "ChunkRecord",
    "ChunkRef",
    "Inode",
    "Kind",
    "LmdbEngine",
    "Location",
    "Manifest",
    "MetaEngine",
    "PackRecord",
    "PendingPack",
    "PoolRecord",
    "ReadTxn",
    "WriteTxn",
    "engine_location",
    "open_engine",
]


def open_engine(location: str, **kw: Any) -> MetaEngine:
    """Open the metadata engine at `location`: a ``postgresql://`` URL gives the
    PostgreSQL engine (`gfs.meta.pg_engine`), anything else is the directory of
    an embedded LMDB environment.

    Keyword arguments go to the engine (LMDB: map_size, sync, readonly).
    """
    if location.startswith(("postgresql://", "postgres://")):
        from gfs.meta.pg_engine import PgEngine  # psycopg loads only when asked for

        return PgEngine(location, **kw)
    return LmdbEngine(location, **kw)


def engine_location(engine: MetaEngine) -> str:
    """What `open_engine` takes to open the same store again (in another process)."""
    if isinstance(engine, LmdbEngine):
        return engine.path
    url = getattr(engine, "url", None)
    if not isinstance(url, str):
        raise TypeError(f"{engine!r} has no location")
    return url
