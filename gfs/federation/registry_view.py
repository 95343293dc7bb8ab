"""`RegistryView`: what the registry says of the federation (its entities, sites and
links), kept for a few seconds and renewed in the background; the one cache of it a
client holds.

While the registry cannot be reached, the last answer known is served, however old,
with a warning (once per outage), so that a client that has seen the federation
keeps working with the sites themselves; a client that never reached the registry
gets `UnavailableSiteError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gfs.federation.http import HttpClient, UnavailableError
from gfs.federation.kept import Kept
from gfs.federation.site_client import SiteUnavailableError

log = logging.getLogger("hutong.federation")

#: Seconds an answer of the registry is trusted before it is asked again.
REGISTRY_TTL = 5.0

Records = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class _Answer:
    at: float
    records: Records
    links: list[dict[str, Any]]


class RegistryView:
    """Entities, sites and links of the registry behind `registry`, kept `ttl` seconds
    and renewed in the background while a little older (`gfs.federation.kept`); see
    the module doc for an unreachable registry. Thread-safe."""

    def __init__(self, registry: HttpClient, *, ttl: float = REGISTRY_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self._lock = threading.Lock()
        self._entities = Kept(lambda: self._answer(self._entities, self._fetch_entities),
                              ttl, what="the registry's entities", clock=clock)
        self._sites = Kept(lambda: self._answer(self._sites, self._fetch_sites),
                           ttl, what="the registry's sites", clock=clock)
        #: Answers served past their TTL because the registry was unreachable.
        self.stale_served = 0
        self._warned = False

    @property
    def ttl(self) -> float:
        """Seconds an answer is trusted before it is asked again."""
        return self._entities.ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        self._entities.ttl = self._sites.ttl = value

    def entities(self, refresh: bool = False, *, since: float | None = None) -> Records:
        """Every entity by name (its primary site among its fields); `since` (a time of
        `clock`): asked again if the answer kept is older."""
        return self._entities.get(refresh or self._older(self._entities, since)).records

    def sites(self, refresh: bool = False, *, since: float | None = None) -> Records:
        """Every registered site by name, with its entity, region, endpoint and status;
        `since` as for `entities`."""
        return self._sites.get(refresh or self._older(self._sites, since)).records

    def _older(self, kept: Kept[_Answer], since: float | None) -> bool:
        if since is None:
            return False
        answer = kept.peek()
        return answer is not None and answer.at < since

    def links(self) -> list[dict[str, Any]]:
        """The measured links between sites (as fetched with the sites)."""
        return self._sites.get().links

    def _fetch_entities(self) -> _Answer:
        recs = self.registry.call("GET", "/v1/entities")["entities"]
        return _Answer(self.clock(), {str(r["name"]): r for r in recs}, [])

    def _fetch_sites(self) -> _Answer:
        sites = self.registry.call("GET", "/v1/sites")["sites"]
        links = self.registry.call("GET", "/v1/links")["links"]
        return _Answer(self.clock(), {str(s["name"]): s for s in sites}, list(links))

    def _answer(self, kept: Kept[_Answer], fetch: Callable[[], _Answer]) -> _Answer:
        """A new answer of the registry, or the last one while it is unreachable."""
        old = kept.peek()
        try:
            new = fetch()
        except UnavailableError as e:
            if old is None:
                raise SiteUnavailableError(
                    "registry", f"the registry {self.registry.base_url} is unreachable "
                    f"({e}) and this client has no earlier answer of it; retry when it "
                    "is back", 503, "registry_unavailable") from None
            with self._lock:
                self.stale_served += 1
                warn, self._warned = not self._warned, True
            if warn:
                log.warning("registry %s unreachable (%s): using its answer of %.0f s ago "
                            "(entities, sites and grants may have changed since)",
                            self.registry.base_url, e, self.clock() - old.at)
            return old
        with self._lock:
            if self._warned:
                log.warning("registry %s answers again", self.registry.base_url)
            self._warned = False
        return new


__all__ = ["REGISTRY_TTL", "RegistryView"]
