"""`hutong join`, `hutong psi`, `hutong query`, `hutong audit` and `hutong privacy`:
privacy jobs on the command line. Registered through `gfs.cli.EXTENSIONS`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from privacy.errors import AuditError, QueryError

if TYPE_CHECKING:
    from pathlib import Path

    from gfs.client import Client
    from privacy.audit import AuditLog
    from privacy.jobs import JobSpec

# The job machinery (pyarrow, TenSEAL, nacl) is imported by the commands that
# need it, so that `hutong` starts fast.

Progress = Callable[[str, int, int], None]


def _progress(args: argparse.Namespace) -> Progress | None:
    if args.quiet or not sys.stderr.isatty():
        return None
    state: dict[str, str] = {}

    def show(step: str, done: int, total: int) -> None:
        side = step.split(":", 1)[0]
        state[side] = f"{step} {done}" + (f"/{total}" if total > 0 else "")
        print("\r" + "   ".join(state[k] for k in sorted(state)) + "\033[K", end="",
              file=sys.stderr, flush=True)
    return show


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.0f}" if v.is_integer() else f"{v:.4f}")
    return str(v)


def _print_rows(rows: list[dict[str, Any]], suppressed: int,
                epsilon_left: float | None = None) -> None:
    noise = next((r["noise"] for r in rows if r.get("noise")), None)
    if rows:
        cols = [c for c in rows[0] if c != "noise"]
        cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    if suppressed:
        print(f"({suppressed} group(s) suppressed: below the minimum group size)")
    if noise:  # the same mechanism and scale for every released group
        print("(noisy: " + "; ".join(f"{k} {v['mechanism']}, epsilon {v['epsilon']:.4g}, "
                                     f"scale {v['scale']:.4g}" for k, v in noise.items()) + ")")
    if epsilon_left is not None:
        print(f"(privacy budget left: epsilon {epsilon_left:.4g})")


def _run(args: argparse.Namespace, spec: JobSpec) -> dict[str, Any]:
    """Run `spec`: with a profile, this entity's half at its site and the partner's
    at the partner's site; without, both halves here on the embedded store."""
    from gfs.profiles import selected

    prog = _progress(args)
    profile = selected(getattr(args, "profile", None))
    if profile is not None:
        from privacy.remote import run_with_profile

        ans = run_with_profile(profile, spec, prog)
    else:
        from privacy.jobs import run_job

        ans = run_job(spec, args.state, prog).answer
    if prog is not None:
        print("\r\033[K", end="", file=sys.stderr)
    return ans


def _where(items: list[str] | None) -> dict[str, str]:
    where: dict[str, str] = {}
    for w in items or []:
        col, sep, val = w.partition("=")
        if not sep or not col:
            raise QueryError(f"--where takes COLUMN=VALUE, got {w!r}")
        where[col] = val
    return where


def cmd_join(args: argparse.Namespace) -> int:
    from privacy.jobs import JobSpec

    spec = JobSpec("join", args.left, args.right, args.on, aggs=args.agg,
                   group_by=args.group_by, scheme=args.scheme, timeout=args.timeout,
                   where=_where(args.where), receiver=args.receiver)
    ans = _run(args, spec)
    if args.json:
        print(json.dumps(ans))
    else:
        _print_rows(ans["groups"], int(ans["suppressed"]), ans.get("epsilon_left"))
        if not args.quiet:
            print(f"join {spec.job_id[:8]}: {ans['scheme']}, {ans['seconds']:.1f} s, "
                  f"{ans['bytes_sent'] + ans['bytes_received']:,} bytes exchanged",
                  file=sys.stderr)
    return 0


def cmd_psi(args: argparse.Namespace) -> int:
    from privacy.jobs import JobSpec

    spec = JobSpec("psi", args.left, args.right, args.on, output=args.output,
                   timeout=args.timeout, protocol=args.protocol)
    ans = _run(args, spec)
    if args.json:
        print(json.dumps(ans))
    else:
        print(f"intersection size: {ans['size']} (left {ans['own_keys']} distinct keys, "
              f"right {ans['peer_keys']}; {ans.get('protocol', 'ecdh')}-PSI)")
        for k in ans.get("intersection", []):
            print(k)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from privacy.jobs import JobSpec

    spec = JobSpec("query", args.table, args.as_entity, "-", aggs=args.agg,
                   group_by=args.group_by, where=_where(args.where), timeout=args.timeout)
    ans = _run(args, spec)
    if args.json:
        print(json.dumps(ans))
    else:
        _print_rows(ans["groups"], int(ans["suppressed"]), ans.get("epsilon_left"))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gfs.cli import open_client
    from privacy.audit import AuditLog

    with open_client(args) as fs:
        entities = args.entities or [s.name for s in fs.ls("/")
                                     if fs.exists(f"/{s.name}/.privacy/audit.log")]
        bad = 0
        for ent in entities:
            _require_log(fs, ent)
            try:
                log = AuditLog(fs, ent)
                n = log.verify()
                anchored = _check_registry(fs.state, log)
                if not args.quiet:
                    print(f"audit {ent}: ok, {n} records{anchored}")
            except AuditError as e:
                print(f"audit {ent}: FAILED: {e}", file=sys.stderr)
                bad += 1
    return 1 if bad else 0


def _check_registry(state: Path, log: AuditLog) -> str:
    """At a site of the log's entity: check the log against the head the registry
    keeps (AuditError if it is gone); what to add to the report line."""
    from privacy.keys import site_keys
    from privacy.transport import RegistryAnchors, SiteParty

    if site_keys(state, log.entity) is None:
        return ""
    party = SiteParty.load(state)
    try:
        rec = RegistryAnchors(party).latest(log.entity)
        if rec is None:
            return "; the registry keeps no head of it yet"
        log.check_anchor(int(str(rec["seq"])), str(rec["head"]), "the registry")
        return f"; holds head {rec['seq']} the registry keeps"
    finally:
        party.close()


def _require_log(fs: Client, entity: str) -> None:
    """Refuse an entity with no audit log (a typo must not read as "ok, 0 records")."""
    from gfs.errors import NotFoundError

    path = f"/{entity}/.privacy/audit.log"
    if not fs.exists(path):
        raise NotFoundError(path, f"no audit log for entity {entity!r}")


def cmd_audit_show(args: argparse.Namespace) -> int:
    from gfs.cli import open_client
    from privacy.audit import AuditLog

    with open_client(args) as fs:
        _require_log(fs, args.entity)
        for rec in AuditLog(fs, args.entity).records():
            print(json.dumps(rec, sort_keys=True))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from gfs.cli import open_client
    from privacy import keys

    with open_client(args) as fs:
        ident = keys.identity(fs.state, args.entity)
        print(f"{args.entity} {ident.public_hex}  ({keys.key_dir(fs.state)})")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from gfs.cli import open_client
    from privacy.policy import load_policy, policy_path

    with open(args.file, "rb") as f:
        raw = f.read()
    pol = load_policy(raw, args.file)  # refuses before anything is stored
    if pol.entity != args.entity:
        raise QueryError(f"{args.file} is the policy of {pol.entity!r}, not {args.entity!r}")
    with open_client(args) as fs:
        path = policy_path(args.entity)
        fs.mkdir(path.rsplit("/", 1)[0], parents=True, exist_ok=True)
        fs.write_bytes(path, raw)
    if not args.quiet:
        print(f"policy of {args.entity}: {len(pol.partners)} partner(s), stored at {path}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the privacy subcommands to `hutong`."""
    def add(name: str, func: Callable[[argparse.Namespace], int], help: str,
            parent: Any = sub) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help,
                                                        parents=[common])
        sp.set_defaults(func=func)
        return sp

    def job_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print the result as JSON")
        sp.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a party waits for the other (default 600)")

    sp = add("join", cmd_join, "private join-and-aggregate of two entities' tables")
    sp.add_argument("--left", required=True, metavar="TABLE", help="/ENTITY/table.parquet")
    sp.add_argument("--right", required=True, metavar="TABLE")
    sp.add_argument("--on", required=True, metavar="COL[=COL]", help="join key column(s)")
    sp.add_argument("--agg", default="count(*)", help='e.g. "count(*),mean(balance)"')
    sp.add_argument("--group-by", metavar="COL[,COL...]",
                    help="columns of either table, comma-separated")
    sp.add_argument("--where", action="append", metavar="COL=VALUE",
                    help="a filter on one party's own column, applied before the join")
    sp.add_argument("--receiver", choices=("auto", "left", "right"), default="auto",
                    help="the party that receives the result (default: the one without "
                         "the aggregated columns)")
    sp.add_argument("--scheme", choices=("auto", "bfv", "ckks"), default="auto",
                    help="bfv: exact integer sums; ckks: reals (default: by column type)")
    job_opts(sp)
    sp = add("psi", cmd_psi, "private set intersection (left receives the result)")
    sp.add_argument("--left", required=True, metavar="TABLE")
    sp.add_argument("--right", required=True, metavar="TABLE")
    sp.add_argument("--on", required=True, metavar="COL[=COL]")
    sp.add_argument("--output", choices=("cardinality", "intersection"), default="cardinality")
    sp.add_argument("--protocol", choices=("auto", "ot", "ecdh"), default="auto",
                    help="ot: OT-extension PSI (fast; intersection only); ecdh: ECDH-PSI "
                         "(cardinality only, or fewer bytes); auto: ot for the "
                         "intersection, ecdh for cardinality (docs/privacy.md)")
    job_opts(sp)
    sp = add("query", cmd_query, "compute-to-data: aggregates of an owner's table, at the owner")
    sp.add_argument("--table", required=True, metavar="TABLE")
    sp.add_argument("--as", dest="as_entity", required=True, metavar="ENTITY",
                    help="the partner entity asking")
    sp.add_argument("--agg", default="count(*)")
    sp.add_argument("--group-by", metavar="COL")
    sp.add_argument("--where", action="append", metavar="COL=VALUE")
    job_opts(sp)
    audit = sub.add_parser("audit", help="privacy audit logs", parents=[common])
    asub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    sp = add("verify", cmd_audit_verify, "verify audit log hash chains (exit 1 if one fails)",
             asub)
    sp.add_argument("entities", nargs="*", metavar="ENTITY")
    sp = add("show", cmd_audit_show, "print an entity's audit records", asub)
    sp.add_argument("entity", metavar="ENTITY")
    priv = sub.add_parser("privacy", help="privacy keys and policies", parents=[common])
    psub = priv.add_subparsers(dest="privacy_command", metavar="COMMAND", required=True)
    sp = add("keys", cmd_keys, "create or show an entity's signing key", psub)
    sp.add_argument("entity", metavar="ENTITY")
    sp = add("policy", cmd_policy, "validate and store an entity's policy", psub)
    sp.add_argument("entity", metavar="ENTITY")
    sp.add_argument("file", metavar="POLICY.json")
