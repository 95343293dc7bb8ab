"""fsck over metadata records that do not decode: every damaged record is listed by
table and key (not only the first), nothing is changed, and other commands name fsck
as the remedy. Plain (hot) rows, packed blocks and rows inside blocks, on LMDB and on
a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from gfs import fsck as fsck_mod
from gfs.client import Client
from gfs.errors import MetadataDamagedError
from gfs.meta import blocks
from gfs.meta import encoding as enc

REPO = str(Path(__file__).resolve().parents[1])
DEADLINE = 120
GARBAGE = b"\xff\xfe\x00 not a record"


def _store(state: Path, files: int = 40, meta: str | None = None) -> None:
    fs = Client.init(state, meta=meta) if meta else Client.init(state)
    try:
        fs.mkdir("/d")
        for i in range(files):
            fs.write_bytes(f"/d/f{i:03d}", b"content %d " % i * (i + 1))
        fs.engine.compact_at_close = False  # type: ignore[attr-defined]
    finally:
        fs.close()


def _env(state: Path) -> lmdb.Environment:
    return lmdb.open(str(state / "meta"), max_dbs=64)


def _rows(state: Path, table: bytes) -> list[tuple[bytes, bytes]]:
    env = _env(state)
    try:
        with env.begin(db=env.open_db(table)) as txn:
            return list(txn.cursor())
    finally:
        env.close()


def _put(state: Path, table: bytes, key: bytes, value: bytes) -> None:
    env = _env(state)
    try:
        with env.begin(db=env.open_db(table), write=True) as txn:
            txn.put(key, value)
    finally:
        env.close()


def _snapshot(state: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    env = _env(state)
    try:
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
        out = {}
        for name in names:
            with env.begin(db=env.open_db(name)) as txn:
                out[name.decode()] = list(txn.cursor())
        return out
    finally:
        env.close()


def _fsck(state: Path) -> fsck_mod.FsckReport:
    fs = Client(state)
    try:
        return fs.fsck()
    finally:
        fs.close()


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), *args],
                          capture_output=True, text=True, timeout=DEADLINE,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_every_damaged_plain_record_is_listed_by_table_and_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _store(state)
    inode = _rows(state, b"inodes")[5][0]
    manifest = _rows(state, b"manifests")[7][0]
    chunk = _rows(state, b"chunks")[3][0]
    dirent = _rows(state, b"dirents")[9][0]
    for table, key in ((b"inodes", inode), (b"manifests", manifest), (b"chunks", chunk)):
        _put(state, table, key, GARBAGE)
    _put(state, b"dirents", dirent, b"")  # an inode number of no bytes
    before = _snapshot(state)

    report = _fsck(state)

    assert report.metadata_damaged and not report.ok
    assert sorted(p.split(":")[1] for p in report.problems) == sorted(
        f" table {t}, key {k.hex()}" for t, k in (("inodes", inode), ("manifests", manifest),
                                                  ("chunks", chunk), ("dirents", dirent)))
    assert all(p.startswith("damaged metadata record: ") for p in report.problems)
    assert not any("run `hutong fsck`" in p for p in report.problems)  # not circular
    assert _snapshot(state) == before  # fsck changed nothing


def test_a_store_without_damage_takes_the_ordinary_checks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _store(state, files=5)
    report = _fsck(state)
    assert report.ok and not report.metadata_damaged and report.files == 5


def _pack(state: Path) -> None:
    out = _cli(state, "meta", "compact")
    assert out.returncode == 0, out.stderr
    assert _rows(state, b"inodes.z") and not _rows(state, b"inodes")


def test_a_damaged_block_and_a_damaged_row_inside_a_block_are_both_listed(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    _store(state, files=120)
    _pack(state)
    inode_blocks = _rows(state, b"inodes.z")
    bkey, data = inode_blocks[0]
    _put(state, b"inodes.z", bkey, data[:-6] + b"\x00" * 6)  # the frame's checksum fails
    cblocks = _rows(state, b"chunks.z")
    ckey, cdata = cblocks[-1]
    keys, values = blocks.decode_block("chunks", ckey, cdata)
    rows = list(zip(keys, values, strict=True))
    bad_key = rows[1][0]
    rows[1] = (bad_key, GARBAGE)
    _put(state, b"chunks.z", ckey, blocks.encode_block(rows))
    before = _snapshot(state)

    report = _fsck(state)

    assert report.metadata_damaged
    assert len(report.problems) == 2, report.problems
    block, row = sorted(report.problems)
    assert block.startswith(f"damaged metadata block: packed block {bkey.hex()} of table "
                            "inodes: ")
    assert row.startswith(f"damaged metadata record: table chunks, key {bad_key.hex()}: ")
    assert _snapshot(state) == before


def test_the_list_is_bounded_and_counts_the_rest(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    _store(state, files=30)
    for key, _ in _rows(state, b"manifests")[:25]:
        _put(state, b"manifests", key, GARBAGE)
    monkeypatch.setattr(fsck_mod, "LISTED_RECORDS", 10)
    report = _fsck(state)
    assert len(report.problems) == 11
    assert report.problems[-1] == "... and 15 more damaged metadata records"


def test_the_cli_lists_the_damage_and_other_commands_name_fsck(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _store(state, files=5)
    key = next(k for k, _ in _rows(state, b"inodes") if enc.decode_ino(k) > 2)
    _put(state, b"inodes", key, GARBAGE)

    out = _cli(state, "fsck")
    assert out.returncode == 1, out.stderr
    assert f"damage: damaged metadata record: table inodes, key {key.hex()}: " in out.stderr
    assert "hint: load a metadata dump taken before the damage (`hutong meta load`)" \
        in out.stderr
    assert "--repair" not in out.stderr  # repairing chunks cannot fix a record

    ls = _cli(state, "ls", "-l", "/d")
    assert ls.returncode == 1, ls.stderr  # the store's fault, not the request's (2)
    assert "hint: `hutong fsck` lists every damaged metadata record" in ls.stderr
    assert "--help" not in ls.stderr


@pytest.fixture
def pg_store(tmp_path: Path, pg_url: str) -> Iterator[tuple[Path, str]]:
    state = tmp_path / "state"
    _store(state, files=20, meta=pg_url)
    yield state, pg_url


def test_damaged_records_on_postgresql_are_listed_and_left_alone(
        pg_store: tuple[Path, str]) -> None:
    import psycopg

    from gfs.meta.pg_engine import _split_url

    state, url = pg_store
    conninfo, schema, _ = _split_url(url)
    fs = Client(state)
    try:
        good = fs.fsck()
        assert good.ok, good.problems
        with fs.engine.read() as txn:
            inos = sorted(ino for ino, _ in txn.iter_manifests())
            cid = next(iter(txn.iter_chunks())).id
    finally:
        fs.close()
    shift = 1 << 63
    tables = ("manifests", "inodes", "chunks")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"UPDATE {schema}.manifests SET rec = %s WHERE ino = %s",
                     (GARBAGE, inos[3] - shift))
        conn.execute(f"UPDATE {schema}.inodes SET rec = %s WHERE ino = %s",
                     (GARBAGE, inos[4] - shift))
        conn.execute(f"UPDATE {schema}.chunks SET rec = %s WHERE id = %s", (GARBAGE, cid))
        before = [conn.execute(f"SELECT * FROM {schema}.{t} ORDER BY 1").fetchall()
                  for t in tables]
    fs = Client(state)
    try:
        report = fs.fsck()
        with pytest.raises(MetadataDamagedError):
            fs.ls("/d")
    finally:
        fs.close()
    assert report.metadata_damaged
    assert sorted(p.split(":")[1] for p in report.problems) == sorted([
        f" table manifests, key {enc.encode_ino(inos[3]).hex()}",
        f" table inodes, key {enc.encode_ino(inos[4]).hex()}",
        f" table chunks, key {cid.hex()}"])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert before == [conn.execute(f"SELECT * FROM {schema}.{t} ORDER BY 1").fetchall()
                          for t in tables]
