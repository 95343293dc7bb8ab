"""Shared reservations: every driver's running jobs, seen by every planner.

A driver publishes, for each job (or prefetch) it runs, a *lease*: the flows the
job has still to move (src, dst, chunks, bytes) and the compute it has still to
run (task, site, seconds), with an expiry. Leases are states of the catalog
(`lease` kind: the home store's `jobs` table embedded, `/ENTITY/.dataflow/
leases/JOB.json` in a federation), so every driver of the entity reads them.
The driver renews its leases every third of their lifetime with what is left;
a driver that dies stops renewing, and its leases count for nobody once
expired (the next planner deletes them). Flows between sites of two
entities are also published to the registry's lease table (`RegistryBoard`,
`/v1/leases`, each entity writing only its own), so planners of other
entities see them too. Before planning, a driver loads the others' live
leases (its catalog's and the registry's) into its topology
(`Topology.set_external`): their flows share links and NICs with new ones,
their compute is backlog at their sites.
While this driver has running jobs, the renewer also loads the others' leases;
leases it had not seen before are passed to `on_new` (`Dataflow` re-shares the
estimates of its running jobs whose links they share).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from dataflow.catalog import Catalog
from dataflow.errors import ConfigError
from dataflow.records import Lease
from dataflow.sites import Topology
from gfs.errors import HutongError

log = logging.getLogger("hutong.dataflow")

#: Seconds a lease lives unless renewed (a dead driver's load counts this long at most).
LEASE_SECONDS = 30.0
KIND = "lease"


class Board(Protocol):
    """Where leases of flows between entities are shared (the registry's lease table)."""

    entity: str
    """The entity this board writes as."""

    def put(self, lease: Lease, ttl: float) -> None:
        """Write or renew `lease` of this board's entity, to expire `ttl` s from now."""

    def delete(self, job: str) -> None:
        """Delete this entity's lease of `job`."""

    def leases(self) -> list[tuple[str, Lease]]:
        """(entity, lease) of every live lease."""

    def close(self) -> None:
        """Release the board's connections."""


class RegistryBoard:
    """The registry's lease table (`/v1/leases`) through `http` (an
    `gfs.federation.http.HttpClient` signing as `entity`)."""

    def __init__(self, http: Any, entity: str) -> None:
        self.http, self.entity = http, entity

    def put(self, lease: Lease, ttl: float) -> None:
        self.http.call("PUT", f"/v1/leases/{self.entity}/{lease.job}",
                       {"driver": lease.driver, "ttl": ttl,
                        "flows": [list(f) for f in lease.flows]})

    def delete(self, job: str) -> None:
        self.http.call("DELETE", f"/v1/leases/{self.entity}/{job}", {})

    def leases(self) -> list[tuple[str, Lease]]:
        out = []
        for d in self.http.call("GET", "/v1/leases")["leases"]:
            out.append((str(d["entity"]), Lease.from_dict(d)))
        return out

    def close(self) -> None:
        self.http.close()


class Leases:
    """This driver's leases (published, renewed, dropped) and the others' (loaded)."""

    def __init__(self, catalog: Catalog, topo: Topology, *, ttl: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.time,
                 on_new: Callable[[list[Lease]], None] | None = None,
                 board: Board | None = None) -> None:
        """`on_new` gets the other drivers' leases not seen before, each time the
        leases are loaded (`refresh`; the renewer does it every third of `ttl` while
        this driver has running jobs). `board`: where flows between two entities'
        sites are published for other entities' planners (None: nowhere)."""
        if not ttl > 0:
            raise ConfigError(f"lease lifetime must be > 0 seconds, got {ttl}")
        self.catalog, self.topo, self.ttl, self.clock = catalog, topo, ttl, clock
        self.driver = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This driver's name in its leases."""
        self.on_new = on_new
        self.board = board
        self._on_board: set[str] = set()
        self._mine: set[str] = set()
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _save(self, job: str) -> None:
        lease = Lease(job, self.driver, self.clock() + self.ttl, self.topo.job_flows(job),
                      self.topo.job_compute(job))
        try:
            self.catalog.save_state(KIND, job, lease.to_dict())
        except (HutongError, OSError) as e:  # planners elsewhere miss it; the job goes on
            log.warning("lease of job %s not published: %s", job, e)
        if self.board is None:
            return
        cross = [f for f in lease.flows if self._entity(f[0]) != self._entity(f[1])]
        if not cross and job not in self._on_board:
            return
        try:
            self.board.put(Lease(job, self.driver, lease.expires, cross), self.ttl)
            self._on_board.add(job)
        except (HutongError, OSError) as e:
            log.warning("lease of job %s not published at the registry: %s", job, e)

    def _entity(self, site: str) -> str | None:
        s = self.topo.sites.get(site)
        return s.entity if s is not None else None

    def publish(self, job: str) -> None:
        """Publish (or renew) the lease of `job` from what the topology has reserved for
        it, and keep renewing it until `drop`."""
        with self._lock:
            self._mine.add(job)
            if self._renewer is None:
                self._stop.clear()
                self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                                 name="hutong-leases")
                self._renewer.start()
        self._save(job)

    def drop(self, job: str) -> None:
        """`job` ended: delete its lease."""
        with self._lock:
            self._mine.discard(job)
        try:
            self.catalog.delete_state(KIND, job)
        except (HutongError, OSError) as e:  # it expires by itself
            log.warning("lease of job %s not deleted (it expires in %.0f s): %s", job,
                        self.ttl, e)
        if self.board is not None and job in self._on_board:
            self._on_board.discard(job)
            try:
                self.board.delete(job)
            except (HutongError, OSError) as e:
                log.warning("lease of job %s not deleted at the registry (it expires in "
                            "%.0f s): %s", job, self.ttl, e)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                jobs = sorted(self._mine)
            for job in jobs:
                self._save(job)
            if jobs:
                try:
                    self.refresh()
                except Exception:  # a failing callback must not stop the renewals
                    log.exception("re-sharing running jobs' estimates failed")

    def others(self) -> list[Lease]:
        """The live leases of other drivers (expired ones are deleted on the way)."""
        now = self.clock()
        out = []
        try:
            states = self.catalog.states(KIND)
        except (HutongError, OSError) as e:
            log.warning("leases not read (planning without other drivers' load): %s", e)
            return []
        for name, d in states:
            try:
                lease = Lease.from_dict(d)
            except (KeyError, TypeError, ValueError):
                log.warning("lease %s is malformed: ignored", name)
                continue
            if lease.driver == self.driver:
                continue
            if lease.expires < now:
                with contextlib.suppress(HutongError, OSError):  # another planner did
                    self.catalog.delete_state(KIND, name)
                continue
            out.append(lease)
        return out + self._board_leases()

    def _board_leases(self) -> list[Lease]:
        """Other entities' live leases at the board (this entity's are in the catalog),
        their jobs named `ENTITY/JOB`."""
        if self.board is None:
            return []
        try:
            got = self.board.leases()
        except (HutongError, OSError) as e:
            log.warning("registry leases not read (planning without other entities' "
                        "load): %s", e)
            return []
        return [Lease(f"{ent}/{lease.job}", lease.driver, lease.expires, lease.flows)
                for ent, lease in got if ent != self.board.entity]

    def refresh(self) -> list[Lease]:
        """Load the other drivers' live leases into the topology; returns them."""
        leases = self.others()
        self.topo.set_external({lease.job: (lease.flows, lease.compute) for lease in leases})
        with self._lock:
            new = [lease for lease in leases if lease.job not in self._seen]
            self._seen = {lease.job for lease in leases}
        if new and self.on_new is not None:
            self.on_new(new)
        return leases

    def close(self) -> None:
        """Stop renewing and delete this driver's remaining leases."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(self.ttl)
            self._renewer = None
        with self._lock:
            jobs = sorted(self._mine)
        for job in jobs:
            self.drop(job)
        if self.board is not None:
            self.board.close()


__all__ = ["LEASE_SECONDS", "Board", "Lease", "Leases", "RegistryBoard"]
