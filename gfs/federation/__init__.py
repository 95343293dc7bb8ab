"""The federation: unified identifiers, registry, site daemon, federation client,
security (keys, signatures, tokens, grants, encrypted chunks) and replication rules.

Layout (one job per module): `ids` identifiers; `expr` attribute expressions;
`auth` keys, signed requests and tokens; `registry` the registry service;
`site` the site daemon; `client` one namespace across entities; `rules` the
reconciler; `cli` the `hutong registry/site/rule/grant/token/status` commands.
"""

from __future__ import annotations
