"""Multi-region federation over the emulated WAN (network namespaces, veth, delay line):
the registry, a west site (bank-a's primary), an east replica site and an east client,
each in its own namespace. Slow: builds namespaces and a delay line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.federation.testing import Federation
from gfs.testing.wan import Link, Wan, wan_or_skip

pytestmark = pytest.mark.slow

CLIENT = """
import json, sys, time
from gfs.federation.auth import EntityKeys
from gfs.federation.client import FederationClient
registry, keys, op = sys.argv[1], sys.argv[2], sys.argv[3]
fc = FederationClient(registry, keys=EntityKeys.load(keys), near="a2")
if op == "write":
    fc.mkdir("/bank-a/ds", parents=True, exist_ok=True)
    fc.write_bytes("/bank-a/ds/x.bin", open(sys.argv[4], "rb").read())
    rule = fc.rule_add("/bank-a/ds/**", 2, "entity=bank-a")
    print(json.dumps(fc.reconcile("bank-a")))
else:
    t = time.perf_counter()
    data = fc.read_bytes("/bank-a/ds/x.bin")
    print(json.dumps({"len": len(data), "from": fc.chunks_from,
                      "seconds": time.perf_counter() - t}))
"""


@pytest.fixture
def wan() -> Iterator[Wan]:
    with wan_or_skip({"reg": Link(0.002), "west": Link(0.020), "east": Link(0.002),
                      "client": Link(0.002)}) as w:
        yield w


def test_reads_come_from_the_near_region(wan: Wan, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    (tmp_path / "x.bin").write_bytes(data)
    with Federation(tmp_path / "fed", wan=wan, heartbeat=0.5, ttl=5.0) as fed:
        fed.registry(netns="reg")
        fed.site("a1", "bank-a", "cn-west", primary=True, netns="west")
        fed.site("a2", "bank-a", "cn-east", netns="east")
        keys = str(fed.sites["a1"]["state"] / "federation")
        w = wan.run("client", [sys.executable, "-c", CLIENT, fed.registry_url, keys, "write",
                               str(tmp_path / "x.bin")], timeout=120)
        [rule] = json.loads(w.stdout.strip().splitlines()[-1])
        assert rule["state"] == "ok" and sorted(rule["sites"]) == ["a1", "a2"]
        r = wan.run("client", [sys.executable, "-c", CLIENT, fed.registry_url, keys, "read"],
                    timeout=120)
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert got["len"] == len(data) and set(got["from"]) == {"a2"}
        fed.kill("a2")
        r = wan.run("client", [sys.executable, "-c", CLIENT, fed.registry_url, keys, "read"],
                    timeout=120)
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert got["len"] == len(data) and set(got["from"]) == {"a1"}
