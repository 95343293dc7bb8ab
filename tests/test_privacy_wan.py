"""Privacy jobs between two entities on two hosts (network namespaces) over the
emulated WAN (40 ms RTT, 0.1% loss): shop-a's registry and primary on host a,
ref-b's primary on host b; each entity's user runs `hutong --profile P join|psi`
on its own host. Fact-dimension and many-to-many joins, groups from either side,
results at either side, all equal to DuckDB; a half killed mid-job leaves no
spill files at either site. Slow: namespaces, a delay line and three servers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench._measure import hutong_cmd
from gfs.federation.testing import Federation
from gfs.testing.wan import wan_or_skip
from privacy.policy import policy_path
from tests.test_globalfs_wan import World as FsWorld
from tests.test_privacy_sites import (
    DIM,
    DIM2,
    FACT,
    IDS_A,
    IDS_B,
    kill_mid_psi,
    policies,
    spill_dirs,
    tables,
    wait_empty,
)
from tests.test_privacy_sql import check, reference

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

@dataclass
class World(FsWorld):
    """The WAN and federation of tests/test_globalfs_wan.py, with the tables."""

    t: dict[str, pa.Table]

    def load(self, host: str, site: str, files: dict[str, bytes]) -> None:
        """Write `files` (namespace path -> bytes) through `site`'s entity, from `host`."""
        spec: dict[str, str] = {}
        for i, (path, data) in enumerate(files.items()):
            src = self.root / f"load-{site}-{i}"
            src.write_bytes(data)
            spec[path] = str(src)
        dirs = sorted({p.rsplit("/", 1)[0] for p in spec})
        self.owner(host, site, {"dirs": dirs, "files": spec})

    def hutong(self, host: str, profile: str, *args: str) -> dict[str, Any]:
        """`hutong --profile P ... --json` on `host`; its JSON answer."""
        out = self.wan.run(host, [*hutong_cmd(), "--profile", profile, "-q", *args,
                                  "--json"], env=self.env, timeout=600, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _parquet(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    t = tables(n=3000, keys=300)
    with wan_or_skip(("a", "b"), rtt=0.040, loss=0.001, rate_bps=1e9) as wan, \
            Federation(tmp_path / "fed", wan=wan, heartbeat=0.3, ttl=3.0) as fed:
        fed.registry(netns="a")
        fed.site("a1", "shop-a", "cn-east", primary=True, netns="a")
        fed.site("b1", "ref-b", "cn-west", primary=True, netns="b")
        env = {**os.environ, "HUTONG_PROFILES": str(tmp_path / "profiles.toml")}
        w = World(wan, fed, tmp_path, env, t)
        doc_a, doc_b = policies()
        w.load("a", "a1", {FACT: _parquet(t["fact"]),
                           IDS_A: _parquet(pa.table({"id": list(range(200_000))})),
                           policy_path("shop-a"): json.dumps(doc_a).encode()})
        w.load("b", "b1", {DIM: _parquet(t["dim"]), DIM2: _parquet(t["dim2"]),
                           IDS_B: _parquet(pa.table({"id": list(range(100_000, 300_000))})),
                           policy_path("ref-b"): json.dumps(doc_b).encode()})
        # shop-a's user holds a read token; ref-b's profile uses the entity's keys
        token = subprocess.run([*hutong_cmd(), "token", "mint", "--keys", w.keys("a1"),
                                "--user", "analyst", "--scope", "read"], env=env,
                               check=True, capture_output=True, text=True,
                               timeout=60).stdout.strip()
        for argv in (["sa", "--entity", "shop-a", "--token", token, "--registry-ca",
                      str(fed.registry_ca_file)],
                     ["rb", "--entity", "ref-b", "--keys", w.keys("b1")]):
            subprocess.run([*hutong_cmd(), "profile", "add", argv[0], "--registry",
                            fed.registry_url, *argv[1:]], env=env, check=True,
                           capture_output=True, timeout=60)
        yield w


def test_joins_between_two_hosts_equal_sql_with_results_at_either_side(world: World) -> None:
    # the query, by shop-a's user on host a: g from the fact table, v from dim
    ans = world.hutong("a", "sa", "join", "--left", FACT, "--right", DIM, "--on", "k",
                       "--agg", "count(*),mean(v)", "--group-by", "g")
    assert ans["entity"] == "shop-a" and ans["receiver"]
    check(ans["groups"], reference(world.t, 'SELECT g, count(*) AS "count(*)", avg(v) AS '
                                            '"mean(v)" FROM fact JOIN dim USING (k) GROUP BY g'),
          ["g"])
    # many-to-many, groups from both sides, shop-a's values, by ref-b's user on host b
    ans = world.hutong("b", "rb", "join", "--left", FACT, "--right", DIM2, "--on", "k",
                       "--agg", "count(*),sum(amt),mean(amt)", "--group-by", "zone,g",
                       "--receiver", "right")
    assert ans["entity"] == "ref-b" and ans["receiver"]
    check(ans["groups"], reference(world.t, 'SELECT zone, g, count(*) AS "count(*)", '
                                            'sum(amt) AS "sum(amt)", avg(amt) AS "mean(amt)" '
                                            "FROM fact JOIN dim2 USING (k) GROUP BY zone, g"),
          ["zone", "g"])
    # groups from the dimension side, the result at the value holder (shop-a)
    ans = world.hutong("a", "sa", "join", "--left", FACT, "--right", DIM, "--on", "k",
                       "--agg", "count(*),sum(amt)", "--group-by", "region",
                       "--receiver", "left")
    assert ans["entity"] == "shop-a" and ans["role"] == "value-holder"
    check(ans["groups"], reference(world.t, 'SELECT region, count(*) AS "count(*)", '
                                            'sum(amt) AS "sum(amt)" FROM fact JOIN dim '
                                            "USING (k) GROUP BY region"), ["region"])


def test_a_half_killed_mid_psi_over_the_wan_leaves_no_spill_files(world: World) -> None:
    started = time.time()
    argv = world.wan["a"].net_argv([*hutong_cmd(), "--profile", "sa", "-q", "psi", "--left",
                                    IDS_A, "--right", IDS_B, "--on", "id"])
    cli = subprocess.Popen(argv, env=world.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        kill_mid_psi(Path(world.fed.sites["b1"]["state"]), started, timeout=120)
        _, err = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode != 0 and "ref-b" in err  # the job failed: the kill landed
    states = [Path(world.fed.sites[s]["state"]) for s in ("a1", "b1")]
    wait_empty(states)
    assert not any(spill_dirs(s) for s in states)
    ans = world.hutong("a", "sa", "psi", "--left", IDS_A, "--right", IDS_B, "--on", "id")
    assert ans["size"] == 100_000
