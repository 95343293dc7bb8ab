"""Federation mode: datasets, transfers, tasks and records through the sites' HTTP APIs.

    with FederatedDataflow(registry_url, keys_dir="state/federation",
                           schedulers={"w1": "tcp://...", "w2": "tcp://..."}) as df:
        ds = df.dataset("loans", "/bank-a/loans/**")     # ls + manifest at the primary
        print(df.plan(ds).explain())
        job = df.run(score, ds, output="/bank-a/out/scores")

Nothing here opens a store. The driver and the workers speak to the sites only:

* **Catalog** (`FederatedCatalog`): selectors are resolved at the primary of
  the path's entity (`/v1/ns/stat`, `/v1/ns/list`, `/v1/ns/manifest`); each
  file's replica sites come from its manifest, and which site holds which
  chunk from `/v1/chunks/has` at every up site of the owning entity (so chunks
  a job prefetched count for the next job). Files of another entity that
  granted the caller read are *granted entries* (`FileEntry.granted`): listed
  at their primary, their chunks located there and at the caller's own sites
  (dedup credit), read chunk by chunk by the tasks through the read stack
  (`SiteSource`: the task's site first, then the primary), run at
  the caller's sites.
* **Executor** (`FederatedExecutor`): each site's tasks run on that site's
  Dask cluster (`schedulers`, `Site.scheduler`, or a LocalCluster started
  here). Chunks the executing site lacks are copied into its store before
  the tasks that need them, by a Dask task *at that site*: between two sites
  of the caller's entity that run movers, the source's mover session and
  `/v1/mover/pull` at the destination (the native mover); otherwise
  `/v1/chunks/get` at the source, `/v1/chunks/put` at the destination (blobs
  as stored, verified by the receiver). Tasks read their inputs chunk by chunk
  from their own site first, then from the other holders (`RemoteInputFile`),
  and write their output with `FederationClient.write_bytes` (the primary of
  the output path commits it).
* **Job record**: JSON at `/ENTITY/.dataflow/jobs/ID.json` in the home
  entity's namespace (catalogs skip `/.dataflow/`).
* Site loss: a site whose API or cluster stops answering is marked down; its
  unfinished tasks are planned again over the sites still up, or the job fails
  with `JobFailedError` and a report (as in embedded mode).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from dataflow.cost import Task
from dataflow.datasets import Dataset, FileEntry, glob_regex
from dataflow.errors import ConfigError, DatasetError, SiteLostError
from dataflow.executor import (
    Runtime,
    TaskFn,
    apply_task,
    start_site_cluster,
)
from dataflow.federated_ops import RECORDS_DIR, Migration
from dataflow.leases import RegistryBoard
from dataflow.ops import Dataflow, TransferSummary
from dataflow.planner import Objective
from dataflow.records import JobRecord
from dataflow.sites import Link, Topology, publish_links
from gfs import paths
from gfs.errors import HutongError, NotFoundError
from gfs.federation.auth import AuthError, EntityKeys
from gfs.federation.client import FederationClient
from gfs.federation.http import HttpClient
from gfs.federation.site_client import PullStats, SiteClient
from gfs.federation.tls import client_trust
from gfs.meta import ChunkRef, Manifest
from gfs.read import ManifestReader

log = logging.getLogger("hutong.dataflow")

#: Chunks per `/v1/chunks/get` request, and raw bytes per copy batch.
GET_BATCH = 1024
COPY_BATCH_BYTES = 16 << 20
#: Ids and raw bytes per `/v1/mover/pull` request, and the mover streams of one pull.
PULL_BATCH = 4096
PULL_BATCH_BYTES = 64 << 20
MOVER_STREAMS = 2
#: A pull's answer may take a full batch's bytes at this rate (bytes/s: 256 s), at least
#: the client's timeout (the destination's fetch itself fails after 30 s without progress).
PULL_MIN_RATE = 256 << 10
#: Seconds a health probe of a site may take.
HEALTH_TIMEOUT = 3.0
#: `FederatedDataflow` publishes the links it measured at most this often (seconds),
#: unless asked to (`publish_links(force=True)`, after a probe).
PUBLISH_INTERVAL = 60.0
#: Seconds a registry request publishing links may take.
PUBLISH_TIMEOUT = 5.0


# -- credentials and per-process clients -----------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """How the driver and the workers reach the federation: registry and entity keys
    (a directory readable where the workers run) or a token."""

    registry: str
    keys_dir: str | None = None
    token: str | None = None
    registry_ca: str | None = None
    """The registry's CA certificate file (needed with a token; keys carry their own)."""

    def trust(self, keys: Any = None) -> Any:
        """The TLS trust of these credentials (gfs.federation.tls.client_trust)."""
        ca = Path(self.registry_ca).read_bytes() if self.registry_ca else None
        return client_trust(self.registry, keys=keys, registry_ca=ca)

    def open(self, near: str | None = None, timeout: float = 30.0) -> Any:
        """A new FederationClient (the caller closes it)."""
        keys = EntityKeys.load(self.keys_dir) if self.keys_dir else None
        return FederationClient(self.registry, keys=keys, token=self.token, near=near,
                                timeout=timeout, tls=self.trust(keys))

    def client(self, near: str | None = None) -> Any:
        """A FederationClient shared by this process (workers), per `near` site."""
        key = (self, near)
        with _CLIENTS_LOCK:
            c = _CLIENTS.get(key)
            if c is None:
                c = _CLIENTS[key] = self.open(near)
            return c


_CLIENTS: dict[tuple[Credentials, str | None], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _records_prefix(path: str) -> bool:
    parts = paths.split(path)
    return len(parts) >= 2 and parts[1] == RECORDS_DIR


# -- the catalog ----------------------------------------------------------------------------


class FederatedCatalog:
    """Datasets resolved through the registry and the sites' HTTP APIs."""

    def __init__(self, fc: Any, topo: Topology, entity: str) -> None:
        """`entity`: whose namespace (`/ENTITY/.dataflow/`) keeps the dataflow's states."""
        self.fc = fc
        self.topo = topo
        self.entity = entity
        self.unreachable: set[str] = set()
        """Sites that did not answer a query (the runtime marks them down)."""
        self.granted: dict[bytes, str] = {}
        """Chunk id of each granted file resolved here -> the file's home (primary)."""

    def _manifest(self, path: str) -> tuple[Manifest, str, tuple[str, ...]]:
        norm, primary = self.fc.primary(path)
        m = self.fc.with_site(primary, lambda sc: sc.manifest(norm))
        return Manifest(m.stat.version, tuple(m.refs())), primary, tuple(m.sites)

    def _walk(self, top: str) -> list[str]:
        try:
            return [st.path for st in self.fc.walk(top)
                    if st.kind == "file" and not _records_prefix(st.path)]
        except NotFoundError:
            return []

    def files(self, selector: str) -> list[str]:
        """Files matching one selector (a path, a directory or a glob), sorted."""
        wild = any(ch in selector for ch in "*?")
        if not wild:
            return sorted(self._walk(paths.normalize(selector)))
        parts = selector.split("/")
        keep = []
        for p in parts:
            if any(ch in p for ch in "*?["):
                break
            keep.append(p)
        top = "/".join(keep) or "/"
        if paths.normalize(top) == "/":
            raise DatasetError(f"selector {selector!r}: name the entity (/ENTITY/...); the "
                               f"federation root is not listed")
        rx = glob_regex(selector)
        return sorted(p for p in self._walk(top) if rx.match(p))

    def settle(self) -> None:
        """Mark the sites that did not answer a query as down in the topology."""
        for s in sorted(self.unreachable):
            if s in self.topo.sites and self.topo.sites[s].status == "up":
                log.warning("site %s unreachable: marked down", s)
                self.topo.mark_down(s)

    def resolve(self, name: str, selectors: str | Sequence[str], *,
                missing_ok: bool = False) -> Dataset:
        """Files, manifests and chunk holders of `selectors`, asked of the sites now."""
        try:
            return self._resolve(name, selectors, missing_ok)
        finally:
            self.settle()

    def _resolve(self, name: str, selectors: str | Sequence[str], missing_ok: bool
                 ) -> Dataset:
        sel = (selectors,) if isinstance(selectors, str) else tuple(selectors)
        if not sel:
            raise DatasetError(f"dataset {name!r}: give at least one path or glob")
        found: dict[str, None] = {}
        for s in sel:
            if not isinstance(s, str) or not s.startswith("/"):
                raise DatasetError(f"dataset {name!r}: selector {s!r} must be an absolute "
                                   f"namespace path or glob (/entity/...)")
            try:
                hits = self.files(s)
            except AuthError as e:
                raise AuthError(f"dataset {name!r}: {self.fc.me or 'this client'} may not read "
                                f"{s!r} ({e}); its owner must grant read on it "
                                f"(FederationClient.grant)", e.status, e.code) from None
            if not hits and not missing_ok:
                raise DatasetError(f"dataset {name!r}: {s!r} matches no file in the "
                                   f"federation; check the path")
            found.update(dict.fromkeys(hits))
        files = []
        for p in sorted(found):
            try:
                m, primary, sites = self._manifest(p)
            except NotFoundError:
                continue  # removed while we listed
            files.append(self._entry(p, m, primary, sites))
        ds = Dataset(name, sel, files)
        for f in files:
            for ref in f.manifest.chunks:
                ds.lengths[ref.id] = ref.length
        ds.locations = self.locate(ds.lengths, owners={f.owner for f in files})
        return ds

    def _entry(self, path: str, m: Manifest, primary: str, sites: tuple[str, ...]
               ) -> FileEntry:
        """A file of the caller's entity, or a granted entry: a grantee (or a prefix
        token) reads its chunks at the owner's primary, which checks the grant (or
        at its own sites where they hold the same chunks); the runner's entity may
        then process it (a grant recorded in the topology for the cost model's
        constraints)."""
        owner = paths.split(path)[0]
        if self.fc.owner_mode(owner):
            return FileEntry(path, m, primary, sites)
        for r in m.chunks:
            self.granted[r.id] = primary
        me = self.fc.me
        if me and me != owner:
            grants = self.topo.grants.setdefault(owner, [])
            if (path, me) not in grants:
                grants.append((path, me))
        return FileEntry(path, m, primary, (primary,), granted=True)

    def refresh(self, ds: Dataset) -> Dataset:
        """The same files with where their chunks live now."""
        return Dataset(ds.name, ds.selectors, list(ds.files), dict(ds.lengths),
                       self.locate(ds.lengths, owners={f.owner for f in ds.files}))

    def files_now(self, pattern: str) -> list[FileEntry]:
        """The files matching glob `pattern` now (none: an empty list)."""
        return self.resolve(pattern, [pattern], missing_ok=True).files

    def _state_path(self, kind: str, name: str) -> str:
        return f"/{self.entity}/{RECORDS_DIR}/{kind}s/{name}.json"

    def load_state(self, kind: str, name: str) -> dict[str, Any] | None:
        """The JSON file `/ENTITY/.dataflow/KINDs/NAME.json`, or None."""
        try:
            return dict(json.loads(self.fc.read_bytes(self._state_path(kind, name))))
        except NotFoundError:
            return None

    def delete_state(self, kind: str, name: str) -> None:
        """Remove `/ENTITY/.dataflow/KINDs/NAME.json` (absent: nothing happens)."""
        with contextlib.suppress(NotFoundError):
            self.fc.rm(self._state_path(kind, name))

    def states(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, state) of every `/ENTITY/.dataflow/KINDs/*.json`."""
        top = self._state_path(kind, "x").rsplit("/", 1)[0]
        try:
            entries = self.fc.ls(top)
        except NotFoundError:
            return []
        out = []
        for e in entries:
            name = e.path.rsplit("/", 1)[1]
            if e.kind != "file" or not name.endswith(".json"):
                continue
            try:
                out.append((name[:-5], dict(json.loads(self.fc.read_bytes(e.path)))))
            except NotFoundError:
                continue                         # removed while we listed
        return out

    def save_state(self, kind: str, name: str, value: dict[str, Any]) -> None:
        """Replace `/ENTITY/.dataflow/KINDs/NAME.json` (committed at its primary)."""
        path = self._state_path(kind, name)
        self.fc.mkdir(path.rsplit("/", 1)[0], parents=True, exist_ok=True)
        self.fc.write_bytes(path, json.dumps(value, sort_keys=True, default=str).encode())

    def has(self, site: str, ids: Sequence[bytes], owner: str | None = None) -> list[bool]:
        """`/v1/chunks/has` at `site` for `ids` (its own entity's store)."""
        return list(self.fc.with_site(site, lambda sc: sc.has(ids)))

    def locate(self, ids: Iterable[bytes], owners: Iterable[str] | None = None
               ) -> dict[bytes, dict[str, str]]:
        """For each chunk, the up sites (of the owning entities; of every entity when
        `owners` is None) whose store holds it, with their tier; sites that do not
        answer are marked down."""
        try:
            return self._locate(ids, owners)
        finally:
            self.settle()

    def _locate(self, ids: Iterable[bytes], owners: Iterable[str] | None
                ) -> dict[bytes, dict[str, str]]:
        want = list(dict.fromkeys(ids))
        out: dict[bytes, dict[str, str]] = {c: {} for c in want}
        for c in want:                   # granted files: at their primary while it is up
            home = self.topo.sites.get(self.granted.get(c, ""))
            if home is not None and home.status == "up" and home.name not in self.unreachable:
                out[c][home.name] = home.tier
        if not want:
            return out
        ents = set(owners) if owners is not None else {s.entity for s in self.topo.up()}
        # the chunk API answers an entity's own sites only; a grantee's own sites may
        # hold chunks of a granted file too (dedup credit)
        ents = {e for e in ents if self.fc.owner_mode(e)} | ({self.fc.me} if self.fc.me
                                                              else set())
        asked = [site for site in self.topo.up()
                 if site.entity in ents and site.name not in self.unreachable]

        def ask(name: str) -> list[bool] | None:
            try:
                return self.has(name, want)
            except ConnectionError as e:
                log.warning("site %s does not answer chunks/has: %s", name, e)
                self.unreachable.add(name)
            except HutongError as e:  # not allowed to ask (a grantee): skip the site
                log.info("chunks/has at %s refused: %s", name, e)
            return None
        if len(asked) > 1:               # every site at once: one round trip, not one each
            with ThreadPoolExecutor(max_workers=min(16, len(asked))) as pool:
                answers = list(pool.map(ask, [x.name for x in asked]))
        else:
            answers = [ask(x.name) for x in asked]
        for site, have in zip(asked, answers, strict=True):
            for c, h in zip(want, have or (), strict=False):
                if h:
                    out[c][site.name] = site.tier
        return out


# -- the worker side --------------------------------------------------------------------------


def _get_blobs(fc: Any, site: str, ids: Sequence[bytes]) -> dict[bytes, bytes]:
    """Blobs (as stored) of `ids` that `site` returns."""
    out: dict[bytes, bytes] = {}
    for i in range(0, len(ids), GET_BATCH):
        batch = list(ids[i:i + GET_BATCH])
        blobs = fc.with_site(site, lambda sc, b=batch: sc.get(b))
        out.update((cid, blob) for cid, blob in zip(batch, blobs, strict=True) if blob)
    return out


@dataclass(frozen=True)
class RemoteInputFile:
    """One input of a task, read chunk by chunk through the sites' APIs and the
    client's read stack: the site the task runs at first, then `sources` for chunks
    it lacks. A `granted` file (another entity's, granted to the job's entity) has
    its owner's primary as only source; the primary checks the grant."""

    path: str
    manifest: Manifest
    site: str
    sources: tuple[str, ...]
    creds: Credentials
    granted: bool = False

    @property
    def size(self) -> int:
        return self.manifest.size

    def read(self) -> bytes:
        """The whole content (each chunk verified against its id)."""
        with self.open() as f:
            return f.read()

    def open(self) -> IO[bytes]:
        """A seekable binary reader of this version of the file: chunks through the
        client's memory tier from the task's site first, then from `sources`."""
        fc = self.creds.client(near=self.site)
        if self.granted:
            home = self.sources[0]
            now = fc.with_site(home, lambda sc: sc.manifest(self.path))
            if tuple(now.refs()) != self.manifest.chunks:
                raise DatasetError(f"{self.path} changed since the job was planned (its "
                                   f"primary {home} has another version than "
                                   f"{self.manifest.version}); run the job again to process "
                                   f"the new version")
            fc.source.note(self.path, [home])
        else:
            fc.source.note(self.path,
                           [self.site, *[s for s in self.sources if s != self.site]])
        return io.BufferedReader(ManifestReader(fc.cache, self.path, self.manifest), 1 << 20)


def copy_chunks(creds: Credentials, src: str, dst: str, ids: list[str],
                lengths: list[int], via: str = "site-api",
                streams: int = MOVER_STREAMS) -> dict[str, Any]:
    """Worker side of a transfer (runs at `dst`): chunks of `src`'s store into `dst`'s.

    `via="mover"` (two sites of the caller's entity, both with a mover): the
    source's mover session, then `/v1/mover/pull` at `dst` (the site runs the
    native fetch; batches of at most 4096 ids and ~64 MiB). `via="site-api"`:
    `/v1/chunks/get` at the source, `/v1/chunks/put` at the destination, in
    batches of ~16 MiB. Returns {bytes, chunks, seconds, via, retries}.
    """
    if via == "mover":
        return _pull_chunks(creds, src, dst, ids, lengths, streams)
    if via != "site-api":
        raise ConfigError(f"transfer path must be 'mover' or 'site-api', got {via!r}")
    fc = creds.client(near=dst)
    t0 = time.monotonic()
    nbytes = moved = 0
    i = 0
    while i < len(ids):
        j, acc = i, 0
        while j < len(ids) and j - i < GET_BATCH and (acc < COPY_BATCH_BYTES or j == i):
            acc += lengths[j]
            j += 1
        batch = [bytes.fromhex(h) for h in ids[i:j]]
        blobs = _get_blobs(fc, src, batch)
        lack = [c.hex() for c in batch if c not in blobs]
        if lack:
            raise ChunkNotHeldError(src, f"site {src} no longer holds {len(lack)} chunk(s) "
                                    f"(first {lack[0]})")
        frames = [blobs[c] for c in batch]
        fc.with_site(dst, lambda sc, f=frames: sc.put(f))
        nbytes += sum(len(b) for b in blobs.values())
        moved += len(batch)
        i = j
    return {"bytes": nbytes, "chunks": moved, "seconds": time.monotonic() - t0,
            "via": "site-api", "retries": 0}


def _pull_chunks(creds: Credentials, src: str, dst: str, ids: list[str], lengths: list[int],
                 streams: int) -> dict[str, Any]:
    fc = creds.client(near=dst)
    t0 = time.monotonic()
    sess = fc.with_site(src, lambda sc: sc.mover_session())
    # the site's fetch stops on a stall; the answer may take a whole batch
    wait = max(fc.timeout, PULL_BATCH_BYTES / PULL_MIN_RATE)

    def pull(batch: list[bytes]) -> Callable[[SiteClient], PullStats]:
        def op(sc: SiteClient) -> PullStats:
            with sc.with_timeout(wait) as slow:
                return slow.mover_pull(sess, batch, streams=streams)
        return op
    out: dict[str, Any] = {"bytes": 0, "chunks": 0, "retries": 0, "skipped": 0,
                           "via": "mover", "streams": streams}
    i = 0
    while i < len(ids):
        j, acc = i, 0
        while j < len(ids) and j - i < PULL_BATCH and (acc < PULL_BATCH_BYTES or j == i):
            acc += lengths[j]
            j += 1
        st = fc.with_site(dst, pull([bytes.fromhex(h) for h in ids[i:j]]))
        for k in ("bytes", "chunks", "retries", "skipped"):
            out[k] += getattr(st, k)
        i = j
    out["seconds"] = time.monotonic() - t0
    return out


class ChunkNotHeldError(HutongError):
    """A source site answered but lacks chunks it was expected to hold."""

    def __init__(self, site: str, message: str) -> None:
        super().__init__(message)
        self.site = site


def run_remote_task(fn: TaskFn | Sequence[TaskFn], creds: Credentials, site: str,
                    files: list[tuple[str, int, list[tuple[str, int]], str | None]],
                    sources: tuple[str, ...], output: str | None) -> dict[str, Any]:
    """Worker side of one task in federation mode: inputs through the sites' APIs
    (`files`: path, version, chunks, and the primary of a granted file, else None),
    the output written with `FederationClient.write_bytes`."""
    inputs = [RemoteInputFile(p, Manifest(v, tuple(ChunkRef(bytes.fromhex(h), n)
                                                   for h, n in refs)), site,
                              (home,) if home else sources, creds, home is not None)
              for p, v, refs, home in files]
    return apply_task(fn, inputs, output, lambda: creds.client(near=site))


# -- the driver side --------------------------------------------------------------------------


class FederatedRuntime(Runtime):
    """Per-site Dask clusters, the catalog and job records, all reached remotely.

    `schedulers` maps site names to Dask scheduler addresses (else
    `Site.scheduler`; else a LocalCluster is started here for that site).
    Records live at `/ENTITY/.dataflow/jobs/` of `entity` (default: the
    credentials' entity).
    """

    def __init__(self, topo: Topology, creds: Credentials, *,
                 schedulers: Mapping[str, str] | None = None, entity: str | None = None,
                 processes: bool = False, progress: bool = False,
                 use_mover: bool = True, publish_interval: float = PUBLISH_INTERVAL
                 ) -> None:
        for name, addr in (schedulers or {}).items():
            topo.sites[name] = replace(topo.site(name), scheduler=addr)
        super().__init__(topo, processes=processes, home=None, progress=progress)
        self.creds = creds
        self.fc = creds.open()
        ent = entity or self.fc.me
        if not ent:
            raise ConfigError("federation mode needs an entity for job records: give "
                              "keys_dir or entity=")
        self.entity: str = str(ent)
        self.catalog: FederatedCatalog = FederatedCatalog(self.fc, topo, self.entity)
        self.records_dir = f"/{self.entity}/{RECORDS_DIR}/jobs"
        self._records_ready = False
        self.record_errors: list[str] = []
        self.use_mover = use_mover
        """Copy between sites of the caller's entity through the native mover (pull)."""
        self._save_cv = threading.Condition()
        self._pending: dict[str, tuple[int, bytes]] = {}
        self._saving = 0
        self._save_seq = 0
        self._saver: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._written: dict[str, int] = {}
        self._copiers: ThreadPoolExecutor | None = None
        self.publish_interval = publish_interval
        self._published_upto = time.time()   # links measured later are not in the registry
        self._published_last: float | None = None
        self._publish_lock = threading.Lock()

    # -- sites -----------------------------------------------------------------------------
    def endpoint(self, site: str) -> str:
        rec = self.fc.sites().get(site)
        if rec is None:
            raise SiteLostError(site, f"site {site} is not registered")
        return str(rec["endpoint"])

    def healthy(self, site: str) -> bool:
        """Whether `site`'s HTTP API answers `/v1/health`."""
        from gfs.federation.site_client import SiteClient

        try:
            h = SiteClient(self.endpoint(site), timeout=HEALTH_TIMEOUT, tls=self.fc.tls,
                           site=site)
        except HutongError:
            return False
        try:
            h.health()
            return True
        except (HutongError, OSError):
            return False
        finally:
            h.close()

    def alive(self, site: str) -> bool:
        """Whether `site`'s API and its cluster answer (a site found dead stays dead)."""
        if site in self._dead or site in self.catalog.unreachable:
            return False
        ok = self.healthy(site) and super().alive(site)
        if not ok:
            self._dead.add(site)
        return ok


    def transfer_via(self, src: str, dst: str) -> str:
        """How chunks go from `src` to `dst`: `mover` when both are sites of the caller's
        entity (signed with its keys) and both run a mover, else `site-api`."""
        if not self.use_mover or self.fc.keys is None:
            return "site-api"
        sites = self.fc.sites()
        a, b = sites.get(src), sites.get(dst)
        me = self.fc.keys.name
        if a is None or b is None or a.get("entity") != me or b.get("entity") != me:
            return "site-api"
        return "mover" if a.get("mover") and b.get("mover") else "site-api"

    def start_copy(self, client: Any, src: str, dst: str, ids: list[str], lengths: list[int],
                   via: str, *, key: str | None = None, retries: int = 2) -> Any:
        """Start one transfer; returns its future. A mover pull is a request to `dst`
        (whose site process runs the fetch), sent from a thread here: it takes none of
        `dst`'s compute slots. A copy through the chunk API moves the blobs through a
        Dask task at `dst` (`client`, its cluster), so they do not cross the driver."""
        if via == "mover":
            with self._lock:
                if self._copiers is None:
                    self._copiers = ThreadPoolExecutor(max_workers=8,
                                                       thread_name_prefix="hutong-pull")
                pool = self._copiers

            def pull() -> dict[str, Any]:
                for attempt in range(retries + 1):
                    try:
                        return copy_chunks(self.creds, src, dst, ids, lengths, via)
                    except ConnectionError:          # resumable: only what is missing
                        if attempt == retries:
                            raise
                raise AssertionError("unreachable")
            return pool.submit(pull)
        return client.submit(copy_chunks, self.creds, src, dst, ids, lengths, via, key=key,
                             pure=False, retries=retries, priority=10)

    def mover(self, site: str) -> tuple[tuple[str, int], bytes]:
        raise ConfigError("federation mode moves chunks through the sites' APIs; there is "
                          "no driver-side mover")

    def driver(self, streams: int = 2) -> FederatedDriver:
        """The per-site driver: everything through the sites' APIs and clusters."""
        return FederatedDriver(self)

    # -- links kept fresh in the registry -------------------------------------------------
    def publish_links(self, *, force: bool = False) -> int:
        """Send the links measured here since the last publication (probes, and the
        transfers jobs and prefetches observed) whose source is a site of the caller's
        entity to the registry (`dataflow.sites.publish_links`), so other planners
        start from them. At most once per `publish_interval` unless `force`. Errors
        are logged, never raised (the registry may be away; the next call retries).
        Returns how many links were published."""
        keys = self.fc.keys
        if keys is None:
            return 0                       # a token cannot sign link reports
        with self._publish_lock:
            now = time.monotonic()
            if not force and self._published_last is not None and \
                    now - self._published_last < self.publish_interval:
                return 0
            self._published_last = now
            cut = time.time()
            try:
                n = publish_links(self.topo, self.creds.registry, keys,
                                  timeout=PUBLISH_TIMEOUT, since=self._published_upto)
            except (HutongError, OSError) as e:
                log.warning("links not published to the registry %s: %s", self.creds.registry,
                            e)
                return 0
            self._published_upto = cut
            if n:
                log.info("published %d measured link(s) to the registry", n)
            return n

    def close(self) -> None:
        """Publish the links measured since the last publication, write the pending
        records, stop the clusters started here."""
        with contextlib.suppress(Exception):
            self.publish_links(force=True)
        self.flush_records()
        if self._copiers is not None:
            self._copiers.shutdown(wait=False, cancel_futures=True)
            self._copiers = None
        super().close()
        with contextlib.suppress(Exception):
            self.fc.close()

    # -- job records -----------------------------------------------------------------------
    def _record_path(self, job_id: str) -> str:
        return f"{self.records_dir}/{job_id}.json"

    def save_record(self, rec: JobRecord) -> None:
        """Write the record to the home entity's namespace. While the job runs, a
        background thread writes the newest state (the executor never waits on the
        home primary, often across the WAN); a finished job's record (`done`,
        `failed`) is written before this returns. A failure is logged and kept in
        `record_errors` (the job's own outcome is not changed by it)."""
        jid = rec.id
        data = json.dumps(rec.to_dict(), sort_keys=True, default=str).encode()
        with self._save_cv:
            self._save_seq += 1
            seq = self._save_seq
            if rec.status not in ("done", "failed"):
                self._pending[jid] = (seq, data)
                if self._saver is None or not self._saver.is_alive():
                    self._saver = threading.Thread(target=self._save_loop, daemon=True,
                                                   name="hutong-records")
                    self._saver.start()
                self._save_cv.notify_all()
                return
            self._pending.pop(jid, None)
        self._write_record(jid, seq, data)

    def flush_records(self) -> None:
        """Wait until every record state handed to `save_record` is written (or failed)."""
        with self._save_cv:
            while self._pending or self._saving:
                self._save_cv.wait(1.0)

    def _save_loop(self) -> None:
        while True:
            with self._save_cv:
                while not self._pending:
                    if not self._save_cv.wait(30.0) and not self._pending:
                        self._saver = None              # idle: a new save starts another
                        return
                jid, (seq, data) = next(iter(self._pending.items()))
                del self._pending[jid]
                self._saving += 1
            try:
                self._write_record(jid, seq, data)
            finally:
                with self._save_cv:
                    self._saving -= 1
                    self._save_cv.notify_all()

    def _write_record(self, jid: str, seq: int, data: bytes) -> None:
        with self._write_lock:
            if self._written.get(jid, -1) > seq:
                return                      # a newer state of this record is there already
            try:
                if not self._records_ready:
                    self.fc.mkdir(self.records_dir, parents=True, exist_ok=True)
                    self._records_ready = True
                self.fc.write_bytes(self._record_path(jid), data)
                self._written[jid] = seq
            except (HutongError, OSError) as e:
                msg = f"job {jid}: record not saved at {self.records_dir}: {e}"
                log.warning("%s", msg)
                self.record_errors.append(msg)

    def load_record(self, job_id: str) -> dict[str, Any] | None:
        self.flush_records()
        try:
            return dict(json.loads(self.fc.read_bytes(self._record_path(job_id))))
        except NotFoundError:
            return None

    def records(self) -> list[dict[str, Any]]:
        self.flush_records()
        try:
            entries = self.fc.ls(self.records_dir)
        except NotFoundError:
            return []
        recs = [json.loads(self.fc.read_bytes(e.path)) for e in entries
                if e.kind == "file" and e.path.endswith(".json")]
        return sorted(recs, key=lambda r: r.get("created", 0))


class FederatedDriver:
    """Sites reached through their HTTP APIs: `/v1/chunks/has` for what a site lacks,
    mover pulls or chunk-API copies between sites (`FederatedRuntime.start_copy`),
    tasks that read their inputs through the sites (`run_remote_task`)."""

    def __init__(self, rt: FederatedRuntime) -> None:
        self.rt = rt

    def need(self, files: Iterable[FileEntry]) -> dict[bytes, int]:
        """The chunks of the caller's own files (granted files are read by the task)."""
        out: dict[bytes, int] = {}
        for f in files:
            if not f.granted:
                out.update((r.id, r.length) for r in f.manifest.chunks)
        return out

    def missing(self, site: str, ids: list[bytes]) -> list[bytes]:
        have = self.rt.catalog.has(site, ids)
        return [c for c, h in zip(ids, have, strict=True) if not h]

    def via(self, src: str, dst: str) -> str | None:
        return self.rt.transfer_via(src, dst)

    def copy(self, src: str, dst: str, ids: list[bytes], lengths: list[int], *, key: str,
             retries: int) -> Any:
        via = self.rt.transfer_via(src, dst)
        client = None if via == "mover" else self.rt.dask(dst)
        return self.rt.start_copy(client, src, dst, [c.hex() for c in ids], lengths, via,
                                  key=key, retries=retries)

    def note(self, task: Task) -> dict[str, Any] | None:
        """The granted files `task` reads through their owners' primaries, or None."""
        granted = [f for f in task.files if f.granted]
        if not granted:
            return None
        return {"files": [f.path for f in granted], "bytes": sum(f.size for f in granted),
                "from": sorted({f.home for f in granted})}

    def _sources(self, site: str, owners: Iterable[str]) -> tuple[str, ...]:
        """Other up sites of the owners, nearest (fastest link to `site`) first."""
        ents = set(owners)
        topo = self.rt.topo
        others = [s.name for s in topo.up() if s.entity in ents and s.name != site]
        return tuple(sorted(others, key=lambda s: (-topo.link(s, site).bandwidth, s)))

    def submit(self, client: Any, site: str, fn: TaskFn | Sequence[TaskFn], task: Task,
               output: str | None, *, key: str, retries: int) -> Any:
        files = [(f.path, f.manifest.version,
                  [(r.id.hex(), r.length) for r in f.manifest.chunks],
                  f.home if f.granted else None)
                 for f in task.files]
        return client.submit(run_remote_task, fn, self.rt.creds, site, files,
                             self._sources(site, task.owners), output, key=key,
                             retries=retries, pure=False)

    def output_site(self, output: str, site: str) -> str:
        return str(self.rt.fc.primary(output)[1])


# -- the notebook API -------------------------------------------------------------------------


class FederatedDataflow(Dataflow):
    """`Dataflow` over a federation: topology from the registry, datasets through the
    primaries' APIs (`FederatedCatalog`), tasks on each site's Dask cluster and
    records in the namespace (`FederatedRuntime`).

    `prefetch` copies chunks through the site APIs (mover pulls between own sites);
    `migrate` pins files at a site with rules (`dataflow.federated_ops.Migration`);
    `replicate` adds federation rules. Tasks run at the caller's entity's sites;
    files other entities granted it are read chunk by chunk through their primaries.
    """

    rt: FederatedRuntime
    catalog: FederatedCatalog

    def __init__(self, registry: str, *, keys_dir: str | None = None,
                 token: str | None = None, config: str | None = None,
                 schedulers: Mapping[str, str] | None = None, entity: str | None = None,
                 processes: bool = False, progress: bool = False,
                 objective: Objective = "balanced", topo: Topology | None = None,
                 use_mover: bool = True, publish_interval: float = PUBLISH_INTERVAL,
                 registry_ca: str | None = None) -> None:
        """`use_mover=False` copies chunks through the HTTP chunk API even where the
        native mover could (both sites of the caller's entity, both with a mover).
        `publish_interval`: least seconds between two publications of the measured
        links to the registry after jobs and prefetches (`publish_links`).
        `registry_ca`: the registry's CA certificate file (with a token)."""
        if not publish_interval >= 0:
            raise ConfigError(f"publish_interval must be >= 0 seconds, got {publish_interval}")
        creds = Credentials(registry, keys_dir, token, registry_ca)
        if topo is None:
            tls = creds.trust(EntityKeys.load(keys_dir) if keys_dir else None)
            topo = Topology.from_registry(registry, config=config, tls=tls)
        self.creds = creds
        rt = FederatedRuntime(topo, creds, schedulers=schedulers, entity=entity,
                              processes=processes, progress=progress, use_mover=use_mover,
                              publish_interval=publish_interval)
        super().__init__(topo, rt.catalog, rt, progress=progress, objective=objective,
                         federation=rt.fc)
        if rt.fc.keys is not None:       # leases between entities, at the registry
            self.leases.board = RegistryBoard(HttpClient(
                registry, keys=rt.fc.keys, tls=rt.fc.tls, timeout=PUBLISH_TIMEOUT),
                rt.fc.keys.name)
        # The chunk API (has/get/put) serves the owner entity only: an entity's own data
        # is processed at its own sites; data another entity granted us is read through
        # its primary (chunk by chunk), at our sites (as the owner's policy allows; the catalog
        # records the grants it used).
        me = self.rt.fc.me
        for ent in sorted({x.entity for x in topo.sites.values()} | set(topo.owners)):
            at = ent if me is None or ent == me else me
            allow = topo.owners.get(ent, "")
            topo.owners[ent] = f"({allow}) & entity={at}" if allow else f"entity={at}"

    def migrate(self, inputs: Any, to: str, *, remove: bool = True,
                rounds: int = 3) -> TransferSummary:
        """Make site `to` the durable holder of every file of `inputs`: copy what it
        lacks, pin the files there with a rule per selector, verify, then (with
        `remove`) delete the other rules that exist only for these files
        (`dataflow.federated_ops.Migration`). Raises MigrationIncompleteError
        (nothing released) when `to` cannot be verified after `rounds` reconciles."""
        return Migration(self.topo, self.rt.fc, self.catalog, self.creds).run(
            self.resolve(inputs), to, self.prefetch, remove=remove, rounds=rounds)

    def publish_links(self, *, force: bool = False) -> int:
        """`FederatedRuntime.publish_links`: the links measured here, to the registry."""
        return self.rt.publish_links(force=force)

    def probe_link(self, src: str, dst: str, ids: Sequence[bytes]) -> Link:
        """Measure `src` -> `dst` the way jobs copy: mover pulls at `dst` of chunks
        `ids` that `src` holds and `dst` lacks (e.g. a probe file's; they stay at
        `dst`): one chunk (handshake and one batch: three round trips) for the round
        trip, then the rest for the bandwidth. Both are sites of the caller's entity
        with movers. The link is recorded and published to the registry at once."""
        if len(ids) < 2:
            raise ConfigError(f"probe {src} -> {dst}: give at least two chunk ids")
        fc = self.rt.fc
        sess = fc.mover_session(src)
        t0 = time.monotonic()
        fc.mover_pull(dst, sess, list(ids[:1]), streams=1)
        t_small = time.monotonic() - t0
        t0 = time.monotonic()
        st = fc.mover_pull(dst, sess, list(ids[1:]), streams=MOVER_STREAMS)
        t_big = time.monotonic() - t0
        rtt = t_small / 3
        latency = rtt * (2 + math.ceil((len(ids) - 1) / 4096))
        bw = int(st["bytes"]) / max(t_big - latency, 1e-6)
        link = Link(src, dst, max(bw, 1.0), rtt, self.topo.link(src, dst).price_per_gb,
                    "measured", time.time())
        self.topo.set_measured(link)
        self.publish_links(force=True)
        return link

    def fail_site(self, site: str) -> None:
        """Stop using `site` (its cluster client is closed; it is planned on no more)."""
        self.rt.fail_site(site)


__all__ = ["Credentials", "FederatedCatalog", "FederatedDataflow", "FederatedDriver",
           "FederatedRuntime", "RemoteInputFile", "copy_chunks", "run_remote_task",
           "start_site_cluster"]
