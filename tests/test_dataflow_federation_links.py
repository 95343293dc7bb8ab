"""Links kept fresh in the registry: a FederatedDataflow publishes what its probes and
its jobs measured (rate-limited; errors logged, not raised). Registry and sites run as
processes, a Dask cluster next to each site."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow import Topology
from dataflow.federated import RemoteInputFile
from dataflow.sites import Link
from tests.federated_sites import FederatedSites


def size(files: list[RemoteInputFile]) -> int:
    return sum(len(f.read()) for f in files)


class Sites(FederatedSites):
    """bank-a: w1 (primary) and w2, each with a Dask cluster."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, [("w1", "bank-a", "cn-west", True),
                                ("w2", "bank-a", "cn-west", False)], ["w1", "w2"], driver="w1")

    def registry_link(self, src: str, dst: str) -> Link:
        return Topology.from_registry(self.fed.registry_url, tls=self.fed.trust).link(src, dst)


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    s = Sites(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_probes_and_jobs_publish_their_links(sites: Sites) -> None:
    probe = b"".join(hashlib.sha256(b"probe%d" % i).digest() * 4096 for i in range(16))
    with sites.fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/probe", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/probe/p", probe)                  # 2 MiB at the primary w1
        fc.mkdir("/bank-a/in", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/in/f", probe[:300_000])
    assert sites.registry_link("w1", "w2").source == "default"
    with sites.dataflow(publish_interval=0.0) as df:
        # a probe is published at once
        [pf] = df.dataset("probe", "/bank-a/probe/p").files
        ids = [r.id for r in pf.manifest.chunks]
        link = df.probe_link("w1", "w2", ids)
        got = sites.registry_link("w1", "w2")
        assert got.source == "measured"
        assert got.bandwidth == pytest.approx(link.bandwidth, rel=1e-3)
        assert got.rtt == pytest.approx(link.rtt, rel=1e-3)
        # after a job: what it measured (here a transfer observed as w2 -> w1) is published
        df.topo.set_measured(Link("w2", "w1", 3e6, 0.020))
        assert df.run(size, "/bank-a/in/**", at="w1").wait().values == {"t0000": 300_000}
        back = sites.registry_link("w2", "w1")
        assert back.source == "measured" and back.bandwidth == pytest.approx(3e6)
        # nothing new: nothing sent again
        assert df.publish_links(force=True) == 0


def test_publishing_is_rate_limited_and_never_raises(sites: Sites,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with sites.fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/in", parents=True, exist_ok=True)
        fc.write_bytes("/bank-a/in/g", b"x" * 100_000)
    with sites.dataflow(publish_interval=3600.0) as df:
        df.topo.set_measured(Link("w1", "w2", 4e6, 0.010))
        assert df.publish_links() == 1                 # the first publication goes out
        df.topo.set_measured(Link("w2", "w1", 5e6, 0.010))
        df.run(size, "/bank-a/in/g", at="w1").wait()
        assert sites.registry_link("w2", "w1").source == "default"   # within the interval
        assert df.publish_links(force=True) == 1
        assert sites.registry_link("w2", "w1").bandwidth == pytest.approx(5e6)
        # the registry away: logged, not raised; the link is sent by the next publication
        df.topo.set_measured(Link("w1", "w2", 6e6, 0.010))
        real = df.rt.creds
        df.rt.creds = dataclasses.replace(real, registry="http://127.0.0.1:9")
        with caplog.at_level(logging.WARNING, logger="hutong.dataflow"):
            assert df.publish_links(force=True) == 0
        assert "links not published" in caplog.text
        df.rt.creds = real
        assert df.publish_links(force=True) == 1
        assert sites.registry_link("w1", "w2").bandwidth == pytest.approx(6e6)
        # what is left when the Dataflow closes is published then
        df.topo.set_measured(Link("w2", "w1", 7e6, 0.010))
        assert df.publish_links() == 0                          # within the interval
    assert sites.registry_link("w2", "w1").bandwidth == pytest.approx(7e6)
