"""Chunk-level questions to federation sites in tests: a file's chunk ids, what a site holds."""

from __future__ import annotations

import pytest

from gfs.federation.client import FederationClient
from gfs.federation.http import BadRequestError
from gfs.federation.testing import Federation
from gfs.federation.wire import unpack_frames


def file_chunk_ids(fc: FederationClient, path: str) -> list[bytes]:
    """The distinct chunk ids of `path`'s manifest at its primary, in order."""
    norm, site = fc.primary(path)
    m = fc.site(site).call("GET", "/v1/ns/manifest", query={"path": norm})
    return list(dict.fromkeys(bytes.fromhex(h) for h, _ in m["chunks"]))


def site_has(fc: FederationClient, site: str, ids: list[bytes]) -> list[bool]:
    """Which of `ids` site `site` holds (its `/v1/chunks/has` answer)."""
    return [bool(x) for x in fc.site(site).call(
        "POST", "/v1/chunks/has", {"ids": [c.hex() for c in ids]})["have"]]


def site_blobs(fc: FederationClient, site: str, ids: list[bytes]) -> list[bytes]:
    """The blobs site `site` serves for `ids` (its `/v1/chunks/get` answer)."""
    body = fc.site(site).call("POST", "/v1/chunks/get", {"ids": [c.hex() for c in ids]})
    return unpack_frames(body)


def files_chunk_ids(fc: FederationClient, paths: list[str]) -> list[bytes]:
    """The distinct chunk ids of the manifests of `paths`, in order."""
    return list(dict.fromkeys(c for p in paths for c in file_chunk_ids(fc, p)))


def assert_bad_deltas_refused(fed: Federation, fc: FederationClient, site: str, cid: bytes,
                              tampered: bytes, lacking: bytes, absent: bytes) -> None:
    """`site` refuses, storing nothing, a `tampered` delta blob of chunk `cid` and one
    (`lacking`) against a base `absent` it does not hold (named in the answer)."""
    peer = fc.site(site)
    stored = fed.metric(site, "chunks_stored_total")
    with pytest.raises(BadRequestError, match="corrupt"):
        peer.put([tampered])
    with pytest.raises(BadRequestError, match=f"{absent.hex()}.*not hold"):
        peer.put([lacking])
    assert site_has(fc, site, [cid]) == [False]
    assert fed.metric(site, "chunks_stored_total") == stored
