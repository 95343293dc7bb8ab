"""Shared fixtures: a fresh embedded store and generated local trees."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from gfs.client import Client

pytest_plugins = ["gfs.testing.postgres"]

#: Property tests draw the same examples on every `make test` run, so a run fails only
#: on what a change broke, never on a draw no run made before; `make test-all`
#: (HUTONG_HYPOTHESIS=explore) draws new ones each run, to find new counter-examples
#: (each failure prints the blob that reproduces it).
settings.register_profile("fixed", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HUTONG_HYPOTHESIS", "fixed"))


@pytest.fixture(autouse=True)
def _no_ambient_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and the commands it runs) sees its own empty profiles file and no
    selected profile, never the user's (gfs.profiles)."""
    monkeypatch.setenv("HUTONG_PROFILES", str(tmp_path / "profiles.toml"))
    monkeypatch.delenv("HUTONG_PROFILE", raising=False)


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Client]:
    """A new store in a temporary state directory (small packs to exercise packing)."""
    client = Client.init(tmp_path / "state", pack_size=1 << 20, workers=2)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def dfs(tmp_path: Path) -> Iterator[Client]:
    """A store with delta chunks on."""
    client = Client.init(tmp_path / "state", pack_size=1 << 20, workers=2, delta=True)
    try:
        yield client
    finally:
        client.close()


def make_tree(root: Path, seed: int = 0, files: int = 30, max_size: int = 300_000) -> Path:
    """A local tree with nested dirs, empty and large files, repeats and symlinks."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    shared = rnd.randbytes(200_000)
    dirs = [root]
    for i in range(files):
        if rnd.random() < 0.25:
            d = rnd.choice(dirs) / f"dir{i}"
            d.mkdir()
            dirs.append(d)
        d = rnd.choice(dirs)
        kind = rnd.random()
        if kind < 0.1:
            data = b""
        elif kind < 0.4:
            data = shared[: rnd.randrange(1, len(shared))] + rnd.randbytes(rnd.randrange(100))
        elif kind < 0.7:
            line = f"line {i} of some text that compresses well\n"
            data = (line * rnd.randrange(1, 5000)).encode()
        else:
            data = rnd.randbytes(rnd.randrange(1, max_size))
        f = d / f"file{i}.bin"
        f.write_bytes(data)
        os.chmod(f, rnd.choice([0o644, 0o600, 0o755]))
        os.utime(f, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 7))
    (root / "link").symlink_to("file0.bin")
    (root / "dangling").symlink_to("does/not/exist")
    return root


def tree_digest(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Relative path -> (kind, permission bits, content or link target), for comparisons."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", 0, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", p.stat().st_mode & 0o7777, b"")
            else:
                out[rel] = ("file", p.stat().st_mode & 0o7777, p.read_bytes())
    return out
