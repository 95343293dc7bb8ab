"""The pydantic model of STATE/config.toml, built from the fields of gfs.config's
StoreConfig; gfs.config loads it only for values its plain check does not take as
they are, to convert them (sizes and durations with units, environment strings) or
to name the problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, create_model

from gfs.config import FIELDS
from gfs.schema import Schema, validate
from gfs.units import Duration, Size

_TYPES: dict[str, Any] = {"size": Size, "duration": Duration, "count": int, "flag": bool}


def _annotation(f: dataclasses.Field[Any]) -> Any:
    m = f.metadata
    base = _TYPES[m["unit"]]
    return Annotated[base, Field(ge=m["ge"], le=m["le"])]


#: Each setting of a store and its own bounds (one source's values, checked alone).
StoreSettings = create_model(  # type: ignore[call-overload]
    "StoreSettings", __base__=Schema, __doc__="Each setting of a store and its bounds.",
    **{name: (_annotation(f), f.default) for name, f in FIELDS.items()})


class MetaSettings(Schema):
    """Where the metadata lives when it is not the embedded `STATE/meta` (`hutong init
    --meta`): a database URL."""

    url: str


class ConfigFile(Schema):
    """STATE/config.toml."""

    store: StoreSettings = Field(default_factory=StoreSettings)  # type: ignore[valid-type]
    meta: MetaSettings | None = None


def checked_settings(data: Mapping[str, Any], where: str, strings: bool) -> dict[str, Any]:
    """The settings in `data`, converted; SchemaError naming `where` and the key."""
    found: dict[str, Any] = validate(StoreSettings, data, where=where,
                                     strings=strings).model_dump(exclude_unset=True)
    return found


def checked_file(table: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], str | None]:
    """(store settings, `[meta] url` or None) of the config file table read from `path`."""
    found = validate(ConfigFile, table, where=f"config file {path}")
    store: dict[str, Any] = found.store.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    return store, None if found.meta is None else found.meta.url


__all__ = ["ConfigFile", "MetaSettings", "StoreSettings", "checked_file", "checked_settings"]
