"""A JuiceFS volume on this machine for `bench fuse`: SQLite metadata and the `file`
object store in one directory, mounted in the foreground (see bench._measure.mounted)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench._juicefs import juicefs


def format_local(root: Path, name: str = "bench") -> str:
    """Format a volume under `root` (meta.db, data/); returns its metadata URL."""
    (root / "data").mkdir(parents=True)
    meta_url = f"sqlite3://{root / 'meta.db'}"
    out = subprocess.run([juicefs(), "format", "--storage", "file", "--bucket",
                          f"{root / 'data'}/", "--trash-days", "0", "--no-update",
                          meta_url, name], capture_output=True, text=True, timeout=120,
                         check=False)
    if out.returncode:
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])
        raise SystemExit(f"bench: juicefs format in {root} failed: {tail}")
    return meta_url


def mount_argv(meta_url: str, mnt: Path, cache_dir: Path) -> list[str]:
    """`juicefs mount` in the foreground with its own block cache directory and
    JuiceFS's defaults otherwise (1 s attribute and entry caches, as the Hutong mount)."""
    return [juicefs(), "mount", meta_url, str(mnt), "--cache-dir", str(cache_dir),
            "--no-usage-report", "--no-bgjob", "--backup-meta", "0"]
