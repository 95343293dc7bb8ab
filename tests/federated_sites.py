"""A federation for dataflow tests: registry, site processes, a Dask cluster beside some."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataflow.federated import FederatedDataflow, start_site_cluster
from gfs.federation.testing import SiteDef, started

SiteSpec = tuple[str, str, str, bool]
"""(name, entity, region, primary)."""


class FederatedSites:
    """Starts the registry and `sites`, then a one-slot Dask cluster beside each site
    in `clusters`; `dataflow()` drives them with the keys of `driver`'s entity."""

    def __init__(self, root: Path, sites: Sequence[SiteSpec], clusters: Sequence[str], *,
                 driver: str, processes: bool = False) -> None:
        self.fed = started(root, [SiteDef(*s) for s in sites], ttl=3.0, heartbeat=0.3)
        self.clusters: dict[str, Any] = {}
        self.driver = driver
        try:
            for name in clusters:
                self.clusters[name] = start_site_cluster(name, 1, processes=processes)
        except BaseException:
            self.close()
            raise

    @property
    def schedulers(self) -> dict[str, str]:
        return {n: str(c.scheduler_address) for n, c in self.clusters.items()}

    def dataflow(self, **kw: Any) -> FederatedDataflow:
        return FederatedDataflow(
            self.fed.registry_url,
            keys_dir=str(self.fed.sites[self.driver]["state"] / "federation"),
            schedulers=self.schedulers, **kw)

    def close(self) -> None:
        for cl in self.clusters.values():
            cl.close(timeout=10)
        self.clusters.clear()
        self.fed.close()
