"""Start-up of the site daemon: `init_site` creates a site's state; `hutong site serve`
(gfs.federation.cli) runs `make_app(Site(state))` with a mover port, heartbeats to the
registry and the rule reconciler. The state is gfs.federation.site_state, the HTTP API
gfs.federation.site_handlers (docs/openapi/site.yaml); clients import neither (they use
gfs.federation.site_client and gfs.federation.wire).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path

from aiohttp import web

from gfs.client import Client
from gfs.errors import (
    HutongError,
    StateError,
)
from gfs.federation import certs, ids, site_handlers
from gfs.federation.auth import EntityKeys
from gfs.federation.site_state import Site, SiteConfig

#: Modules that add routes to every site daemon: each has `install(app, site)`. They
#: live above gfs (privacy runs each party's half of a job at its entity's site), so
#: gfs names them here and imports them at start, as gfs.cli does its subcommands.
EXTENSIONS: tuple[str, ...] = ("privacy.site", "gfs.gateway.daemon_dashboard")


def make_app(site: Site) -> web.Application:
    """The site's application: its HTTP API (gfs.federation.site_handlers) and the
    routes of EXTENSIONS."""
    app = site_handlers.make_app(site)
    for name in EXTENSIONS:
        importlib.import_module(name).install(app, site)
    return app


def init_site(state: str | os.PathLike[str], *, name: str, entity: str, region: str,
              registry: str, industry: str = "GEN", primary: bool = False,
              keys_from: str | os.PathLike[str] | None = None,
              registry_ca: bytes | None = None, meta: str | None = None) -> SiteConfig:
    """Create a site's state: a store (embedded, or joining the metadata database at
    `meta`, a ``postgresql://`` URL: several sites of one entity then serve one
    namespace), entity keys and CA (new, or copied from `keys_from` for a second site
    of the same entity), the site's TLS certificate, the registry's CA it pins
    (`registry_ca`, PEM) and site.json."""
    root = Path(state)
    for n, what in ((name, "site name"), (entity, "entity name"), (region, "region")):
        ids.check_name(n, what)
    certs.check_registry_ca(registry, registry_ca)
    if industry.upper() not in ids.INDUSTRIES:
        raise ids.IdentifierError(f"industry {industry!r} is not one of "
                                  + " ".join(ids.INDUSTRIES))
    Client.init(root, meta=meta).close()
    fed = root / "federation"
    if keys_from is not None:
        src = EntityKeys.load(keys_from)
        if src.name != entity:
            raise StateError(f"keys in {keys_from} belong to {src.name!r}, not {entity!r}")
        fed.mkdir(parents=True, exist_ok=True)
        for f in ("entity.key", "data.key", "entity.name"):
            data = (Path(keys_from) / f).read_bytes()
            fd = os.open(fed / f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
    else:
        EntityKeys.create(fed, entity)
    certs.init_site_tls(fed / "tls", site=name, entity=entity, registry=registry,
                        registry_ca=registry_ca,
                        ca_from=Path(keys_from) / "tls" if keys_from is not None else None)
    cfg = SiteConfig(name=name, entity=entity, region=region, industry=industry.upper(),
                     registry=registry, primary=primary)
    cfg.save(root)
    with Client(root) as c, contextlib.suppress(HutongError):
        c.mkdir(f"/{entity}")
    return cfg


__all__ = ["Site", "SiteConfig", "init_site", "make_app"]
