"""A table of keys from a JSON or TOML file, with one-line errors (no validation here:
gfs.schema checks tables against their models)."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from gfs.errors import SchemaError


def read(path: str | os.PathLike[str], *, what: str = "file",
         error: type[SchemaError] = SchemaError) -> dict[str, Any]:
    """The table in a JSON (`.json`) or TOML (anything else) file."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        hint = "; pass an existing file" if isinstance(e, FileNotFoundError) else ""
        raise error(f"{what} {p}: {reason}{hint}") from None
    return parse(text, json_format=p.suffix == ".json", where=f"{what} {p}", error=error)


def parse(text: str, *, json_format: bool = False, where: str = "input",
          error: type[SchemaError] = SchemaError) -> dict[str, Any]:
    """The table in JSON or TOML `text`."""
    try:
        data = json.loads(text) if json_format else tomllib.loads(text)
    except ValueError as e:
        kind = "JSON" if json_format else "TOML"
        raise error(f"{where}: not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{where}: must be a table of keys, got {type(data).__name__}")
    return data


__all__ = ["parse", "read"]
