"""`python -m bench delta [--quick] [--dataset DIR]`: what delta chunks save, and cost.

On the ingest bench's release series (v1, v2, ...), each snapshot's chunks
that the previous snapshots do not hold are matched by super-feature against
the chunks stored before them (as the store's writer does). For every chunk
with a base, in the same run: its size stored whole (zstd -3, or raw), its
size as a delta (codec 2), and the time to read it back whole (decompress)
and as a delta (decompress the base, then the delta against it). The table
gives, per saving threshold (a delta is kept when delta < threshold x whole),
how many chunks become deltas, the bytes saved, and the extra read time.

Target: the store's threshold (gfs.delta: SAVING_NUM / SAVING_DEN) keeps at
least 90% of the bytes that taking every delta would save.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

from bench import datasets
from bench.report import headline, table
from gfs import delta, resemblance
from gfs.codec import chunk_id, encode_blob

THRESHOLDS = (0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(slots=True)
class Pair:
    """One new chunk with a base: its sizes and read times."""

    whole: int
    delta: int
    read_whole_s: float
    read_delta_s: float


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        out.extend(Path(dirpath) / n for n in sorted(names))
    return sorted(p for p in out if p.is_file() and not p.is_symlink())


def _timed_decode(frame: bytes, size: int, dictionary: bytes | None) -> float:
    t0 = time.perf_counter()
    if dictionary is None:
        zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    else:
        zd = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        zstandard.ZstdDecompressor(dict_data=zd).decompress(frame, max_output_size=size)
    return time.perf_counter() - t0


def measure(snapshots: list[Path], level: int = 3) -> tuple[list[Pair], int, int]:
    """Pairs of new chunks with bases; also (new chunks, new chunk bytes stored whole)."""
    known: set[bytes] = set()
    index: dict[bytes, bytes] = {}  # index key -> base raw bytes
    whole_frames: dict[bytes, bytes] = {}  # base id -> its zstd frame (for read timing)
    pairs: list[Pair] = []
    new_chunks = new_bytes = 0
    for snap in snapshots:
        for path in _files(snap):
            data = path.read_bytes()
            cuts, sfs = resemblance.cut_superfeatures(data)
            start = 0
            for end, sf in zip(cuts, sfs, strict=True):
                raw = data[start:end]
                start = end
                cid = chunk_id(raw)
                if cid in known:
                    continue
                known.add(cid)
                _, payload = encode_blob(raw, level, cid)
                new_chunks += 1
                new_bytes += len(payload)
                keys = resemblance.index_keys(sf) if len(raw) >= resemblance.MIN_CHUNK else []
                base = next((index[k] for k in keys if k in index), None)
                if base is None:
                    for k in keys:
                        index[k] = raw
                    whole_frames[cid] = bytes(payload)
                    continue
                frame = delta.delta_frame(raw, base, level)
                packed = zstandard.ZstdCompressor(level=level).compress(raw)
                base_frame = zstandard.ZstdCompressor(level=level).compress(base)
                read_whole = _timed_decode(packed, len(raw), None)
                read_delta = (_timed_decode(base_frame, len(base), None)
                              + _timed_decode(frame, len(raw), base))
                pairs.append(Pair(len(payload), 16 + len(frame), read_whole, read_delta))
    return pairs, new_chunks, new_bytes


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench delta")
    datasets.add_arguments(ap)
    snapshots = datasets.chosen_snapshots(ap.parse_args(argv), "delta")
    if snapshots is None:
        return 1
    pairs, new_chunks, new_bytes = measure(snapshots)
    if not pairs:
        print(headline("delta", False, note="no_similar_chunks", new_chunks=new_chunks))
        return 1
    all_saved = sum(p.whole - max(0, p.delta) for p in pairs if p.delta < p.whole)
    rows = []
    store_t = delta.SAVING_NUM / delta.SAVING_DEN
    kept_at_store = 0.0
    for t in THRESHOLDS:
        taken = [p for p in pairs if p.delta < t * p.whole]
        saved = sum(p.whole - p.delta for p in taken)
        extra = sum(p.read_delta_s - p.read_whole_s for p in taken)
        rows.append((f"{t:.2f}{' (store)' if t == store_t else ''}", len(taken),
                     saved / 1e6, 100 * saved / new_bytes,
                     100 * saved / all_saved if all_saved else 0.0,
                     1e6 * extra / len(taken) if taken else 0.0,
                     (saved / 1e6) / extra if extra > 0 else float("nan")))
        if t == store_t:
            kept_at_store = saved / all_saved if all_saved else 0.0
    print(f"delta: {len(snapshots)} snapshots, {new_chunks} new chunks "
          f"({new_bytes / 1e6:.1f} MB stored whole), {len(pairs)} with a base")
    print(table(["threshold", "deltas", "saved MB", "saved % of new", "% of all savings",
                 "extra read us/delta", "MB saved per extra read s"], rows))
    print(headline("delta", kept_at_store >= 0.9, threshold=store_t,
                   kept_of_all_savings=round(kept_at_store, 3), pairs=len(pairs),
                   new_chunks=new_chunks))
    return 0
