"""Folded group members (docs/format.md "Group blobs", format 4): a member's chunk
record names its group and offset, with no member blob and no `deltas` entry. The
records are made here by folding a store's member blobs in place (writers do not
write them yet); reads, batch reads and a member leaving the store are checked."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gfs import delta
from gfs.client import Client
from gfs.codec import CODEC_MEMBER, decode_blob, parse_blob_header
from gfs.errors import CorruptChunkError
from gfs.packs import pack_key
from tests.test_group_blobs import _files, _members, _put


def _fold(fs: Client, cids: list[bytes], *, shift: int = 0) -> None:
    """Rewrite members `cids` as folded records (offset moved by `shift`)."""
    store = fs.store
    with fs.engine.write() as txn:
        for cid in cids:
            rec = txn.get_chunk(cid)
            assert rec is not None and rec.codec == CODEC_MEMBER and rec.locations
            loc = rec.locations[0]
            blob = store.pool(loc.pool).get(pack_key(loc.pack), loc.offset,
                                            loc.offset + loc.length)
            payload = blob[36:]  # after the blob header
            group, offset = bytes(payload[:16]), int.from_bytes(payload[16:20], "little")
            assert txn.get_value(delta.DELTAS, cid) == group
            txn.delete_value(delta.DELTAS, cid)
            txn.put_chunk(replace(rec, stored_len=0, locations=(), group=group,
                                  group_offset=offset + shift))


def test_folded_members_read_back(dfs: Client, tmp_path: Path) -> None:
    files = _files(120, 21)
    _put(dfs, tmp_path / "src", files, "/s")
    members = list(_members(dfs))
    assert len(members) >= 100
    _fold(dfs, members)
    dfs.store.source.close()
    with dfs.engine.read() as txn:
        assert all((r := txn.get_chunk(c)) is not None and r.group for c in members)
        assert not any(txn.get_value(delta.DELTAS, c) for c in members)
    for name, data in files.items():  # one by one, through the group cache
        assert dfs.read_bytes(f"/s/{name}") == data
    out = tmp_path / "out"
    dfs.get("/s", out)  # restore batches
    assert all((out / n).read_bytes() == d for n, d in files.items())
    blob = dfs.store.read_blob(members[0])  # leaves the store whole
    assert parse_blob_header(blob).codec != CODEC_MEMBER
    assert decode_blob(blob, expect_id=members[0])


def test_a_folded_member_with_a_wrong_offset_is_refused(dfs: Client, tmp_path: Path) -> None:
    files = _files(40, 22)
    _put(dfs, tmp_path / "src", files, "/s")
    cid = next(iter(_members(dfs)))
    _fold(dfs, [cid], shift=1)
    dfs.store.source.close()
    with pytest.raises(CorruptChunkError, match="member of group"):
        dfs.store.source.get(cid)
    with pytest.raises(CorruptChunkError, match=cid.hex()):
        dfs.store.source.get_many([cid])
