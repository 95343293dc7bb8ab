"""The store's parts given to it: a read observer and a placement (not the tiering
package, which the store does not import)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from gfs.client import Client
from gfs.store import ChunkStore


class Recorder:
    """A read observer that keeps what it was told."""

    def __init__(self) -> None:
        self.chunks: Counter[bytes] = Counter()
        self.files: Counter[int] = Counter()
        self.flushes = 0

    def record(self, cids: Iterable[bytes]) -> None:
        self.chunks.update(cids)

    def record_file(self, ino: int) -> None:
        self.files[ino] += 1

    def flush(self) -> None:
        self.flushes += 1


def test_the_store_does_not_import_tiering() -> None:
    code = ("import sys, gfs.store\n"
            "print(sorted(m for m in sys.modules if m.startswith('gfs.tiering')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


def test_reads_reach_the_observer_and_writes_the_placed_tier(tmp_path: Path) -> None:
    fs = Client.init(tmp_path / "state", pack_size=1 << 20)
    try:
        fs.add_pool("fast", str(tmp_path / "hot"), tier="hot")
        data = random.Random(31).randbytes(300_000)
        fs.write_bytes("/f", data)
        with fs.engine.read() as txn:
            ids = [rec.id for rec in txn.iter_chunks()]
        seen = Recorder()
        store = ChunkStore(fs.engine, fs.state, fs.config, observer=seen,
                           placement=lambda: "hot")
        try:
            assert b"".join(store.read_chunk(cid) for cid in ids) != b""
            assert set(seen.chunks) == set(ids)
            with store.writer() as session:
                refs = session.store_buffer(random.Random(32).randbytes(100_000))
            with fs.engine.read() as txn:
                rec = txn.get_chunk(refs[0].id)
                pools = {p.id: p.tier for p in txn.iter_pools()}
            assert rec is not None and pools[rec.locations[0].pool] == "hot"
        finally:
            store.close()
        assert seen.flushes == 1
    finally:
        fs.close()
