"""A cold gfs read over a long emulated WAN link asks for more chunks per request
(gfs.federation.inflight) and still returns the file's bytes. Slow: builds network
namespaces, a delay line, a registry and a site."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import _federated
from gfs.federation.inflight import LEAST_CHUNKS
from gfs.federation.testing import Federation
from gfs.testing.wan import Wan, wan_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WRITE = """
import sys
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
registry, keys, path, src = sys.argv[1:5]
with FederationClient(registry, keys=EntityKeys.load(keys), timeout=120) as fc:
    fc.mkdir(path.rsplit("/", 1)[0], parents=True, exist_ok=True)
    fc.write_bytes(path, open(src, "rb").read())
"""

READ = """
import hashlib, json, sys
from pathlib import Path
from gfs.federation.auth import EntityKeys
from gfs.federation.namespace import FederatedNamespace
registry, keys, path, cache = sys.argv[1:5]
with FederatedNamespace(registry, keys=EntityKeys.load(keys), cache_dir=Path(cache)) as ns:
    asked = []
    observe = ns.fc.link.observe
    def spy(*answer):
        asked.append(answer[4])
        observe(*answer)
    ns.fc.link.observe = spy
    h, n = hashlib.sha256(), 0
    with ns.open(path) as f:
        while b := f.read(1 << 20):
            h.update(b)
            n += len(b)
    print(json.dumps({"len": n, "sha": h.hexdigest(), "most": max(asked),
                      "depth": ns.sizer.last_depth, "link": ns.fc.link.estimate()}))
"""


@pytest.fixture
def far(tmp_path: Path) -> Iterator[tuple[Wan, Federation]]:
    why = _federated.unavailable_reason()
    if why:
        pytest.skip(why)
    # a 250 ms round trip: 8 requests of 16 chunks (8 MiB) fill at most 33 MB/s of it, so
    # even a loaded machine's rate asks for deeper requests
    with wan_or_skip(("a", "c"), rtt=0.250, loss=0.0, rate_bps=1e9) as wan, \
            Federation(tmp_path / "fed", wan=wan, heartbeat=0.3, ttl=3.0) as fed:
        fed.registry(netns="a")
        fed.site("a1", "bank-a", "cn-north", primary=True, netns="a")
        yield wan, fed


def test_cold_read_over_a_long_link_asks_deeper_and_reads_the_right_bytes(
        far: tuple[Wan, Federation], tmp_path: Path) -> None:
    wan, fed = far
    keys = str(fed.sites["a1"]["state"] / "federation")
    data = os.urandom(64 << 20)
    (tmp_path / "src.bin").write_bytes(data)
    wan.run("a", [sys.executable, "-c", WRITE, fed.registry_url, keys, "/bank-a/d/big.bin",
                  str(tmp_path / "src.bin")], timeout=240)
    out = wan.run("c", [sys.executable, "-c", READ, fed.registry_url, keys,
                        "/bank-a/d/big.bin", str(tmp_path / "cache")], timeout=400)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["len"] == len(data) and got["sha"] == hashlib.sha256(data).hexdigest()
    assert got["most"] > LEAST_CHUNKS, got  # the pipeline went deeper than before
    assert got["depth"] > 8 * LEAST_CHUNKS * (64 << 10), got
    assert got["link"][1] >= 0.25, got  # the round trip measured includes the delay line
