"""`hutong profile add|ls|use|rm`: named ways into the federation (gfs.profiles).

Registered through `gfs.cli.EXTENSIONS`; pydantic and the key code are imported by
the commands, not at start-up.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_profile_add(args: argparse.Namespace) -> int:
    from gfs.profiles import add_profile, use_profile

    prof = add_profile(args.name, registry=args.registry, entity=args.entity,
                       token=args.token, keys=args.keys_dir, near=args.near,
                       cache_dir=args.cache_dir)
    if args.use:
        use_profile(args.name)
    if not args.quiet:
        print(f"profile {args.name}: entity {prof.entity} at {prof.registry}"
              + (" (in use)" if args.use else f"; `hutong profile use {args.name}` to use it"))
    return 0


def _row(name: str, current: bool, prof: Any) -> dict[str, Any]:
    """A profile as `ls --json` prints it (the token itself is never printed)."""
    return {"name": name, "current": current, "registry": prof.registry,
            "entity": prof.entity, "identity": "token" if prof.token else "keys",
            "keys": prof.keys, "near": prof.near, "cache_dir": prof.cache_dir}


def cmd_profile_ls(args: argparse.Namespace) -> int:
    from gfs.cli import print_json
    from gfs.profiles import get_profile, load_profiles, profiles_path, selected

    pf = load_profiles()
    in_use = selected(getattr(args, "profile", None))
    if in_use is not None:
        get_profile(in_use)  # a selected profile that does not exist is an error
    rows = [_row(n, n == in_use, p) for n, p in sorted(pf.profiles.items())]
    if args.json:
        print_json(rows)
        return 0
    if not rows and not args.quiet:
        print(f"no profiles in {profiles_path()}; add one with `hutong profile add NAME "
              "--registry URL --entity E --token T`")
    for r in rows:
        ident = "token" if r["identity"] == "token" else f"keys {r['keys']}"
        print(f"{'*' if r['current'] else ' '} {r['name']:<16} {r['entity']:<16} "
              f"{r['registry']:<28} {ident}" + (f"  near {r['near']}" if r["near"] else ""))
    return 0


def cmd_profile_use(args: argparse.Namespace) -> int:
    from gfs.profiles import LOCAL, use_profile

    use_profile(args.name)
    if not args.quiet:
        print("using the embedded store" if args.name == LOCAL
              else f"using profile {args.name}")
    return 0


def cmd_profile_rm(args: argparse.Namespace) -> int:
    from gfs.profiles import remove_profile

    remove_profile(args.name)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `hutong profile ...` to the `hutong` parser."""
    from gfs.cli import add_json_flag

    p = sub.add_parser("profile", parents=[common],
                       help="profiles: a registry, an entity and an identity, by name",
                       description="Profiles are kept in $HUTONG_PROFILES, else "
                       "$XDG_CONFIG_HOME/hutong/profiles.toml, else "
                       "~/.config/hutong/profiles.toml. The profile in use is --profile "
                       "NAME, else $HUTONG_PROFILE, else the one `profile use` chose; "
                       "`local` is the embedded store.")
    ps = p.add_subparsers(dest="profile_command", metavar="COMMAND", required=True)
    sp = ps.add_parser("add", parents=[common], help="add (or replace) a profile")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--registry", required=True, metavar="URL", help="the registry's URL")
    sp.add_argument("--entity", required=True, help="the entity this profile acts for")
    ident = sp.add_mutually_exclusive_group(required=True)
    ident.add_argument("--token", help="a user token of the entity (`hutong token mint`)")
    ident.add_argument("--keys", dest="keys_dir", metavar="DIR",
                       help="the entity's keys (a site's STATE/federation)")
    sp.add_argument("--near", metavar="SITE", help="read from replicas nearest this site")
    sp.add_argument("--cache-dir", metavar="DIR", help="disk cache of chunks read")
    sp.add_argument("--use", action="store_true", help="and use it from now on")
    sp.set_defaults(func=cmd_profile_add)
    sp = ps.add_parser("ls", parents=[common], help="list the profiles (* in use)")
    add_json_flag(sp)
    sp.set_defaults(func=cmd_profile_ls)
    sp = ps.add_parser("use", parents=[common],
                       help="use profile NAME from now on (`local`: the embedded store)")
    sp.add_argument("name", metavar="NAME")
    sp.set_defaults(func=cmd_profile_use)
    sp = ps.add_parser("rm", parents=[common], help="remove a profile")
    sp.add_argument("name", metavar="NAME")
    sp.set_defaults(func=cmd_profile_rm)
