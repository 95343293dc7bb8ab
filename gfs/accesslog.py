"""The access log of a server: one JSON line per request (docs/format.md, "Access log").

Written only by the server process, appended (O_APPEND) and rotated by size
through the standard library's `RotatingFileHandler`; no API writes,
truncates or serves it. The operator reads it with `hutong log`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path

from gfs import paths

LOG_DIR = "log"
LOG_FILE = "access.jsonl"
#: bytes of one file before it rotates, and rotated files kept
MAX_BYTES = 64 << 20
BACKUPS = 8


@dataclass(frozen=True, slots=True)
class Access:
    """One request as recorded."""

    time: float  #: unix seconds when the answer was ready
    who: str  #: `entity`, `user@entity` (a token), or "-" (not authenticated)
    entity: str  #: the caller's entity ("-" when not authenticated)
    method: str
    op: str  #: the route, e.g. /v1/ns/read
    path: str  #: the namespace path the request names ("" when none)
    bytes_in: int
    bytes_out: int
    status: int
    result: str  #: "ok" or the error code of the answer


def log_path(state: Path) -> Path:
    """The current access log file of the server whose state directory is `state`."""
    return state / LOG_DIR / LOG_FILE


class AccessLog:
    """Appends `Access` records to STATE/log/access.jsonl; thread-safe."""

    def __init__(self, state: Path, *, max_bytes: int = MAX_BYTES,
                 backups: int = BACKUPS) -> None:
        path = log_path(state)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        self._handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                            encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()

    def record(self, access: Access) -> None:
        """Append one record (a JSON object on one line; every string is escaped, so no
        field can end the line or forge another record)."""
        line = json.dumps(asdict(access), ensure_ascii=True, separators=(",", ":"))
        with self._lock:
            self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._handler.close()


def read(state: Path, *, since: float | None = None, entity: str | None = None,
         path: str | None = None) -> Iterator[Access]:
    """The records of the server at `state`, oldest first, those at or after `since`
    (unix s), of `entity`, and naming `path` or a path below it."""
    current = log_path(state)
    files = [current.with_name(f"{LOG_FILE}.{i}") for i in range(BACKUPS, 0, -1)]
    prefix = paths.normalize(path) if path is not None else None
    for f in [*files, current]:
        try:
            if since is not None and f.stat().st_mtime < since:
                continue
            lines = f.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                a = Access(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut by a crash
            if since is not None and a.time < since:
                continue
            if entity is not None and a.entity != entity:
                continue
            if prefix is not None and not (a.path and paths.covers(prefix, a.path)):
                continue
            yield a

