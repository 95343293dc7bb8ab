"""`hutong gateway ...` and `hutong dashboard`: serve the store to S3 and WebDAV
clients and to browsers; manage gateway credentials."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from gfs.cli import open_client, port
from gfs.errors import ConfigError
from gfs.units import positive_duration_arg

if TYPE_CHECKING:
    from gfs.accesslog import AccessLog


def _listen(text: str) -> tuple[str, int]:
    host, sep, number = text.rpartition(":")
    if not sep or not number.isdigit():
        raise argparse.ArgumentTypeError(f"listen address {text!r}: use HOST:PORT "
                                         "(port 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", port(number)


def cmd_s3(args: argparse.Namespace) -> int:
    import asyncio

    from gfs.federation.cli import _serve
    from gfs.gateway.access import profile_access, store_access
    from gfs.gateway.s3 import make_app
    from gfs.profiles import selected

    host, port = args.listen
    profile = selected(getattr(args, "profile", None))
    log = _access_log(args)
    if profile is not None:  # the federation: tokens as credentials
        asyncio.run(_serve(make_app(profile_access(profile, args.root), log=log), host, port,
                           "hutong gateway s3: serving on"))
        return 0
    with open_client(args) as fs:
        asyncio.run(_serve(make_app(store_access(fs, args.root), log=log), host, port,
                           "hutong gateway s3: serving on"))
    return 0


def _access_log(args: argparse.Namespace) -> AccessLog:
    """The access log of a gateway: the one of its state directory (the store's, or the
    local one with --profile), read with `hutong log`."""
    from gfs.accesslog import AccessLog
    from gfs.env import state_dir

    return AccessLog(state_dir(args.state))


def cmd_token_credentials(args: argparse.Namespace) -> int:
    from gfs.gateway.access import token_credentials

    token = args.token if args.token != "-" else sys.stdin.read().strip()
    creds = token_credentials(token)
    if args.json:
        print(json.dumps(creds))
    else:
        print(f"access key:    {creds['access_key']}\nsecret key:    {creds['secret_key']}\n"
              f"session token: {creds['session_token']}")
    return 0


def cmd_webdav(args: argparse.Namespace) -> int:
    from gfs.gateway.access import Access, profile_access, store_access
    from gfs.gateway.webdav import make_app, serve
    from gfs.profiles import selected

    host, port = args.listen
    profile = selected(getattr(args, "profile", None))
    if profile is not None and args.no_auth:
        raise ConfigError("--no-auth serves the embedded store only; on the federation "
                          "every request acts with a token (user = token id, password = "
                          "the token)")
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the server threads must not get them
    with contextlib.ExitStack() as closing:
        if profile is not None:  # the federation: tokens as credentials
            access: Access = profile_access(profile, "/")
        else:
            access = store_access(closing.enter_context(open_client(args)), "/")
        closing.callback(access.close)
        log = _access_log(args)
        closing.callback(log.close)
        server = serve(make_app(access, args.root, auth=not args.no_auth, log=log), host, port,
                       lambda url: print(f"hutong gateway webdav: serving on {url}",
                                         flush=True))
        thread = threading.Thread(target=server.serve, name="hutong-webdav", daemon=True)
        thread.start()
        try:
            signal.sigwait(stop)
        finally:
            server.stop()
            thread.join(15)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import asyncio

    from gfs.federation.cli import _serve
    from gfs.gateway.dashboard import make_app, store_state
    from gfs.profiles import open_namespace, selected

    host, port = args.listen
    profile = selected(getattr(args, "profile", None))
    if profile is not None:  # the federation as the profile sees it
        from gfs.federation.namespace import FederatedNamespace
        from gfs.gateway.fed_dashboard import federation_state

        with open_namespace(profile) as ns:  # type: ignore[attr-defined]
            assert isinstance(ns, FederatedNamespace)
            asyncio.run(_serve(make_app(lambda: federation_state(ns), args.gateway or [],
                                        args.interval), host, port,
                               "hutong dashboard: serving on"))
        return 0
    with open_client(args) as fs:
        asyncio.run(_serve(make_app(lambda: store_state(fs), args.gateway or [],
                                    args.interval), host, port,
                           "hutong dashboard: serving on"))
    return 0


def cmd_cred_add(args: argparse.Namespace) -> int:
    from gfs.gateway import credentials

    with open_client(args) as fs:
        cred = credentials.add(fs, tuple(args.bucket or ()))
    if args.json:
        print(json.dumps({"access_key": cred.access_key, "secret_key": cred.secret_key,
                          "buckets": list(cred.buckets)}))
    else:
        print(f"access key: {cred.access_key}\nsecret key: {cred.secret_key}\nbuckets:    "
              + (", ".join(cred.buckets) or "all"))
    return 0


def cmd_cred_ls(args: argparse.Namespace) -> int:
    from gfs.gateway import credentials

    with open_client(args) as fs:
        for c in credentials.list_all(fs):
            print(f"{c.access_key}  buckets: {', '.join(c.buckets) or 'all'}")
    return 0


def cmd_cred_rm(args: argparse.Namespace) -> int:
    from gfs.gateway import credentials

    with open_client(args) as fs:
        credentials.remove(fs, args.access_key)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `gateway` and `dashboard` to the `hutong` command line."""
    gw = sub.add_parser("gateway", help="serve the store over S3 or WebDAV", parents=[common])
    gsub = gw.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    sp = gsub.add_parser("s3", help="S3-compatible gateway (SigV4, path-style)",
                         parents=[common])
    sp.add_argument("--listen", type=_listen, default=("127.0.0.1", 9000), metavar="HOST:PORT")
    sp.add_argument("--root", default="/", metavar="NS_PATH",
                    help="namespace directory whose subdirectories are the buckets (with "
                    "--profile, `/` makes each entity a bucket)")
    sp.set_defaults(func=cmd_s3)
    sp = gsub.add_parser("webdav", help="WebDAV server (WsgiDAV; basic auth with an access "
                         "key and its secret)", parents=[common])
    sp.add_argument("--listen", type=_listen, default=("127.0.0.1", 8080), metavar="HOST:PORT")
    sp.add_argument("--root", default="/", metavar="NS_PATH", help="namespace directory served")
    sp.add_argument("--no-auth", action="store_true",
                    help="serve without authentication (loopback use only)")
    sp.set_defaults(func=cmd_webdav)
    sp = gsub.add_parser("token-credentials", help="the S3 access key, secret and session "
                         "token of a federation token (for a gateway run with --profile)",
                         parents=[common])
    sp.add_argument("token", help="the token (`hutong token mint`), or - to read it from stdin")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_token_credentials)
    cred = gsub.add_parser("credentials", help="access keys of the gateways",
                           parents=[common])
    csub = cred.add_subparsers(dest="cred_command", metavar="ACTION", required=True)
    sp = csub.add_parser("add", help="issue an access key and secret", parents=[common])
    sp.add_argument("--bucket", action="append", help="limit the key to this bucket "
                    "(repeatable; default: every bucket)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_cred_add)
    sp = csub.add_parser("ls", help="list access keys", parents=[common])
    sp.set_defaults(func=cmd_cred_ls)
    sp = csub.add_parser("rm", help="revoke an access key", parents=[common])
    sp.add_argument("access_key")
    sp.set_defaults(func=cmd_cred_rm)


    sp = sub.add_parser("dashboard", help="live dashboard of the store (or, with --profile, "
                        "of the federation: sites, pools, rules) in a browser",
                        parents=[common])
    sp.add_argument("--listen", type=_listen, default=("127.0.0.1", 8090), metavar="HOST:PORT")
    sp.add_argument("--gateway", action="append", metavar="URL",
                    help="a gateway whose request metrics to show (repeatable)")
    sp.add_argument("--interval", type=positive_duration_arg, default=5.0, metavar="SECONDS",
                    help="seconds between samples for the plots (default 5)")
    sp.set_defaults(func=cmd_dashboard)
