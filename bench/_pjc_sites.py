"""The two-site row of `python -m bench pjc --sites`: shop-a (the fact table) and
ref-b (the dimension) on two network-namespace hosts over the emulated WAN, each
entity's half of the join at its own primary site, started by shop-a's side
(privacy.remote) from host a."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gfs.federation.testing import Federation
from gfs.testing.wan import emulated_wan, unavailable_reason
from privacy.jobs import JobSpec
from privacy.policy import policy_path

RTT, LOSS, RATE = 0.040, 0.001, 1e9
"""The WAN between the two hosts (as bench globalfs and the netns tests)."""

_PUT = """
import json, sys
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
registry, keys, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with FederationClient(registry, keys=EntityKeys.load(keys), timeout=300) as fc:
    for dst, src in files.items():
        fc.mkdir(dst.rsplit("/", 1)[0], parents=True, exist_ok=True)
        with open(src, "rb") as f:
            fc.write_bytes(dst, f.read())
"""

_JOB = """
import json, sys, time
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
from privacy import remote
from privacy.jobs import JobSpec
registry, keys, entity, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with FederationClient(registry, keys=EntityKeys.load(keys), timeout=300) as fc:
    t0 = time.perf_counter()
    out = remote.run(fc, entity, JobSpec(**spec))
    out["wall"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def _parquet(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def run(work: Path, tables: dict[str, tuple[str, str, pa.Table]],
        policies: dict[str, dict[str, Any]], specs: list[JobSpec]) -> list[dict[str, Any]]:
    """Start the WAN and both sites, load `tables` (name -> (site, path, table)) and
    `policies` (entity -> document), run each of `specs` from shop-a's host; the
    results as shop-a's half reports them (with `wall`, seconds seen by the caller)."""
    why = unavailable_reason()
    if why:
        raise RuntimeError(f"the emulated WAN cannot be built here: {why}")
    hosts = {"a1": "a", "b1": "b"}
    with emulated_wan(("a", "b"), rtt=RTT, loss=LOSS, rate_bps=RATE) as wan, \
            Federation(work / "fed", wan=wan, heartbeat=0.5) as fed:
        fed.registry(netns="a")
        fed.site("a1", "shop-a", "cn-east", primary=True, netns="a")
        fed.site("b1", "ref-b", "cn-west", primary=True, netns="b")
        files: dict[str, dict[str, str]] = {"a1": {}, "b1": {}}
        for name, (site, path, t) in tables.items():
            src = work / f"{name}.parquet"
            src.write_bytes(_parquet(t))
            files[site][path] = str(src)
        for site, doc in (("a1", policies["shop-a"]), ("b1", policies["ref-b"])):
            src = work / f"policy-{site}.json"
            src.write_text(json.dumps(doc))
            files[site][policy_path(str(doc["entity"]))] = str(src)
        for site, fmap in files.items():
            keys = str(fed.sites[site]["state"] / "federation")
            wan.run(hosts[site], [sys.executable, "-c", _PUT, fed.registry_url, keys,
                                  json.dumps(fmap)], timeout=600)
        keys = str(fed.sites["a1"]["state"] / "federation")
        out = []
        for spec in specs:
            t0 = time.perf_counter()
            done = wan.run("a", [sys.executable, "-c", _JOB, fed.registry_url, keys,
                                 "shop-a", json.dumps(spec.__dict__)], timeout=900)
            res = dict(json.loads(done.stdout.strip().splitlines()[-1]))
            res.setdefault("wall", time.perf_counter() - t0)
            out.append(res)
        return out
