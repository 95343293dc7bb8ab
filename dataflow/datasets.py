"""Datasets: named selections of the namespace, resolved to files, chunks and holders.

    ds = Dataset.resolve("loans", ["/bank-a/loans/2026/**"], stores)
    ds.unique_bytes, ds.logical_bytes      # after and before dedup
    ds.holders(cid)                        # the sites whose store has chunk cid

Selectors are absolute paths (a file, or a directory meaning every file under
it), globs (`*` one path component, `**` any depth, `?` one character) or
lists of those. A file is found in the namespace of every up site's store;
its manifest is taken from its *home*: the site of the path's owner entity
when it holds the file, else the first site (by name) that does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dataflow.errors import DatasetError
from gfs import paths
from gfs.errors import HutongError, NotFoundError
from gfs.meta import Manifest

if TYPE_CHECKING:
    from dataflow.sites import Topology
    from gfs.client import Client


class Stores:
    """Open embedded stores of a topology's sites (one `gfs.Client` each, opened lazily)."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self._open: dict[str, Client] = {}

    def get(self, site: str) -> Client:
        """The store of `site` (DatasetError when the site has none here)."""
        c = self._open.get(site)
        if c is None:
            from gfs.client import Client

            s = self.topo.site(site)
            if s.state is None:
                raise DatasetError(f"site {site!r} has no embedded store (state) in the sites "
                                   f"file; add `state = \"DIR\"` under [sites.{site}]")
            c = self._open[site] = Client(s.state)
        return c

    def names(self) -> list[str]:
        """Up sites with a store here."""
        return [s.name for s in self.topo.up() if s.state]

    def close(self) -> None:
        """Close every store opened here."""
        for c in self._open.values():
            c.close()
        self._open.clear()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset: its manifest at its home site, and the sites listing it.

    A *granted* entry is another entity's file the caller may read (a grant): the
    caller cannot ask the owner's sites which chunks they hold nor copy them into
    its own stores, so the file is listed at `home` (the owner's primary) alone;
    a task reads its chunks through the read stack (`gfs.federation.SiteSource`):
    those the task's own site holds there (dedup credit), the rest at `home`.
    """

    path: str
    manifest: Manifest
    home: str
    sites: tuple[str, ...]
    granted: bool = False

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def owner(self) -> str:
        """The entity owning the path (its first component)."""
        return paths.split(self.path)[0] if self.path != "/" else ""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` one component, `**` any depth (also none), `?` one character."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("/**", i):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _literal_prefix(pattern: str) -> str:
    parts = pattern.split("/")
    keep = []
    for p in parts:
        if any(ch in p for ch in "*?["):
            break
        keep.append(p)
    return "/".join(keep) or "/"


def _files_at(client: Client, selector: str) -> dict[str, Manifest]:
    """Files matching `selector` in one store, with their manifests."""
    out: dict[str, Manifest] = {}
    wild = any(ch in selector for ch in "*?")
    top = _literal_prefix(selector) if wild else selector
    rx = glob_regex(selector) if wild else None
    try:
        entries = list(client.walk(top))
    except NotFoundError:
        return out
    except HutongError:
        return out
    for st in entries:
        if st.kind != "file":
            continue
        if rx is not None and not rx.match(st.path):
            continue
        try:
            out[st.path] = client.manifest(st.path)
        except NotFoundError:
            continue  # removed while we walked
    return out


def _manifest_at(client: Client, path: str) -> Manifest | None:
    """The manifest of file `path` in one store (None if it has no such file)."""
    try:
        return client.manifest(path)
    except HutongError:
        return None


def _entry(path: str, at: Mapping[str, Manifest], topo: Topology) -> FileEntry:
    """The entry of a file held by the sites of `at` (site -> its manifest there): its
    home is the first holder of the path's owner entity, else the first holder."""
    owner = paths.split(path)[0]
    owner_sites = [x for x in sorted(at) if topo.sites[x].entity == owner]
    home = owner_sites[0] if owner_sites else sorted(at)[0]
    return FileEntry(path, at[home], home, tuple(sorted(at)))


@dataclass
class Dataset:
    """A named selection: files, their distinct chunks and where each chunk lives."""

    name: str
    selectors: tuple[str, ...]
    files: list[FileEntry]
    lengths: dict[bytes, int] = field(default_factory=dict)
    """Distinct chunk id -> raw length."""
    locations: dict[bytes, dict[str, str]] = field(default_factory=dict)
    """Chunk id -> {site: tier of the pool holding it}."""

    @property
    def logical_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(f.size for f in self.files)

    @property
    def unique_bytes(self) -> int:
        """Bytes of the distinct chunks (what a site holding nothing must receive)."""
        return sum(self.lengths.values())

    def holders(self, cid: bytes) -> frozenset[str]:
        """The sites whose store holds chunk `cid`."""
        return frozenset(self.locations.get(cid, {}))

    def bytes_at(self, site: str) -> int:
        """Bytes of this dataset's distinct chunks that `site` holds already."""
        return sum(n for c, n in self.lengths.items() if site in self.locations.get(c, {}))

    def summary(self) -> dict[str, object]:
        """Files, sizes and the share held at each site (for `explain` and the CLI)."""
        sites = sorted({s for loc in self.locations.values() for s in loc})
        return {"name": self.name, "files": len(self.files), "logical_bytes": self.logical_bytes,
                "unique_bytes": self.unique_bytes, "chunks": len(self.lengths),
                "held": {s: self.bytes_at(s) for s in sites}}

    @classmethod
    def resolve(cls, name: str, selectors: str | Sequence[str], stores: Stores,
                *, missing_ok: bool = False) -> Dataset:
        """Resolve `selectors` over every up site's store now.

        Raises DatasetError when a selector matches nothing (unless `missing_ok`).
        """
        sel = (selectors,) if isinstance(selectors, str) else tuple(selectors)
        if not sel:
            raise DatasetError(f"dataset {name!r}: give at least one path or glob")
        for s in sel:
            if not isinstance(s, str) or not s.startswith("/"):
                raise DatasetError(f"dataset {name!r}: selector {s!r} must be an absolute "
                                   f"namespace path or glob (/entity/...)")
        found: dict[str, dict[str, Manifest]] = {}
        sites = stores.names()
        for site in sites:
            client = stores.get(site)
            for s in sel:
                for p, m in _files_at(client, s).items():
                    found.setdefault(p, {})[site] = m
            if not missing_ok:
                pass
        if not missing_ok:
            for s in sel:
                rx = glob_regex(s) if any(ch in s for ch in "*?") else None
                hit = any((rx.match(p) if rx else (p == s or p.startswith(s.rstrip("/") + "/")))
                          for p in found)
                if not hit:
                    raise DatasetError(f"dataset {name!r}: {s!r} matches no file at any up site "
                                       f"({', '.join(sites) or 'none'}); check the path")
        files = [_entry(p, found[p], stores.topo) for p in sorted(found)]
        ds = cls(name, sel, files)
        for f in files:
            for ref in f.manifest.chunks:
                ds.lengths[ref.id] = ref.length
        ds.locations = locate(ds.lengths, stores)
        return ds

    def refresh(self, stores: Stores) -> Dataset:
        """The same file versions, with where they and their chunks are now (`resolve`
        again for new files).

        A file's holders are the up sites whose namespace has the same version (the
        same chunk list) and its home is chosen among them as `resolve` does: after
        a `migrate` the file is read from where it went. A version no up site holds
        any more keeps its entry (reading it then fails, naming the file)."""
        files = []
        for f in self.files:
            at = {} if f.granted else {
                site: m for site in stores.names()
                if (m := _manifest_at(stores.get(site), f.path)) is not None
                and m.chunks == f.manifest.chunks}
            files.append(_entry(f.path, at, stores.topo) if at else f)
        return Dataset(self.name, self.selectors, files, dict(self.lengths),
                       locate(self.lengths, stores))


def locate(ids: Iterable[bytes], stores: Stores) -> dict[bytes, dict[str, str]]:
    """For each chunk id, the up sites whose store holds it and the tier of that copy."""
    want = list(ids)
    out: dict[bytes, dict[str, str]] = {c: {} for c in want}
    for site in stores.names():
        client = stores.get(site)
        tiers = {rec.id: rec.tier for rec in client.store.pool_records()}
        with client.engine.read() as txn:
            for cid in want:
                rec = txn.get_chunk(cid)
                if rec is not None and rec.locations:
                    out[cid][site] = min((tiers.get(loc.pool, "warm")
                                          for loc in rec.locations), key=_tier_rank)
    return out


def _tier_rank(tier: str) -> int:
    return {"hot": 0, "warm": 1, "cold": 2}.get(tier, 1)


def merge(name: str, datasets: Iterable[Dataset]) -> Dataset:
    """One dataset of several (chunks shared between them counted once)."""
    files: dict[str, FileEntry] = {}
    sel: list[str] = []
    lengths: dict[bytes, int] = {}
    locations: dict[bytes, dict[str, str]] = {}
    for d in datasets:
        sel += d.selectors
        for f in d.files:
            files.setdefault(f.path, f)
        lengths.update(d.lengths)
        for c, loc in d.locations.items():
            locations.setdefault(c, {}).update(loc)
    return Dataset(name, tuple(sel), [files[p] for p in sorted(files)], lengths, locations)


def dataset_of(spec: Dataset | str | Sequence[str], stores: Stores,
               named: Mapping[str, Dataset] | None = None) -> Dataset:
    """A Dataset from a Dataset, a registered name, a selector or a list of selectors."""
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, str) and named and spec in named:
        return named[spec]
    label = spec if isinstance(spec, str) else ",".join(spec)
    return Dataset.resolve(label, spec, stores)
