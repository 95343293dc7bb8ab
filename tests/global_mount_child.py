"""Serve the global mount (gfs.mount_global) over an embedded store, for the tests.

    python -m tests.global_mount_child STATE MOUNTPOINT CALLS_LOG [--ttl SECONDS]

Every call the mount makes of the namespace is appended to CALLS_LOG (one method
name a line), so a test can count round trips instead of timing them.
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from gfs.client import Client
from gfs.mount_global import GlobalMountOptions, run_global_mount
from gfs.mount_inodes import one_scope


class CountingNamespace:
    """A Namespace that logs the name of every method called on it, then delegates."""

    def __init__(self, inner: Client, log_path: str) -> None:
        self._inner = inner
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._log.write(f"{name}\n")
            return attr(*args, **kwargs)
        return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("state")
    ap.add_argument("mountpoint")
    ap.add_argument("calls")
    ap.add_argument("--ttl", type=float, default=1.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    with Client(args.state) as c:
        ns: Any = CountingNamespace(c, args.calls)
        run_global_mount(ns, args.mountpoint, GlobalMountOptions(meta_ttl=args.ttl),
                         scope=one_scope, label=f"{args.state} (global adapter)")


if __name__ == "__main__":
    main()
