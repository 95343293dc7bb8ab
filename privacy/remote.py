"""Start a privacy job at one's own entity's site and follow it (`hutong join/psi/query`
with a profile): the site runs this entity's half, its partner's site the other."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from gfs.federation.client import FederationClient
from gfs.federation.site_client import SiteClient
from privacy.errors import ProtocolError
from privacy.jobs import JobSpec, error_from

Progress = Callable[[str, int, int], None]
POLL = 0.2
"""Seconds between two questions about a running job."""


def start(site: SiteClient, spec: JobSpec) -> dict[str, Any]:
    """Ask `site` (this entity's primary) to start `spec`; returns {job, side, ...}."""
    spec.validate()
    return dict(site.call("POST", "/v1/privacy/jobs", {"spec": asdict(spec)}))


def status(site: SiteClient, job: str) -> dict[str, Any]:
    """The site's record of its half of `job`."""
    return dict(site.call("GET", f"/v1/privacy/jobs/{job}"))


def wait(site: SiteClient, job: str, timeout: float, progress: Progress | None = None
         ) -> dict[str, Any]:
    """Follow `job` at `site` until it ends; its result, or the party's error raised."""
    deadline = time.monotonic() + timeout
    while True:
        rec = status(site, job)
        if progress is not None:
            for step, (done, total) in rec.get("progress", {}).items():
                progress(f"{rec['side']}:{step}", int(done), int(total))
        if rec["state"] == "done":
            return dict(rec["result"])
        if rec["state"] == "failed":
            err = rec.get("error") or {}
            raise error_from(f"ERROR {err.get('kind')} {err.get('message')}", rec["side"])
        if time.monotonic() > deadline:
            raise ProtocolError(f"job {job} did not finish within {timeout:g} s at "
                                f"{site.base_url}")
        time.sleep(POLL)


def run(fc: FederationClient, entity: str, spec: JobSpec,
        progress: Progress | None = None) -> dict[str, Any]:
    """Run `spec` between `entity`'s primary site and its partner's; returns what
    `entity`'s half learns."""
    site = fc.entity_site(entity)
    job = start(site, spec)["job"]
    return wait(site, str(job), spec.timeout + 60, progress)


def run_with_profile(name: str, spec: JobSpec, progress: Progress | None = None
                     ) -> dict[str, Any]:
    """`run` as the entity of profile `name` (its token or keys, its registry CA)."""
    from gfs.federation.auth import EntityKeys
    from gfs.federation.tls import client_trust, read_registry_ca
    from gfs.profiles import get_profile

    prof = get_profile(name)
    keys = EntityKeys.load(prof.keys) if prof.keys is not None else None
    tls = client_trust(prof.registry, keys=keys, plaintext=prof.plaintext,
                       registry_ca=None if prof.registry_ca is None
                       else read_registry_ca(prof.registry_ca))
    with FederationClient(prof.registry, keys=keys, token=prof.token, tls=tls) as fc:
        return run(fc, prof.entity, spec, progress)
