"""The dashboard served by each site daemon and by the registry, under `/dashboard/`
(docs/gateway.md, "Dashboard"). The page is static; its JSON API answers only a token
of scope `metrics` (a scraper's token: it reads nothing else): at a site, one of the
site's entity, or a request signed by that entity (mutual TLS); at the registry, the
registry's own metrics token, the same rule as its `/metrics`. `install`
is one of the site's EXTENSIONS (gfs.federation.site), `install_registry` one of the
registry's."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gfs.errors import ConfigError, HutongError
from gfs.federation import registry_metrics
from gfs.federation.auth import AuthError
from gfs.federation.http import Metrics
from gfs.gateway.dashboard import Dashboard, add_routes, store_state
from gfs.gateway.fed_dashboard import rule_row, sites_picture

if TYPE_CHECKING:
    from gfs.federation.registry import RegistryState
    from gfs.federation.site_state import Site

PREFIX = "/dashboard"
INTERVAL_ENV = "HUTONG_DASHBOARD_INTERVAL"
"""Seconds between the samples of the plots (default 5)."""
#: Counters of the daemons' metrics plotted as rates (bytes moved per second).
TRANSFER_COUNTERS = ("chunk_bytes_in_total", "chunk_bytes_out_total",
                     "mover_pull_bytes_total", "tier_moved_bytes_total")
#: Records shown of the dataflow jobs and of the privacy audit log (newest first).
SHOWN = 50


def interval() -> float:
    """The sampling interval from $HUTONG_DASHBOARD_INTERVAL (default 5 s)."""
    raw = os.environ.get(INTERVAL_ENV, "5")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"${INTERVAL_ENV} must be a positive number of seconds, not "
                          f"{raw!r}")
    return value


def counters(metrics: Metrics, names: tuple[str, ...]) -> dict[str, float]:
    """Each counter of `names` summed over its labels."""
    out = dict.fromkeys(names, 0.0)
    for (name, _), value in list(metrics.counters.items()):
        if name in out:
            out[name] += value
    return out


def dataflow_jobs(site: Site) -> list[dict[str, Any]]:
    """The dataflow job records kept in the site's store (`jobs` table, `job:ID`)."""
    rows = []
    with site.client.engine.read() as txn:
        for _, raw in txn.iter_values("jobs", b"job:"):
            rec = json.loads(raw)
            transfers = rec.get("transfers") or []
            rows.append({"id": rec.get("id", ""), "name": rec.get("name", ""),
                         "status": rec.get("status", "?"), "created": rec.get("created", 0),
                         "tasks": len(rec.get("tasks") or {}), "transfers": len(transfers),
                         "bytes": sum(int(t.get("bytes", 0) or 0) for t in transfers),
                         "seconds": rec.get("seconds"), "error": rec.get("error") or ""})
    rows.sort(key=lambda r: -float(r["created"] or 0))
    return rows[:SHOWN]


def privacy_audit(site: Site) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The privacy jobs of the site's entity (from its audit log: started, done or
    failed, partner) and the log's newest records."""
    path = f"/{site.entity}/.privacy/audit.log"
    if not site.client.exists(path):
        return [], []
    records = [json.loads(line) for line in site.client.read_bytes(path).splitlines()
               if line.strip()]
    jobs: dict[str, dict[str, Any]] = {}
    for r in records:
        job = r.get("job")
        if not job:
            continue
        j = jobs.setdefault(job, {"id": job, "kind": r.get("job_kind", ""),
                                  "partner": r.get("partner", ""), "state": "running",
                                  "started": r.get("time", 0), "entries": 0})
        j["entries"] += 1
        if r.get("kind") == "job-done":
            j["state"] = "done"
        elif r.get("kind") in ("job-failed", "policy-refused"):
            j["state"] = "failed"
    entries = [{"seq": r.get("seq"), "time": r.get("time", 0), "kind": r.get("kind", ""),
                "job": r.get("job", ""), "partner": r.get("partner", "")}
               for r in records[-SHOWN:]][::-1]
    return sorted(jobs.values(), key=lambda j: -float(j["started"] or 0))[:SHOWN], entries


def site_picture(site: Site) -> dict[str, Any]:
    """What a site's dashboard shows: the federation's sites and links (from the
    registry), this site's pools, tiers with cost, rules with their state and reason,
    transfers, dataflow jobs, privacy jobs with their audit entries."""
    out = store_state(site.client)
    out["store"] = f"site {site.name} of {site.entity} in {site.config.region}"
    errors = []
    try:
        out["sites"], _, _ = sites_picture(site.registry.call("GET", "/v1/sites")["sites"])
        out["links"] = site.registry.call("GET", "/v1/links")["links"]
    except (HutongError, OSError) as e:  # the registry is down: shown, not fatal
        out["sites"], out["links"] = [], []
        errors.append(f"registry {site.config.registry}: {e}")
    if site.config.primary:
        out["rules"] = out["rules"] + [rule_row(r) for r in site.rules()]
    out["dataflow"] = dataflow_jobs(site)
    out["privacy"], out["audit"] = privacy_audit(site)
    out["counters"] = counters(site.metrics, TRANSFER_COUNTERS)
    if errors:
        out["error"] = "; ".join(errors)
    return out


def install(app: web.Application, site: Site) -> None:
    """Serve the site's dashboard in its application (a site EXTENSION)."""

    async def guard(request: web.Request) -> None:
        p = await asyncio.get_running_loop().run_in_executor(
            None, site.principal, request.headers, request.method, request.path_qs)
        if p.token is not None and p.token.scope != "metrics":
            raise AuthError(f"a {p.token.scope} token of {p.token.sub!r} does not read the "
                            f"dashboard of site {site.name}; mint one with `hutong token "
                            "mint --scope metrics`", 403, "forbidden")
        site.check_metrics(p)  # the site's own entity only

    add_routes(app, Dashboard(lambda: site_picture(site), [], interval()), PREFIX, guard)


def registry_picture(state: RegistryState) -> dict[str, Any]:
    """What the registry's dashboard shows: every site with its status and pools, the
    tiers summed over them, the links, the entities, the registry's request counts."""
    sites, pools, tiers = sites_picture(state.sites())
    up = sum(s["status"] == "up" for s in sites)
    return {"store": f"registry ({len(state.entities())} entities, {up} of {len(sites)} "
                     "sites up)",
            "sites": sites, "pools": pools, "tiers": tiers, "links": state.links(),
            "rules": [], "jobs": [], "usage": {},
            "counters": {"sites_up": float(up),
                         **counters(state.metrics, ("http_requests_total",))}}


def install_registry(app: web.Application, state: RegistryState) -> None:
    """Serve the registry's dashboard in its application (a registry EXTENSION)."""

    async def guard(request: web.Request) -> None:
        registry_metrics.check(request.headers, state.notary.public_key())

    add_routes(app, Dashboard(lambda: registry_picture(state), [], interval()), PREFIX,
               guard)


__all__ = ["INTERVAL_ENV", "PREFIX", "install", "install_registry", "registry_picture",
           "site_picture"]
