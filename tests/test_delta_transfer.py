"""Delta transfer (docs/format.md "Delta transfer"): the sender's choice of bases among
what the receiver holds, and the receiver's reconstruction (real stores, real LMDB)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs import delta, delta_transfer
from gfs.client import Client
from gfs.codec import BLOB_HEADER_LEN, CODEC_DELTA, chunk_id, decode_blob, parse_blob_header
from gfs.errors import CorruptChunkError
from tests.similar_data import mutate, text


def _ids(fs: Client) -> set[bytes]:
    with fs.engine.read() as txn:
        return {rec.id for rec in txn.iter_chunks()}


def _holds(fs: Client) -> delta_transfer.Holds:
    def holds(ids: list[bytes]) -> list[bool]:
        with fs.engine.read() as txn:
            return [txn.has_chunk(c) for c in ids]
    return holds


@contextmanager
def _pair(root: Path, a: bytes, b: bytes) -> Iterator[tuple[Client, Client, list[bytes]]]:
    """A sender holding versions a and b, a receiver holding a; the chunks it lacks."""
    src = Client.init(root / "src", pack_size=1 << 20, workers=1, delta=True)
    dst = Client.init(root / "dst", pack_size=1 << 20, workers=1)
    try:
        src.write_bytes("/v", a)
        dst.write_bytes("/v", a)
        src.write_bytes("/w", b)
        yield src, dst, sorted(_ids(src) - _ids(dst))
    finally:
        src.close()
        dst.close()


def test_n_plus_1_sends_deltas_much_smaller_than_whole_chunks(tmp_path: Path) -> None:
    rng = random.Random(7)
    a = text(rng, 400_000)
    with _pair(tmp_path, a, mutate(a, rng, 30)) as (src, dst, missing):
        assert missing
        deltas = delta_transfer.delta_blobs(src.store, missing, _holds(dst))
        assert deltas, "similar chunks found no base the receiver holds"
        whole = sum(len(src.store.read_blob(c)) for c in deltas)
        assert sum(len(d) for d in deltas.values()) * 4 < whole
        for cid, blob in deltas.items():
            assert parse_blob_header(blob).codec == CODEC_DELTA
            assert delta.base_of(blob) in _ids(dst)
            raw = decode_blob(blob, expect_id=cid, base=delta_transfer.base_reader(dst.store))
            assert raw == src.store.read_chunk(cid)


def test_bases_the_receiver_lacks_are_not_used(tmp_path: Path) -> None:
    rng = random.Random(8)
    a = text(rng, 200_000)
    with _pair(tmp_path, a, mutate(a, rng, 10)) as (src, _, missing):
        assert missing
        assert delta_transfer.delta_blobs(src.store, missing, lambda ids: [False] * len(ids)) == {}


def test_a_missing_base_or_a_tampered_delta_is_refused(tmp_path: Path) -> None:
    rng = random.Random(9)
    base = text(rng, 20_000)
    new = mutate(base, rng, 3)
    header, payload = delta.encode_delta(new, chunk_id(new), chunk_id(base), base, 3)
    tampered = bytearray(header + payload)
    tampered[-3] ^= 0x40
    dst = Client.init(tmp_path / "dst", pack_size=1 << 20, workers=1)
    try:
        read_base = delta_transfer.base_reader(dst.store)
        with pytest.raises(delta_transfer.MissingBaseError, match=chunk_id(base).hex()):
            decode_blob(header + payload, base=read_base)
        dst.write_bytes("/base", base)
        assert decode_blob(header + payload, base=read_base) == new
        with pytest.raises(CorruptChunkError, match="delta against base"):
            decode_blob(bytes(tampered), base=read_base)
    finally:
        dst.close()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(8_000, 300_000),
       edits=st.integers(0, 60), textual=st.booleans())
def test_a_transferred_delta_always_reconstructs_to_its_id(
        tmp_path_factory: pytest.TempPathFactory, seed: int, size: int, edits: int,
        textual: bool) -> None:
    rng = random.Random(seed)
    a = text(rng, size) if textual else rng.randbytes(size)
    with _pair(tmp_path_factory.mktemp("prop"), a, mutate(a, rng, edits)) as (src, dst, missing):
        deltas = delta_transfer.delta_blobs(src.store, missing, _holds(dst))
        assert set(deltas) <= set(missing)
        for cid, blob in deltas.items():
            raw = decode_blob(blob, expect_id=cid, base=delta_transfer.base_reader(dst.store))
            assert chunk_id(raw) == cid and raw == src.store.read_chunk(cid)
            assert len(blob) - BLOB_HEADER_LEN < len(src.store.read_blob(cid)) - BLOB_HEADER_LEN


def test_rounds_bound_memory_and_give_the_same_deltas(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    a = text(rng, 400_000)
    with _pair(tmp_path, a, mutate(a, rng, 30)) as (src, dst, missing):
        whole_round = delta_transfer.delta_blobs(src.store, missing, _holds(dst))
        asked: list[int] = []

        def holds(ids: list[bytes]) -> list[bool]:
            asked.append(len(ids))
            return _holds(dst)(ids)
        monkeypatch.setattr(delta_transfer, "BATCH_BYTES", 1)
        assert delta_transfer.delta_blobs(src.store, missing, holds) == whole_round
        assert len(asked) >= len(whole_round) > 1  # one have-list question per chunk


def test_a_store_with_delta_chunks_off_sends_everything_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(12)
    a = text(rng, 200_000)
    with _pair(tmp_path, a, mutate(a, rng, 10)) as (src, dst, missing):
        assert delta_transfer.delta_blobs(src.store, missing, _holds(dst))
        off = dataclasses.replace(src.store.config, delta=False)
        monkeypatch.setattr(src.store, "config", off)
        assert delta_transfer.delta_blobs(src.store, missing, _holds(dst)) == {}


def test_a_delta_carrying_much_new_content_is_compressed_harder(tmp_path: Path) -> None:
    """A changed chunk with a few KiB of new (compressible) content: its delta is sent
    at DEEP_LEVEL when that is smaller than at the store's level."""
    rng = random.Random(29)
    a = text(rng, 48_000)
    b = a[:24_000] + text(random.Random(30), 12_000) + a[24_000:]
    with _pair(tmp_path, a, b) as (src, dst, missing):
        deltas = delta_transfer.delta_blobs(src.store, missing, _holds(dst))
        assert deltas
        for cid, blob in deltas.items():
            base = delta.base_of(blob)
            raw, base_raw = src.store.read_chunk(cid), src.store.read_chunk(base)
            h, p = delta.encode_delta(raw, cid, base, base_raw, src.config.zstd_level)
            assert len(p) > delta_transfer.DEEP_OVER
            assert len(blob) < len(h + p)
            assert decode_blob(blob, base={base: base_raw}.__getitem__) == raw
