"""Store configuration: one object, precedence argument > environment > file > default.

The file is `STATE/config.toml`, written by `hutong init`. Environment
variables are `HUTONG_<KEY>` in upper case (e.g. `HUTONG_ZSTD_LEVEL`). An
invalid value raises ConfigError naming the key and where it came from; it
never falls back silently.

Each setting is declared once, below, with its bounds. Plain values within them
(what `hutong init` writes) are taken as they are; anything else (a size or a
duration with units, a string from the environment, a wrong or unknown key) goes
through the pydantic model of gfs._config_model, built from the same fields, which
converts it or names the problem. Opening a store thus never imports pydantic (~45
ms of each command's start-up, measured with `python -X importtime`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gfs.env import (  # noqa: F401  (re-exported: the names belong to the config)
    CACHE_BYTES_ENV,
    CACHE_DIR_ENV,
    CONFIG_FILE,
    MOVER_STREAMS,
    STATE_ENV,
    TIERS,
    state_dir,
)
from gfs.errors import ConfigError, SchemaError
from gfs.tables import read

if TYPE_CHECKING:
    from gfs._config_model import MetaSettings, StoreSettings

Unit = Literal["size", "duration", "count", "flag"]


def _setting(default: float, ge: float | None = None, le: float | None = None,
             unit: Unit = "count") -> Any:
    """A field of StoreConfig: its default, inclusive bounds and unit."""
    return field(default=default, metadata={"ge": ge, "le": le, "unit": unit})


@dataclass(frozen=True)
class StoreConfig:
    """Settings of one store, each checked against its bounds. Chunk sizes are fixed
    when the store is created."""

    min_size: int = _setting(16 * 1024, 0, None, "size")
    avg_size: int = _setting(64 * 1024, 0, None, "size")
    max_size: int = _setting(256 * 1024, 0, None, "size")
    zstd_level: int = _setting(3, -7, 22)
    pack_size: int = _setting(16 * 1024 * 1024, 1 << 16, 1 << 30, "size")
    workers: int = _setting(0, 0, 256)
    #: Files per commit batch: each commit leaves the LMDB pages it copied free, so
    #: fewer commits keep the metadata file smaller (3.38 -> 2.93 MB for smallfiles
    #: --quick with one commit per snapshot instead of five).
    commit_files: int = _setting(8000, 1, 1_000_000)
    cache_bytes: int = _setting(64 * 1024 * 1024, 0, 1 << 40, "size")
    #: Seconds gc waits before it deletes what a writer on another host may still
    #: use: an unknown pack of this store in a shared pool, a dead chunk on a
    #: database engine (docs/format.md, "Ownership of packs", "Chunk pins").
    gc_grace: float = _setting(3600, 0, 1 << 40, "duration")
    #: Store a new chunk that resembles a stored one as a delta against it
    #: (docs/format.md, "Resemblance and delta chunks").
    delta: bool = _setting(False, unit="flag")

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in settings(given, "store settings").items():
            object.__setattr__(self, name, value)
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= (1 << 30)):
            raise SchemaError(
                f"store settings: chunk sizes must satisfy 64 <= min_size <= avg_size <= "
                f"max_size <= 1 GiB, got {self.min_size}/{self.avg_size}/{self.max_size}")
        if self.avg_size & (self.avg_size - 1):
            raise SchemaError(f"store settings: avg_size must be a power of two, "
                              f"got {self.avg_size}")

    @property
    def threads(self) -> int:
        """Worker threads for compression and restore (0 in the config means one per core)."""
        return self.workers or max(2, os.cpu_count() or 2)

    def to_toml(self) -> str:
        """The config as TOML text for `STATE/config.toml`."""
        lines = ["# Hutong store settings; see `hutong --help` and docs/format.md", "[store]"]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            text = str(v).lower() if isinstance(v, bool) else \
                str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
            lines.append(f"{f.name} = {text}")
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
            values |= _config_file(path)[0]
        for k in FIELDS:
            env = os.environ.get(f"HUTONG_{k.upper()}")
            if env is not None:
                values |= settings({k: env}, f"environment HUTONG_{k.upper()}", strings=True)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        values |= settings(given, "argument")
        return cls(**values)


#: The settings by name (their bounds in `metadata`).
FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(StoreConfig)}


def plain(data: Mapping[str, object]) -> dict[str, Any] | None:
    """`data` if every key is a setting and every value a plain number or flag within
    its bounds (as `hutong init` writes them), else None (gfs._config_model decides)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        f = FIELDS.get(key)
        if f is None:
            return None
        unit = f.metadata["unit"]
        if unit == "flag":
            if type(value) is not bool:
                return None
            out[key] = value
            continue
        if unit == "duration":
            if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
                return None
            value = float(value)  # type: ignore[arg-type]
        elif type(value) is not int:
            return None
        lo, hi = f.metadata["ge"], f.metadata["le"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return None
        out[key] = value
    return out


#: Text read the same by the pydantic model and by `plain_text`: flags as 0/1/true/false,
#: numbers as plain decimals (anything else goes through the model). The pattern is
#: compiled (and cached by `re`) when first used, not at every command's start-up.
_PLAIN_FLAGS = {"0": False, "1": True, "true": True, "false": False}
_PLAIN_NUMBER = r"[0-9]{1,15}(\.[0-9]{1,6})?"


def plain_text(data: Mapping[str, str]) -> dict[str, Any] | None:
    """`plain` for settings given as text (environment variables): None unless every
    value is a plain flag or decimal, so `HUTONG_DELTA=1` costs no pydantic import."""
    typed: dict[str, object] = {}
    for key, text in data.items():
        f = FIELDS.get(key)
        if f is None or not isinstance(text, str):
            return None
        unit = f.metadata["unit"]
        if unit == "flag":
            if text not in _PLAIN_FLAGS:
                return None
            typed[key] = _PLAIN_FLAGS[text]
            continue
        m = re.fullmatch(_PLAIN_NUMBER, text)
        if m is None or (m.group(1) and unit != "duration"):
            return None
        typed[key] = float(text) if unit == "duration" else int(text)
    return plain(typed)


def settings(data: Mapping[str, Any], where: str, strings: bool = False) -> dict[str, Any]:
    """The settings in `data` (one source), checked alone and converted; `strings`:
    every value is text (environment variables)."""
    found = plain_text(data) if strings else plain(data)
    if found is not None:
        return found
    from gfs._config_model import checked_settings
    return checked_settings(data, where, strings)


def _config_file(path: Path) -> tuple[dict[str, Any], str | None]:
    """(store settings, `[meta] url` or None) of config file `path`, checked."""
    table = read(path, what="config file")
    store, meta = table.get("store", {}), table.get("meta")
    if set(table) <= {"store", "meta"} and isinstance(store, dict) \
            and (meta is None or (isinstance(meta, dict) and set(meta) == {"url"}
                                  and isinstance(meta["url"], str))):
        found = plain(store)
        if found is not None:
            return found, None if meta is None else meta["url"]
    from gfs._config_model import checked_file
    return checked_file(table, path)


def meta_url(state: Path) -> str | None:
    """The `[meta] url` of STATE/config.toml, or None (the embedded engine)."""
    return _config_file(state / CONFIG_FILE)[1]


def __getattr__(name: str) -> Any:
    if name in ("StoreSettings", "MetaSettings"):  # pydantic models, loaded when asked for
        from gfs import _config_model
        return getattr(_config_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONFIG_FILE", "FIELDS", "STATE_ENV", "ConfigError", "MetaSettings", "StoreConfig",
           "StoreSettings", "meta_url", "plain", "plain_text", "settings", "state_dir"]
