"""`RegistryView`: what the registry says of the federation (its entities, sites and
links), kept for a few seconds; the one cache of it a client holds.

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
    (see the module doc). Thread-safe; requests are made outside the lock."""

    def __init__(self, registry: HttpClient, *, ttl: float = REGISTRY_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._answers: dict[str, _Answer] = {}
        #: Answers served past their TTL because the registry was unreachable.
        self.stale_served = 0
        self._warned = False

    def entities(self, refresh: bool = False) -> Records:
        """Every entity by name (its primary site among its fields)."""
        return self._get("entities", refresh, self._fetch_entities).records

    def sites(self, refresh: bool = False) -> Records:
        """Every registered site by name, with its entity, region, endpoint and status."""
        return self._get("sites", refresh, self._fetch_sites).records

    def links(self) -> list[dict[str, Any]]:
        """The measured links between sites (as fetched with the sites)."""
        return self._get("sites", False, self._fetch_sites).links

    def _fetch_entities(self) -> _Answer:
        recs = self.registry.call("GET", "/v1/entities")["entities"]
        return _Answer(self.clock(), {str(r["name"]): r for r in recs}, [])

    def _fetch_sites(self) -> _Answer:
        sites = self.registry.call("GET", "/v1/sites")["sites"]
        links = self.registry.call("GET", "/v1/links")["links"]
        return _Answer(self.clock(), {str(s["name"]): s for s in sites}, list(links))

    def _get(self, key: str, refresh: bool, fetch: Callable[[], _Answer]) -> _Answer:
        with self._lock:
            old = self._answers.get(key)
        if old is not None and not refresh and self.clock() - old.at < self.ttl:
            return old
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
            self._answers[key] = new
            if self._warned:
                log.warning("registry %s answers again", self.registry.base_url)
            self._warned = False
        return new


__all__ = ["REGISTRY_TTL", "RegistryView"]
