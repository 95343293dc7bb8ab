"""The Client additions the gateways stand on: key-ordered scans, joined files without
copying, extended attributes committed with content, and ranged block streams."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs.client import Client
from gfs.errors import IsADirError, NotFoundError

NAMES = st.text(alphabet="ab-.0~", min_size=1, max_size=3).filter(lambda s: s not in (".", ".."))
KEYS = st.lists(st.lists(NAMES, min_size=1, max_size=3).map("/".join), min_size=1,
                max_size=25)


def _tree(fs: Client, keys: list[str]) -> list[str]:
    """Write `keys` as files under /t (skipping those a file already blocks); the keys
    written, in byte order."""
    fs.mkdir("/t", exist_ok=True)
    done: list[str] = []
    for k in keys:
        parts = k.split("/")
        if any("/".join(parts[:i]) in done for i in range(1, len(parts))) or \
                any(d.startswith(k + "/") for d in done) or k in done:
            continue
        if len(parts) > 1:
            fs.mkdir("/t/" + "/".join(parts[:-1]), parents=True, exist_ok=True)
        fs.write_bytes("/t/" + k, k.encode())
        done.append(k)
    return sorted(done, key=lambda k: k.encode())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(keys=KEYS, start=st.text(alphabet="ab-./0~", max_size=5))
def test_scan_is_in_key_order_from_start(tmp_path_factory: pytest.TempPathFactory,
                                         keys: list[str], start: str) -> None:
    with Client.init(tmp_path_factory.mktemp("scan") / "s") as fs:
        written = _tree(fs, keys)
        got = [s.path[len("/t/"):] for s in fs.scan("/t", start=start)]
        assert got == [k for k in written if k >= start]
        top = [s.path[len("/t/"):] + ("/" if s.is_dir else "")
               for s in fs.scan("/t", recursive=False)]
        want = sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in written})
        assert top == want


def test_concat_joins_without_copying(fs: Client) -> None:
    a, b = os.urandom(300_000), os.urandom(200_000)
    fs.mkdir("/parts")
    fs.write_bytes("/parts/1", a)
    fs.write_bytes("/parts/2", b)
    before = fs.du("/").unique_bytes
    st_ = fs.concat("/whole", ["/parts/1", "/parts/2"], xattrs={"user.k": b"v"},
                    remove=["/parts"])
    assert st_.size == len(a) + len(b) and fs.read_bytes("/whole") == a + b
    assert fs.du("/").unique_bytes == before and not fs.exists("/parts")
    assert fs.xattrs("/whole") == {"user.k": b"v"}
    assert fs.fsck().ok
    with pytest.raises(NotFoundError):
        fs.concat("/x", ["/missing"])
    with pytest.raises(IsADirError):
        fs.concat("/x", ["/"])
    assert not fs.exists("/x")  # a refused concat changes nothing
    fs.rm("/whole")
    assert fs.gc().chunks_removed > 0


def test_writer_xattrs_are_committed_with_the_content(fs: Client) -> None:
    fs.write_bytes("/f", b"one")
    fs.set_xattrs("/f", {"user.old": b"1"})
    w = fs.open("/f", "wb")
    w.write(b"two")
    w.set_xattrs(lambda node: {"user.version": str(node.version).encode()})  # type: ignore[attr-defined]
    assert fs.xattrs("/f") == {"user.old": b"1"}  # nothing visible before close
    w.close()
    assert fs.read_bytes("/f") == b"two"
    assert fs.xattrs("/f") == {"user.version": str(fs.stat("/f").version).encode()}
    w = fs.open("/f", "wb")
    w.write(b"three")
    w.set_xattrs({"user.never": b"x"})  # type: ignore[attr-defined]
    w.abort()  # type: ignore[attr-defined]
    assert fs.read_bytes("/f") == b"two" and "user.never" not in fs.xattrs("/f")


def test_iter_bytes_ranges_and_pinned_versions(fs: Client, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    fs.write_bytes("/big", data)
    m = fs.manifest("/big")
    for lo, hi in ((0, 1), (5, 70_000), (1 << 20, (2 << 20) + 3), (len(data) - 9, None),
                   (len(data), None), (10, 5)):
        assert b"".join(fs.iter_bytes("/big", lo, hi)) == data[lo:hi], (lo, hi)
    fs.write_bytes("/big", b"replaced")
    assert b"".join(fs.iter_bytes("/big", 100, 200, manifest=m)) == data[100:200]
