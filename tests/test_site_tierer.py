"""The site daemon runs the tierer in the background and reports it in /metrics."""

from __future__ import annotations

import time
from pathlib import Path

from gfs.client import Client
from gfs.federation.http import HttpClient
from gfs.federation.testing import Federation
from gfs.tiering.policy import TierPolicy


def _metric(site: HttpClient, name: str) -> float:
    """A figure of the site's /metrics, read over TLS as its own entity."""
    status, body, _ = site.request("GET", "/metrics")
    assert status == 200, body[:200]
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_background_tierer_moves_idle_chunks_to_cold(tmp_path: Path) -> None:
    with Federation(tmp_path / "fed", tier_interval=0.3) as fed:
        fed.registry()
        fed.site("w1", "lab", "cn-west", primary=True)
        url = fed.http("w1", keys=fed.keys("lab"))
        state = fed.sites["w1"]["state"]
        with Client(state) as local:
            local.add_pool("archive", str(tmp_path / "cold"), tier="cold")
            with local.engine.write() as txn:
                TierPolicy(demote_idle=0.01).save(txn)
        fc = fed.client("lab")
        try:
            data = bytes(range(256)) * 4000
            fc.write_bytes("/lab/archive.bin", data)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _metric(url, "hutong_site_tier_cold_bytes") == 0:
                time.sleep(0.2)
            assert _metric(url, "hutong_site_tier_cold_bytes") > 0
            assert _metric(url, "hutong_site_tier_moves_total") > 0
            assert fc.read_bytes("/lab/archive.bin") == data  # served from the cold tier
        finally:
            fc.close()
        fed.kill("w1")
        with Client(state) as local:
            assert local.fsck().ok
