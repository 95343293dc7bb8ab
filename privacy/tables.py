"""Reading a party's table: a parquet file in its namespace, read with pyarrow
through `gfs.Client`, in record batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gfs.client import Client
from privacy.errors import QueryError

BATCH_ROWS = 65536


def entity_of(path: str) -> str:
    """The entity owning namespace path `path` (its first component)."""
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or not parts:
        raise QueryError(f"table path {path!r} must be absolute, like /bank-a/customers.parquet")
    return parts[0]


def schema(fs: Client, path: str) -> pa.Schema:
    """The arrow schema of table `path`."""
    try:
        with fs.open(path) as f:
            return pq.ParquetFile(f).schema_arrow
    except pa.ArrowInvalid as e:
        raise QueryError(f"{path} is not a readable parquet file: {e}") from e


def check_columns(fs: Client, path: str, columns: Sequence[str]) -> pa.Schema:
    """The schema of `path`, after checking that every column exists."""
    sch = schema(fs, path)
    for c in columns:
        if c not in sch.names:
            raise QueryError(f"table {path} has no column {c!r} (columns: {', '.join(sch.names)})")
    return sch


def num_rows(fs: Client, path: str) -> int:
    """The row count of table `path` from its parquet footer (no rows read)."""
    with fs.open(path) as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


def iter_batches(fs: Client, path: str, columns: Sequence[str],
                 batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` of table `path`."""
    check_columns(fs, path, columns)
    with fs.open(path) as f:
        pf = pq.ParquetFile(f)
        yield from pf.iter_batches(batch_size=batch_rows, columns=list(columns))


def key_strings(arr: Any) -> list[str | None]:
    """Canonical string form of join keys (`key_array`) as Python strings."""
    out: list[str | None] = key_array(arr).to_pylist()
    return out


def key_array(arr: Any) -> pa.Array:
    """Canonical string form of join keys as an Arrow string array: integers in
    decimal, strings as is, nulls as nulls. Floating-point keys are refused (their
    text is ambiguous)."""
    t = arr.type
    if pa.types.is_floating(t):
        raise QueryError("join keys must be integers or strings, not floating point")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr
    if pa.types.is_dictionary(t):
        return key_array(arr.dictionary_decode())
    if pa.types.is_integer(t) or pa.types.is_date(t) or pa.types.is_binary(t):
        return pc.cast(arr, pa.string())
    raise QueryError(f"join keys of type {t} are not supported; use integers or strings")
