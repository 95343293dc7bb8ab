"""Federations and data for the replication tests: bank-a's primary a1 with its own sites,
telco-b's primary t1 keeping bank-a's sealed blobs, and versions of a folder of files."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from gfs.federation.client import FederationClient
from gfs.federation.testing import Federation
from tests.similar_data import mutate, text
from tests.site_chunks import file_chunk_ids


def hosted(root: Path, *, own: Sequence[str] = (), delta: bool = False) -> Federation:
    """Registry, a1 (bank-a's primary; delta chunks on with `delta`), bank-a's sites `own`,
    and t1 (telco-b's primary) under a 1 GiB storage agreement for bank-a. Use in `with`."""
    f = Federation(root, ttl=3.0, heartbeat=0.3)
    try:
        f.registry()
        f.site("a1", "bank-a", "cn-west", primary=True, env={"HUTONG_DELTA": "1"} if delta
               else None)
        for name in own:
            f.site(name, "bank-a", "cn-west")
        f.site("t1", "telco-b", "cn-east", primary=True)
        with f.client("telco-b") as tc:
            tc.agreement_add("t1", "bank-a", 1 << 30)
    except BaseException:
        f.close()
        raise
    return f


def write_version(fc: FederationClient, folder: str, data: Sequence[bytes]) -> None:
    """Write `data` as the files `folder`/f0, f1, ..."""
    fc.mkdir(folder, parents=True, exist_ok=True)
    for i, d in enumerate(data):
        fc.write_bytes(f"{folder}/f{i}", d)


def first_version(fc: FederationClient, folder: str, rng: random.Random, files: int,
                  size: int) -> list[bytes]:
    """Text files of `size` bytes written to `folder` (`write_version`); their contents."""
    data = [text(rng, size) for _ in range(files)]
    write_version(fc, folder, data)
    return data


def next_version(fc: FederationClient, folder: str, rng: random.Random, data: Sequence[bytes],
                 edits: int) -> None:
    """`data` with `edits` small edits each, written over the files of `folder`."""
    write_version(fc, folder, [mutate(d, rng, edits) for d in data])


def folder_chunks(fc: FederationClient, folder: str, files: int) -> list[bytes]:
    """The distinct chunk ids of `folder`/f0 .. f{files-1}, in order."""
    return list(dict.fromkeys(c for i in range(files)
                              for c in file_chunk_ids(fc, f"{folder}/f{i}")))
