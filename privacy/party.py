"""One party's half of a privacy job as its own process (`python -m privacy.party`).

Started by `privacy.jobs.run_job`: the left party listens on 127.0.0.1 (port 0)
and prints `LISTEN PORT`; the right party connects. At a site (`--site`, started by
the site daemon, privacy.site) the party uses the site's federation keys and talks
mutual TLS: the partner's party listens on its site's address (`--listen HOST`), the
initiator's connects (`--connect HOST:PORT --peer-site NAME`). Progress goes to stderr as
`PROGRESS STEP DONE TOTAL`, a failure as `ERROR KIND MESSAGE` with exit code 1;
the result is written as JSON to --result only when the job succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from privacy.errors import QueryError
from privacy.jobs import JobSpec, party_entity, run_party

Progress = Callable[[str, int, int], None]
ACCEPT_TIMEOUT = 60.0
"""Seconds a listening party waits for its partner to connect."""


def main(argv: list[str] | None = None) -> int:
    """Run one half; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m privacy.party")
    ap.add_argument("--side", choices=("left", "right"), required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--spec", required=True, help="the job spec as JSON")
    ap.add_argument("--result", required=True, help="file for the result JSON")
    ap.add_argument("--connect", help="PORT of the left party on 127.0.0.1, or HOST:PORT "
                    "of the partner's party (--site)")
    ap.add_argument("--site", action="store_true",
                    help="--state is a site's: its federation keys, mutual TLS, and the "
                    "registry keeps the audit head")
    ap.add_argument("--listen", metavar="HOST", help="listen on HOST (--site)")
    ap.add_argument("--peer-site", metavar="NAME", help="the partner's site (--site)")
    ap.add_argument("--peer-endpoint", metavar="URL",
                    help="with --listen: the initiating site, asked while waiting whether "
                    "its half still exists")
    args = ap.parse_args(argv)
    last = [0.0]

    def progress(step: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25 or done == total:
            last[0] = now
            print(f"PROGRESS {step} {done} {total}", file=sys.stderr, flush=True)

    try:
        spec = JobSpec(**json.loads(args.spec))
        run = _at_site if args.site else _on_loopback
        result = run(spec, args, progress)
        peak = peak_rss_mb()
        if peak is not None:
            result["peak_rss_mb"] = peak
        tmp = f"{args.result}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, args.result)
        return 0
    except Exception as e:  # reported to the launcher, which raises it
        msg = " ".join(str(e).split())
        print(f"ERROR {type(e).__name__} {msg}", file=sys.stderr, flush=True)
        return 1


def peak_rss_mb() -> float | None:
    """This process's own peak resident memory (VmHWM) in MB, None off Linux. Not
    getrusage: a process started by fork+exec inherits its parent's peak there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _on_loopback(spec: JobSpec, args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    if args.side == "left":
        with socket.create_server(("127.0.0.1", 0)) as srv:
            srv.settimeout(spec.timeout)
            print(f"LISTEN {srv.getsockname()[1]}", flush=True)
            sock, _ = srv.accept()
    else:
        sock = socket.create_connection(("127.0.0.1", int(args.connect)), timeout=spec.timeout)
    with sock:
        return run_party(spec, args.side, args.state, sock, progress)


def _at_site(spec: JobSpec, args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from privacy.transport import RegistryAnchors, SiteParty

    peer = party_entity(spec, "right" if args.side == "left" else "left")
    party = SiteParty.load(args.state)
    try:
        creds = party.credentials(peer)
        if args.listen:
            srv, ctx = party.listen(args.listen, peer)
            with srv:
                print(f"LISTEN {srv.getsockname()[1]}", flush=True)
                gone = (party.initiator_watch(args.peer_endpoint, args.peer_site, spec.job_id)
                        if args.peer_endpoint and args.peer_site else None)
                sock = party.accept(srv, ctx, peer, min(spec.timeout, ACCEPT_TIMEOUT), gone)
        else:
            if not args.connect or ":" not in args.connect or not args.peer_site:
                raise QueryError("a site party connects with --connect HOST:PORT "
                                 "--peer-site NAME")
            host, _, port = args.connect.rpartition(":")
            sock = party.connect(host, int(port), args.peer_site, peer, spec.timeout)
        with sock:
            return run_party(spec, args.side, args.state, sock, progress, creds,
                             RegistryAnchors(party))
    finally:
        party.close()


if __name__ == "__main__":
    sys.exit(main())
