"""The namespace API's shared types: the Stat wire form and the embedded back end."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfs.client import Client
from gfs.namespace_api import Namespace, Stat, stat_from_wire, stat_to_wire

_u = st.integers(min_value=0, max_value=2**63 - 1)
stats = st.builds(Stat, path=st.text(min_size=1).map(lambda s: "/" + s),
                  kind=st.sampled_from(["file", "dir", "symlink", "fifo", "socket",
                                        "chardev", "blockdev"]),
                  size=_u, mode=_u, uid=_u, gid=_u, atime_ns=_u, mtime_ns=_u,
                  ctime_ns=_u, ino=_u, version=_u, target=st.text())


@given(stats)
def test_stat_round_trips_through_the_wire_form(s: Stat) -> None:
    assert stat_from_wire(stat_to_wire(s)) == s


@pytest.mark.parametrize("bad, field", [
    ({"kind": "door"}, "kind"),
    ({"size": -1}, "size"),
    ({"mode": "0644"}, "mode"),
    ({"ino": True}, "ino"),
    ({"path": 7}, "path"),
])
def test_a_malformed_wire_stat_names_the_field(bad: dict[str, object], field: str) -> None:
    good = stat_to_wire(Stat("/a", "file", 1, 0o100644, 0, 0, 0, 0, 0, 2, 1, ""))
    with pytest.raises(ValueError, match=field):
        stat_from_wire({**good, **bad})


def test_an_older_site_without_the_new_fields_still_reads() -> None:
    s = stat_from_wire({"path": "/e/a", "kind": "file", "size": 3, "mode": 0o100644,
                        "mtime_ns": 5, "version": 2, "target": ""}, path="/x")
    assert (s.path, s.size, s.uid, s.ino, s.version) == ("/x", 3, 0, 0, 2)


def test_the_embedded_store_is_a_namespace(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as c:
        ns: Namespace = c
        assert isinstance(ns, Namespace)
        ns.mkdir("/d")
        ns.write_bytes("/d/f", b"hello")
        ns.symlink("/d/l", "f")
        assert [s.name for s in ns.ls("/d")] == ["f", "l"]
        assert ns.read_bytes("/d/f", 1, 3) == b"el"
        assert ns.readlink("/d/l") == "f"
