"""Running and measuring subprocesses and FUSE mounts; hashing and verifying restored trees."""

from __future__ import annotations

import functools
import hashlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path


class CommandError(RuntimeError):
    """A measured command exited non-zero."""


class VerifyError(RuntimeError):
    """A restored tree differs from its source."""


@dataclass(frozen=True)
class Run:
    """One finished command: exit code, wall seconds, peak RSS (KiB), its output, and the
    CPU seconds (user + system) of it and its children (steadier than wall time when the
    machine is shared)."""

    argv: tuple[str, ...]
    rc: int
    wall: float
    maxrss_kib: int
    stdout: str
    stderr: str
    cpu: float = 0.0
    #: peak anonymous RSS (KiB: heap and stacks, not pages of mapped files such as the
    #: LMDB metadata, which the kernel can drop), sampled every SAMPLE seconds
    anon_kib: int = 0


#: Seconds between samples of a running command's anonymous RSS.
SAMPLE = 0.1


#: GNU time (Debian package `time`): starts each measured command and reports its peak RSS.
GNU_TIME = "/usr/bin/time"


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        cwd: Path | None = None, check: bool = True) -> Run:
    """Run `argv` to completion; measure wall time and the peak RSS of it and its children.

    The command is started by GNU time, whose `%M` is the peak RSS of the command and
    the children it waited for. Not `os.wait4` from this process: Linux carries a
    process's peak RSS across fork (or vfork) and exec, so a command started from here
    would report at least this process's own RSS.
    """
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"bench: {GNU_TIME} is missing; install the Debian package `time`")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-rss-") as report:
        t0 = time.perf_counter()
        proc = subprocess.Popen([GNU_TIME, "-q", "-f", "%U %S %M", "-o", report.name, *argv],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd)
        anon = 0
        with _exit_signal(proc) as exited:
            while proc.poll() is None:
                anon = max(anon, _anon_kib_below(proc.pid))
                exited(SAMPLE)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        words = Path(report.name).read_text().split()
        cpu = float(words[-3]) + float(words[-2]) if len(words) >= 3 else 0.0
        result = Run(tuple(argv), proc.returncode, wall, int(words[-1]) if words else 0,
                     out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                     cpu, anon)
    if check and result.rc != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-5:]) or "no stderr"
        raise CommandError(f"{' '.join(argv)} exited {result.rc}: {tail}")
    return result


@contextmanager
def _exit_signal(proc: subprocess.Popen[bytes]) -> Iterator[Callable[[float], None]]:
    """A wait of at most some seconds that returns as soon as `proc` exits: on a pidfd
    (Linux), so the wall time ends when the command does. `Popen.wait(timeout)` polls
    with sleeps of up to 50 ms: 0.54 s measured for `sleep 0.52`."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux, or before 5.3: polled
        def polled(seconds: float) -> None:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(seconds)
        yield polled
        return
    def woken(seconds: float) -> None:
        select.select([fd], [], [], seconds)  # readable once the process has exited

    try:
        yield woken
    finally:
        os.close(fd)


def _anon_kib_below(pid: int) -> int:
    """The anonymous RSS (KiB) of the processes `pid` started, added up (0 if gone)."""
    total = 0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    for kid in kids:
        try:
            for line in Path(f"/proc/{kid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        total += _anon_kib_below(int(kid))
    return total


def hutong_cmd() -> list[str]:
    """The `hutong` CLI of the `gfs` package this process imports: the checkout the bench
    runs from, not whichever copy the virtual environment installed (an editable install
    of another checkout made benches measure that other code). The environment's
    `hutong` script when it would import this same package, else this Python running
    `gfs.cli.run` with this package first on its path (the script's own two lines)."""
    import gfs

    here = Path(gfs.__file__).resolve().parent
    exe = Path(sys.executable).parent / "hutong"
    if exe.is_file() and os.access(exe, os.X_OK) and _imports_gfs_from(exe) == here:
        return [str(exe)]
    return [sys.executable, "-c",
            f"import sys; sys.path.insert(0, {str(here.parent)!r}); sys.argv[0] = 'hutong'; "
            "from gfs.cli import run; run()"]


@functools.cache
def _imports_gfs_from(exe: Path) -> Path | None:
    """The `gfs` package directory the interpreter of script `exe` imports when started
    outside any checkout (None if it cannot tell)."""
    try:
        first = exe.read_text().splitlines()[0]
        python = first.removeprefix("#!").strip()
        out = subprocess.run([python, "-c", "import gfs; print(gfs.__file__)"], cwd="/",
                             capture_output=True, text=True, timeout=60, check=True)
        return Path(out.stdout.strip()).resolve().parent
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def hutong_available() -> str | None:
    """None if the hutong CLI runs, else the reason it does not."""
    try:
        proc = subprocess.run([*hutong_cmd(), "--help"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"hutong CLI cannot start: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"hutong CLI not usable yet (`hutong --help` exited {proc.returncode}: {last})"
    return None


def du_sb(path: Path) -> int:
    """Apparent size in bytes of everything under `path`, as `du -sb` reports it."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def tree_digests(root: Path) -> dict[str, str]:
    """Relative path -> digest of every file (and `->target` for every symlink) under root."""
    found: dict[str, str] = {}
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names) + [d for d in dirs if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = "->" + os.readlink(path)
            elif path.is_file():
                with path.open("rb") as f:
                    found[rel] = hashlib.file_digest(f, "blake2b").hexdigest()
            else:
                found[rel] = "special"
    return found


def verify_tree(expected: Mapping[str, str], restored: Path) -> int:
    """Check `restored` holds exactly the files of `expected` (from tree_digests); return count."""
    if not restored.is_dir():
        raise VerifyError(f"{restored}: restored tree is missing")
    got = tree_digests(restored)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or extra or wrong:
        parts = []
        for label, items in (("missing", missing), ("extra", extra), ("different", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {items[0]})")
        raise VerifyError(f"{restored}: restore does not match the source: " + ", ".join(parts))
    return len(expected)


def remove_tree(path: Path) -> None:
    """Remove a directory we made, if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


READ_BLOCK = 8 << 20


def drop_page_cache(path: Path) -> None:
    """Drop the page cache of one file or of every file below a directory."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_random(path: Path, size: int) -> Path:
    """Write `size` random bytes (nothing compresses or deduplicates) to `path`."""
    with open(path, "wb") as f:
        left = size
        while left:
            k = min(left, 64 << 20)
            f.write(os.urandom(k))
            left -= k
    return path


def read_file(path: Path, block: int = READ_BLOCK, buf: bytearray | None = None) -> int:
    """Read `path` sequentially in `block`-sized reads (into `buf` if given: a caller
    reading many small files allocates it once); return the bytes read."""
    n = 0
    with open(path, "rb", buffering=0) as f:
        if buf is None:
            buf = bytearray(block)
        while k := f.readinto(buf):
            n += k
    return n


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of process `pid` so far; with `tree`, of its live
    descendants too (a mount run under `ip netns exec`/`nsenter`, a daemon's workers).
    A process gone meanwhile counts 0."""
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if tree:
            for task in Path(f"/proc/{p}/task").glob("*/children"):
                with suppress(OSError):
                    todo.extend(int(c) for c in task.read_text().split())
    return total


@contextmanager
def mounted(argv: list[str], mnt: Path, log: Path, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run the FUSE mount command `argv` (foreground; `env`: its whole environment) until
    `mnt` is a mount point, yielding its process; unmount and stop it when the block
    ends."""
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=dict(env) if env is not None else None)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount of {mnt} by `{' '.join(argv)}` failed: "
                                   f"{log.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        yield proc
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False,
                       capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
