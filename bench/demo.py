"""`python -m bench demo` (`make demo`): drive the real `hutong` CLI over real data.

Fetches the quick release dataset (Django sdists + numpy wheels, through pip), then, as a new
user would: init a store, put each snapshot, ls, du, get everything back, verify it byte for
byte against the source, and fsck. Every command and its output is echoed. Exits non-zero if
any step fails.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from bench import datasets
from bench._measure import (
    CommandError,
    Run,
    VerifyError,
    hutong_available,
    hutong_cmd,
    remove_tree,
    run,
    tree_digests,
    verify_tree,
)


class Demo:
    """Runs hutong commands against one state dir, echoing each with its output."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.base = [*hutong_cmd(), "--state", str(state)]

    def __call__(self, *args: str, show: bool = True) -> Run:
        shown = shlex.join(["hutong", "--state", str(self.state), *args])
        print(f"$ {shown}", flush=True)
        r = run([*self.base, *args], check=False)
        if show:
            for stream in (r.stdout, r.stderr):
                if stream.strip():
                    print(_indent(stream.rstrip("\n")), flush=True)
        print(f"  [exit {r.rc}, {r.wall:.2f} s]", flush=True)
        if r.rc != 0:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            raise CommandError(f"`{shown}` exited {r.rc}: {last}")
        return r


def _indent(text: str, limit: int = 40) -> str:
    lines = text.splitlines()
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more lines)"]
    return "\n".join("  " + line for line in lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def demo(state: Path, root: Path, restore: Path) -> int:
    """The demo proper; raises on the first failing step."""
    snapshots = datasets.snapshot_dirs(root)
    if not snapshots:
        raise VerifyError(f"no snapshots in {root}")
    hutong = Demo(state)

    print("\n# 1. create a store")
    if (state / "config.toml").exists():
        print(f"(state dir {state} is already initialised; reusing it)")
    else:
        hutong("init")
    hutong("mkdir", "-p", "/releases")

    print("\n# 2. put each release snapshot (unpacked Django sdist + a numpy wheel)")
    for snap in snapshots:
        hutong("put", "--quiet", str(snap), f"/releases/{snap.name}")

    print("\n# 3. look around")
    hutong("ls", "/releases")
    hutong("ls", "-l", f"/releases/{snapshots[0].name}")
    hutong("du", "/")
    for snap in snapshots:
        hutong("du", f"/releases/{snap.name}")
    info = json.loads(hutong("du", "--json", "/").stdout)

    print("\n# 4. get everything back and compare with the source, byte for byte")
    remove_tree(restore)
    hutong("get", "--quiet", "/releases", str(restore))
    verified = 0
    for snap in snapshots:
        n = verify_tree(tree_digests(snap), restore / snap.name)
        print(f"  verified {snap.name}: {n} files identical to {snap}")
        verified += n

    print("\n# 5. check the whole store")
    hutong("fsck")

    print("\n# summary")
    print(f"  snapshots:         {len(snapshots)} ({datasets.describe(root)})")
    print(f"  logical bytes:     {info['logical_bytes']} ({_human(info['logical_bytes'])})")
    print(f"  unique bytes:      {info['unique_bytes']} ({_human(info['unique_bytes'])})")
    print(f"  stored bytes:      {info['stored_bytes']} ({_human(info['stored_bytes'])})")
    print(f"  dedup ratio:       {info['dedup_ratio']:.2f}x")
    print(f"  compression ratio: {info['compression_ratio']:.2f}x")
    print(f"  total ratio:       {info['total_ratio']:.2f}x")
    print(f"  verified:          {verified} files restored byte-for-byte; fsck clean")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench demo", description=__doc__.split("\n")[0])
    p.add_argument("--state", help="state dir to use (default: a temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temporary state and restore")
    args = p.parse_args(argv)

    why = hutong_available()
    if why:
        print(f"demo: {why}", file=sys.stderr)
        return 1
    try:
        root = datasets.fetch_small_demo()
    except datasets.DatasetError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="hutong-demo-"))
    state = Path(args.state) if args.state else tmp / "state"
    try:
        return demo(state, root, tmp / "restore")
    except (CommandError, VerifyError, OSError, ValueError, KeyError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"(kept {tmp})")
        else:
            remove_tree(tmp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
