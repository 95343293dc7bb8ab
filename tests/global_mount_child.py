"""Serve the global mount (gfs.mount_global) over an embedded store, for the tests.

    python -m tests.global_mount_child STATE MOUNTPOINT CALLS_LOG [--ttl SECONDS]
        [--op-timeout SECONDS]

Every call the mount makes of the namespace is appended to CALLS_LOG (one method
name a line), so a test can count round trips instead of timing them. Faults are
injected while it runs through the JSON file CALLS_LOG.faults, {"readonly": [prefix,
...], "unreachable": [...], "hang": [...]}: a change under a readonly prefix raises
ReadOnlyError (as the federation does while an entity's primary is down), any call
under an unreachable prefix raises UnavailableSiteError, a call under a hang prefix
blocks until the fault is lifted (for at most HANG_LIMIT seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from typing import Any

from gfs.client import Client
from gfs.errors import ReadOnlyError, UnavailableSiteError
from gfs.mount_global import GlobalMountOptions, run_global_mount
from gfs.mount_inodes import one_scope

#: Seconds a call under a "hang" prefix blocks.
HANG_LIMIT = 30.0
_CHANGES = frozenset({"write_bytes", "mkdir", "rm", "mv", "symlink", "chmod", "utime",
                      "set_xattrs"})


class CountingReader:
    """A reader that logs "read" for every call that fetches file data."""

    def __init__(self, inner: Any, log: Any, lock: threading.Lock) -> None:
        self._inner, self._log, self._lock = inner, log, lock

    def _note(self) -> None:
        with self._lock:
            self._log.write("read\n")

    def read(self, *args: Any) -> Any:
        self._note()
        return self._inner.read(*args)

    def readinto(self, *args: Any) -> Any:
        self._note()
        return self._inner.readinto(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


class CountingNamespace:
    """A Namespace that logs the name of every method called on it, injects the faults
    of the fault file, then delegates."""

    def __init__(self, inner: Client, log_path: str) -> None:
        self._inner = inner
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115
        self._faults = log_path + ".faults"
        self._lock = threading.Lock()
        self._never = threading.Event()

    def _read_faults(self) -> dict[str, list[str]]:
        try:
            with open(self._faults) as f:
                faults: dict[str, list[str]] = json.load(f)
        except FileNotFoundError:
            return {}
        return faults

    def _inject(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        faults = self._read_faults()
        if not faults:
            return
        paths = [a for a in args if isinstance(a, str) and a.startswith("/")]
        change = name in _CHANGES or (name == "open" and "w" in (args[1:2] or ("rb",))[0])

        def under(kind: str) -> str | None:
            return next((p for p in paths for pre in faults.get(kind, [])
                         if p == pre or p.startswith(pre.rstrip("/") + "/")), None)
        if under("hang") is not None:  # until the test lifts the fault (or the limit)
            end = time.monotonic() + HANG_LIMIT
            while self._read_faults().get("hang") and time.monotonic() < end:
                self._never.wait(0.05)
        if (p := under("unreachable")) is not None:
            raise UnavailableSiteError(p)
        if change and (p := under("readonly")) is not None:
            raise ReadOnlyError(p)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._log.write(f"{name}\n")
            self._inject(name, args, kwargs)
            out = attr(*args, **kwargs)
            if name == "open" and "w" not in (args[1:2] or (kwargs.get("mode", "rb"),))[0]:
                return CountingReader(out, self._log, self._lock)
            return out
        return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("state")
    ap.add_argument("mountpoint")
    ap.add_argument("calls")
    ap.add_argument("--ttl", type=float, default=1.0)
    ap.add_argument("--op-timeout", type=float, default=60.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    with Client(args.state) as c:
        ns: Any = CountingNamespace(c, args.calls)
        run_global_mount(ns, args.mountpoint, GlobalMountOptions(meta_ttl=args.ttl,
                                                                   op_timeout=args.op_timeout),
                         scope=one_scope, label=f"{args.state} (global adapter)")


if __name__ == "__main__":
    main()
