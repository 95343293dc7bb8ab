"""Build an LD_PRELOAD shim (C source) for fault tests that run a child process."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def build_shim(source: str, directory: Path) -> Path:
    """Compile `source` into `directory`/shim.so; skips the test when no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the shim")
    (directory / "shim.c").write_text(source)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(directory / "shim.so"),
                    str(directory / "shim.c"), "-ldl"], check=True)
    return directory / "shim.so"
