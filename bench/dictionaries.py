"""`python -m bench dictionaries [--quick] [--dataset DIR]`: do per-pack zstd
dictionaries pay for small chunks?

On the ingest bench's data (v1, v2, ... in order), the new chunks smaller than
`--small` bytes (small files: one chunk each) are grouped into packs as the
store's writer would fill them (`--pack` bytes of compressed payload). For
each pack a zstd dictionary is trained on the pack's own small chunks, and in
the same run every chunk is compressed whole (zstd -3, as stored today) and
with the pack's dictionary, two ways: the trained dictionary (entropy tables
and content) and its bytes as a raw-content prefix (what the delta codec, with
the dictionary stored as a base chunk, would do). A chunk keeps the dictionary
only when `gfs.delta.pays` (the delta saving threshold). Rows give stored
bytes including the dictionaries, the time to train on a pack's small chunks
(about `--train-bytes` of them), and the read cost: decode time per chunk with
the dictionary object built once per pack (a lower bound: the delta codec
builds it per read).

Target (issue 17, item 6): dictionaries are worth building into the store when
they save >= 5% of the small chunks' stored bytes at no more than 2x the decode
time per chunk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from bench import datasets
from bench.report import headline, table
from gfs import chunking, delta
from gfs.codec import chunk_id
from gfs.config import StoreConfig

LEVEL = 3
DICT_SIZES = (16 << 10, 64 << 10)


def small_packs(snapshots: list[Path], small: int, pack: int) -> Iterator[list[bytes]]:
    """The new chunks under `small` bytes, in write order, grouped into packs."""
    cfg = StoreConfig()
    params = chunking.ChunkParams(cfg.min_size, cfg.avg_size, cfg.max_size)
    seen: set[bytes] = set()
    group: list[bytes] = []
    filled = 0
    compress = zstandard.ZstdCompressor(level=LEVEL).compress
    for snap in snapshots:
        for dirpath, _dirs, names in sorted(os.walk(snap)):
            for name in sorted(names):
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                data = p.read_bytes()
                start = 0
                for end in chunking.cut_points(data, params):
                    raw, start = data[start:end], end
                    cid = chunk_id(raw)
                    if len(raw) >= small or cid in seen:
                        continue
                    seen.add(cid)
                    group.append(raw)
                    filled += len(compress(raw))
                    if filled >= pack:
                        yield group
                        group, filled = [], 0
    if group:
        yield group


@dataclass
class Row:
    """Totals of one way of storing the small chunks."""

    name: str
    stored: int = 0
    dicts: int = 0
    kept: int = 0  # chunks that kept the dictionary
    train_s: float = 0.0
    decode_s: float = 0.0


def _decode_s(dec: zstandard.ZstdDecompressor, frame: bytes, size: int) -> float:
    t0 = time.perf_counter()
    dec.decompress(frame, max_output_size=size)
    return time.perf_counter() - t0


def samples(group: list[bytes], budget: int) -> list[bytes]:
    """Chunks of `group` spread evenly over it, about `budget` bytes in all (0: all)."""
    total = sum(map(len, group))
    if budget <= 0 or total <= budget:
        return group
    step = total / budget
    return group[::max(1, round(step))]


def measure(packs: Iterator[list[bytes]], train_bytes: int = 0
            ) -> tuple[Row, list[Row], int, int]:
    """(plain row, dictionary rows, packs, chunks); each dictionary is trained on about
    `train_bytes` of its pack's small chunks (0: all of them)."""
    plain = Row("whole (today)")
    rows = {(size, kind): Row(f"{kind} dict {size >> 10} KiB")
            for size in DICT_SIZES for kind in ("trained", "raw-content")}
    npacks = nchunks = 0
    whole_c = zstandard.ZstdCompressor(level=LEVEL)
    plain_d = zstandard.ZstdDecompressor()
    for group in packs:
        npacks += 1
        nchunks += len(group)
        whole = [whole_c.compress(raw) for raw in group]
        plain.stored += sum(map(len, whole))
        plain.decode_s += sum(_decode_s(plain_d, f, len(r))
                              for f, r in zip(whole, group, strict=True))
        for size in DICT_SIZES:
            t0 = time.perf_counter()
            try:
                trained = zstandard.train_dictionary(size, samples(group, train_bytes),
                                                     level=LEVEL)
            except zstandard.ZstdError:  # too few samples: every chunk stays whole
                for kind in ("trained", "raw-content"):
                    rows[size, kind].stored += sum(map(len, whole))
                continue
            train = time.perf_counter() - t0
            content = trained.as_bytes()
            for kind in ("trained", "raw-content"):
                row = rows[size, kind]
                row.train_s += train
                row.dicts += len(whole_c.compress(content))  # stored as a chunk
                zd = (trained if kind == "trained" else zstandard.ZstdCompressionDict(
                    content, dict_type=zstandard.DICT_TYPE_RAWCONTENT))
                comp = zstandard.ZstdCompressor(level=LEVEL, dict_data=zd, write_dict_id=False)
                dec = zstandard.ZstdDecompressor(dict_data=zd)
                for raw, w in zip(group, whole, strict=True):
                    f = comp.compress(raw)
                    if delta.pays(len(f) + 16, len(w)):  # + the dictionary's id
                        row.stored += len(f) + 16
                        row.kept += 1
                        row.decode_s += _decode_s(dec, f, len(raw))
                    else:
                        row.stored += len(w)
                        row.decode_s += _decode_s(plain_d, w, len(raw))
    return plain, list(rows.values()), npacks, nchunks


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench dictionaries",
                                 description=__doc__.split("\n")[0])
    datasets.add_arguments(ap)
    ap.add_argument("--small", type=int, default=16 << 10,
                    help="chunks below this many bytes take part (default 16 KiB)")
    ap.add_argument("--train-bytes", type=int, default=1 << 20,
                    help="train each dictionary on about this many bytes of the pack's "
                    "small chunks (default 1 MiB; 0: all)")
    ap.add_argument("--pack", type=int, default=StoreConfig().pack_size,
                    help="compressed bytes per pack (default the store's pack_size)")
    args = ap.parse_args(argv)
    snapshots = datasets.chosen_snapshots(args, "dictionaries")
    if snapshots is None:
        return 1
    plain, rows, npacks, nchunks = measure(small_packs(snapshots, args.small, args.pack),
                                           args.train_bytes)
    if not nchunks:
        print(f"dictionaries: no chunk under {args.small} bytes in the dataset",
              file=sys.stderr)
        return 1
    out = []
    for r in [plain, *rows]:
        total = r.stored + r.dicts
        out.append([r.name, f"{total / 1e6:.2f}", f"{100 * total / (plain.stored or 1):.1f}",
                    r.kept, f"{r.train_s:.2f}", f"{1e6 * r.decode_s / nchunks:.1f}"])
    print(f"{nchunks} new small chunks (< {args.small} B) in {npacks} packs of "
          f"{args.pack >> 20} MiB; zstd -{LEVEL}; trained on "
          f"{'all' if not args.train_bytes else args.train_bytes} bytes of each; "
          f"load {os.getloadavg()[0]:.1f}")
    print(table(["stored as", "MB (with dicts)", "% of whole", "chunks with dict",
                 "train s", "decode us/chunk"], out))
    best = min(rows, key=lambda r: r.stored + r.dicts)
    saving = 1 - (best.stored + best.dicts) / plain.stored
    slower = best.decode_s / plain.decode_s if plain.decode_s else float("inf")
    met = saving >= 0.05 and slower <= 2.0
    print(headline("dictionaries", met, best=best.name.replace(" ", "_"),
                   saving=round(saving, 3), decode_x=round(slower, 2), packs=npacks,
                   chunks=nchunks, load1=round(os.getloadavg()[0], 2)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
