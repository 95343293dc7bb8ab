"""Extended attributes of the FUSE mount (no FUSE here; `gfs.mount` calls it).

`user.*` names are stored in the `xattrs` value table (key: inode u64 BE + name;
value: 0x01 + bytes). `user.hutong.*` names are read-only facts computed from the
index (chunks, stored bytes, replicas, pools, version, cache and group-commit
statistics); they
are not listed by listxattr, so copies of the tree do not carry them, but can be
read by name. Other namespaces (security., trusted., system.) are not stored.
"""

from __future__ import annotations

import errno
import json
import struct
from collections.abc import Callable
from typing import Any

from gfs import namespace
from gfs.errors import HutongError
from gfs.meta import Kind, MetaEngine, WriteTxn

#: Prefix of the read-only extended attributes.
HUTONG_XATTR = b"user.hutong."
#: Prefix of the stored ones.
USER_XATTR = b"user."
#: Longest name and value accepted (bytes).
NAME_MAX = 255
VALUE_MAX = 500

_KEY = struct.Struct(">Q")


class XattrError(HutongError, OSError):
    """An extended attribute is missing, read-only, too big or of an unsupported
    namespace; carries the errno the caller gets (ENODATA, EPERM, E2BIG, ENOTSUP)."""

    def __init__(self, code: int, message: str, name: bytes) -> None:
        OSError.__init__(self, code, message, name.decode(errors="replace"))

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


def _missing(name: bytes) -> XattrError:
    return XattrError(errno.ENODATA, "no such extended attribute", name)


def check_settable(name: bytes, value: bytes) -> None:
    """Raise XattrError unless `name` may be set to `value`."""
    if name.startswith(HUTONG_XATTR):
        raise XattrError(errno.EPERM, "read-only extended attribute", name)
    if not name.startswith(USER_XATTR):
        raise XattrError(errno.ENOTSUP, "only user.* extended attributes are stored", name)
    if len(name) > NAME_MAX or len(value) > VALUE_MAX:
        raise XattrError(errno.E2BIG, f"extended attribute longer than {NAME_MAX} "
                         f"(name) or {VALUE_MAX} (value) bytes", name)


class Xattrs:
    """The extended attributes of the inodes of `engine`; `cache_stats` and
    `commit_stats` give the statistics shown as `user.hutong.cache` and
    `user.hutong.commits`, `request_stats` the FUSE requests served by opcode
    (`user.hutong.requests`)."""

    def __init__(self, engine: MetaEngine, cache_stats: Callable[[], dict[str, Any]],
                 commit_stats: Callable[[], dict[str, int]] = dict,
                 request_stats: Callable[[], dict[str, int]] = dict) -> None:
        self.engine = engine
        self.cache_stats = cache_stats
        self.commit_stats = commit_stats
        self.request_stats = request_stats

    def facts(self, ino: int) -> dict[bytes, bytes]:
        """The read-only facts of `ino`, by name without the `user.hutong.` prefix."""
        with self.engine.read() as txn:
            node = namespace.get(txn, ino)
            out = {b"version": str(node.version).encode(), b"ino": str(ino).encode(),
                   b"cache": json.dumps(self.cache_stats()).encode(),
                   b"commits": json.dumps(self.commit_stats()).encode(),
                   b"requests": json.dumps(self.request_stats()).encode()}
            m = txn.get_manifest(ino) if node.kind == Kind.FILE else None
            if m is None:
                return out
            pools: dict[int, int] = {}
            stored = 0
            copies = []
            for ref in m.chunks:
                rec = txn.get_chunk(ref.id)
                locs = rec.locations if rec is not None else ()
                copies.append(len(locs))
                for loc in locs:
                    pools[loc.pool] = pools.get(loc.pool, 0) + 1
                if locs:
                    stored += locs[0].length
            names = {}
            for pid in pools:
                rec_p = txn.get_pool(pid)
                names[pid] = rec_p.name if rec_p is not None else str(pid)
        out[b"chunks"] = str(len(m.chunks)).encode()
        out[b"stored_bytes"] = str(stored).encode()
        out[b"replicas"] = str(min(copies) if copies else 0).encode()
        out[b"pools"] = ",".join(f"{names[p]}:{n}" for p, n in sorted(pools.items())).encode()
        out[b"chunk_ids"] = "\n".join(f"{r.id.hex()} {r.length}" for r in m.chunks).encode()
        return out

    def get(self, ino: int, name: bytes) -> bytes:
        """The value of `name` on `ino`; XattrError(ENODATA) if it has none."""
        if name.startswith(HUTONG_XATTR):
            value = self.facts(ino).get(name[len(HUTONG_XATTR):])
        elif not name.startswith(USER_XATTR):
            value = None
        else:
            with self.engine.read() as txn:
                namespace.get(txn, ino)
                raw = txn.get_value("xattrs", _KEY.pack(ino) + name)
            value = raw[1:] if raw is not None else None
        if value is None:
            raise _missing(name)
        return value

    def names(self, ino: int) -> list[bytes]:
        """The stored names of `ino` (not the read-only facts)."""
        prefix = _KEY.pack(ino)
        with self.engine.read() as txn:
            namespace.get(txn, ino)
            return [k[len(prefix):] for k, _ in txn.iter_values("xattrs", prefix)]

    @staticmethod
    def set(txn: WriteTxn, ino: int, name: bytes, value: bytes) -> None:
        """Store `name` = `value` on `ino` in `txn`."""
        check_settable(name, value)
        namespace.get(txn, ino)
        txn.put_value("xattrs", _KEY.pack(ino) + name, b"\x01" + value)

    @staticmethod
    def remove(txn: WriteTxn, ino: int, name: bytes) -> None:
        """Remove `name` from `ino` in `txn`; XattrError if it is read-only or missing."""
        if name.startswith(HUTONG_XATTR):
            raise XattrError(errno.EPERM, "read-only extended attribute", name)
        key = _KEY.pack(ino) + name
        if txn.get_value("xattrs", key) is None:
            raise _missing(name)
        txn.delete_value("xattrs", key)


__all__ = ["HUTONG_XATTR", "XattrError", "Xattrs", "check_settable"]
