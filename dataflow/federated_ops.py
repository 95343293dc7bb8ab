"""Federation mode of `migrate` and `subscribe` (docs/dataflow.md, "Migrate and subscribe
in a federation").

`Migration` is a part `FederatedDataflow.migrate` composes from the topology, the
federation client, the catalog and the credentials; subscriptions keep their
state through the catalog (`FederatedCatalog.save_state`).

**migrate(ds, to=X)**. In a federation the namespace entry of a file lives at its
entity's primary, whose store holds every chunk of every file (a commit needs
them there); rules place further replicas and pin them (`/.pins/OWNER/RULE` in
the target's store, so gc keeps them). Migrating a dataset to X therefore means:

1. the chunks X lacks are copied into its store from the nearest holders (as
   `prefetch`), with these flows reserved on their links meanwhile;
2. a rule per selector, `copies = 1, where = "site=X"`, is added at the primary
   (an existing identical rule is reused), and the entity's rules are
   reconciled: the primary pins the files' chunks at X and keeps a mirror of
   their manifests there;
3. X is verified: each migrate rule is `ok` with X among its sites, every
   file's current version is matched by one of them and X answers
   `/v1/chunks/has` true for each of its chunks. A file that changed while the
   rules were reconciled is reconciled again (at most `rounds` times); when X
   still cannot be verified, `MigrationIncompleteError` is raised and nothing
   is released;
4. with `remove=True`, each other rule of the entity that places copies on
   sites other than X and the primary, and whose pattern matches (at the
   primary, now) only files of the dataset, is deleted: the primary unpins its
   copies everywhere, and gc may reclaim them. Rules that also cover other
   files are kept (named in `notes`).

Afterwards X durably holds every chunk (pinned by a rule; the reconciler keeps
it true, also for files added later under the selectors), X is listed among the
files' replica sites, so readers with no nearer replica read from X before the
primary, and the planner sees X holding the whole dataset. The primary's copy
is never removed (it is the namespace's home; moving it means moving the
entity's primary), so releasing other copies never drops the only one, and a
file is never left without a readable replica. Chunks a job or `prefetch`
copied elsewhere are not pinned: gc reclaims them when their transfer pin ends.
X must be a site of the files' owner entity (the chunk API serves an entity's
own data; for encrypted copies at other entities' sites use `replicate`). Run
it again to finish an interrupted migration: copies, rules and releases are
all idempotent.

**subscribe**. A subscription's state (the fingerprint of each handled file) is
the JSON file `/ENTITY/.dataflow/subs/NAME.json` of the caller's entity,
written through the federation (`FederatedCatalog.save_state`); pending files
are listed and read through the catalog. One poller per subscription at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dataflow.datasets import Dataset
from dataflow.errors import ConfigError, DataflowError, PlanError
from dataflow.ops import TransferSummary
from dataflow.sites import Topology
from gfs import paths
from gfs.errors import NotFoundError
from gfs.federation.site_client import SiteManifest
from gfs.federation.wire import glob_match, literal_prefix
from gfs.meta import ChunkRef

if TYPE_CHECKING:
    from dataflow.federated import Credentials, FederatedCatalog

#: Directory (under /ENTITY) of the dataflow's job records and states.
RECORDS_DIR = ".dataflow"
#: Seconds a reconcile request may take (the primary places every rule of the entity).
RECONCILE_TIMEOUT = 600.0


class MigrationIncompleteError(DataflowError, RuntimeError):
    """A migration could not verify that the destination holds every chunk; nothing was
    released. The message names what is missing; run `migrate` again."""


class Migration:
    """Migrating datasets to a site of their owner entity, through its primary's rules."""

    def __init__(self, topo: Topology, fc: Any, catalog: FederatedCatalog,
                 creds: Credentials) -> None:
        self.topo, self.fc, self.catalog, self.creds = topo, fc, catalog, creds

    def run(self, ds: Dataset, to: str, prefetch: Callable[[Dataset, str], TransferSummary],
            *, remove: bool = True, rounds: int = 3) -> TransferSummary:
        """Make site `to` the durable holder of every file of `ds` (module docstring):
        copy what it lacks, pin the files there with a rule per selector, verify, then
        (with `remove`) delete the other rules that exist only for these files.

        Returns what moved (`chunks`, `bytes`, `by_source`), `removed` (copies
        released: one per site of each deleted rule) and `notes` (rules kept, and
        why). Raises MigrationIncompleteError (nothing released) when `to` cannot
        be verified after `rounds` reconciles.
        """
        t0 = time.monotonic()
        site = self.topo.site(to)
        if site.status != "up":
            raise PlanError(f"migrate to {to}: the site is {site.status}")
        foreign = sorted({f.owner for f in ds.files} - {site.entity})
        if foreign:
            raise ConfigError(f"migrate {ds.name} to {to}: {to} belongs to {site.entity}, "
                              f"not to {', '.join(foreign)}; an entity's files can be "
                              f"migrated only to its own sites (use replicate() for "
                              f"encrypted copies at other entities' sites)")
        entity = site.entity
        fc = self.fc
        primary = str(fc.primary(f"/{entity}")[1])
        out = prefetch(ds, to)          # its flows reserved on their links meanwhile
        patterns = self._migrate_patterns(ds, entity)
        where = f"site={to}"
        rules = fc.rules(entity)
        mine: dict[str, str] = {}
        for p in patterns:
            same = [r for r in rules if r["pattern"] == p and r["where"] == where
                    and int(r["copies"]) == 1 and not r.get("expires")]
            mine[p] = str(same[0]["id"]) if same else str(fc.rule_add(p, 1, where)["id"])
        problems: list[str] = []
        current: dict[str, tuple[int, tuple[ChunkRef, ...]]] = {}
        for _ in range(max(1, rounds)):
            before = self._versions([f.path for f in ds.files])
            states = {str(r["id"]): r for r in self._reconcile(entity)}
            current = self._versions([f.path for f in ds.files])
            problems = self._check(to, mine, states, before, current)
            if not problems:
                break
        if problems:
            raise MigrationIncompleteError(
                f"migrate {ds.name} to {to}: {len(problems)} problem(s), nothing released: "
                + "; ".join(problems[:5]) + "; run migrate again (the rules stay and the "
                "primary keeps reconciling them)")
        if remove:
            self._release(entity, primary, to, set(mine.values()), set(current), out)
        out.seconds = time.monotonic() - t0
        return out

    def _migrate_patterns(self, ds: Dataset, entity: str) -> list[str]:
        """Rule patterns covering the dataset: its selectors under /ENTITY (a directory
        becomes DIR/**), plus the exact path of any file they do not match."""
        pats: list[str] = []
        for s in ds.selectors:
            if any(ch in s for ch in "*?"):
                pat = s
            else:
                norm = paths.normalize(s)
                try:
                    kind = self.fc.stat(norm).kind
                except NotFoundError:
                    continue
                pat = norm if kind == "file" else norm.rstrip("/") + "/**"
            if (pat.startswith(f"/{entity}/") or pat == f"/{entity}") and pat not in pats:
                pats.append(pat)
        for f in ds.files:
            if not any(glob_match(p, f.path) for p in pats):
                pats.append(f.path)
        return pats

    def _reconcile(self, entity: str) -> list[dict[str, Any]]:
        fc = self.creds.open(timeout=RECONCILE_TIMEOUT)
        try:
            return list(fc.reconcile(entity))
        finally:
            fc.close()

    def _versions(self, files: Sequence[str]) -> dict[str, tuple[int, tuple[ChunkRef, ...]]]:
        """(mtime_ns, chunk refs) of each file now, at its primary (removed: left out)."""
        out: dict[str, tuple[int, tuple[ChunkRef, ...]]] = {}
        for p in files:
            try:
                m = self._manifest(p)[1]
            except NotFoundError:
                continue
            out[p] = (m.stat.mtime_ns, tuple(m.refs()))
        return out

    def _manifest(self, path: str) -> tuple[str, SiteManifest]:
        """(primary, manifest) of file `path`, from its entity's primary."""
        fc = self.fc
        norm, primary = fc.primary(path)
        return primary, fc.with_site(primary, lambda sc: sc.manifest(norm))

    def _check(self, to: str, mine: dict[str, str], states: dict[str, dict[str, Any]],
               before: dict[str, tuple[int, tuple[ChunkRef, ...]]],
               current: dict[str, tuple[int, tuple[ChunkRef, ...]]]) -> list[str]:
        """What keeps `to` from being the verified, pinned holder of every current file."""
        problems = []
        for pat, rid in mine.items():
            r = states.get(rid)
            if r is None:
                problems.append(f"rule {rid} ({pat}) is gone at the primary")
            elif r.get("state") != "ok" or to not in r.get("sites", []):
                problems.append(f"rule {rid} ({pat}) is {r.get('state')}: "
                                f"{r.get('reason') or 'not placed at ' + to}")
        for p, ver in current.items():
            if before.get(p) != ver:
                problems.append(f"{p} changed while the rules were reconciled")
            elif not any(glob_match(pat, p) for pat in mine):
                problems.append(f"{p} is matched by no migrate rule")
        ids = list(dict.fromkeys(r.id for _, refs in current.values() for r in refs))
        have = self.catalog.has(to, ids) if ids else []
        lacking = [c for c, h in zip(ids, have, strict=True) if not h]
        if lacking:
            problems.append(f"{to} lacks {len(lacking)} chunk(s) (first {lacking[0].hex()})")
        return problems

    def _rule_files(self, pattern: str) -> list[str] | None:
        """Files (job records included) the primary would match with `pattern` now;
        None when the listing fails (the rule is then kept)."""
        try:
            return [st.path for st in self.fc.walk(literal_prefix(pattern))
                    if st.kind != "dir" and glob_match(pattern, st.path)]
        except NotFoundError:
            return []

    def _release(self, entity: str, primary: str, to: str, mine: set[str], files: set[str],
                 out: TransferSummary) -> None:
        """Delete the rules that keep copies away from `to` and the primary for these
        files only (their pins are removed everywhere by the primary)."""
        fc = self.fc
        for r in fc.rules(entity):
            rid = str(r["id"])
            elsewhere = sorted(set(r.get("sites", [])) - {to, primary})
            if rid in mine or not elsewhere:
                continue
            covered = self._rule_files(str(r["pattern"]))
            if not covered:
                out.notes.append(f"kept rule {rid} ({r['pattern']}): it matches no file now")
                continue
            others = sorted(set(covered) - files)
            if others:
                out.notes.append(f"kept rule {rid} ({r['pattern']}) on {', '.join(elsewhere)}: "
                                 f"it also places {others[0]}"
                                 + (f" and {len(others) - 1} other file(s)"
                                    if len(others) > 1 else ""))
                continue
            fc.rule_rm(entity, rid)
            out.removed += len(elsewhere)
            out.notes.append(f"removed rule {rid} ({r['pattern']}): released its copies on "
                             f"{', '.join(elsewhere)}")


__all__ = ["Migration", "MigrationIncompleteError"]
