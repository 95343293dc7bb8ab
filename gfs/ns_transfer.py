"""Copy local trees into and out of any `Namespace` (the federation's `hutong put/get`).

The embedded store has its own faster `Client.put`/`Client.get` (batched commits,
batched restores); these work through the Namespace API alone, so they serve every
back end: each file is one close-to-open write or one streamed read, a directory is
listed once (the listing carries every entry's stat), and a file already in place
with the same size, modification time and mode is kept (a repeated put resumes).
"""

from __future__ import annotations

import contextlib
import os
import stat as statmod
from pathlib import Path

from gfs import paths
from gfs.client import Progress, TransferReport, in_place, put_source
from gfs.errors import IsADirError, NotADirError, NotFoundError
from gfs.namespace_api import Namespace, Stat

COPY_BLOCK = 4 << 20


def _listing(ns: Namespace, path: str) -> dict[str, Stat]:
    try:
        return {st.name: st for st in ns.ls(path)}
    except (NotFoundError, NotADirectoryError):
        return {}


def _put_file(ns: Namespace, local: str, dest: str, st: os.stat_result,
              existing: Stat | None, report: TransferReport,
              progress: Progress | None) -> None:
    if existing is not None and existing.is_dir:
        raise IsADirError(dest, "cannot replace a directory with a file; to put it inside, "
                          "end the destination with '/'")
    if (existing is not None and existing.kind == "file"
            and in_place(existing.size, existing.mtime_ns, existing.mode, st)):
        report.unchanged += 1
        return
    with open(local, "rb") as src, ns.open(dest, "wb", perm=statmod.S_IMODE(st.st_mode)) as out:
        while block := src.read(COPY_BLOCK):
            out.write(block)
            if progress is not None:
                progress(len(block))
    ns.utime(dest, st.st_atime_ns, st.st_mtime_ns)
    report.files += 1
    report.bytes += st.st_size


def put_tree(ns: Namespace, local: str | os.PathLike[str], path: str,
             progress: Progress | None = None) -> TransferReport:
    """Copy a local file or tree to `path` with the rules of `Client.put` ("DEST/" puts
    it inside DEST, "SRC/" copies SRC's contents), keeping modes and times."""
    src, top, dest = put_source(local, path)
    report = TransferReport()
    parent = paths.join(paths.split(dest)[:-1]) if paths.split(dest) else "/"
    if parent != "/":
        ns.mkdir(parent, parents=True, exist_ok=True)
    here = _listing(ns, parent).get(paths.split(dest)[-1]) if paths.split(dest) else None
    if not statmod.S_ISDIR(top.st_mode):
        if statmod.S_ISLNK(top.st_mode):
            _put_link(ns, str(src), dest, here, report)
        else:
            _put_file(ns, str(src), dest, top, here, report, progress)
        return report
    if here is not None and not here.is_dir:
        raise NotADirError(dest, "cannot replace a non-directory with a directory")
    dirs: list[tuple[str, os.stat_result]] = []
    for root, subdirs, files in os.walk(src):
        subdirs.sort()
        rel = Path(root).relative_to(src).parts
        ns_dir = paths.join([*paths.split(dest), *(paths.check_name(p) for p in rel)])
        ns.mkdir(ns_dir, parents=True, exist_ok=True)
        report.dirs += 1
        dirs.append((ns_dir, os.lstat(root)))
        existing = _listing(ns, ns_dir)
        for name in sorted(files) + [d for d in subdirs if os.path.islink(os.path.join(root, d))]:
            lp = os.path.join(root, name)
            st = os.lstat(lp)
            target = f"{ns_dir.rstrip('/')}/{paths.check_name(name, lp)}"
            if statmod.S_ISLNK(st.st_mode):
                _put_link(ns, lp, target, existing.get(name), report)
            elif statmod.S_ISREG(st.st_mode):
                _put_file(ns, lp, target, st, existing.get(name), report, progress)
            else:
                report.skipped += 1
    for ns_dir, st in reversed(dirs):  # directory modes and times, children first
        ns.chmod(ns_dir, statmod.S_IMODE(st.st_mode))
        ns.utime(ns_dir, st.st_atime_ns, st.st_mtime_ns)
    return report


def _put_link(ns: Namespace, local: str, dest: str, existing: Stat | None,
              report: TransferReport) -> None:
    target = os.readlink(local)
    if existing is not None and existing.kind == "symlink" and existing.target == target:
        report.unchanged += 1
        return
    if existing is not None:
        ns.rm(dest)
    ns.symlink(dest, target)
    st = os.lstat(local)
    ns.utime(dest, st.st_atime_ns, st.st_mtime_ns)  # the link's own times (not followed)
    report.symlinks += 1


def _get_file(ns: Namespace, st: Stat, local: str, progress: Progress | None) -> int:
    """Stream file `st` to `local` under a temporary name, renamed into place when whole."""
    d, name = os.path.split(local)
    tmp = os.path.join(d, f".{name}.hutong-{os.getpid()}.part")
    written = 0
    try:
        with ns.open(st.path, "rb") as src, open(tmp, "wb") as out:
            while block := src.read(COPY_BLOCK):
                out.write(block)
                written += len(block)
                if progress is not None:
                    progress(len(block))
        os.chmod(tmp, statmod.S_IMODE(st.mode))
        os.utime(tmp, ns=(st.atime_ns, st.mtime_ns))
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return written


def get_tree(ns: Namespace, path: str, local: str | os.PathLike[str],
             progress: Progress | None = None) -> TransferReport:
    """Copy file or tree `path` to `local` (inside it when it is a directory), keeping
    modes and times; each file appears whole or not at all."""
    norm = paths.normalize(path)
    dest = os.fspath(local)
    if os.path.isdir(dest) and norm != "/":
        dest = os.path.join(dest, paths.split(norm)[-1])
    base = len(paths.split(norm))
    report = TransferReport()
    dirs: list[tuple[str, Stat]] = []
    for st in ns.walk(norm):
        rel = paths.split(st.path)[base:]
        target = os.path.join(dest, *rel)
        if st.is_dir:
            if os.path.lexists(target) and not os.path.isdir(target):
                raise NotADirError(target, "local path exists and is not a directory")
            os.makedirs(target, exist_ok=True)
            dirs.append((target, st))
            report.dirs += 1
        elif st.kind == "symlink":
            if os.path.lexists(target):
                os.unlink(target)
            os.symlink(st.target, target)
            os.utime(target, ns=(st.atime_ns, st.mtime_ns), follow_symlinks=False)
            report.symlinks += 1
        elif st.kind == "file":
            if os.path.isdir(target) and not os.path.islink(target):
                raise IsADirError(target, "local path is a directory")
            if os.path.dirname(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
            report.bytes += _get_file(ns, st, target, progress)
            report.files += 1
        else:
            report.skipped += 1
    for target, st in reversed(dirs):
        os.chmod(target, statmod.S_IMODE(st.mode))
        os.utime(target, ns=(st.atime_ns, st.mtime_ns))
    return report


__all__ = ["get_tree", "put_tree"]
