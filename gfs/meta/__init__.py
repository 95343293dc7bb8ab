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
    "open_engine",
]


def open_engine(path: str, **kw: Any) -> MetaEngine:
    """Open the metadata engine of the environment at `path` (the embedded LMDB engine).

    Keyword arguments go to `LmdbEngine` (map_size, sync, readonly).
    """
    return LmdbEngine(path, **kw)
