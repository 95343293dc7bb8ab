"""`hutong pool ...` and `hutong tier ...`: storage pools and tiered placement.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from gfs.cli import add_json_flag, human, open_client, print_json
from gfs.env import TIERS
from gfs.errors import ConfigError
from gfs.units import duration_arg, size_arg


def cmd_pool_add(args: argparse.Namespace) -> int:

    with open_client(args) as fs:
        rec = fs.add_pool(args.name, args.url, tier=args.tier,
                          capacity=args.capacity or 0, encrypt=args.encrypt)
    sealed = ", encrypted at rest" if args.encrypt else ""
    print(f"added pool {rec.name} (id {rec.id}, tier {rec.tier}{sealed}) at {rec.url}")
    return 0


def cmd_pool_ls(args: argparse.Namespace) -> int:

    with open_client(args) as fs:
        pools = fs.pools()
        sealed = fs.encrypted_pools()
    if args.json:
        print_json([{"id": rec.id, "name": rec.name, "tier": rec.tier, "url": rec.url,
                     "used_bytes": used, "capacity": rec.capacity,
                     "encrypted": rec.id in sealed} for rec, used in pools])
        return 0
    for rec, used in pools:
        cap = human(rec.capacity) if rec.capacity else "unlimited"
        enc = " (encrypted)" if rec.id in sealed else ""
        print(f"{rec.id:>3} {rec.name:<12} {rec.tier:<5} {human(used):>11} of {cap:<11} "
              f"{rec.url}{enc}")
    return 0


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ConfigError(f"--{what} takes KEY=VALUE, got {text!r}")
    return key, value


def cmd_policy_set(args: argparse.Namespace) -> int:
    from gfs.meta import WriteTxn
    from gfs.tiering.policy import TierPolicy

    changes: dict[str, Any] = {}
    for name in ("promote_reads", "window", "demote_idle", "high", "low", "cold_level",
                 "write_tier", "rate"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    def update(txn: WriteTxn) -> TierPolicy:
        policy = TierPolicy.load(txn)
        pins = dict(policy.pins)
        for text in args.pin or []:
            path, tier = _pair(text, "pin")
            pins[path] = tier
        for path in args.unpin or []:
            pins.pop(path, None)
        prices = dict(policy.prices)
        for text in args.price or []:
            tier, usd = _pair(text, "price")
            try:
                prices[tier] = float(usd)
            except ValueError:
                raise ConfigError(f"--price {text!r}: the price must be a number") from None
        new = policy.with_changes(pins=pins, prices=prices, **changes)
        new.save(txn)
        return new

    with open_client(args) as fs:
        new = fs.engine.transact(update)
    print(json.dumps(new.as_dict(), indent=2, sort_keys=True))
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:

    with open_client(args) as fs:
        policy = fs.policy()
    print(json.dumps(policy.as_dict(), indent=2, sort_keys=True))
    return 0


def cmd_tier_run(args: argparse.Namespace) -> int:
    from gfs.tiering.tierer import run

    with open_client(args) as fs:
        r = run(fs.store, dry_run=args.dry_run)
    if args.json:
        print_json(asdict(r))
        return 0
    verb = "would move" if args.dry_run else "moved"
    moved = r.planned if args.dry_run else r.moved
    dirs = ", ".join(f"{k}: {v}" for k, v in sorted(r.directions.items())) or "nothing to do"
    print(f"tier run: {verb} {moved} chunks ({human(r.bytes_moved)}; {dirs}); "
          f"{r.skipped} skipped; {r.packs_written} packs written, {r.packs_deleted} deleted; "
          f"{r.seconds:.2f}s")
    return 0


def cmd_tier_status(args: argparse.Namespace) -> int:
    from gfs.tiering.tierer import last_report, tier_capacity, tier_usage

    with open_client(args) as fs:
        usage = tier_usage(fs.store)
        caps = tier_capacity(fs.store)
        policy = fs.policy()
        last = last_report(fs.store)
    tiers: dict[str, dict[str, Any]] = {
        t: {"live_bytes": usage.get(t, 0), "capacity": caps.get(t)} for t in TIERS
        if t in caps or usage.get(t)}
    info: dict[str, Any] = {
        "tiers": tiers,
        "monthly_cost_usd": round(sum(usage.get(t, 0) / 1e9 * policy.prices.get(t, 0.0)
                                      for t in TIERS), 4),
        "last_run": None if last is None else asdict(last),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    for t, v in tiers.items():
        cap = v["capacity"]
        cap_text = "no pool" if cap is None else ("unlimited" if cap == 0 else human(cap))
        print(f"{t:<5} {human(v['live_bytes']):>11} of {cap_text}")
    print(f"storage cost: {info['monthly_cost_usd']} USD/month at the policy's prices")
    if last is None:
        print("the tierer has not run yet (`hutong tier run`)")
    else:
        print(f"last run: moved {last.moved} chunks ({human(last.bytes_moved)}), "
              f"skipped {last.skipped}, in {last.seconds:.2f}s")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `pool` and `tier` to the `hutong` command line."""
    pool = sub.add_parser("pool", help="storage pools of the store", parents=[common])
    psub = pool.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    sp = psub.add_parser("add", help="register a pool (a directory or any fsspec URL)",
                         parents=[common])
    sp.add_argument("name")
    sp.add_argument("url", help="directory or fsspec URL (file://, s3://, memory://, ...)")
    sp.add_argument("--tier", choices=TIERS, default="warm")
    sp.add_argument("--capacity", type=size_arg,
                    help="at most this many bytes (e.g. 10G); default unlimited")
    sp.add_argument("--encrypt", action="store_true",
                    help="encrypt every object at rest (AES-256-GCM) under the store's key "
                    "file STATE/at-rest.key or $HUTONG_AT_REST_KEY, kept outside the pool; "
                    "back it up: without it the pool cannot be read")
    sp.set_defaults(func=cmd_pool_add)
    sp = psub.add_parser("ls", help="pools, tiers, usage and capacity", parents=[common])
    add_json_flag(sp)
    sp.set_defaults(func=cmd_pool_ls)

    tier = sub.add_parser("tier", help="tiered placement: policy, runs, status",
                          parents=[common])
    tsub = tier.add_subparsers(dest="tier_command", metavar="ACTION", required=True)
    pol = tsub.add_parser("policy", help="show or change the tiering policy", parents=[common])
    polsub = pol.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    sp = polsub.add_parser("set", help="change the policy (other settings stay)",
                           parents=[common])
    sp.add_argument("--promote-reads", type=float, help="decayed reads that make a chunk hot")
    sp.add_argument("--window", type=duration_arg, help="half-life of read counts (e.g. 1h)")
    sp.add_argument("--demote-idle", type=duration_arg,
                    help="idle time after which a chunk goes cold (e.g. 7d)")
    sp.add_argument("--high", type=float, help="fill a tier to at most this share")
    sp.add_argument("--low", type=float, help="when over, empty a tier down to this share")
    sp.add_argument("--cold-level", type=int, help="zstd level of chunks moved to cold")
    sp.add_argument("--write-tier", choices=TIERS, help="tier new data is written to")
    sp.add_argument("--rate", type=size_arg,
                    help="bytes per second a run may move (e.g. 100M; 0: no limit)")
    sp.add_argument("--pin", action="append", metavar="PATH=TIER", help="keep PATH in TIER")
    sp.add_argument("--unpin", action="append", metavar="PATH", help="remove a pin")
    sp.add_argument("--price", action="append", metavar="TIER=USD",
                    help="cost per GB-month of a tier")
    sp.set_defaults(func=cmd_policy_set)
    sp = polsub.add_parser("show", help="print the policy", parents=[common])
    sp.set_defaults(func=cmd_policy_show)
    sp = tsub.add_parser("run", help="move chunks between tiers as the policy asks",
                         parents=[common])
    sp.add_argument("--dry-run", action="store_true", help="plan only")
    add_json_flag(sp)
    sp.set_defaults(func=cmd_tier_run)
    sp = tsub.add_parser("status", help="bytes per tier, cost, last run", parents=[common])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_tier_status)


__all__ = ["register"]
