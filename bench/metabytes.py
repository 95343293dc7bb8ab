"""Where each metadata byte of a store goes: per LMDB database, per record kind.

`python -m bench metabytes STATE [STATE ...]`

For the LMDB environment under STATE/meta (opened read-only, nothing changed):
entries, branch/leaf/overflow pages and the key and value bytes of every named
database, the pages in use against the file's last page (free pages are pages
LMDB keeps for reuse; the file never shrinks by itself), and the file size.
A packed table's blocks (`inodes.z`, gfs.meta.blocks) count their rows as entries.
Value tables (`resemblance`, `deltas`, ...) live in one `values` database each
with the table name as key prefix in some engines; here each is its own database.
`z64 B` is what the rows would take as zstd-3 blobs of 64 consecutive rows (keys
and values), the bound for keeping cold records in compressed blocks. Ends with
`metabytes: ...` per state with bytes per file.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import lmdb
import zstandard

from gfs.meta import blocks

#: Rows per compressed block of the `z64 B` column.
BLOCK_ROWS = 64


@dataclass(frozen=True)
class DbFigures:
    """One named database: its entries, pages and payload bytes."""

    name: str
    entries: int
    pages: int
    leaf_pages: int
    overflow_pages: int
    key_bytes: int
    value_bytes: int
    #: zstd-3 bytes of the rows in blocks of BLOCK_ROWS
    block_bytes: int = 0


@dataclass(frozen=True)
class EnvFigures:
    """An LMDB environment: its databases and page use."""

    path: Path
    file_bytes: int
    page_size: int
    last_pgno: int
    dbs: tuple[DbFigures, ...]

    @property
    def used_pages(self) -> int:
        # + the two meta pages and the main database's own pages, counted by the caller
        return sum(d.pages for d in self.dbs) + 2

    @property
    def free_pages(self) -> int:
        return max(0, self.last_pgno + 1 - self.used_pages)

    @property
    def block_bytes(self) -> int:
        return sum(d.block_bytes for d in self.dbs)

    def db(self, name: str) -> DbFigures | None:
        return next((d for d in self.dbs if d.name == name), None)


def measure(meta_dir: Path) -> EnvFigures:
    """The figures of the LMDB environment in `meta_dir` (opened read-only)."""
    env = lmdb.open(str(meta_dir), readonly=True, lock=False, max_dbs=64, subdir=True)
    comp = zstandard.ZstdCompressor(level=3)
    try:
        info, stat = env.info(), env.stat()
        figures: list[DbFigures] = []
        with env.begin() as txn:
            main = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            figures.append(DbFigures("(main)", stat["entries"], main, stat["leaf_pages"],
                                     stat["overflow_pages"], 0, 0))
            names = [bytes(k) for k, _ in txn.cursor()]
        for name in names:
            db = env.open_db(name, create=False)
            with env.begin() as txn:
                s = txn.stat(db)
                kb = vb = zb = rows = 0
                block: list[bytes] = []
                table = name[:-2].decode() if name.endswith(b".z") else ""
                for k, v in txn.cursor(db=db).iternext():
                    if table in blocks.PACKED_TABLES:  # a packed block: count its rows
                        rows += blocks.block_rows(v)  # (its head: no dictionary needed)
                    kb += len(k)
                    vb += len(v)
                    block += (k, v)
                    if len(block) == 2 * BLOCK_ROWS:
                        zb += len(comp.compress(b"".join(block)))
                        block = []
                if block:
                    zb += len(comp.compress(b"".join(block)))
            pages = s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
            figures.append(DbFigures(name.decode(errors="replace"), rows or s["entries"], pages,
                                     s["leaf_pages"], s["overflow_pages"], kb, vb, zb))
        return EnvFigures(meta_dir, (meta_dir / "data.mdb").stat().st_size, stat["psize"],
                          info["last_pgno"], tuple(figures))
    finally:
        env.close()


def files_of(figures: EnvFigures) -> int:
    """Files with a manifest (the per-file denominator): the rows of `manifests`, hot and
    packed (a hot row that shadows a packed one counts twice: few, until compaction)."""
    return sum(d.entries for d in (figures.db("manifests"), figures.db("manifests.z")) if d)


def print_figures(f: EnvFigures) -> None:
    """A table of `f`, one row per database, then the totals."""
    ps = f.page_size
    files = max(1, files_of(f))
    head = (f"{'database':<12} {'entries':>8} {'pages':>7} {'leaf':>6} {'ovfl':>5} "
            f"{'key B':>9} {'value B':>10} {'B/entry':>8} {'page B':>10} {'page B/file':>11} "
            f"{'z64 B':>9} {'z64 B/file':>10}")
    print(head)
    print("-" * len(head))
    for d in sorted(f.dbs, key=lambda d: -d.pages):
        per = (d.key_bytes + d.value_bytes) / d.entries if d.entries else 0
        print(f"{d.name:<12} {d.entries:>8} {d.pages:>7} {d.leaf_pages:>6} "
              f"{d.overflow_pages:>5} {d.key_bytes:>9} {d.value_bytes:>10} {per:>8.1f} "
              f"{d.pages * ps:>10} {d.pages * ps / files:>11.1f} {d.block_bytes:>9} "
              f"{d.block_bytes / files:>10.1f}")
    print(f"file {f.file_bytes} B; last page {f.last_pgno} ({(f.last_pgno + 1) * ps} B); "
          f"pages in use {f.used_pages} ({f.used_pages * ps} B); free {f.free_pages} "
          f"({100 * f.free_pages / max(1, f.last_pgno + 1):.1f}%); files {files}; "
          f"file B/file {f.file_bytes / files:.0f}; rows as zstd blocks of {BLOCK_ROWS} "
          f"{f.block_bytes} B ({f.block_bytes / files:.0f} B/file)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench metabytes",
                                description=__doc__.split("\n")[0])
    p.add_argument("states", nargs="+", help="store state directories (with meta/)")
    args = p.parse_args(argv)
    for state in map(Path, args.states):
        meta = state / "meta"
        if not (meta / "data.mdb").exists():
            print(f"metabytes: {state} has no LMDB environment in meta/; "
                  "give a store's state directory", file=sys.stderr)
            return 2
        f = measure(meta)
        print(f"== {state}  (load {os.getloadavg()[0]:.1f})")
        print_figures(f)
        files = max(1, files_of(f))
        print(f"metabytes: state={state} file_bytes={f.file_bytes} files={files} "
              f"bytes_per_file={f.file_bytes / files:.0f} "
              f"used_bytes_per_file={f.used_pages * f.page_size / files:.0f} "
              f"free_pages={f.free_pages} "
              f"z64_bytes_per_file={f.block_bytes / files:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
