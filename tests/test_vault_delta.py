"""Sealed deltas to another entity's site (docs/format.md "Sealed delta blobs"): the owner
sends a changed chunk sealed as a delta against a base the host keeps whole; the host
stores it opaquely, keeps the base while the delta needs it, and learns only that one
blob depends on another and the delta's length bucket; the owner rebuilds and verifies."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gfs import delta
from gfs.codec import (
    BLOB_HEADER_LEN,
    DELTA_PAD_MIN,
    FLAGS_SEALED_DELTA,
    chunk_id,
    decode_encrypted_blob,
    encode_encrypted_blob,
    encode_sealed_delta,
    keyed_chunk_id,
    padded_blob_len,
    parse_encrypted_header,
    sealed_bases,
)
from gfs.errors import CorruptChunkError
from gfs.federation import sealed_read
from gfs.federation.auth import EntityKeys
from gfs.federation.http import ApiError, BadRequestError
from gfs.federation.sealed_read import open_sealed
from gfs.federation.testing import Federation
from gfs.federation.vault import Vault
from tests.replicated import first_version, folder_chunks, hosted, next_version
from tests.similar_data import mutate, text

FILES = 3


def _keys(tmp_path: Path) -> EntityKeys:
    return EntityKeys.create(tmp_path / "keys", "bank-a")


def _pair(seed: int, size: int = 60_000, edits: int = 5) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    a = text(rng, size)
    return a, mutate(a, rng, edits)


def _sealed_pair(keys: EntityKeys, seed: int = 1) -> tuple[bytes, bytes, bytes, bytes]:
    """(base raw, new raw, sealed base, sealed delta of new against base)."""
    a, b = _pair(seed)
    h, p = delta.encode_delta(b, chunk_id(b), chunk_id(a), a, 3)
    return a, b, encode_encrypted_blob(a, keys.enc_key, keys.id_key), \
        encode_sealed_delta(h + p, keys.enc_key, keys.id_key)


# -- the codec ------------------------------------------------------------------------------

def test_sealed_delta_round_trip_and_what_its_clear_bytes_show(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    a, b, sa, sd = _sealed_pair(keys)
    ka, kb = keyed_chunk_id(chunk_id(a), keys.id_key), keyed_chunk_id(chunk_id(b), keys.id_key)
    head = parse_encrypted_header(sd)
    # the host sees: keyed id, the base's keyed id, a padded length; no codec, no raw length
    assert (head.flags, head.codec, head.raw_len, head.chunk_id) == (FLAGS_SEALED_DELTA, 0, 0, kb)
    assert sealed_bases(sd) == (ka,) and sealed_bases(sa) == ()
    assert padded_blob_len(len(sd), DELTA_PAD_MIN) == len(sd) < len(sa)
    clear = sd[:BLOB_HEADER_LEN + 16]
    for secret in (chunk_id(a), chunk_id(b), len(b).to_bytes(4, "little")):
        assert secret not in sd[:BLOB_HEADER_LEN + 16] and secret not in clear
    base = {chunk_id(a): a}.__getitem__
    assert decode_encrypted_blob(sd, chunk_id(b), keys.enc_key, keys.id_key, base) == b
    with pytest.raises(CorruptChunkError, match="without its base"):
        decode_encrypted_blob(sd, chunk_id(b), keys.enc_key, keys.id_key)


def test_delta_lengths_in_one_bucket_look_the_same(tmp_path: Path) -> None:
    """Two edits of different sizes give sealed deltas of one length: the host learns the
    bucket, not the delta's (nor the plaintext's) exact length."""
    keys = _keys(tmp_path)
    rng = random.Random(3)
    a = text(rng, 60_000)
    lengths = set()
    sizes = set()
    for n in (100, 140):
        b = a[:30_000] + rng.randbytes(n) + a[30_000:]
        h, p = delta.encode_delta(b, chunk_id(b), chunk_id(a), a, 3)
        sizes.add(len(h + p))
        lengths.add(len(encode_sealed_delta(h + p, keys.enc_key, keys.id_key)))
    assert len(sizes) == 2 and lengths == {DELTA_PAD_MIN}


def test_a_swapped_base_id_or_flipped_byte_is_refused(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    a, b, _, sd = _sealed_pair(keys)
    base = {chunk_id(a): a}.__getitem__
    other = keyed_chunk_id(b"x" * 16, keys.id_key)
    swapped = sd[:BLOB_HEADER_LEN] + other + sd[BLOB_HEADER_LEN + 16:]
    flipped = [sd[:i] + bytes([sd[i] ^ 4]) + sd[i + 1:] for i in (40, 60, 100, len(sd) - 1)]
    for bad in (swapped, *flipped):
        with pytest.raises(CorruptChunkError):
            decode_encrypted_blob(bad, chunk_id(b), keys.enc_key, keys.id_key, base)
    wrong_base = {chunk_id(a): a[:-1] + b"!"}.__getitem__
    with pytest.raises(CorruptChunkError, match="does not match"):
        decode_encrypted_blob(sd, chunk_id(b), keys.enc_key, keys.id_key, wrong_base)


# -- the host's vault -------------------------------------------------------------------------

def _vault_with_delta(tmp_path: Path) -> tuple[Vault, EntityKeys, bytes, bytes, bytes, bytes]:
    keys = _keys(tmp_path)
    _, _, sa, sd = _sealed_pair(keys)
    v = Vault(tmp_path / "vault")
    ka, kb = parse_encrypted_header(sa).chunk_id, parse_encrypted_header(sd).chunk_id
    v.put_many("bank-a", [(ka, sa, ())])
    v.put_many("bank-a", [(kb, sd, sealed_bases(sd))])
    return v, keys, ka, kb, sa, sd


def test_gc_keeps_a_base_while_a_delta_needs_it_and_frees_it_after(tmp_path: Path) -> None:
    v, _, ka, kb, _, _ = _vault_with_delta(tmp_path)
    v.pin("bank-a", "r1", [kb.hex()])  # the rule now names only the new version
    assert v.gc() == 0
    assert v.get("bank-a", ka) is not None and v.get("bank-a", kb) is not None
    assert v.has("bank-a", ka, whole=True) and not v.has("bank-a", kb, whole=True)
    v.unpin("bank-a", "r1")  # the dependent goes: its base is no longer kept either
    assert v.gc() == 2
    assert v.get("bank-a", ka) is None and v.get("bank-a", kb) is None
    assert not list((tmp_path / "vault" / "bank-a" / "deps").glob("*/*"))


def test_repairing_a_delta_whole_frees_its_base(tmp_path: Path) -> None:
    v, keys, ka, kb, _, _ = _vault_with_delta(tmp_path)
    _, b = _pair(1)
    v.pin("bank-a", "r1", [kb.hex()])
    v.put_many("bank-a", [(kb, encode_encrypted_blob(b, keys.enc_key, keys.id_key), ())],
               replace=True)
    assert v.has("bank-a", kb, whole=True)
    assert v.gc() == 1 and v.get("bank-a", ka) is None and v.get("bank-a", kb) is not None


def test_bad_delta_puts_are_refused_and_change_nothing(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    _, _, sa, sd = _sealed_pair(keys)
    v = Vault(tmp_path / "vault")
    kb = parse_encrypted_header(sd).chunk_id
    ka = parse_encrypted_header(sa).chunk_id
    with pytest.raises(BadRequestError, match="send the chunk whole"):  # base not held
        v.put_many("bank-a", [(kb, sd, (ka,))])
    assert v.owners() == [] or v.used("bank-a") == 0
    v.put_many("bank-a", [(ka, sa, ())])
    with pytest.raises(BadRequestError, match="whole sealed blob"):  # a repair as a delta
        v.put_many("bank-a", [(kb, sd, (ka,))], replace=True)
    v.put_many("bank-a", [(kb, sd, (ka,))])
    _, _, _, sd2 = _sealed_pair(keys, seed=2)
    kc = parse_encrypted_header(sd2).chunk_id
    with pytest.raises(BadRequestError, match="does not keep whole"):  # base is a delta
        v.put_many("bank-a", [(kc, sd2, (kb,))])
    assert not v.has("bank-a", kc)


def test_a_marker_left_by_a_killed_put_is_dropped(tmp_path: Path) -> None:
    v, _, ka, kb, _, _ = _vault_with_delta(tmp_path)
    deps = tmp_path / "vault" / "bank-a" / "deps"
    ghost = deps / "ab" / f"{'ab' * 16}.{ka.hex()}"  # marker written, blob never (kill -9)
    ghost.parent.mkdir(exist_ok=True)
    ghost.write_bytes(b"")
    old = time.time() - 3600
    os.utime(ghost, (old, old))
    v.pin("bank-a", "r1", [kb.hex(), "ab" * 16])
    v.gc()
    assert not ghost.exists() and (deps / kb.hex()[:2] / f"{kb.hex()}.{ka.hex()}").exists()


# -- through real sites -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with hosted(tmp_path_factory.mktemp("sealed-delta"), delta=True) as f:
        yield f


def _vault_files(fed: Federation) -> dict[str, bytes]:
    root = Path(str(fed.sites["t1"]["state"])) / "vault" / "bank-a"
    return {f.name: f.read_bytes() for f in root.glob("??/*") if not f.name.startswith(".")}


def test_n_plus_1_to_another_entity_goes_as_sealed_deltas(fed: Federation) -> None:
    rng = random.Random(23)
    keys = fed.keys("bank-a")
    with fed.client("bank-a") as fc, fed.client("telco-b") as tc:
        v1 = first_version(fc, "/bank-a/d", rng, FILES, 300_000)
        rule = fc.rule_add("/bank-a/d/**", 1, "entity=telco-b")
        [r1] = fc.reconcile("bank-a")
        assert r1["state"] == "ok" and r1["sites"] == ["t1"], r1
        old = set(folder_chunks(fc, "/bank-a/d", FILES))
        next_version(fc, "/bank-a/d", rng, v1, 20)
        ids = folder_chunks(fc, "/bank-a/d", FILES)
        new = [c for c in ids if c not in old]
        before = fed.metric("t1", "chunk_bytes_in_total")
        [r2] = fc.reconcile("bank-a")
        sent = fed.metric("t1", "chunk_bytes_in_total") - before
        assert r2["state"] == "ok", r2
        # the owner reads every new chunk back from the host, rebuilt and verified
        problems: list[str] = []
        got_whole = fc.fetch_chunks("t1", "bank-a", new, problems)
        assert not problems and set(got_whole) == set(new)
        sealed_whole = sum(len(encode_encrypted_blob(r, keys.enc_key, keys.id_key))
                           for r in got_whole.values())
        assert 0 < sent < sealed_whole / 3, (sent, sealed_whole)

        # the host's view: opaque blobs, some naming a base; no plain id, no raw length
        files = _vault_files(fed)
        heads = {n: parse_encrypted_header(b) for n, b in files.items()}
        deltas = {n: sealed_bases(b)[0] for n, b in files.items() if sealed_bases(b)}
        assert deltas and all(h.raw_len == 0 and h.codec == 0 for h in heads.values())
        [row] = [o for o in tc.site("t1").vault() if o["owner"] == "bank-a"]
        assert row["deltas"] == len(deltas) and row["blobs"] == len(files)
        blob_bytes = b"".join(files.values())
        assert not any(c in blob_bytes for c in set(ids) | old)

        # base removal: the rule now pins only the new version; gc keeps every base
        bases = {b.hex() for b in deltas.values() if b}
        assert bases and not bases & {keyed_chunk_id(c, keys.id_key).hex() for c in ids}
        tc.site("t1").gc()
        assert bases <= set(_vault_files(fed))
        problems = []
        assert set(fc.fetch_chunks("t1", "bank-a", new, problems)) == set(new), problems

        # a delta against a base the host lacks is refused whole, nothing stored
        a, b = _pair(9)
        h, p = delta.encode_delta(b, chunk_id(b), chunk_id(a), a, 3)
        orphan = encode_sealed_delta(h + p, keys.enc_key, keys.id_key)
        with pytest.raises(BadRequestError, match="send the chunk whole"):
            fc.site("t1").put([orphan], owner="bank-a")
        assert keyed_chunk_id(chunk_id(b), keys.id_key).hex() not in _vault_files(fed)

        # a damaged base is reported against its dependents, and the audit repairs both
        victim = sorted(bases)[0]
        path = next((Path(str(fed.sites["t1"]["state"])) / "vault" / "bank-a")
                    .glob(f"??/{victim}"))
        raw = bytearray(path.read_bytes())
        raw[200] ^= 1
        path.write_bytes(bytes(raw))
        dependents = {n for n, base in deltas.items() if base and base.hex() == victim}
        problems = []
        got = fc.fetch_chunks("t1", "bank-a", new, problems)
        hit = [c for c in new if keyed_chunk_id(c, keys.id_key).hex() in dependents]
        assert hit and not set(hit) & set(got)
        assert all(any(c.hex() in p and "sealed delta against base" in p for p in problems)
                   for c in hit), problems
        [r3] = fc.reconcile("bank-a", verify=True)
        assert r3["state"] == "ok" and r3["repaired"] >= len(hit), r3
        problems = []
        assert set(fc.fetch_chunks("t1", "bank-a", new, problems)) == set(new), problems

        # removing the rule unpins everything: dependents and bases all go
        fc.rule_rm("bank-a", rule["id"])
        tc.site("t1").gc()
        assert _vault_files(fed) == {}


def test_open_sealed_reports_a_missing_base_against_the_delta(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    a, b, _, sd = _sealed_pair(keys)
    opened = open_sealed({chunk_id(b): sd}, lambda kids: [None] * len(kids), keys)
    assert not opened.raws and opened.bad_bases == {chunk_id(a)}
    err = opened.errors[chunk_id(b)]
    assert chunk_id(b).hex() in str(err) and chunk_id(a).hex() in str(err)
    assert isinstance(err, CorruptChunkError) and not isinstance(err, ApiError)


# -- property: whatever the order of puts, pins, repairs and gc, no kept delta loses its base

_OPS = st.lists(st.one_of(
    st.tuples(st.just("whole"), st.integers(0, 3)),
    st.tuples(st.just("delta"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("repair"), st.integers(0, 3)),
    st.tuples(st.just("pin"), st.integers(0, 1), st.sets(st.integers(0, 3), max_size=2)),
    st.tuples(st.just("unpin"), st.integers(0, 1)),
    st.tuples(st.just("gc"))), max_size=30)


def _kid(i: int) -> bytes:
    return bytes([i]) * 16


@settings(max_examples=300, deadline=None)
@given(_OPS)
@example([("whole", 1), ("delta", 2, 1), ("pin", 0, {2}), ("gc",)])
@example([("whole", 1), ("delta", 2, 1), ("pin", 0, {2}), ("repair", 2), ("gc",)])
def test_no_sequence_of_operations_leaves_a_kept_delta_without_its_base(
        ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        v = Vault(Path(d))
        bases: dict[int, int] = {}  # delta -> base, as the model holds them
        for op in ops:
            held = {i for i in range(4) if v.has("o", _kid(i))}
            if op[0] == "whole":
                v.put_many("o", [(_kid(op[1]), b"w%d" % op[1], ())])
            elif op[0] == "delta":
                _, i, j = op
                try:
                    v.put_many("o", [(_kid(i), b"d%d" % i, (_kid(j),))])
                except BadRequestError:
                    assert i == j or j not in held or j in bases
                    assert {i for i in range(4) if v.has("o", _kid(i))} == held
                    continue
                if i not in held:
                    bases[i] = j
            elif op[0] == "repair":
                v.put_many("o", [(_kid(op[1]), b"w%d" % op[1], ())], replace=True)
                bases.pop(op[1], None)
            elif op[0] == "pin":
                v.pin("o", f"r{op[1]}", [_kid(i).hex() for i in op[2]])
            elif op[0] == "unpin":
                v.unpin("o", f"r{op[1]}")
            else:
                pinned = {i for i in held if any(
                    _kid(i).hex() in json.loads(f.read_bytes())
                    for f in (Path(d) / "o" / "pins").glob("*.json"))}
                v.gc()
                now = {i for i in range(4) if v.has("o", _kid(i))}
                assert pinned <= now
                bases = {i: j for i, j in bases.items() if i in now}
            now = {i for i in range(4) if v.has("o", _kid(i))}
            for i, j in bases.items():  # every delta still held still has its base, whole
                assert i in now and j in now and v.has("o", _kid(j), whole=True), (i, j)
                assert not v.has("o", _kid(i), whole=True)


def test_a_base_shared_by_deltas_is_fetched_and_opened_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _keys(tmp_path)
    a, b = _pair(5)
    c = mutate(a, random.Random(6), 5)
    sa = encode_encrypted_blob(a, keys.enc_key, keys.id_key)
    deltas = {}
    for new in (b, c):
        h, p = delta.encode_delta(new, chunk_id(new), chunk_id(a), a, 3)
        deltas[chunk_id(new)] = encode_sealed_delta(h + p, keys.enc_key, keys.id_key)
    asked: list[list[bytes]] = []
    opened_ids: list[bytes] = []
    real = sealed_read.decode_encrypted_blob

    def counting(blob: bytes, cid: bytes, *args: Any) -> bytes:
        opened_ids.append(cid)
        return real(blob, cid, *args)
    def get(kids: list[bytes]) -> list[bytes | None]:
        asked.append(kids)
        return [sa] * len(kids)
    monkeypatch.setattr(sealed_read, "decode_encrypted_blob", counting)
    out = open_sealed(deltas, get, keys)
    assert out.raws == {chunk_id(b): b, chunk_id(c): c} and not out.errors
    assert asked == [[keyed_chunk_id(chunk_id(a), keys.id_key)]]
    assert opened_ids.count(chunk_id(a)) == 1
