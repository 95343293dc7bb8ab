"""`hutong registry|site|token|grant|rule|status`: running and administering the federation.

Registered through `gfs.cli.EXTENSIONS`. The namespace itself (/ENTITY/...) is reached
by the ordinary commands (`hutong ls`, `cat`, `put`, ...) through a profile. Here the
registry URL comes from --registry, else $HUTONG_REGISTRY, else the selected profile,
else the site.json of --state; the identity from --token ($HUTONG_TOKEN) or the entity
keys of --keys DIR, else the selected profile's, else STATE/federation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfs.cli import port
from gfs.env import state_dir
from gfs.errors import ConfigError, HutongError
from gfs.units import duration_arg, positive_duration_arg

if TYPE_CHECKING:
    from aiohttp import web

    from gfs.federation.client import FederationClient
    from gfs.federation.tls import ServerTls, Trust
    from gfs.profiles import Profile

REGISTRY_ENV = "HUTONG_REGISTRY"
REGISTRY_CA_ENV = "HUTONG_REGISTRY_CA"
TOKEN_ENV = "HUTONG_TOKEN"
log = logging.getLogger("gfs.federation")


# -- serving ------------------------------------------------------------------------------

async def _serve(app: web.Application, host: str, port: int, banner: str,
                 on_start: Any = None, background: list[Any] | None = None,
                 tls: ServerTls | None = None) -> None:
    """Serve `app` over TLS 1.3 with `tls` (plain HTTP without: --insecure-plaintext)."""
    import asyncio

    from aiohttp import web

    from gfs.federation.guard import GuardedSite, Limits
    from gfs.federation.tcp import prefer_bbr

    limits = Limits()
    if tls is not None and tls.mutual:
        app.middlewares.append(tls.middleware)
    runner = web.AppRunner(app, shutdown_timeout=10.0, access_log=None,
                           keepalive_timeout=limits.idle)
    await runner.setup()
    listening = GuardedSite(runner, host, port, limits=limits,
                            ssl_context=tls.context if tls is not None else None)
    await listening.start()
    server = listening._server  # aiohttp keeps it private; its sockets are the listeners
    for sock in getattr(server, "sockets", ()):
        prefer_bbr(sock)  # accepted connections inherit it (gfs.federation.tcp)
    bound = runner.addresses[0][1]
    scheme = "https" if tls is not None else "http"
    url = f"{scheme}://{host}:{bound}" if ":" not in host else f"{scheme}://[{host}]:{bound}"
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    try:
        if on_start is not None:
            await on_start(url)
        print(f"{banner} {url}", flush=True)
        tasks = [asyncio.create_task(f()) for f in (background or [])]
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()  # stops listening, lets requests in flight finish


def cmd_registry_serve(args: argparse.Namespace) -> int:
    import asyncio

    from gfs.federation.auth import audience_of
    from gfs.federation.certs import registry_tls
    from gfs.federation.registry import RegistryState, make_app
    from gfs.federation.tls import ServerTls

    root = state_dir(args.state)
    state = RegistryState(root, ttl=args.ttl, admission=args.admission)
    tls = None if _plaintext(args) else ServerTls(registry_tls(root, args.host))

    async def on_start(url: str) -> None:
        state.audience = audience_of(url)
    asyncio.run(_serve(make_app(state), args.host, args.port, "hutong registry: serving on",
                       on_start, tls=tls))
    return 0


def cmd_registry_admit(args: argparse.Namespace) -> int:
    from gfs.federation.registry import RegistryState

    state = RegistryState(state_dir(args.state))  # may prepare a registry before it serves
    try:
        rec = state.admit(args.name, args.key, args.industry, args.region, rekey=args.rekey)
    finally:
        state.close()
    if not args.quiet:
        print(f"admitted entity {rec['name']} ({rec['id']})")
    return 0


def _existing_registry_dir(args: argparse.Namespace) -> Path:
    """The state directory of a registry that has served once (operator commands never
    create one: a typo must not look like an empty registry)."""
    from gfs.errors import StateError

    root = state_dir(args.state)
    if not (root / "meta" / "data.mdb").is_file():
        raise StateError(f"no registry state at {root}; pass the --state of "
                         "`hutong registry serve`")
    return root


def cmd_registry_metrics_token(args: argparse.Namespace) -> int:
    from gfs.federation import registry_metrics

    print(registry_metrics.mint(_existing_registry_dir(args), args.ttl, args.user))
    return 0


def cmd_registry_pending(args: argparse.Namespace) -> int:
    from gfs.federation.registry import RegistryState

    state = RegistryState(_existing_registry_dir(args))
    try:
        for r in state.pending():
            print(f"{r['name']}\t{r['industry']}\t{r['region']}\t{r['public_key']}")
    finally:
        state.close()
    return 0


def cmd_site_init(args: argparse.Namespace) -> int:
    from gfs.federation.site import init_site

    registry = args.registry or os.environ.get(REGISTRY_ENV)
    if not registry:
        raise ConfigError(f"the registry URL is needed: pass --registry or set ${REGISTRY_ENV}")
    root = state_dir(args.state)
    ca = args.registry_ca or os.environ.get(REGISTRY_CA_ENV)
    init_site(root, name=args.name, entity=args.entity, region=args.region, registry=registry,
              industry=args.industry, primary=args.primary, keys_from=args.keys_from,
              registry_ca=_read_ca(ca) if ca else None, meta=args.meta)
    if not args.quiet:
        print(f"initialised site {args.name} of entity {args.entity} ({args.region}) at {root}")
    return 0


def cmd_site_serve(args: argparse.Namespace) -> int:
    import asyncio

    from gfs.federation.background import every
    from gfs.federation.rules import reconcile
    from gfs.federation.site import Site, make_app
    from gfs.mover import MoverServer

    site = Site(state_dir(args.state), registry=args.registry, key_ttl=args.key_cache)
    movers: list[MoverServer] = []
    tls = _site_tls(site, args)

    async def on_start(url: str) -> None:
        site.endpoint = url
        if not args.no_mover:
            srv = MoverServer(site.client, site.mover_secret, args.host, 0)
            movers.append(srv)
            site.mover_address = srv.address
            site.metrics.gauges["mover_bytes"] = lambda: float(
                srv.counters()["bytes"] if movers else 0)
        try:
            await asyncio.get_running_loop().run_in_executor(None, site.register)
        except Exception as e:  # any failure: the heartbeats register again
            log.warning("site %s: registration failed (%s: %s); heartbeats will retry",
                        site.name, type(e).__name__, e)

    async def heartbeat() -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, site.heartbeat)
        except HutongError as e:
            if getattr(e, "status", 0) != 404:
                raise
            await loop.run_in_executor(None, site.register)

    async def heartbeats() -> None:
        await every(f"site {site.name}: heartbeat", args.heartbeat, heartbeat, log)

    async def trust_refresh() -> None:
        if tls is None:
            return
        loop = asyncio.get_running_loop()

        async def refresh() -> None:
            await loop.run_in_executor(None, tls.refresh)
        await every(f"site {site.name}: TLS trust refresh", args.heartbeat, refresh, log)

    rounds = itertools.count(1)

    async def reconcile_round() -> None:
        round_ = next(rounds)
        verify = args.verify_every > 0 and round_ % args.verify_every == 0
        await asyncio.get_running_loop().run_in_executor(None, reconcile, site, verify)

    async def reconciler() -> None:
        await every(f"site {site.name}: reconcile", args.reconcile_interval,
                    reconcile_round, log)

    async def tier_round() -> None:
        from gfs.tiering.tierer import run as tier_run

        report = await asyncio.get_running_loop().run_in_executor(None, tier_run,
                                                                  site.client.store)
        site.metrics.inc("tier_moves_total", report.moved)
        site.metrics.inc("tier_moved_bytes_total", report.bytes_moved)

    async def tierer() -> None:
        from gfs.tiering.tierer import tier_usage

        def gauge(tier: str) -> Callable[[], float]:
            return lambda: float(tier_usage(site.client.store).get(tier, 0))

        for tier in ("hot", "warm", "cold"):
            site.metrics.gauges[f"tier_{tier}_bytes"] = gauge(tier)
        await every(f"site {site.name}: tierer run", args.tier_interval, tier_round, log)

    background = [heartbeats, trust_refresh] + ([reconciler] if site.config.primary
                                 and args.reconcile_interval > 0 else [])
    if args.tier_interval > 0:
        background.append(tierer)
    try:
        asyncio.run(_serve(make_app(site), args.host, args.port,
                           f"hutong site: {site.name} ({site.entity}) serving on",
                           on_start, background, tls=tls))
    finally:
        for m in movers:
            m.close()
        site.close()
    return 0


# -- TLS (gfs/federation/tls.py) -----------------------------------------------------------

def add_plaintext_option(p: argparse.ArgumentParser) -> None:
    """Add --insecure-plaintext (plain http://, development only) to parser `p`."""
    from gfs.federation import PLAINTEXT_OPTION

    p.add_argument(PLAINTEXT_OPTION, action="store_true", dest="insecure_plaintext",
                   help="plain HTTP, no TLS: unencrypted and unauthenticated, for a "
                   "development machine only")


def _plaintext(args: argparse.Namespace) -> bool:
    from gfs.federation import PLAINTEXT_WARNING

    if getattr(args, "insecure_plaintext", False):
        log.warning(PLAINTEXT_WARNING)
        print(PLAINTEXT_WARNING, file=sys.stderr, flush=True)
        return True
    return False


def _read_ca(path: str) -> bytes:
    from gfs.federation.tls import read_registry_ca

    return read_registry_ca(Path(path))


def _site_tls(site: Any, args: argparse.Namespace) -> ServerTls | None:
    """The site's server TLS (None with --insecure-plaintext); its clients' trust follows
    the same choice and --registry."""
    from gfs.federation.certs import site_serve_tls
    from gfs.federation.tls import ServerTls, trust_for

    trust = trust_for(site.keys)
    if trust is None:
        raise ConfigError(f"site {site.name} has no TLS directory (STATE/federation/tls); "
                          "create the site again with `hutong site init --registry-ca`")
    trust.registry_url = site.config.registry.rstrip("/")
    if _plaintext(args):
        trust.plaintext = True
        return None
    assert trust.directory is not None
    site_serve_tls(trust.directory, site.name, site.entity, args.host)
    tls = ServerTls(trust.directory, trust, mutual=True)
    try:
        tls.refresh()
    except HutongError as e:  # the registry may start later: the refresh task retries
        log.warning("site %s: entity CAs not read from the registry yet: %s", site.name, e)
    return tls


def _client_trust(args: argparse.Namespace, registry: str, keys: Any,
                  prof: Profile | None = None) -> Trust:
    """--registry-ca (else $HUTONG_REGISTRY_CA, else the profile's copy) and
    --insecure-plaintext (or the profile's choice)."""
    from gfs.federation.tls import client_trust

    ca = getattr(args, "registry_ca", None) or os.environ.get(REGISTRY_CA_ENV)
    pem = _read_ca(ca) if ca else None
    if prof is not None and prof.registry != registry.rstrip("/"):
        prof = None  # another registry than the profile's: its CA says nothing of it
    if pem is None and prof is not None and prof.registry_ca is not None:
        pem = prof.registry_ca.encode("ascii")
    plaintext = _plaintext(args) or (prof is not None and prof.plaintext)
    return client_trust(registry, keys=keys, registry_ca=pem, plaintext=plaintext)


# -- clients ------------------------------------------------------------------------------

def _profile(args: argparse.Namespace) -> Profile | None:
    """The selected profile, if any (see gfs.profiles)."""
    from gfs.profiles import get_profile, selected

    name = selected(getattr(args, "profile", None))
    return None if name is None else get_profile(name)


def _fed(args: argparse.Namespace) -> FederationClient:
    from gfs.federation.auth import EntityKeys
    from gfs.federation.client import FederationClient

    registry = _registry_of(args)
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV)
    keys = None
    keys_dir = getattr(args, "keys", None)
    prof = _profile(args) if token is None and keys_dir is None else None
    if prof is not None:
        token, keys_dir = prof.token, prof.keys
    root = state_dir(args.state)
    if keys_dir is None and token is None and (root / "federation" / "entity.key").exists():
        keys_dir = root / "federation"
    if keys_dir is not None:
        keys = EntityKeys.load(keys_dir)
    if not registry:
        raise ConfigError(f"the registry URL is needed: pass --registry or set ${REGISTRY_ENV}")
    if keys is None and token is None:
        raise ConfigError(f"no identity: pass --token (or set ${TOKEN_ENV}) or --keys DIR")
    near = getattr(args, "near", None) or (prof.near if prof is not None else None)
    return FederationClient(registry, keys=keys, token=token, near=near,
                            tls=_client_trust(args, registry, keys, prof or _profile(args)))


def _entity_of(args: argparse.Namespace, fc: FederationClient) -> str:
    ent = getattr(args, "entity", None) or fc.me
    if not ent:
        raise ConfigError("which entity? pass --entity")
    return str(ent)


def cmd_token_mint(args: argparse.Namespace) -> int:
    from gfs.federation.auth import EntityKeys

    prof = _profile(args) if args.keys is None else None
    keys = EntityKeys.load(args.keys or (prof.keys if prof is not None and prof.keys else None)
                           or state_dir(args.state) / "federation")
    print(keys.mint_token(args.user, args.scope, args.prefix or f"/{keys.name}", args.ttl))
    return 0


def serial_arg(text: str) -> int:
    """A certificate's serial number: hexadecimal (as `openssl x509 -serial` prints it,
    colons allowed) or the path of a PEM certificate file."""
    path = Path(text).expanduser()
    if path.is_file():
        from gfs.federation import certs

        try:
            return int(certs.load_cert(path.read_bytes(), str(path)).serial_number)
        except (HutongError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"{text}: not a PEM certificate ({e})") from None
    digits = text.strip().lower().removeprefix("serial=").removeprefix("0x").replace(":", "")
    if not 1 <= len(digits) <= 40 or any(c not in "0123456789abcdef" for c in digits) \
            or int(digits, 16) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a certificate serial (1 to 40 hex digits, as `openssl x509 "
            "-noout -serial -in CERT` prints) nor a PEM certificate file")
    return int(digits, 16)


def cmd_entity_revoke_cert(args: argparse.Namespace) -> int:
    with _fed(args) as fc:
        rec = fc.revoke_cert(args.serial)
    if not args.quiet:
        print(f"{rec.get('name', fc.me)} revokes certificate {args.serial:x} "
              f"({len(rec.get('revoked_certs', []))} revoked); sites and clients refuse it "
              "from their next registry read")
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    with _fed(args) as fc:
        g = fc.grant(args.pattern, args.to, "write" if args.write else "read")
    if not args.quiet:
        print(f"grant {g['id']}: {g['to']} may {g['mode']} {g['pattern']}")
    return 0


def cmd_rule_add(args: argparse.Namespace) -> int:
    with _fed(args) as fc:
        r = fc.rule_add(args.pattern, args.copies, args.where, args.lifetime)
    if not args.quiet:
        print(f"rule {r['id']}: {r['pattern']} x{r['copies']} where {r['where']!r}")
    return 0


def _rule_line(r: dict[str, Any]) -> str:
    state = r["state"] + (f" ({r['reason']})" if r.get("reason") else "")
    return (f"{r['id']}  {r['pattern']}  copies={r['copies']}  where={r['where']!r}  "
            f"sites={','.join(r.get('sites', [])) or '-'}  {state}")


def cmd_rule_ls(args: argparse.Namespace) -> int:
    with _fed(args) as fc:
        rules = fc.rules(_entity_of(args, fc))
    if args.json:
        print(json.dumps(rules))
    for r in rules if not args.json else []:
        print(_rule_line(r))
    return 0


def cmd_rule_rm(args: argparse.Namespace) -> int:
    with _fed(args) as fc:
        fc.rule_rm(_entity_of(args, fc), args.id)
    return 0


def cmd_rule_reconcile(args: argparse.Namespace) -> int:
    with _fed(args) as fc:
        for r in fc.reconcile(_entity_of(args, fc), verify=args.verify):
            print(_rule_line(r))
    return 0


def _registry_of(args: argparse.Namespace) -> str | None:
    """The registry URL: --registry, else $HUTONG_REGISTRY, else the selected profile's,
    else the state's site.json."""
    registry = getattr(args, "registry", None) or os.environ.get(REGISTRY_ENV) or None
    if registry is None:
        prof = _profile(args)
        registry = prof.registry if prof is not None else None
    site_json = state_dir(args.state) / "federation" / "site.json"
    if registry is None and site_json.exists():
        registry = json.loads(site_json.read_text())["registry"]
    return registry or None


def _local_status(args: argparse.Namespace) -> int:
    """`hutong status` of an embedded store: pools, tiers, usage, chunks."""
    from gfs.cli import human, open_client
    from gfs.tiering.tierer import last_report

    with open_client(args) as fs:
        pools = fs.pools()
        du = fs.du("/")
        last = last_report(fs.store)
        state = str(fs.state)
    info = {
        "mode": "embedded", "state": state,
        "pools": [{"name": r.name, "tier": r.tier, "url": r.url, "used_bytes": used,
                   "capacity": r.capacity} for r, used in pools],
        "usage": du.to_dict(),
        "last_tier_run": None if last is None else {"moved": last.moved,
                                                     "bytes_moved": last.bytes_moved},
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"embedded store at {state} (no registry: pass --registry or set "
          f"${REGISTRY_ENV} for the federation)")
    print(f"{'pool':<12} {'tier':<5} {'used':>10} {'capacity':>10}  url")
    for r, used in pools:
        cap = human(r.capacity) if r.capacity else "unlimited"
        print(f"{r.name:<12} {r.tier:<5} {human(used):>10} {cap:>10}  {r.url}")
    print(f"{du.files} files, {du.dirs} dirs, {human(du.logical_bytes)} logical, "
          f"{human(du.stored_bytes)} stored ({du.total_ratio:.2f}x)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gfs.cli import human

    if _registry_of(args) is None:
        return _local_status(args)
    with _fed(args) as fc:
        sites = fc.sites(refresh=True)
        rules = []
        if fc.me:
            try:
                rules = fc.rules(fc.me)
            except HutongError as e:
                print(f"rules of {fc.me}: unavailable ({e})", file=sys.stderr)
    if args.json:
        print(json.dumps({"sites": list(sites.values()), "rules": rules}))
        return 0
    print(f"{'site':<14} {'entity':<10} {'region':<10} {'status':<6} {'pool':<10} {'tier':<5} "
          f"{'used':>10} {'capacity':>10}")
    for s in sorted(sites.values(), key=lambda s: (s["entity"], s["name"])):
        for p in s["pools"]:
            print(f"{s['name']:<14} {s['entity']:<10} {s['region']:<10} {s['status']:<6} "
                  f"{p['name']:<10} {p['tier']:<5} {human(p.get('used', 0)):>10} "
                  f"{human(p['capacity']):>10}")
    if rules:
        print("\nrules:")
        for r in rules:
            print("  " + _rule_line(r))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the federation commands to the `hutong` parser."""
    ident = argparse.ArgumentParser(add_help=False)
    ident.add_argument("--registry", metavar="URL", help=f"registry (${REGISTRY_ENV})")
    ident.add_argument("--token", help=f"user token (${TOKEN_ENV})")
    ident.add_argument("--keys", metavar="DIR", help="entity keys (default STATE/federation)")
    ident.add_argument("--near", metavar="SITE", help="read from replicas nearest this site")
    ident.add_argument("--registry-ca", metavar="FILE", help="the registry's CA certificate "
                       f"(${REGISTRY_CA_ENV}); with --keys, the one pinned at site init")
    add_plaintext_option(ident)

    p = sub.add_parser("registry", help="run the federation registry", parents=[common])
    rs = p.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)
    sp = rs.add_parser("serve", parents=[common], help="serve the registry until SIGTERM",
                       description="State (LMDB) in --state DIR.")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=port, default=0, help="port (0: any free port; printed)")
    sp.add_argument("--ttl", type=positive_duration_arg, default=15.0,
                    help="heartbeat TTL in seconds (15)")
    sp.add_argument("--admission", choices=("operator", "open"), default="operator",
                    help="operator: entities exist once `registry admit` admits them "
                    "(default); open: on a signed registration (tests, demos)")
    add_plaintext_option(sp)
    sp.set_defaults(func=cmd_registry_serve)
    sp = rs.add_parser("admit", parents=[common], help="admit an entity (the operator)",
                       description="Bind entity NAME to its public key in the registry "
                       "state of --state DIR (the registry may be running).")
    sp.add_argument("name")
    sp.add_argument("--key", help="its public key, base64 (default: that of its only "
                    "pending request)")
    sp.add_argument("--industry")
    sp.add_argument("--region")
    sp.add_argument("--rekey", action="store_true",
                    help="rebind an admitted entity to --key (a lost or rotated key)")
    sp.set_defaults(func=cmd_registry_admit)
    sp = rs.add_parser("metrics-token", parents=[common],
                       help="mint the token that reads the registry's /metrics (the operator)",
                       description="Print a metrics token of the registry in --state DIR, "
                       "for its Prometheus scraper (Authorization: Bearer TOKEN).")
    sp.add_argument("--ttl", type=positive_duration_arg, default=30 * 86400.0,
                    help="how long it is valid (30d)")
    sp.add_argument("--user", default="prometheus",
                    help="who it is for, recorded in the token (prometheus)")
    sp.set_defaults(func=cmd_registry_metrics_token)
    sp = rs.add_parser("pending", parents=[common], help="list registration requests")
    sp.set_defaults(func=cmd_registry_pending)

    p = sub.add_parser("site", help="create or run a federation site", parents=[common])
    ss = p.add_subparsers(dest="site_command", metavar="COMMAND", required=True)
    sp = ss.add_parser("init", parents=[common], help="create a site in --state DIR")
    sp.add_argument("--entity", required=True)
    sp.add_argument("--name", required=True, help="site name")
    sp.add_argument("--region", required=True)
    sp.add_argument("--industry", default="GEN")
    sp.add_argument("--registry", metavar="URL")
    sp.add_argument("--primary", action="store_true", help="holds the entity's metadata")
    sp.add_argument("--keys-from", metavar="DIR", help="reuse the entity keys of another site")
    sp.add_argument("--meta", metavar="URL", help="metadata on this postgresql:// database "
                    "(sites of one entity on one database serve one namespace)")
    sp.add_argument("--registry-ca", metavar="FILE", help="the registry's CA certificate, "
                    f"its STATE/tls/ca.pem (${REGISTRY_CA_ENV}); not for an http:// registry")
    sp.set_defaults(func=cmd_site_init)
    sp = ss.add_parser("serve", parents=[common], help="serve the site until SIGTERM")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=port, default=0, help="port (0: any free port; printed)")
    sp.add_argument("--registry", metavar="URL", help="override the registry of site.json")
    sp.add_argument("--heartbeat", type=positive_duration_arg, default=5.0,
                    help="seconds between heartbeats")
    sp.add_argument("--key-cache", type=positive_duration_arg, default=60.0,
                    help="seconds peers' keys and token revocations are cached (60)")
    sp.add_argument("--verify-every", type=int, default=10,
                    help="audit replicas every N-th reconcile round (0: never)")
    sp.add_argument("--tier-interval", type=duration_arg, default=300.0,
                    help="seconds between tierer runs (0: never; see `hutong tier`)")
    sp.add_argument("--reconcile-interval", type=duration_arg, default=30.0,
                    help="seconds between rule evaluations (0: only on request)")
    sp.add_argument("--no-mover", action="store_true", help="no mover port")
    add_plaintext_option(sp)
    sp.set_defaults(func=cmd_site_serve)

    p = sub.add_parser("token", help="mint user tokens", parents=[common])
    ts = p.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    sp = ts.add_parser("mint", parents=[common], help="print a scoped token of the entity")
    sp.add_argument("--user", required=True)
    sp.add_argument("--scope", choices=("read", "write", "metrics"), default="read",
                    help="read; write (implies read); metrics (a site's /metrics only, for "
                    "a Prometheus scraper)")
    sp.add_argument("--prefix", help="namespace prefix (default: /ENTITY)")
    sp.add_argument("--ttl", type=positive_duration_arg, default=3600.0, help="lifetime (1h)")
    sp.add_argument("--keys", metavar="DIR", help="the entity's keys (default: those of the "
                    "profile in use, else STATE/federation)")
    sp.set_defaults(func=cmd_token_mint)

    p = sub.add_parser("entity", help="the entity's certificates", parents=[common])
    es = p.add_subparsers(dest="entity_command", metavar="COMMAND", required=True)
    sp = es.add_parser("revoke-cert", parents=[common, ident],
                       help="revoke one certificate the entity's CA issued",
                       description="Add the certificate's serial to the entity's revocation "
                       "list at the registry (signed with the entity key): sites refuse it "
                       "as a client certificate, clients as a site's server certificate, "
                       "from their next registry read (one heartbeat). A leaked CA: register "
                       "a new one instead (docs/trust.md).")
    sp.add_argument("serial", metavar="SERIAL", type=serial_arg,
                    help="the serial in hex (`openssl x509 -noout -serial -in CERT`), or "
                    "the certificate's PEM file")
    sp.set_defaults(func=cmd_entity_revoke_cert)

    sp = sub.add_parser("grant", parents=[common, ident],
                        help="let another entity read or write a subtree",
                        description="e.g. hutong grant '/bank-a/shared/**' --to telco-b --read")
    sp.add_argument("pattern")
    sp.add_argument("--to", required=True, help="grantee entity")
    mode = sp.add_mutually_exclusive_group(required=True)
    mode.add_argument("--read", action="store_true")
    mode.add_argument("--write", action="store_true")
    sp.set_defaults(func=cmd_grant)

    p = sub.add_parser("rule", help="replication rules", parents=[common])
    rls = p.add_subparsers(dest="rule_command", metavar="COMMAND", required=True)
    sp = rls.add_parser("add", parents=[common, ident], help="add a replication rule")
    sp.add_argument("pattern")
    sp.add_argument("--copies", type=int, required=True)
    sp.add_argument("--where", default="", help="site expression, e.g. 'region=cn-west'")
    sp.add_argument("--lifetime", type=positive_duration_arg, help="e.g. 7d")
    sp.set_defaults(func=cmd_rule_add)
    sp = rls.add_parser("ls", parents=[common, ident], help="rules and their states")
    sp.add_argument("--entity")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_rule_ls)
    sp = rls.add_parser("rm", parents=[common, ident], help="remove a rule (gc reclaims)")
    sp.add_argument("id")
    sp.add_argument("--entity")
    sp.set_defaults(func=cmd_rule_rm)
    sp = rls.add_parser("reconcile", parents=[common, ident], help="evaluate rules now")
    sp.add_argument("--entity")
    sp.add_argument("--verify", action="store_true",
                    help="also read back every replica and replace damaged ones")
    sp.set_defaults(func=cmd_rule_reconcile)

    sp = sub.add_parser("status", parents=[common, ident],
                        help="sites, pools, usage and rule states (of the embedded store "
                        "when no registry is configured)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)
