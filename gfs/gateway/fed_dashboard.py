"""The dashboard's picture of the federation, as a profile sees it (`hutong dashboard
--profile NAME`): every site with its status and pools, the tiers summed over the
pools, the profile entity's rules with their state and reason, and the entity's usage.
Same shape as `gfs.gateway.dashboard.store_state`, plus `sites`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gfs.env import TIERS
from gfs.federation.namespace import FederatedNamespace


def rule_row(r: dict[str, Any]) -> dict[str, Any]:
    """A replication rule record as a row of the dashboard's rules table."""
    where = f" where {r['where']}" if r.get("where") else ""
    return {"kind": "replicate", "path": str(r.get("pattern", "")),
            "tier": f"{r.get('copies', '?')} copies{where}",
            "state": str(r.get("state", "new")), "reason": str(r.get("reason", "")),
            "sites": list(r.get("sites", []))}


def sites_picture(records: Iterable[dict[str, Any]]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Sites (status, region, usage), their pools and the tiers summed over the pools,
    from the registry's site records."""
    sites, pools = [], []
    used: dict[str, int] = {}
    caps: dict[str, int] = {}
    for s in sorted(records, key=lambda r: str(r.get("name", ""))):
        name = str(s.get("name", ""))
        site_pools = s.get("pools", [])
        sites.append({"name": name, "entity": s.get("entity", ""),
                      "region": s.get("region", ""), "status": s.get("status", "?"),
                      "primary": bool(s.get("primary")),
                      "used_bytes": sum(int(p.get("used", 0)) for p in site_pools)})
        for p in site_pools:
            tier = str(p.get("tier", "hot"))
            pools.append({"name": f"{name}/{p.get('name', '')}", "tier": tier,
                          "used_bytes": int(p.get("used", 0)),
                          "capacity": int(p.get("capacity", 0)), "url": f"site {name}"})
            used[tier] = used.get(tier, 0) + int(p.get("used", 0))
            caps[tier] = caps.get(tier, 0) + int(p.get("capacity", 0))
    tiers = [{"tier": t, "live_bytes": used.get(t, 0), "capacity": caps[t],
              "price_gb_month": 0.0, "monthly_cost_usd": 0.0} for t in TIERS if t in caps]
    return sites, pools, tiers


def federation_state(ns: FederatedNamespace) -> dict[str, Any]:
    """Sites (status, region, pools), tiers, the entity's rules and usage, right now."""
    sites, pools, tiers = sites_picture(
        {**rec, "name": name} for name, rec in ns.fc.sites(refresh=True).items())
    entity = ns.entity
    rules: list[dict[str, Any]] = []
    usage: dict[str, Any] = {}
    error = ""
    if entity is not None:
        try:
            rules = [rule_row(r) for r in ns.fc.rules(entity)]
            usage = ns.du(f"/{entity}").to_dict()
        except (OSError, PermissionError) as e:  # the primary is down: shown, not fatal
            error = f"entity {entity}: {e}"
    out: dict[str, Any] = {"store": f"federation {ns.fc.registry.base_url} as {entity}",
                           "sites": sites, "pools": pools, "tiers": tiers, "rules": rules,
                           "jobs": [], "usage": usage}
    if error:
        out["error"] = error
    return out


__all__ = ["federation_state", "rule_row", "sites_picture"]
