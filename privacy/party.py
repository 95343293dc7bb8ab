"""One party's half of a privacy job as its own process (`python -m privacy.party`).

Started by `privacy.jobs.run_job`: the left party listens on 127.0.0.1 (port 0)
and prints `LISTEN PORT`; the right party connects. Progress goes to stderr as
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

from privacy.jobs import JobSpec, run_party


def main(argv: list[str] | None = None) -> int:
    """Run one half; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m privacy.party")
    ap.add_argument("--side", choices=("left", "right"), required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--spec", required=True, help="the job spec as JSON")
    ap.add_argument("--result", required=True, help="file for the result JSON")
    ap.add_argument("--connect", type=int, help="port of the left party on 127.0.0.1")
    args = ap.parse_args(argv)
    last = [0.0]

    def progress(step: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25 or done == total:
            last[0] = now
            print(f"PROGRESS {step} {done} {total}", file=sys.stderr, flush=True)

    try:
        spec = JobSpec(**json.loads(args.spec))
        if args.side == "left":
            with socket.create_server(("127.0.0.1", 0)) as srv:
                srv.settimeout(spec.timeout)
                print(f"LISTEN {srv.getsockname()[1]}", flush=True)
                sock, _ = srv.accept()
        else:
            sock = socket.create_connection(("127.0.0.1", args.connect), timeout=spec.timeout)
        with sock:
            result = run_party(spec, args.side, args.state, sock, progress)
        tmp = f"{args.result}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, args.result)
        return 0
    except Exception as e:  # reported to the launcher, which raises it
        msg = " ".join(str(e).split())
        print(f"ERROR {type(e).__name__} {msg}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
