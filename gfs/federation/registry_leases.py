"""The registry's lease table: dataflow drivers' load on links between entities.

A lease (docs/format.md "Registry state", docs/dataflow.md "Shared reservations")
is what one running job of one entity has still to move over links between
sites: `{entity, job, driver, expires, flows: [[src, dst, chunks, bytes]]}`. Only
the entity itself (a request it signed) writes, renews or deletes its leases;
anyone may list the live ones. The registry sets `expires` from its own clock
(`ttl`, at most MAX_TTL): a driver that stops renewing stops counting.
Records live in the registry's `sites` table under `lease:ENTITY/JOB`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gfs.federation.http import ApiError, BadRequestError, field
from gfs.meta import WriteTxn

MAX_TTL = 300.0
"""Longest lifetime (seconds) of a lease between two renewals."""
MAX_LEASES = 256
"""Most leases one entity may hold at once (expired ones do not count)."""
MAX_FLOWS = 256
"""Most flows in one lease."""
PREFIX = b"lease:"


def key(entity: str, job: str) -> bytes:
    """The record key of `entity`'s lease of `job`."""
    return PREFIX + f"{entity}/{job}".encode()


def _job(v: str) -> str:
    if not 1 <= len(v) <= 64 or not v.replace("-", "").replace("_", "").isalnum() \
            or not v.isascii():
        raise BadRequestError(f"lease job id {v!r} is invalid: use 1 to 64 characters "
                              "a-z, A-Z, 0-9, '-' or '_'")
    return v


def checked(job: str, data: dict[str, Any], site_known: Callable[[str], bool]
            ) -> tuple[str, float, list[list[Any]]]:
    """(driver, ttl, flows) of a lease request body, or BadRequestError naming the field
    (flows must name registered sites and carry counts >= 0)."""
    _job(job)
    driver = field(data, "driver", str, check=lambda v: 1 <= len(v) <= 200)
    ttl = float(field(data, "ttl", (int, float), check=lambda v: 0 < v <= MAX_TTL))
    raw = field(data, "flows", list, check=lambda v: len(v) <= MAX_FLOWS)
    flows: list[list[Any]] = []
    for i, f in enumerate(raw):
        ok = (isinstance(f, list) and len(f) == 4 and all(isinstance(x, str) for x in f[:2])
              and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62
                      for x in f[2:]))
        if not ok:
            raise BadRequestError(f"lease {job}: flow {i} must be [src, dst, chunks, bytes] "
                                  "with counts >= 0")
        for s in f[:2]:
            if not site_known(s):
                raise BadRequestError(f"lease {job}: flow {i} names site {s!r}, which is not "
                                      "registered")
        flows.append(list(f))
    return driver, ttl, flows


def keep(txn: WriteTxn, entity: str, job: str, driver: str, ttl: float,
         flows: list[list[Any]], now: float) -> dict[str, Any]:
    """Write (or renew) `entity`'s lease of `job`; its expired leases are dropped first.
    ApiError 429 `too_many_leases` when the entity holds MAX_LEASES live others."""
    mine = PREFIX + f"{entity}/".encode()
    live = 0
    for k, v in list(txn.iter_values("sites", mine)):
        if json.loads(v)["expires"] <= now:
            txn.delete_value("sites", k)
        elif k != key(entity, job):
            live += 1
    if live >= MAX_LEASES:
        raise ApiError(f"entity {entity!r} holds {live} live leases (at most {MAX_LEASES}); "
                       "delete finished jobs' leases or let them expire", 429,
                       "too_many_leases")
    rec = {"entity": entity, "job": job, "driver": driver, "expires": now + ttl,
           "flows": flows}
    txn.put_value("sites", key(entity, job), json.dumps(rec).encode())
    return rec


def live(records: list[bytes], now: float) -> list[dict[str, Any]]:
    """The leases of `records` (raw values) that have not expired."""
    out = []
    for raw in records:
        rec = json.loads(raw)
        if rec["expires"] > now:
            out.append(rec)
    return out


__all__ = ["MAX_FLOWS", "MAX_LEASES", "MAX_TTL", "checked", "keep", "key", "live"]
