"""The federation: unified identifiers, registry, site daemon, federation client,
security (keys, signatures, tokens, grants, encrypted chunks) and replication rules.

Layout (one job per module): `ids` identifiers; `expr` attribute expressions;
`auth` keys, signed requests and tokens; `registry` the registry service;
`site` the site daemon's start-up, `site_state` its state, `site_handlers` its
HTTP API; `wire` what the site and its clients share on the wire; `site_client`
the typed client of one site; `client` one namespace across entities; `source`
the sites as a chunk source; `rules` the reconciler; `cli` the `hutong
registry/site/rule/grant/token/status` commands.
"""

from __future__ import annotations
