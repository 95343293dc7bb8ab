"""Store configuration: one object, precedence argument > environment > file > default.

The file is `STATE/config.toml`, written by `hutong init`. Environment
variables are `HUTONG_<KEY>` in upper case (e.g. `HUTONG_ZSTD_LEVEL`). An
invalid value raises ConfigError naming the key and where it came from; it
never falls back silently.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from gfs.errors import ConfigError

CONFIG_FILE = "config.toml"
STATE_ENV = "HUTONG_STATE"


def state_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: `arg`, else $HUTONG_STATE, else ~/.hutong."""
    if arg:
        return Path(arg).expanduser().absolute()
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return (Path.home() / ".hutong").absolute()


@dataclass(frozen=True)
class StoreConfig:
    """Settings of one store. Chunk sizes are fixed when the store is created."""

    min_size: int = 16 * 1024
    avg_size: int = 64 * 1024
    max_size: int = 256 * 1024
    zstd_level: int = 3
    pack_size: int = 16 * 1024 * 1024
    workers: int = 0
    commit_files: int = 2000
    cache_bytes: int = 64 * 1024 * 1024
    #: Seconds an unknown pack of this store in a shared pool is kept by gc
    #: (a writer on another host may be about to commit it).
    gc_grace: int = 3600

    def __post_init__(self) -> None:
        _check(self.zstd_level, -7, 22, "zstd_level")
        _check(self.pack_size, 1 << 16, 1 << 30, "pack_size")
        _check(self.workers, 0, 256, "workers")
        _check(self.commit_files, 1, 1_000_000, "commit_files")
        _check(self.cache_bytes, 0, 1 << 40, "cache_bytes")
        _check(self.gc_grace, 0, 1 << 40, "gc_grace")
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= (1 << 30)):
            raise ConfigError(
                f"chunk sizes must satisfy 64 <= min_size <= avg_size <= max_size <= 1 GiB, "
                f"got {self.min_size}/{self.avg_size}/{self.max_size}"
            )
        if self.avg_size & (self.avg_size - 1):
            raise ConfigError(f"avg_size must be a power of two, got {self.avg_size}")

    @property
    def threads(self) -> int:
        """Worker threads for compression and restore (0 in the config means one per core)."""
        return self.workers or max(2, os.cpu_count() or 2)

    def to_toml(self) -> str:
        """The config as TOML text for `STATE/config.toml`."""
        lines = ["# Hutong store settings; see `hutong --help` and docs/format.md", "[store]"]
        lines += [f"{k} = {v}" for k, v in asdict(self).items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, state: Path, overrides: Mapping[str, object] | None = None) -> StoreConfig:
        """Merge defaults < STATE/config.toml < environment < `overrides`."""
        names = {f.name for f in fields(cls)}
        values: dict[str, object] = {}
        path = state / CONFIG_FILE
        if path.exists():
            try:
                data = tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}: not valid TOML: {e}") from None
            section = data.get("store", {})
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: [store] must be a table")
            for k, v in section.items():
                if k not in names:
                    raise ConfigError(f"{path}: unknown setting {k!r}")
                values[k] = _as_int(v, k, str(path))
        for k in names:
            env = os.environ.get(f"HUTONG_{k.upper()}")
            if env is not None:
                values[k] = _as_int(env, k, f"environment HUTONG_{k.upper()}")
        for k, v in (overrides or {}).items():
            if k not in names:
                raise ConfigError(f"unknown setting {k!r}")
            if v is not None:
                values[k] = _as_int(v, k, "argument")
        return cls(**values)  # type: ignore[arg-type]


def _as_int(v: object, key: str, source: str) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{source}: {key} must be an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip(), 0)
        except ValueError:
            pass
    raise ConfigError(f"{source}: {key} must be an integer, got {v!r}")


def _check(v: int, lo: int, hi: int, key: str) -> None:
    if not lo <= v <= hi:
        raise ConfigError(f"{key} must be between {lo} and {hi}, got {v}")
