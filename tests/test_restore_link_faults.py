"""The native writer's failures after a file is complete (`native/restore.c`), forced
with an LD_PRELOAD shim in a child process: a link that fails with an I/O error fails
that file (no silent second write under a temporary name), and a close that fails
after the file was linked takes its name back, fresh or replacing a copy, so a file
the get reports as failed is never left in place under its name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.preload_shim import build_shim

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* linkat fails with EIO for names holding SHIM_LINK_EIO, with EPERM for names
   holding SHIM_LINK_EPERM; after a link to a name
   holding SHIM_CLOSE_EIO, the next close closes and then says EIO */
static int armed;

int linkat(int od, const char *o, int nd, const char *n, int fl) {
    static int (*real)(int, const char *, int, const char *, int);
    if (!real) real = dlsym(RTLD_NEXT, "linkat");
    const char *bad = getenv("SHIM_LINK_EIO"), *late = getenv("SHIM_CLOSE_EIO");
    const char *refused = getenv("SHIM_LINK_EPERM");
    if (bad && strstr(n, bad)) { errno = EIO; return -1; }
    if (refused && strstr(n, refused)) { errno = EPERM; return -1; }
    int r = real(od, o, nd, n, fl);
    if (r == 0 && late && strstr(n, late)) armed = 1;
    return r;
}

int close(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "close");
    int r = real(fd);
    if (r == 0 && armed) {
        armed = 0;
        errno = EIO;
        return -1;
    }
    return r;
}
"""

CHILD = textwrap.dedent("""
    import errno, os, sys
    from gfs import _native
    from gfs.local_write import tmp_name
    out = sys.argv[1]
    items = [(tmp_name(os.path.join(out, n)), os.path.join(out, n), [n.encode() * 3],
              0o644, 0, 0) for n in ("a", "victim", "z")]
    done, err = _native.write_files(items)
    print(done, errno.errorcode.get(err, err), sorted(os.listdir(out)))
""")


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(SHIM, tmp_path_factory.mktemp("shim"))


def _write(shim: Path, out: Path, **faults: str) -> str:
    env = {**os.environ, "LD_PRELOAD": str(shim), **faults,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(out)], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_a_link_that_fails_with_an_io_error_fails_the_file(shim: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert _write(shim, out, SHIM_LINK_EIO="victim") == "1 EIO ['a']"


def test_a_close_that_fails_after_the_link_takes_the_name_back(
        shim: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert _write(shim, out, SHIM_CLOSE_EIO="victim") == "1 EIO ['a']"


def test_a_close_that_fails_before_a_replace_keeps_the_copy_there(
        shim: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "victim").write_bytes(b"old copy")
    assert _write(shim, out, SHIM_CLOSE_EIO="victim") == "1 EIO ['a', 'victim']"
    assert (out / "victim").read_bytes() == b"old copy"


def test_a_file_that_cannot_be_linked_here_is_written_under_its_temporary_name(
        shim: Path, tmp_path: Path) -> None:
    """EPERM from both ways of linking an unnamed file (no /proc, no privilege) is not
    the file's fault: it and the files after it go under a temporary name, renamed."""
    out = tmp_path / "out"
    out.mkdir()
    assert _write(shim, out, SHIM_LINK_EPERM="victim") == "3 0 ['a', 'victim', 'z']"
    assert (out / "victim").read_bytes() == b"victim" * 3
