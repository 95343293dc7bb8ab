"""Two-base deltas (docs/format.md "Two-base delta blob (codec 4)"): a chunk that holds the
tail of one old chunk and all of the next, sent as a delta against both. It rebuilds to
its id or fails naming the chunk and its bases; sealed, the host sees both base keyed ids
and nothing more, keeps both bases while the delta is kept, and refuses a delta whose
bases it does not keep whole; the sender finds the second base among the neighbours."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import chunking, delta, delta_transfer
from gfs.client import Client
from gfs.codec import (
    BLOB_HEADER_LEN,
    CODEC_DELTA,
    CODEC_DELTA2,
    DELTA_PAD_MIN,
    FLAGS_SEALED_DELTA2,
    BlobHeader,
    chunk_id,
    decode_blob,
    decode_encrypted_blob,
    encode_encrypted_blob,
    encode_sealed_delta,
    keyed_chunk_id,
    padded_blob_len,
    parse_blob_header,
    parse_encrypted_header,
    sealed_bases,
)
from gfs.errors import CorruptChunkError
from gfs.federation.auth import EntityKeys
from gfs.federation.http import BadRequestError
from gfs.federation.sealed_read import open_sealed
from gfs.federation.testing import Federation
from gfs.federation.vault import Vault
from tests.replicated import folder_chunks, hosted, write_version
from tests.similar_data import mutate, text
from tests.site_chunks import assert_bad_deltas_refused, site_blobs, site_has


def _spanning(seed: int, tail: int = 9000, size: int = 30_000) -> tuple[bytes, bytes, bytes]:
    """(a, b, x): x is the last `tail` bytes of a followed by b, a little edited; a's
    tail is random bytes, so one base alone leaves it all to send."""
    rng = random.Random(seed)
    a = text(rng, size - tail) + rng.randbytes(tail)
    b = text(rng, size)
    return a, b, mutate(a[-tail:] + b, rng, 3)


def _two(a: bytes, b: bytes, x: bytes, level: int = 19) -> bytes:
    h, p = delta.encode_delta2(x, chunk_id(x), (chunk_id(a), chunk_id(b)), (a, b), level)
    return h + p


def _one(base: bytes, x: bytes, level: int = 19) -> bytes:
    h, p = delta.encode_delta(x, chunk_id(x), chunk_id(base), base, level)
    return h + p


# -- the codec ------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), tail=st.integers(4096, 20_000),
       damaged=st.sampled_from([0, 1]))
def test_a_two_base_delta_rebuilds_to_its_id_or_names_its_bases(
        seed: int, tail: int, damaged: int) -> None:
    a, b, x = _spanning(seed, tail)
    blob = _two(a, b, x)
    head = parse_blob_header(blob)
    assert (head.codec, head.raw_len, head.chunk_id) == (CODEC_DELTA2, len(x), chunk_id(x))
    assert len(blob) < min(len(_one(a, x)), len(_one(b, x)))
    bases = {chunk_id(a): a, chunk_id(b): b}
    assert decode_blob(blob, expect_id=chunk_id(x), base=bases.__getitem__) == x
    # either base damaged where x takes bytes from it: refused, naming the chunk and both
    # bases (a reader verifies each base first; this one hands them over unchecked)
    victim = (a, b)[damaged]
    at = len(a) - tail // 2 if damaged == 0 else len(b) // 2
    bad = dict(bases)
    bad[chunk_id(victim)] = victim[:at] + bytes(c ^ 1 for c in victim[at:at + 64]) \
        + victim[at + 64:]
    with pytest.raises(CorruptChunkError) as e:
        decode_blob(blob, expect_id=chunk_id(x), base=bad.__getitem__)
    assert chunk_id(a).hex() in str(e.value) and chunk_id(b).hex() in str(e.value)
    assert chunk_id(x).hex() in str(e.value)


def test_two_base_deltas_that_cannot_be_read_are_refused() -> None:
    a, b, x = _spanning(1)
    blob = _two(a, b, x)
    with pytest.raises(CorruptChunkError, match="without its bases"):
        decode_blob(blob)
    for pair in ((chunk_id(a), chunk_id(a)), (chunk_id(x), chunk_id(b))):
        with pytest.raises(ValueError, match="two other bases"):
            delta.encode_delta2(x, chunk_id(x), pair, (a, b), 3)
    # a blob naming one base twice (written by hand) is refused before any base is read
    payload = chunk_id(a) + chunk_id(a) + blob[BLOB_HEADER_LEN + 32:]
    twice = BlobHeader(CODEC_DELTA2, 0, len(x), len(payload), chunk_id(x)).to_bytes() + payload
    with pytest.raises(CorruptChunkError, match="names a base twice"):
        decode_blob(twice, base={chunk_id(a): a}.__getitem__)
    short = BlobHeader(CODEC_DELTA2, 0, len(x), 32, chunk_id(x)).to_bytes() + bytes(32)
    with pytest.raises(CorruptChunkError, match="payload length 32"):
        decode_blob(short, base={}.__getitem__)


# -- sealed: what the host sees and keeps ------------------------------------------------------

def _keys(tmp_path: Path) -> EntityKeys:
    return EntityKeys.create(tmp_path / "keys", "bank-a")


def _sealed(keys: EntityKeys, seed: int = 1) -> tuple[list[bytes], list[bytes], bytes]:
    """([a, b, x], [sealed a, sealed b], sealed two-base delta of x)."""
    a, b, x = _spanning(seed)
    sealed = [encode_encrypted_blob(c, keys.enc_key, keys.id_key) for c in (a, b)]
    return [a, b, x], sealed, encode_sealed_delta(_two(a, b, x), keys.enc_key, keys.id_key)


def test_a_sealed_two_base_delta_shows_only_keyed_ids_and_a_bucket(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    (a, b, x), _, sd = _sealed(keys)
    ka, kb, kx = (keyed_chunk_id(chunk_id(c), keys.id_key) for c in (a, b, x))
    head = parse_encrypted_header(sd)
    assert (head.flags, head.codec, head.raw_len, head.chunk_id) == (FLAGS_SEALED_DELTA2, 0, 0,
                                                                     kx)
    assert sealed_bases(sd) == (ka, kb)
    assert len(sd) == padded_blob_len(len(sd), DELTA_PAD_MIN) == DELTA_PAD_MIN
    for secret in (chunk_id(a), chunk_id(b), chunk_id(x), len(x).to_bytes(4, "little")):
        assert secret not in sd
    bases = {chunk_id(a): a, chunk_id(b): b}.__getitem__
    assert decode_encrypted_blob(sd, chunk_id(x), keys.enc_key, keys.id_key, bases) == x


def test_a_tampered_sealed_two_base_delta_is_refused(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    (a, b, x), _, sd = _sealed(keys)
    bases = {chunk_id(a): a, chunk_id(b): b}.__getitem__
    other = keyed_chunk_id(b"x" * 16, keys.id_key)
    at = BLOB_HEADER_LEN + 16  # the second base's keyed id, in clear
    swapped = sd[:at] + other + sd[at + 16:]
    reordered = sd[:BLOB_HEADER_LEN] + sd[at:at + 16] + sd[BLOB_HEADER_LEN:at] + sd[at + 16:]
    flipped = [sd[:i] + bytes([sd[i] ^ 4]) + sd[i + 1:] for i in (60, 90, len(sd) - 1)]
    for bad in (swapped, reordered, *flipped):
        with pytest.raises(CorruptChunkError):
            decode_encrypted_blob(bad, chunk_id(x), keys.enc_key, keys.id_key, bases)
    same = sd[:at] + sd[BLOB_HEADER_LEN:at] + sd[at + 16:]  # one base named twice
    with pytest.raises(CorruptChunkError, match="one base twice"):
        parse_encrypted_header(same)


def test_the_host_keeps_both_bases_while_the_delta_is_kept(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    (a, b, x), (sa, sb), sd = _sealed(keys)
    ka, kb, kx = (keyed_chunk_id(chunk_id(c), keys.id_key) for c in (a, b, x))
    v = Vault(tmp_path / "vault")
    v.put_many("bank-a", [(ka, sa, ())])
    with pytest.raises(BadRequestError, match=f"{kb.hex()}, which this site does not keep"):
        v.put_many("bank-a", [(kx, sd, sealed_bases(sd))])  # the second base is not held
    assert v.get("bank-a", kx) is None
    assert not list((tmp_path / "vault" / "bank-a" / "deps").glob("*/*"))
    v.put_many("bank-a", [(kb, sb, ())])
    v.put_many("bank-a", [(kx, sd, sealed_bases(sd))])
    v.pin("bank-a", "r1", [kx.hex()])  # the rule names only the new chunk
    assert v.gc() == 0 and v.get("bank-a", ka) == sa and v.get("bank-a", kb) == sb
    assert not v.has("bank-a", kx, whole=True)
    # the owner's repair stores it whole: both bases are free, and go at the next gc
    v.put_many("bank-a", [(kx, encode_encrypted_blob(x, keys.enc_key, keys.id_key), ())],
               replace=True)
    assert v.gc() == 2 and v.get("bank-a", ka) is None and v.get("bank-a", kb) is None


def test_a_missing_second_base_is_reported_against_the_delta(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    (a, b, x), (sa, _), sd = _sealed(keys)
    by_kid = {keyed_chunk_id(chunk_id(a), keys.id_key): sa}
    opened = open_sealed({chunk_id(x): sd}, lambda kids: [by_kid.get(k) for k in kids], keys)
    assert not opened.raws and opened.bad_bases == {chunk_id(b)}
    err = opened.errors[chunk_id(x)]
    assert chunk_id(x).hex() in str(err) and chunk_id(b).hex() in str(err)


# -- the sender ---------------------------------------------------------------------------------

def test_the_sender_takes_a_second_base_from_a_neighbour(tmp_path: Path) -> None:
    """A literal-heavy delta is tried against a second base a neighbour offers (the
    neighbour itself when the receiver holds it, else its own held candidate) and the
    smaller kept; without neighbours, or none held, it goes against one base."""
    a, b, x = _spanning(5)
    src = tmp_path / "src"
    src.mkdir()
    for name, data in (("a", a), ("b", b), ("x", x)):
        (src / name).write_bytes(data)
    with Client.init(tmp_path / "s", delta=True) as fs:
        fs.put(src, "/d")
        ia, ib, ix = (chunk_id(c) for c in (a, b, x))
        assert [r.id for r in fs.manifest("/d/x").chunks] == [ix]  # one chunk a file
        store = fs.store
        cands = {ix: [ib]}
        p = b"p" * 16  # a new neighbour before x, itself resembling a
        cases = {"held neighbour": ({ix: [ia]}, {ia, ib}, CODEC_DELTA2),
                 "its candidate": ({ix: [p]}, {ia, ib}, CODEC_DELTA2),
                 "no neighbours": (None, {ia, ib}, CODEC_DELTA),
                 "not held": ({ix: [ia]}, {ib}, CODEC_DELTA)}
        sizes = {}
        for name, (near, held, codec) in cases.items():
            out = delta_transfer.encode(store, {}, {**cands, p: [ia]}, held, near=near)
            blob = out[ix]
            assert parse_blob_header(blob).codec == codec, name
            reader = {ia: a, ib: b}.__getitem__
            assert decode_blob(blob, expect_id=ix, base=reader) == x, name
            sizes[name] = len(blob)
        assert sizes["held neighbour"] < sizes["no neighbours"] / 10, sizes


def test_neighbours_are_the_chunks_before_and_after_in_each_file() -> None:
    ids = [bytes([i]) * 16 for i in range(5)]
    near = delta_transfer.neighbours([[ids[0], ids[1], ids[2]], [ids[3], ids[1]], [ids[4]]],
                                     ids)
    assert near == {ids[0]: [ids[1]], ids[1]: [ids[0], ids[2], ids[3]], ids[2]: [ids[1]],
                    ids[3]: [ids[1]], ids[4]: []}


# -- through real sites -------------------------------------------------------------------------

def _boundary_edit() -> tuple[bytes, bytes]:
    """A text file and a next version with 2,000 random bytes inserted where the cut point
    after the edited chunk moves one chunk on: a new chunk then holds at least 12,000
    bytes of the old chunk's tail and the whole next one (found by trying; chunking is
    deterministic, so the same edit every run)."""
    for seed in range(20):
        rng = random.Random(seed)
        data = text(rng, 400_000)
        cuts = chunking.cut_points(data)
        ins = rng.randbytes(2000)
        for k in range(len(cuts) - 1):
            start = cuts[k - 1] if k else 0
            for _ in range(40):
                pos = rng.randrange(start, cuts[k])
                new = data[:pos] + ins + data[pos:]
                moved = cuts[k] + len(ins)  # the old cut point, in the new version
                new_cuts = chunking.cut_points(new)
                if moved in new_cuts:
                    continue
                begin = max([0] + [c for c in new_cuts if c < moved])
                if begin >= pos + len(ins) and moved - begin >= 12_000:
                    return data, new
    raise AssertionError("no edit moved a cut point")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with hosted(tmp_path_factory.mktemp("two-base"), own=["a2"], delta=True) as f:
        yield f


def _vault_files(fed: Federation) -> dict[str, bytes]:
    root = Path(str(fed.sites["t1"]["state"])) / "vault" / "bank-a"
    return {f.name: f.read_bytes() for f in root.glob("??/*") if not f.name.startswith(".")}


def test_an_edit_that_moves_a_cut_point_goes_as_a_sealed_two_base_delta(
        fed: Federation) -> None:
    old, new = _boundary_edit()
    keys = fed.keys("bank-a")
    with fed.client("bank-a") as fc, fed.client("telco-b") as tc:
        write_version(fc, "/bank-a/e", [old])
        rule = fc.rule_add("/bank-a/e/**", 1, "entity=telco-b")
        [r1] = fc.reconcile("bank-a")
        assert r1["state"] == "ok" and r1["sites"] == ["t1"], r1
        before = set(folder_chunks(fc, "/bank-a/e", 1))
        write_version(fc, "/bank-a/e", [new])
        fresh = [c for c in folder_chunks(fc, "/bank-a/e", 1) if c not in before]
        [r2] = fc.reconcile("bank-a")
        assert r2["state"] == "ok", r2

        # the chunk past the edit (over 12,000 bytes of one old chunk and all of the next)
        # went as a sealed delta against both, at the 512-byte floor
        files = _vault_files(fed)
        two = {n: sealed_bases(b) for n, b in files.items() if len(sealed_bases(b)) == 2}
        assert len(two) == 1 and len(fresh) == 2, (two, fresh)
        [(kx, (kp, kq))] = two.items()
        assert kx not in {keyed_chunk_id(c, keys.id_key).hex() for c in before}
        assert len(files[kx]) == DELTA_PAD_MIN
        assert {kp, kq} <= {keyed_chunk_id(c, keys.id_key) for c in before}

        problems: list[str] = []
        assert set(fc.fetch_chunks("t1", "bank-a", fresh, problems)) == set(fresh), problems
        # the rule names only the new version now; the host keeps both bases for the delta
        tc.site("t1").gc()
        assert {kp.hex(), kq.hex()} <= set(_vault_files(fed))

        # the second base damaged: the delta is reported naming it, an audit repairs both
        path = next((Path(str(fed.sites["t1"]["state"])) / "vault" / "bank-a")
                    .glob(f"??/{kq.hex()}"))
        raw = bytearray(path.read_bytes())
        raw[200] ^= 1
        path.write_bytes(bytes(raw))
        problems = []
        got = fc.fetch_chunks("t1", "bank-a", fresh, problems)
        [hit] = [c for c in fresh if keyed_chunk_id(c, keys.id_key).hex() == kx]
        assert hit not in got
        assert any(hit.hex() in p and "sealed delta against base" in p for p in problems), \
            problems
        [r3] = fc.reconcile("bank-a", verify=True)
        assert r3["state"] == "ok" and r3["repaired"] >= 1, r3
        problems = []
        assert set(fc.fetch_chunks("t1", "bank-a", fresh, problems)) == set(fresh), problems

        fc.rule_rm("bank-a", rule["id"])
        tc.site("t1").gc()
        assert _vault_files(fed) == {}


def test_a_site_of_the_same_entity_rebuilds_a_two_base_delta_from_its_own_bases(
        fed: Federation) -> None:
    """A plain two-base delta put to a2 is rebuilt against a2's own copies of both bases
    and stored verified; one naming a base a2 lacks, or tampered, is refused and nothing
    is stored."""
    a, b, x = _spanning(7)
    with fed.client("bank-a") as fc:
        write_version(fc, "/bank-a/p", [a, b])
        rule = fc.rule_add("/bank-a/p/**", 2, "entity=bank-a")
        [r] = fc.reconcile("bank-a")
        assert r["state"] == "ok" and "a2" in r["sites"], r
        assert site_has(fc, "a2", [chunk_id(a), chunk_id(b)]) == [True, True]
        blob = _two(a, b, x, 3)
        tampered = bytearray(blob)
        tampered[-4] ^= 0x10
        absent = text(random.Random(8), 20_000)  # a base a2 has never seen
        h, p = delta.encode_delta2(x, chunk_id(x), (chunk_id(a), chunk_id(absent)), (a, absent),
                                   3)
        assert_bad_deltas_refused(fed, fc, "a2", chunk_id(x), bytes(tampered), h + p,
                                  chunk_id(absent))
        assert fc.site("a2").put([blob]).stored == 1
        [got] = site_blobs(fc, "a2", [chunk_id(x)])
        assert parse_blob_header(got).codec != CODEC_DELTA2  # stored by a2's own policy
        assert decode_blob(got, expect_id=chunk_id(x)) == x
        fc.rule_rm("bank-a", rule["id"])


def test_neighbours_are_kept_only_for_the_chunks_sent_and_bounded() -> None:
    """Only the chunks asked about get neighbours, at most NEAR_MOST each, the first
    found first: a chunk in every file (a common header) does not gather two a file."""
    common, sent = b"c" * 16, b"s" * 16
    files = [[common, bytes([i]) * 16, sent] for i in range(50)]
    near = delta_transfer.neighbours(files, [common])
    assert list(near) == [common]
    assert near[common] == [bytes([i]) * 16 for i in range(delta_transfer.NEAR_MOST)]
