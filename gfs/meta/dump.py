"""Metadata dump and load: a versioned, streamable copy of a store's metadata.

Format (docs/format.md, "Metadata dump"): a zstd frame of UTF-8 JSON lines.
The first line is the header, the last the trailer with the record counts;
every line between is one record with its table `t`, its key and its value in
the engines' binary encodings (`gfs.meta.encoding`), base64. Dumping reads
one snapshot with the engines' iterators and loading writes in bounded
batches, so memory does not grow with the store.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any

import zstandard

from gfs.errors import FormatError, StateError
from gfs.meta import encoding as enc
from gfs.meta.engine import VALUE_TABLES, MetaEngine, ReadTxn, WriteTxn
from gfs.meta.records import ROOT_INO

MAGIC = "hutong-meta-dump"
VERSION = 1
#: Records written per load transaction.
BATCH = 2000
#: Set while a load runs; a store that still has it was not loaded completely.
LOADING = "loading"
#: Facts a load takes from the dump (the target's own are replaced).
_META_KEYS = ("store_id", "state_path", "next_ino")

Record = dict[str, Any]


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"metadata dump, {where}: expected base64 text, got {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:
        raise FormatError(f"metadata dump, {where}: bad base64 ({e})") from None


def records(txn: ReadTxn) -> Iterator[Record]:
    """Every record a read transaction sees, as dump lines (without header and trailer)."""
    for name in ("format", *_META_KEYS):
        fact = txn.get_meta(name)
        if fact is not None:
            yield {"t": "meta", "k": name, "v": _b(fact)}
    for node in txn.iter_inodes():
        yield {"t": "inode", "k": node.ino, "v": _b(enc.encode_inode(node))}
        if node.kind.name == "DIR":
            for name, ino in txn.list_dir(node.ino):
                yield {"t": "dirent", "k": [node.ino, name], "v": ino}
    for ino, m in txn.iter_manifests():
        yield {"t": "manifest", "k": ino, "v": _b(enc.encode_manifest(m))}
    for c in txn.iter_chunks():
        yield {"t": "chunk", "k": _b(c.id), "v": _b(enc.encode_chunk(c))}
    for p in txn.iter_packs():
        yield {"t": "pack", "k": _b(p.id), "v": _b(enc.encode_pack(p))}
    for pending in txn.iter_pending():
        yield {"t": "pending", "k": _b(pending.id), "v": _b(enc.encode_pending(pending))}
    for pool in txn.iter_pools():
        yield {"t": "pool", "k": pool.id, "v": _b(enc.encode_pool(pool))}
    for table in sorted(VALUE_TABLES):
        for key, value in txn.iter_values(table):
            yield {"t": "value", "k": [table, _b(key)], "v": _b(value)}


def dump(engine: MetaEngine, out: IO[bytes], *, config: str = "", source: str = "") -> Counter[str]:
    """Write the metadata of `engine` to `out` (one snapshot); returns the record counts.

    `config` (the store's settings, config.toml text) and `source` (a label) go
    into the header.
    """
    counts: Counter[str] = Counter()
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as z, \
            engine.read() as txn:
        text = io.TextIOWrapper(z, encoding="utf-8", newline="\n", write_through=True)
        fmt = txn.get_meta("format")
        header = {"magic": MAGIC, "version": VERSION, "created_ns": time.time_ns(),
                  "format": (fmt or b"").decode("ascii", "replace"), "config": config,
                  "source": source}
        text.write(json.dumps(header, sort_keys=True) + "\n")
        for rec in records(txn):
            counts[rec["t"]] += 1
            text.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        text.write(json.dumps({"t": "end", "counts": dict(sorted(counts.items()))}) + "\n")
        text.flush()
        text.detach()
    return counts


def read_header(inp: IO[bytes]) -> tuple[dict[str, Any], Iterator[Record]]:
    """The header of a dump and an iterator over its records (checked line by line;
    the iterator raises FormatError on a damaged or truncated dump)."""
    try:
        z = zstandard.ZstdDecompressor().stream_reader(inp, closefd=False)
        lines = io.TextIOWrapper(z, encoding="utf-8", newline="\n")
        first = lines.readline()
    except (zstandard.ZstdError, UnicodeDecodeError) as e:
        raise FormatError(f"not a Hutong metadata dump (zstd JSON lines): {e}") from None
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise FormatError("not a Hutong metadata dump: the first line is not its header")
    if header.get("version") != VERSION:
        raise FormatError(f"metadata dump version {header.get('version')!r}; this Hutong "
                          f"reads version {VERSION}")
    if header.get("format") not in [f.decode() for f in enc.READABLE_FORMATS]:
        raise FormatError(f"metadata dump of format {header.get('format')!r}; this Hutong "
                          f"reads format {enc.FORMAT_VERSION.decode()}")
    return header, _lines(lines)


def _lines(lines: io.TextIOWrapper) -> Iterator[Record]:
    counts: Counter[str] = Counter()
    n = 1
    try:
        for line in lines:
            n += 1
            rec = json.loads(line)
            if not isinstance(rec, dict) or "t" not in rec:
                raise FormatError(f"metadata dump line {n}: not a record")
            if rec["t"] == "end":
                if rec.get("counts") != dict(sorted(counts.items())):
                    raise FormatError(f"metadata dump: the trailer counts {rec.get('counts')}, "
                                      f"the dump holds {dict(counts)}")
                return
            counts[rec["t"]] += 1
            yield rec
    except json.JSONDecodeError as e:
        raise FormatError(f"metadata dump line {n}: {e}") from None
    except (zstandard.ZstdError, UnicodeDecodeError) as e:
        raise FormatError(f"metadata dump damaged after line {n}: {e}") from None
    raise FormatError(f"metadata dump is truncated after line {n} (no trailer); "
                      "dump the store again")


def check_empty(engine: MetaEngine) -> None:
    """Raise StateError unless `engine` holds a fresh store (only the root directory)."""
    with engine.read() as txn:
        inodes = [i.ino for _, i in zip(range(2), txn.iter_inodes(), strict=False)]
        busy = (inodes != [ROOT_INO] or next(txn.list_dir(ROOT_INO), None) is not None
                or next(txn.iter_pools(), None) is not None
                or next(txn.iter_chunks(), None) is not None)
    if busy:
        raise StateError(f"metadata {engine!r} is not empty; load a dump into a new store "
                         "(a new schema or an empty directory)")


def load(engine: MetaEngine, recs: Iterator[Record]) -> Counter[str]:
    """Write dump records into the empty store of `engine`; returns the counts.

    The store is marked as loading until the last batch committed, so a store
    whose load was interrupted is refused when opened.
    """
    check_empty(engine)
    engine.transact(lambda w: w.set_meta(LOADING, b"1"))
    counts: Counter[str] = Counter()
    batch: list[Record] = []
    for rec in recs:
        batch.append(rec)
        counts[rec["t"]] += 1
        if len(batch) >= BATCH:
            _write_batch(engine, batch)
            batch = []
    _write_batch(engine, batch)

    def done(w: WriteTxn) -> None:
        w.set_meta(LOADING, b"")

    engine.transact(done)
    return counts


def _write_batch(engine: MetaEngine, batch: list[Record]) -> None:
    def write(w: WriteTxn) -> None:
        for rec in batch:
            _apply(w, rec)

    if batch:
        engine.transact(write)


def _apply(w: WriteTxn, rec: Record) -> None:
    t, k, v = rec.get("t"), rec.get("k"), rec.get("v")
    where = f"{t} {k!r}"
    try:
        if t == "meta" and isinstance(k, str):
            if k != "format":
                w.set_meta(k, _unb(v, where))
        elif t == "inode" and isinstance(k, int):
            w.put_inode(enc.decode_inode(k, _unb(v, where)))
        elif t == "dirent" and isinstance(k, list) and isinstance(v, int):
            w.link(int(k[0]), str(k[1]), v)
        elif t == "manifest" and isinstance(k, int):
            w.put_manifest(k, enc.decode_manifest(k, _unb(v, where)))
        elif t == "chunk":
            w.put_chunk(enc.decode_chunk(_unb(k, where), _unb(v, where)))
        elif t == "pack":
            w.put_pack(enc.decode_pack(_unb(k, where), _unb(v, where)))
        elif t == "pending":
            w.put_pending(enc.decode_pending(_unb(k, where), _unb(v, where)))
        elif t == "pool" and isinstance(k, int):
            w.put_pool(enc.decode_pool(k, _unb(v, where)))
        elif t == "value" and isinstance(k, list) and len(k) == 2:
            w.put_value(str(k[0]), _unb(k[1], where), _unb(v, where))
        else:
            raise FormatError(f"metadata dump: unknown record {where}")
    except (TypeError, IndexError, ValueError) as e:
        if type(e) is FormatError:  # (a record's decoder says MetadataDamagedError,
            raise  # which names the store's own metadata: this is the dump's)
        raise FormatError(f"metadata dump: bad record {where}: {e}") from None
