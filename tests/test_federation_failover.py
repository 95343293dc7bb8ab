"""Reads go on while an entity's primary site is down, from a mirror a rule keeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gfs.errors import UnavailableSiteError
from gfs.federation.testing import Federation


def test_primary_down_reads_from_mirror(tmp_path: Path) -> None:
    with Federation(tmp_path / "fed", ttl=1.5, heartbeat=0.2) as fed:
        fed.registry()
        fed.site("p1", "lab", "cn-west", primary=True)
        fed.site("p2", "lab", "cn-east")
        data = os.urandom(150_000)
        with fed.client("lab") as fc:
            fc.mkdir("/lab/d", parents=True, exist_ok=True)
            fc.write_bytes("/lab/d/kept.bin", data)
            fc.write_bytes("/lab/unruled.bin", b"only on the primary")
            fc.rule_add("/lab/d/**", 2, "region=cn-west | region=cn-east")
            [rule] = fc.reconcile("lab")
            assert rule["state"] == "ok"
        fed.kill("p1")
        fed.wait_status("p1", "down")
        with fed.client("lab") as fc:
            assert fc.read_bytes("/lab/d/kept.bin") == data  # from p2's mirror
            assert set(fc.chunks_from) == {"p2"}
            with pytest.raises(UnavailableSiteError, match="no site holds a mirror"):
                fc.read_bytes("/lab/unruled.bin")
        fed.start("p1")
        fed.wait_status("p1", "up")
        with fed.client("lab") as fc:
            assert fc.read_bytes("/lab/unruled.bin") == b"only on the primary"
