"""The catalog: what a `Dataflow` asks of the namespace (docs/dataflow.md, "Composition").

A `Dataflow` is composed of a topology, a catalog and a runtime. The catalog
resolves selectors to files, chunks and holders, says where chunks are now,
and keeps the small JSON states of the dataflow (subscriptions). Two
implementations: `EmbeddedCatalog` over the stores opened here, and
`dataflow.federated.FederatedCatalog` over the sites' HTTP APIs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dataflow.datasets import Dataset, FileEntry, Stores, locate
from dataflow.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

#: Value table (of the home site's store, embedded) of job records and dataflow states.
JOBS_TABLE = "jobs"


class Catalog(Protocol):
    """Datasets and dataflow state, as one mode reaches the namespace."""

    def resolve(self, name: str, selectors: str | Sequence[str], *,
                missing_ok: bool = False) -> Dataset:
        """Files, manifests and chunk holders of `selectors` now (DatasetError when a
        selector matches nothing, unless `missing_ok`)."""
        ...

    def refresh(self, ds: Dataset) -> Dataset:
        """The same file versions with where their chunks live now."""
        ...

    def locate(self, ids: Iterable[bytes]) -> dict[bytes, dict[str, str]]:
        """For each chunk, the up sites holding it and the tier of that copy."""
        ...

    def files_now(self, pattern: str) -> list[FileEntry]:
        """The files matching glob `pattern` now, with their current manifests (none is
        an empty list, not an error)."""
        ...

    def load_state(self, kind: str, name: str) -> dict[str, Any] | None:
        """The JSON state `kind`/`name` (e.g. a subscription's), or None."""
        ...

    def save_state(self, kind: str, name: str, value: dict[str, Any]) -> None:
        """Replace the JSON state `kind`/`name`."""
        ...

    def delete_state(self, kind: str, name: str) -> None:
        """Remove the state `kind`/`name` (absent: nothing happens)."""
        ...

    def states(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, state) of every state of `kind`."""
        ...


class EmbeddedCatalog:
    """The catalog over the stores of the sites with a state directory here; states
    live in the `jobs` value table of the home site's store."""

    def __init__(self, stores: Stores, home: Callable[[], str | None]) -> None:
        self.stores = stores
        self._home = home

    def resolve(self, name: str, selectors: str | Sequence[str], *,
                missing_ok: bool = False) -> Dataset:
        return Dataset.resolve(name, selectors, self.stores, missing_ok=missing_ok)

    def refresh(self, ds: Dataset) -> Dataset:
        return ds.refresh(self.stores)

    def locate(self, ids: Iterable[bytes]) -> dict[bytes, dict[str, str]]:
        return locate(ids, self.stores)

    def files_now(self, pattern: str) -> list[FileEntry]:
        """The files matching `pattern` now (none: an empty list)."""
        return self.resolve(pattern, [pattern], missing_ok=True).files

    def _store(self) -> Any:
        home = self._home()
        if home is None:
            raise ConfigError("no site has a store here; give one site `state = DIR`")
        return self.stores.get(home)

    def load_state(self, kind: str, name: str) -> dict[str, Any] | None:
        with self._store().engine.read() as txn:
            raw = txn.get_value(JOBS_TABLE, f"{kind}:{name}".encode())
        return json.loads(raw) if raw else None

    def save_state(self, kind: str, name: str, value: dict[str, Any]) -> None:
        raw = json.dumps(value, sort_keys=True, default=str).encode()
        self._store().engine.transact(
            lambda txn: txn.put_value(JOBS_TABLE, f"{kind}:{name}".encode(), raw))

    def delete_state(self, kind: str, name: str) -> None:
        """Remove the state `kind`/`name` (absent: nothing happens)."""
        self._store().engine.transact(
            lambda txn: txn.delete_value(JOBS_TABLE, f"{kind}:{name}".encode()))

    def states(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, state) of every state of `kind`."""
        prefix = f"{kind}:".encode()
        with self._store().engine.read() as txn:
            return [(k[len(prefix):].decode(), json.loads(v))
                    for k, v in txn.iter_values(JOBS_TABLE, prefix)]


__all__ = ["JOBS_TABLE", "Catalog", "EmbeddedCatalog"]
