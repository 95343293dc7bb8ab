"""Helpers for tests and benchmarks: two parties in one process over a socket
pair, and a store with two entities' tables and policies."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import nacl.signing
import pyarrow as pa
import pyarrow.parquet as pq

from gfs.client import Client
from privacy.channel import Channel, Identity, handshake
from privacy.ec import GroupPool
from privacy.policy import policy_path

Half = Callable[[Channel, GroupPool], Any]


def run_pair(left: Half, right: Half, *, timeout: float = 60.0, workers: int | None = None,
             ) -> tuple[Any, Any, int]:
    """Run two halves on threads over an authenticated socket pair; returns both
    results (or the exceptions they raised) and the bytes exchanged."""
    a, b = socket.socketpair()
    a.settimeout(timeout)
    b.settimeout(timeout)
    ia = Identity("left-co", nacl.signing.SigningKey.generate())
    ib = Identity("right-co", nacl.signing.SigningKey.generate())
    out: dict[str, Any] = {}
    sent: dict[str, int] = {}

    def side(name: str, sock: socket.socket, me: Identity, peer: Identity, fn: Half) -> None:
        ch = None
        try:
            ch = handshake(sock, me, name, peer.entity, peer.public_hex, "test",
                           initiator=name == "left")
            with GroupPool(workers) as pool:
                out[name] = fn(ch, pool)
        except Exception as e:
            out[name] = e
            if ch is not None:
                ch.abort(str(e))
        finally:
            sent[name] = ch.bytes_sent if ch is not None else 0
            sock.close()

    t = threading.Thread(target=side, args=("right", b, ib, ia, right), daemon=True)
    t.start()
    side("left", a, ia, ib, left)
    t.join(timeout)
    return out.get("left"), out.get("right"), sent.get("left", 0) + sent.get("right", 0)


class Writable(Protocol):
    """A store or a federation client: what `put_table` and `put_policy` write to."""

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> Any: ...

    def write_bytes(self, path: str, data: bytes) -> Any: ...


def put_table(fs: Writable, path: str, table: pa.Table) -> None:
    """Write `table` as parquet to namespace `path`."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs.mkdir(path.rsplit("/", 1)[0], parents=True, exist_ok=True)
    fs.write_bytes(path, buf.getvalue())


def put_policy(fs: Writable, doc: dict[str, Any]) -> None:
    """Store an entity's policy document."""
    path = policy_path(str(doc["entity"]))
    fs.mkdir(path.rsplit("/", 1)[0], parents=True, exist_ok=True)
    fs.write_bytes(path, json.dumps(doc).encode())


def open_policy(entity: str, partner: str, table: str, *, key: str = "phone",
                columns: list[str] | None = None, group_by: list[str] | None = None,
                min_group_size: int = 1, **extra: Any) -> dict[str, Any]:
    """A permissive policy document for tests: `partner` may do everything on `table`."""
    t: dict[str, Any] = {"key_columns": [key], "columns": columns or [],
                         "aggregates": ["count", "sum", "mean", "min", "max", "count_distinct"],
                         "group_by": group_by or [], "psi_outputs": ["cardinality",
                                                                     "intersection"]}
    t.update(extra.pop("table_extra", {}))
    return {"entity": entity, "partners": {partner: {"tables": {table: t},
                                                     "min_group_size": min_group_size,
                                                     **extra}}}


def init_store(state: Path) -> Client:
    """A fresh store in `state`."""
    return Client.init(state)
