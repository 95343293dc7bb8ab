"""`hutong log`: a server's access log (gfs.accesslog), filtered.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from gfs.cli import add_json_flag, human, print_json
from gfs.env import state_dir
from gfs.errors import ConfigError, StateError
from gfs.units import UnitError, parse_duration


def since_arg(text: str) -> float:
    """argparse `type=`: a duration back from now (`1h`, `30m`) or an ISO 8601 time."""
    try:
        return time.time() - parse_duration(text)
    except UnitError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes a duration back from now (1h, 30m) or an ISO 8601 time "
            f"(2026-12-05T02:00:00Z), not {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def cmd_log(args: argparse.Namespace) -> int:
    from gfs import accesslog, paths

    state = state_dir(args.state)
    if not accesslog.log_path(state).exists():
        raise StateError(f"{state} has no access log ({accesslog.LOG_DIR}/"
                         f"{accesslog.LOG_FILE}); give --state of a site or gateway that "
                         "has served")
    if args.path is not None:
        try:
            paths.normalize(args.path)
        except ValueError as e:
            raise ConfigError(f"--path: {e}") from None
    records = accesslog.read(state, since=args.since, entity=args.entity, path=args.path)
    if args.json:
        print_json([asdict(a) for a in records])
        return 0
    for a in records:
        when = datetime.fromtimestamp(a.time, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        print(f"{when[:-4]}Z {a.who:<20} {a.method:<6} {a.op:<22} {a.status} {a.result:<12} "
              f"{human(a.bytes_in + a.bytes_out):>10} {a.path}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `log` to the `hutong` command line."""
    p = sub.add_parser("log", parents=[common],
                       help="the access log of a site or gateway: who read or wrote what, "
                       "when, bytes, result")
    p.add_argument("--since", type=since_arg, help="only records after this: a duration back "
                   "from now (1h) or an ISO 8601 time")
    p.add_argument("--entity", help="only requests of this entity")
    p.add_argument("--path", help="only requests naming this namespace path or one below it")
    add_json_flag(p)
    p.set_defaults(func=cmd_log)
