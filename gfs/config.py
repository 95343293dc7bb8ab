"""Store configuration: one object, precedence argument > environment > file > default.

The file is `STATE/config.toml`, written by `hutong init`. Environment
variables are `HUTONG_<KEY>` in upper case (e.g. `HUTONG_ZSTD_LEVEL`). An
invalid value raises ConfigError naming the key and where it came from; it
never falls back silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from gfs.env import (  # noqa: F401  (re-exported: the names belong to the config)
    CACHE_BYTES_ENV,
    CACHE_DIR_ENV,
    CONFIG_FILE,
    MOVER_STREAMS,
    STATE_ENV,
    TIERS,
    state_dir,
)
from gfs.errors import ConfigError
from gfs.schema import Schema, read, validate
from gfs.units import Duration, Size


class StoreSettings(Schema):
    """Each setting of a store and its own bounds (one source's values, checked alone)."""

    min_size: Size = 16 * 1024
    avg_size: Size = 64 * 1024
    max_size: Size = 256 * 1024
    zstd_level: Annotated[int, Field(ge=-7, le=22)] = 3
    pack_size: Annotated[Size, Field(ge=1 << 16, le=1 << 30)] = 16 * 1024 * 1024
    workers: Annotated[int, Field(ge=0, le=256)] = 0
    commit_files: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    cache_bytes: Annotated[Size, Field(le=1 << 40)] = 64 * 1024 * 1024
    #: Seconds gc waits before it deletes what a writer on another host may still
    #: use: an unknown pack of this store in a shared pool, a dead chunk on a
    #: database engine (docs/format.md, "Ownership of packs", "Chunk pins").
    gc_grace: Annotated[Duration, Field(ge=0, le=1 << 40)] = 3600
    #: Store a new chunk that resembles a stored one as a delta against it
    #: (docs/format.md, "Resemblance and delta chunks").
    delta: bool = False


class MetaSettings(Schema):
    """Where the metadata lives when it is not the embedded `STATE/meta` (`hutong init
    --meta`): a database URL."""

    url: str


class _ConfigFile(Schema):
    store: StoreSettings = Field(default_factory=StoreSettings)
    meta: MetaSettings | None = None


def meta_url(state: Path) -> str | None:
    """The `[meta] url` of STATE/config.toml, or None (the embedded engine)."""
    path = state / CONFIG_FILE
    found = validate(_ConfigFile, read(path, what="config file"), where=f"config file {path}")
    return None if found.meta is None else found.meta.url


class StoreConfig(StoreSettings):
    """Settings of one store. Chunk sizes are fixed when the store is created."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="after")
    def _chunk_sizes(self) -> StoreConfig:
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= (1 << 30)):
            raise ValueError(
                f"chunk sizes must satisfy 64 <= min_size <= avg_size <= max_size <= 1 GiB, "
                f"got {self.min_size}/{self.avg_size}/{self.max_size}")
        if self.avg_size & (self.avg_size - 1):
            raise ValueError(f"avg_size must be a power of two, got {self.avg_size}")
        return self

    @property
    def threads(self) -> int:
        """Worker threads for compression and restore (0 in the config means one per core)."""
        return self.workers or max(2, os.cpu_count() or 2)

    def to_toml(self) -> str:
        """The config as TOML text for `STATE/config.toml`."""
        lines = ["# Hutong store settings; see `hutong --help` and docs/format.md", "[store]"]
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                  for k, v in self.model_dump().items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, state: Path, overrides: Mapping[str, object] | None = None) -> StoreConfig:
        """Merge defaults < STATE/config.toml < environment < `overrides`.

        Each source is checked on its own first, so an error names where the bad
        value came from; then the merged settings are checked together.
        """
        values: dict[str, Any] = {}
        path = state / CONFIG_FILE
        if path.exists():
            found = validate(_ConfigFile, read(path, what="config file"),
                             where=f"config file {path}")
            values |= found.store.model_dump(exclude_unset=True)
        for k in StoreSettings.model_fields:
            env = os.environ.get(f"HUTONG_{k.upper()}")
            if env is not None:
                values |= _settings({k: env}, f"environment HUTONG_{k.upper()}", strings=True)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        values |= _settings(given, "argument")
        return validate(cls, values, where="store settings")


def _settings(data: Mapping[str, Any], where: str, strings: bool = False) -> dict[str, Any]:
    """The settings in `data` (one source), checked alone and converted."""
    return validate(StoreSettings, data, where=where, strings=strings).model_dump(
        exclude_unset=True)


__all__ = ["CONFIG_FILE", "STATE_ENV", "ConfigError", "MetaSettings", "StoreConfig",
           "StoreSettings", "meta_url", "state_dir"]
