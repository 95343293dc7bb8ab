"""Delta chunks: codec 2 blobs, the store's write path, gc and fsck (real LMDB, real pools)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs import delta, groups, resemblance
from gfs.client import Client
from gfs.codec import CODEC_DELTA, chunk_id, decode_blob, parse_blob_header
from gfs.config import StoreConfig
from gfs.errors import CorruptChunkError
from gfs.packs import pack_key
from gfs.testing.faults import flip_byte
from tests.similar_data import count_reads, mutate, text, two_versions


def _records(fs: Client) -> dict[bytes, int]:
    with fs.engine.read() as txn:
        return {rec.id: rec.codec for rec in txn.iter_chunks()}


# -- the blob ---------------------------------------------------------------------------

def test_delta_blob_round_trip_and_header() -> None:
    rng = random.Random(1)
    base = text(rng, 60_000)
    new = mutate(base, rng, 5)
    cid, bid = chunk_id(new), chunk_id(base)
    header, payload = delta.encode_delta(new, cid, bid, base, 3)
    blob = header + payload
    head = parse_blob_header(blob)
    assert (head.codec, head.raw_len, head.chunk_id) == (CODEC_DELTA, len(new), cid)
    assert delta.base_of(blob) == bid
    assert len(payload) < 2000  # a few edits cost a few hundred bytes, not 60 KB
    assert decode_blob(blob, expect_id=cid, base={bid: base}.__getitem__) == new


def test_delta_blob_without_its_base_is_refused() -> None:
    rng = random.Random(2)
    base = text(rng, 10_000)
    new = mutate(base, rng, 2)
    header, payload = delta.encode_delta(new, chunk_id(new), chunk_id(base), base, 3)
    with pytest.raises(CorruptChunkError, match="without its base"):
        decode_blob(header + payload)


def test_delta_blob_with_a_wrong_base_names_the_base() -> None:
    rng = random.Random(3)
    base = text(rng, 10_000)
    new = mutate(base, rng, 2)
    bid = chunk_id(base)
    header, payload = delta.encode_delta(new, chunk_id(new), bid, base, 3)
    wrong = mutate(base, rng, 30)
    with pytest.raises(CorruptChunkError, match=bid.hex()):
        decode_blob(header + payload, base=lambda _: wrong)


def test_a_chunk_is_not_its_own_base() -> None:
    with pytest.raises(ValueError, match="itself"):
        delta.encode_delta(b"x" * 100, b"\1" * 16, b"\1" * 16, b"x" * 100, 3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 70_000), edits=st.integers(0, 40),
       flip=st.booleans())
def test_a_delta_always_reconstructs_to_its_id(seed: int, size: int, edits: int,
                                               flip: bool) -> None:
    rng = random.Random(seed)
    base = text(rng, size) if not flip else rng.randbytes(size)
    new = mutate(base, rng, edits)
    cid, bid = chunk_id(new), chunk_id(base)
    if cid == bid:
        return
    header, payload = delta.encode_delta(new, cid, bid, base, 3)
    raw = decode_blob(header + payload, expect_id=cid, base={bid: base}.__getitem__)
    assert raw == new and chunk_id(raw) == cid


def test_saving_threshold() -> None:
    assert delta.pays(74, 100) and not delta.pays(75, 100)


# -- the store --------------------------------------------------------------------------

def test_similar_versions_are_stored_as_deltas_and_read_back(dfs: Client,
                                                             tmp_path: Path) -> None:
    rng = random.Random(5)
    versions = [text(rng, 1_500_000)]
    for _ in range(3):
        versions.append(mutate(versions[-1], rng, 60))
    for i, v in enumerate(versions):
        dfs.write_bytes(f"/v{i}", v)
    for i, v in enumerate(versions):
        assert dfs.read_bytes(f"/v{i}") == v
    codecs = _records(dfs)
    assert sum(c == CODEC_DELTA for c in codecs.values()) >= len(codecs) // 3
    plain = Client.init(tmp_path / "plain", pack_size=1 << 20, workers=2)
    try:
        for i, v in enumerate(versions):
            plain.write_bytes(f"/v{i}", v)
        stored = {fs_: sum(r.stored_len for r in _iter_records(fs_)) for fs_ in (dfs, plain)}
    finally:
        plain.close()
    assert stored[dfs] < 0.6 * stored[plain], stored
    assert dfs.fsck().ok


def _iter_records(fs: Client) -> list:  # type: ignore[type-arg]
    with fs.engine.read() as txn:
        return list(txn.iter_chunks())


def test_deltas_pin_their_bases_through_refcounts(dfs: Client) -> None:
    _, b = two_versions(dfs, 6, 600_000, 20)
    with dfs.engine.read() as txn:
        deltas = dict(txn.iter_values(delta.DELTAS))
        assert deltas
        for cid, base in deltas.items():
            rec, brec = txn.get_chunk(cid), txn.get_chunk(base)
            assert rec is not None and brec is not None
            assert rec.codec == CODEC_DELTA and brec.codec != CODEC_DELTA  # depth 1
    dfs.rm("/a")
    dfs.gc()
    assert dfs.read_bytes("/b") == b  # the bases outlived the file that wrote them
    assert dfs.fsck().ok
    dfs.rm("/b")
    report = dfs.gc()
    assert report.chunks_removed > 0
    with dfs.engine.read() as txn:
        assert list(txn.iter_chunks()) == []
        assert list(txn.iter_values(delta.DELTAS)) == []
        assert list(txn.iter_values(resemblance.TABLE)) == []
    assert dfs.fsck().ok


def test_read_blob_of_a_delta_is_whole(dfs: Client) -> None:
    """What leaves the store (repair sources, replication) must not need a base."""
    two_versions(dfs, 7, 300_000, 10)
    with dfs.engine.read() as txn:
        cid = next(iter(dict(txn.iter_values(delta.DELTAS))))
    blob = dfs.store.read_blob(cid)
    assert parse_blob_header(blob).codec != CODEC_DELTA
    assert chunk_id(decode_blob(blob, expect_id=cid)) == cid


def test_a_damaged_base_is_reported_against_every_dependent_file(dfs: Client) -> None:
    rng = random.Random(8)
    a = text(rng, 400_000)
    dfs.write_bytes("/a", a)
    dfs.write_bytes("/b", mutate(a, rng, 10))
    dfs.write_bytes("/c", mutate(a, rng, 10))
    other = rng.randbytes(200_000)
    dfs.write_bytes("/other", other)
    base = _damage_busiest_base(dfs)
    report = dfs.fsck()
    assert not report.ok
    assert base.hex() in " ".join(report.problems)
    dependent = {p for p in ("/a", "/b", "/c") if _names_base_or_delta(dfs, p, base)}
    assert {"/b", "/c"} <= dependent
    assert set(report.damaged_files) == dependent
    assert dfs.read_bytes("/other") == other
    with pytest.raises(CorruptChunkError):
        dfs.read_bytes("/b")


def _damage_busiest_base(fs: Client) -> bytes:
    """Flip a byte in the stored copy of the base most deltas depend on; return its id."""
    with fs.engine.read() as txn:
        deps = Counter(delta.base_refs(txn))
        base = max(deps, key=lambda x: deps[x])
        rec = txn.get_chunk(base)
        assert rec is not None
        loc = rec.locations[0]
    flip_byte(fs.store.pool(loc.pool), pack_key(loc.pack), loc.offset + loc.length // 2)
    return base


def _names_base_or_delta(fs: Client, path: str, base: bytes) -> bool:
    with fs.engine.read() as txn:
        m = txn.get_manifest(fs.stat(path).ino)
        deltas = dict(txn.iter_values(delta.DELTAS))
    assert m is not None
    return any(r.id == base or deltas.get(r.id) == base for r in m.chunks)


def test_delta_setting_round_trips_through_the_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = StoreConfig(delta=True)
    (tmp_path / "config.toml").write_text(cfg.to_toml())
    assert StoreConfig.load(tmp_path).delta is True
    assert StoreConfig.load(tmp_path, {"delta": False}).delta is False
    monkeypatch.setenv("HUTONG_DELTA", "0")
    assert StoreConfig.load(tmp_path).delta is False
    monkeypatch.setenv("HUTONG_DELTA", "maybe")
    with pytest.raises(ValueError, match="HUTONG_DELTA"):
        StoreConfig.load(tmp_path)


# -- removing bases never loses a dependent chunk -----------------------------------------

_OPS = st.lists(st.tuples(st.sampled_from(["put", "rm", "gc"]), st.integers(0, 3),
                          st.integers(0, 2**16)), min_size=3, max_size=12)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=_OPS)
def test_gc_never_loses_a_dependent_chunk(tmp_path_factory: pytest.TempPathFactory,
                                          ops: list[tuple[str, int, int]]) -> None:
    root = tmp_path_factory.mktemp("delta-model")
    fs = Client.init(root / "state", pack_size=1 << 18, workers=2, delta=True)
    try:
        rng = random.Random(99)
        seed_text = text(rng, 200_000)
        model: dict[str, bytes] = {}
        for op, slot, seed in ops:
            path = f"/f{slot}"
            if op == "put":
                parent = model.get(f"/f{(slot + 1) % 4}", seed_text)
                data = mutate(parent, random.Random(seed), 8)
                fs.write_bytes(path, data)
                model[path] = data
            elif op == "rm" and path in model:
                fs.rm(path)
                del model[path]
            elif op == "gc":
                fs.gc()
            for p, data in model.items():
                assert fs.read_bytes(p) == data
        fs.gc()
        report = fs.fsck()
        assert report.ok, report.problems[:5]
        for p, data in model.items():
            assert fs.read_bytes(p) == data
    finally:
        fs.close()


def test_mover_sends_delta_chunks_whole(dfs: Client, tmp_path: Path) -> None:
    """A peer without the base still gets a verifiable chunk."""
    from gfs import mover

    two_versions(dfs, 12, 400_000, 10)
    with dfs.engine.read() as txn:
        deltas = dict(txn.iter_values(delta.DELTAS))
    assert deltas
    secret = bytes(range(32))
    dst = Client.init(tmp_path / "dst", pack_size=1 << 20, workers=2)
    try:
        with mover.MoverServer(dfs, secret, timeout=5.0) as srv:
            stats = mover.fetch(dst, srv.address, list(deltas), secret)
        assert stats.committed == len(deltas) and stats.rejected == 0
        for cid in deltas:
            assert dst.store.read_chunk(cid) == dfs.store.read_chunk(cid)
        with dst.engine.read() as txn:
            assert all(txn.get_chunk(cid).codec != CODEC_DELTA for cid in deltas)  # type: ignore[union-attr]
    finally:
        dst.close()


def test_repairing_a_damaged_base_heals_its_deltas(dfs: Client, tmp_path: Path) -> None:
    """repair restores the base from another store and leaves the intact deltas alone."""
    from gfs.repair import repair

    a, b = two_versions(dfs, 13, 400_000, 10)
    _damage_busiest_base(dfs)
    with pytest.raises(CorruptChunkError):
        dfs.read_bytes("/b")
    source = Client.init(tmp_path / "source", pack_size=1 << 20, workers=2)
    try:
        source.write_bytes("/a", a)  # holds the bases, not the deltas
        report = repair(dfs.store, [source.store])
    finally:
        source.close()
    assert report.repaired >= 1 and report.lost == []
    assert dfs.read_bytes("/a") == a and dfs.read_bytes("/b") == b
    assert dfs.fsck().ok


def test_gc_repacks_delta_blobs_with_their_pack(dfs: Client, tmp_path: Path) -> None:
    """A sparse pack holding deltas is repacked: the blobs move, verified, bases kept."""
    rng = random.Random(14)
    a = text(rng, 300_000)
    b = mutate(a, rng, 10)
    dfs.write_bytes("/a", a)
    src = tmp_path / "src"
    src.mkdir()
    (src / "b").write_bytes(b)
    (src / "junk").write_bytes(rng.randbytes(600_000))
    dfs.put(str(src), "/one")  # b's deltas and junk in one pack
    with dfs.engine.read() as txn:  # (a's small chunks are group members: not in that pack)
        moved = {cid: base for cid, base in txn.iter_values(delta.DELTAS)
                 if txn.get_chunk(cid).codec == CODEC_DELTA}  # type: ignore[union-attr]
        before = {cid: txn.get_chunk(cid).locations for cid in moved}  # type: ignore[union-attr]
    assert moved
    dfs.rm("/one/junk")
    report = dfs.gc()
    assert report.packs_repacked >= 1
    with dfs.engine.read() as txn:
        after = {cid: txn.get_chunk(cid).locations for cid in moved}  # type: ignore[union-attr]
    assert all(after[cid] != before[cid] for cid in moved)  # the delta blobs moved
    assert dfs.read_bytes("/a") == a and dfs.read_bytes("/one/b") == b
    assert dfs.fsck().ok


def test_tierer_moves_delta_chunks_as_they_are(dfs: Client, tmp_path: Path) -> None:
    """Demoted to cold (recompressed there), a delta stays a delta and still reads back."""
    from gfs.tiering.policy import TierPolicy
    from gfs.tiering.tierer import run, tier_usage

    dfs.add_pool("archive", str(tmp_path / "cold"), tier="cold")
    a, b = two_versions(dfs, 15, 300_000, 10)
    with dfs.engine.read() as txn:  # deltas, and small chunks as group members
        deltas = {c: txn.get_chunk(c).codec  # type: ignore[union-attr]
                  for c, _ in txn.iter_values(delta.DELTAS)}
    assert CODEC_DELTA in deltas.values()
    with dfs.engine.write() as txn:
        TierPolicy(demote_idle=1e-3, cold_level=19).save(txn)
    report = run(dfs.store)
    assert report.directions.get("warm->cold", 0) > 0 and report.skipped == 0
    for _ in range(3):  # a chunk read within the last millisecond demotes on the next run
        if tier_usage(dfs.store)["warm"] == 0:
            break
        assert run(dfs.store).skipped == 0
    assert tier_usage(dfs.store)["warm"] == 0
    with dfs.engine.read() as txn:
        assert all(txn.get_chunk(c).codec == k for c, k in deltas.items())  # type: ignore[union-attr]
    assert dfs.read_bytes("/a") == a and dfs.read_bytes("/b") == b
    assert dfs.fsck().ok


def test_site_serves_delta_chunks_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`/v1/chunks/get` answers from Site.blob: a peer must get a blob it can verify."""
    from gfs.federation.testing import lone_site

    monkeypatch.setenv("HUTONG_DELTA", "1")
    site = lone_site(tmp_path / "site", entity="bank", region="r1", primary=False)
    try:
        two_versions(site.client, 16, 300_000, 10)
        with site.client.engine.read() as txn:
            deltas = dict(txn.iter_values(delta.DELTAS))
        assert deltas
        for cid in deltas:
            blob = site.blob(cid)
            assert blob is not None and parse_blob_header(blob).codec != CODEC_DELTA
            assert chunk_id(decode_blob(blob, expect_id=cid)) == cid
    finally:
        site.close()


# -- the session's dictionary for small chunks ---------------------------------------------

@pytest.fixture
def no_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks stored one by one, as chunks too big for a group are (the dictionary
    serves the chunks that are not grouped; docs/format.md "Group blobs")."""
    monkeypatch.setattr(groups, "MEMBER_MAX", 0)


def _small_files(n: int, seed: int) -> dict[str, bytes]:
    """Small files of one vocabulary (as the sources of one project are)."""
    rng = random.Random(seed)
    corpus = text(rng, 1 << 20)
    out = {}
    for i in range(n):
        at, size = rng.randrange(len(corpus) - 8000), rng.randrange(800, 8000)
        out[f"/s/f{i}"] = corpus[at:at + size]
    return out


def _local_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (namespace path -> bytes) flat into local directory `root`."""
    root.mkdir()
    for p, data in files.items():
        (root / p.rsplit("/", 1)[1]).write_bytes(data)
    return root


@pytest.mark.usefixtures("no_groups")
def test_small_chunks_are_deltas_against_a_trained_dictionary(dfs: Client,
                                                               tmp_path: Path) -> None:
    """Past DICT_TRAIN_BYTES of small chunks a session trains a dictionary, stores it as
    a whole chunk no file names, and stores later small chunks as deltas against it; it
    reads back, fsck is clean, and gc drops the dictionary with its last dependent."""
    files = _small_files(600, 41)  # ~2.6 MB of small files: past the 1 MiB of samples
    dfs.put(str(_local_tree(tmp_path / "src", files)), "/s")
    with dfs.engine.read() as txn:
        bases = Counter(dict(txn.iter_values(delta.DELTAS)).values())
        named = {r.id for _, m in txn.iter_manifests() for r in m.chunks}
    dictionary, dependents = bases.most_common(1)[0]
    assert dictionary not in named and dependents > 50
    with dfs.engine.read() as txn:
        rec = txn.get_chunk(dictionary)
    assert rec is not None and rec.codec != CODEC_DELTA and rec.refcount == dependents
    assert rec.raw_len == delta.DICT_SIZE
    for p, data in files.items():
        assert dfs.read_bytes(p) == data
    assert dfs.fsck().ok
    dfs.rm("/s", recursive=True)
    dfs.gc()
    with dfs.engine.read() as txn:
        assert list(txn.iter_chunks()) == []
    assert dfs.fsck().ok


def test_delta_contexts_are_reused_per_base_and_bounded() -> None:
    """A delta against a base whose zstd context this thread built reuses it (the
    session dictionary serves thousands of small chunks), output unchanged; the
    contexts kept stay within their byte budget."""
    rng = random.Random(11)
    base = text(rng, 60_000)
    bid = chunk_id(base)
    news = [mutate(base, rng, 3) for _ in range(3)]
    key = delta._content_key(base)
    fresh = [delta.delta_frame(n, base, 3) for n in news]  # no id: nothing kept
    assert b"c\x03" + key not in delta._contexts.entries
    cached = [delta.delta_frame(n, base, 3, bid) for n in news]
    assert cached == fresh
    ctx = delta._contexts.entries[b"c\x03" + key]
    delta.delta_frame(news[0], base, 3, bid)
    assert delta._contexts.entries[b"c\x03" + key] is ctx
    header, payload = delta.encode_delta(news[0], chunk_id(news[0]), bid, base, 3)
    assert decode_blob(header + payload, base={bid: base}.__getitem__) == news[0]
    assert b"d" + key in delta._contexts.entries
    for _ in range(delta.CONTEXT_CACHE_BYTES // 60_000 + 4):
        other = text(rng, 60_000)
        delta.delta_frame(news[0], other, 3, chunk_id(other))
    assert delta._contexts.policy.size <= delta.CONTEXT_CACHE_BYTES
    assert set(delta._contexts.entries) == set(delta._contexts.policy.keys())
    assert b"c\x03" + key not in delta._contexts.entries  # least recently used: evicted


def test_a_kept_context_never_stands_in_for_the_base_given() -> None:
    """Contexts are kept by the bytes of the base, not the id it is named by: a wrong
    base under the right id is refused even after the right one was used, and a
    wrong one used first leaves nothing that spoils the right one's read."""
    rng = random.Random(12)
    base = text(rng, 20_000)
    new = mutate(base, rng, 3)
    bid = chunk_id(base)
    header, payload = delta.encode_delta(new, chunk_id(new), bid, base, 3)
    wrong = base[:-1] + bytes([base[-1] ^ 1])
    with pytest.raises(CorruptChunkError, match=bid.hex()):  # the wrong one first
        decode_blob(header + payload, base=lambda _: wrong)
    assert decode_blob(header + payload, base=lambda _: base) == new
    with pytest.raises(CorruptChunkError, match=bid.hex()):  # and after the right one
        decode_blob(header + payload, base=lambda _: wrong)


@pytest.mark.usefixtures("no_groups")
def test_later_sessions_reuse_the_stored_dictionary(dfs: Client, tmp_path: Path) -> None:
    """A second put takes the store's dictionary at once (no training, no second
    dictionary chunk, its first small chunks already deltas); once gc has dropped the
    dictionary with its last dependent, the next put trains a new one."""
    files = _small_files(600, 43)
    for part, names in (("a", list(files)[:300]), ("b", list(files)[300:])):
        src = tmp_path / part
        src.mkdir()
        for p in names:
            (src / p.rsplit("/", 1)[1]).write_bytes(files[p])
    dfs.put(str(tmp_path / "a"), "/a")
    with dfs.engine.read() as txn:
        first = delta.current_dictionary(txn)
        before = Counter(dict(txn.iter_values(delta.DELTAS)).values())[first]
    assert first is not None and before > 0
    dfs.put(str(tmp_path / "b"), "/b")
    with dfs.engine.read() as txn:
        assert delta.current_dictionary(txn) == first
        deps = dict(txn.iter_values(delta.DELTAS))
        sizes = {rec.id: rec.raw_len for rec in txn.iter_chunks()}
    assert [cid for cid, n in sizes.items() if n == delta.DICT_SIZE] == [first]
    # all of /b's small files could use it: far more dependents than a trained-late one
    assert Counter(deps.values())[first] - before > 150
    for p in list(files)[300:]:
        assert dfs.read_bytes("/b/" + p.rsplit("/", 1)[1]) == files[p]
    dfs.rm("/a", recursive=True)
    dfs.rm("/b", recursive=True)
    dfs.gc()
    with dfs.engine.read() as txn:
        assert delta.current_dictionary(txn) is None
    dfs.put(str(tmp_path / "a"), "/c")
    with dfs.engine.read() as txn:
        again = delta.current_dictionary(txn)
    assert again is not None
    assert dfs.fsck().ok


@pytest.mark.usefixtures("no_groups")
def test_a_restore_batch_reads_each_base_once(dfs: Client, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Small files stored as deltas against the dictionary: a get of the tree reads the
    dictionary once per batch, not once per file, and restores every byte."""
    files = _small_files(600, 47)
    dfs.put(str(_local_tree(tmp_path / "src", files)), "/s")
    with dfs.engine.read() as txn:
        deps = Counter(dict(txn.iter_values(delta.DELTAS)).values())
    assert max(deps.values()) > 100
    source = dfs.store.source
    reads = count_reads(source, monkeypatch)
    out = tmp_path / "out"
    dfs.get("/s", out)
    for p, data in files.items():
        assert (out / p.rsplit("/", 1)[1]).read_bytes() == data
    assert set(reads) == set(deps)  # every base read, ...
    assert max(reads.values()) <= 2  # ... once (two threads may race); 600 files, 1 batch


def test_dictionary_deltas_are_not_compressed_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small chunk planned against the dictionary is encoded as a delta only (no whole
    frame to compare) and kept when it saves 1/64 of its raw bytes; one the dictionary
    cannot shrink, and chunks without a plan, are stored as encode_blobs stores them."""
    rng = random.Random(53)
    corpus = text(rng, 200_000)
    dictionary = corpus[:64_000]
    did = chunk_id(dictionary)
    similar = corpus[70_000:73_000]
    noise = rng.randbytes(3000)
    plain = corpus[100_000:104_000]
    raws = [similar, noise, plain]
    ids = [chunk_id(r) for r in raws]
    plans: list[delta.Plan | None] = [
        delta.Plan([], did, dictionary, dictionary=True),
        delta.Plan([], did, dictionary, dictionary=True), None]
    whole_calls: list[int] = []
    real = delta.encode_blobs

    def spy(rs: list[bytes], cids: list[bytes], level: int) -> list[tuple[bytes, object]]:
        whole_calls.append(len(rs))
        return real(rs, cids, level)  # type: ignore[return-value]

    monkeypatch.setattr(delta, "encode_blobs", spy)
    planner = delta.DeltaPlanner(lambda cid: b"")
    out = planner.encode(raws, ids, plans, 3)
    assert whole_calls == [2]  # the noise (no saving) and the unplanned chunk only
    codecs = [parse_blob_header(h).codec for h, _ in out]
    assert codecs[0] == CODEC_DELTA and codecs[1] != CODEC_DELTA and codecs[2] != CODEC_DELTA
    # at the store's level
    assert bytes(out[0][1]) == did + delta.delta_frame(similar, dictionary, 3)
    assert bytes(out[0][1]) != did + delta.delta_frame(similar, dictionary, 6)
    for (h, p), raw, cid in zip(out, raws, ids, strict=True):
        assert decode_blob(h + bytes(p), expect_id=cid, base={did: dictionary}.__getitem__) == raw


@pytest.mark.usefixtures("no_groups")
def test_big_chunks_use_the_dictionary_and_stay_bases(dfs: Client, tmp_path: Path) -> None:
    """Once the store has a dictionary, a big chunk without a resembling base is a delta
    against it, and may still be the base of a later similar chunk (a chain of 2); all
    read back, fsck is clean, and gc drops the whole chain with the last file."""
    dfs.put(str(_local_tree(tmp_path / "src", _small_files(600, 59))), "/s")
    with dfs.engine.read() as txn:
        dictionary = delta.current_dictionary(txn)
    assert dictionary is not None
    rng = random.Random(59)
    big = text(rng, 400_000)
    dfs.write_bytes("/big1", big)
    with dfs.engine.read() as txn:
        deps = dict(txn.iter_values(delta.DELTAS))
        m = txn.get_manifest(dfs.stat("/big1").ino)
        assert m is not None
        first = [r.id for r in m.chunks]
        assert all(r.length >= delta.DICT_SMALL for r in m.chunks[:-1])
        assert [deps.get(c) for c in first] == [dictionary] * len(first)
        assert all(resemblance.usable_base(txn, c) for c in first)
    big2 = mutate(big, rng, 8)
    dfs.write_bytes("/big2", big2)
    with dfs.engine.read() as txn:
        deps = dict(txn.iter_values(delta.DELTAS))
        m2 = txn.get_manifest(dfs.stat("/big2").ino)
        assert m2 is not None
        chained = [r.id for r in m2.chunks if deps.get(r.id) in first]
        assert chained  # deltas against dictionary deltas
        for cid in chained:
            assert not resemblance.usable_base(txn, cid)  # no chain of 3
    assert dfs.read_bytes("/big1") == big and dfs.read_bytes("/big2") == big2
    assert dfs.fsck().ok
    for p in ("/s", "/big1", "/big2"):
        dfs.rm(p, recursive=True)
    dfs.gc()
    with dfs.engine.read() as txn:
        assert list(txn.iter_chunks()) == []
        assert list(txn.iter_values(delta.DELTAS)) == []
    assert dfs.fsck().ok


def test_the_dictionary_is_trained_once_without_a_parameter_search(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner trains one dictionary from its samples with a fixed COVER segment and
    d-mer size: with k or d left at 0 zstd searches many pairs (0.06-0.1 s of the put's
    main thread on the benches' 1 MiB of samples, against 0.015 s)."""
    calls: list[dict[str, object]] = []
    real = delta.zstandard.train_dictionary

    def spy(size: int, samples: list[bytes], **kw: object) -> object:
        calls.append(kw)
        return real(size, samples, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(delta.zstandard, "train_dictionary", spy)
    planner = delta.DeltaPlanner(lambda cid: b"")
    rng = random.Random(7)
    corpus = text(rng, 1 << 20)
    for _ in range(2 * delta.DICT_TRAIN_BYTES // 3000):
        at = rng.randrange(len(corpus) - 3000)
        piece = corpus[at:at + 3000]
        planner.plan(None, chunk_id(piece), piece)  # type: ignore[arg-type]
    assert len(calls) == 1 and planner.dictionary_id is not None
    assert calls[0]["k"] == delta.DICT_SEGMENT > 0 and calls[0]["d"] == delta.DICT_DMER > 0


class _UnlistedDict(dict):  # type: ignore[type-arg]
    """A dict that fails the test when listed (only keyed lookups and deletes allowed)."""

    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("listed")

    keys = values = __iter__ = items


def test_forgetting_committed_bases_does_not_list_the_held_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit's bases leave the planner by their own keys: the bases still held are not
    listed per commit (that cost the put's main thread O(bases held) per batch); a key a
    later base took stays with it."""
    monkeypatch.setattr(resemblance, "find_base", lambda txn, keys, known=None: None)
    planner = delta.DeltaPlanner(lambda cid: b"")
    rng = random.Random(11)
    pieces = [rng.randbytes(20000) for _ in range(200)]  # no dictionary samples
    ids = [chunk_id(p) for p in pieces]
    for cid, piece in zip(ids, pieces, strict=True):
        assert planner.plan(None, cid, piece) is not None  # type: ignore[arg-type]
    held = dict(planner._local)
    assert {v[0] for v in held.values()} == set(ids)
    planner._local = _UnlistedDict(held)
    planner.forget(set(ids[:150]))
    assert {v[0] for v in dict.values(planner._local)} == set(ids[150:])
    again = planner.plan(None, ids[0], pieces[0])  # type: ignore[arg-type]
    assert again is not None and again.base is None  # its keys were free again: now held
    other = pieces[0][:19800] + rng.randbytes(200)  # the same features: finds ids[0] held
    plan = planner.plan(None, chunk_id(other), other)  # type: ignore[arg-type]
    assert plan is not None and plan.base == ids[0]
    planner.forget({ids[1]})  # forgotten before: ids[0]'s keys stay
    assert {v[0] for v in dict.values(planner._local)} == {ids[0], *ids[150:]}
