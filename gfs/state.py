"""A state directory's identity: private pools, copies, moves and relocation.

See docs/format.md, "Ownership of packs". A pool inside the state directory
is recorded by its path relative to it, so a copied or moved directory keeps
working on its own copy; a copy of an embedded store takes a fresh store id
when it is first opened, so the two never take each other's packs for theirs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gfs.config import CONFIG_FILE, meta_url
from gfs.env import META_ENV
from gfs.errors import ConfigError
from gfs.meta import MetaEngine, PoolRecord, ReadTxn, WriteTxn

log = logging.getLogger("hutong.state")

STATE_PATH = "state_path"
STORE_ID = "store_id"
__all__ = ["META_ENV", "STATE_PATH", "STORE_ID", "check_identity", "is_database_url",
           "is_private_url", "meta_location", "meta_toml", "pool_location", "record_url",
           "relocate", "settings_toml", "write_config"]


def is_database_url(url: str) -> bool:
    """Whether `url` names a metadata database server (PostgreSQL or compatible)."""
    return url.startswith(("postgresql://", "postgres://"))


def meta_location(state: Path) -> str:
    """Where the metadata of the store in `state` lives: the `[meta] url` of its
    config.toml, else the embedded environment `state`/meta."""
    url = meta_url(state)
    if url is None:
        return str(state / "meta")
    if not is_database_url(url):
        raise ConfigError(f"{state / CONFIG_FILE}: [meta] url must be a postgresql:// URL, "
                          f"got {url!r}")
    return url


def meta_toml(url: str | None) -> str:
    """The `[meta]` section of config.toml for a store whose metadata is at `url`."""
    return "" if url is None else f"[meta]\nurl = {json.dumps(url)}\n"


def settings_toml(state: Path) -> str:
    """The store's config.toml without its `[meta]` section."""
    out: list[str] = []
    skipping = False
    for line in (state / CONFIG_FILE).read_text().splitlines(keepends=True):
        head = line.strip()
        if head.startswith("[") and not head.startswith("[["):
            skipping = head == "[meta]"
        if not skipping:
            out.append(line)
    return "".join(out)


def write_config(state: Path, settings: str, url: str | None) -> None:
    """Replace config.toml atomically: `settings` plus the `[meta]` section for `url`."""
    text = settings if settings.endswith("\n") or not settings else settings + "\n"
    tmp = state / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(text + meta_toml(url))
    os.replace(tmp, state / CONFIG_FILE)


def is_private_url(url: str) -> bool:
    """Whether a recorded pool URL is relative to the state directory (a private pool)."""
    return "://" not in url and not url.startswith(("/", "file:")) and bool(url)


def pool_location(state: Path, url: str) -> str:
    """The URL to open for a recorded pool URL: relative ones are under `state`."""
    return str(state / url) if is_private_url(url) else url


def _local_path(url: str) -> Path | None:
    """The directory a local pool URL names (absolute), or None for remote URLs."""
    if url.startswith("file:"):
        parts = urlsplit(url)
        return Path(unquote(parts.path)) if parts.netloc in ("", "localhost") else None
    if "://" in url:
        return None
    return Path(url).expanduser().absolute()


def record_url(state: Path, url: str) -> str:
    """How to record pool `url` in the metadata: relative when the directory lies
    inside `state`, else a local path as an absolute file:// URL, else unchanged."""
    path = _local_path(url)
    if path is None:
        return url
    try:
        rel = path.resolve().relative_to(state.resolve())
    except ValueError:
        return path.as_uri()
    if not rel.parts:
        raise ConfigError(f"pool {url!r} is the state directory itself; "
                          f"use a directory inside it (e.g. {state}/pools/NAME) or outside it")
    return rel.as_posix()


def _recorded(state: Path, url: str) -> str:
    try:
        return record_url(state, url)
    except ConfigError:
        return url


def check_identity(engine: MetaEngine, state: Path) -> None:
    """Bring the recorded identity of an embedded store up to date on open.

    Absolute pool URLs inside `state` become relative. When `state` differs from
    the recorded `state_path`: if a store with the same id still lives at the
    recorded path this one is a copy and takes a fresh store id; otherwise it was
    moved. Either way the new path is recorded.
    """
    here = str(state.resolve())
    with engine.read() as txn:
        if txn.get_meta(STATE_PATH) == here.encode() and not _stale(txn, state):
            return  # the common case: nothing to change, no write transaction

    def update(txn: WriteTxn) -> None:  # decided again inside: openers may race
        recorded = txn.get_meta(STATE_PATH)
        store_id = txn.get_meta(STORE_ID)
        for p in _stale(txn, state):
            new = record_url(state, p.url)
            txn.put_pool(replace(p, url=new))
            log.info("pool %s (%s) lies inside %s: recorded as %s", p.name, p.url, here, new)
        if (recorded is not None and recorded != here.encode() and store_id is not None
                and _store_id_at(Path(recorded.decode())) == store_id):
            txn.set_meta(STORE_ID, os.urandom(16))
            log.warning("%s is a copy of the store at %s: it takes a new store id, so "
                        "neither deletes the other's packs", here, recorded.decode())
        txn.set_meta(STATE_PATH, here.encode())

    engine.transact(update)


def _stale(txn: ReadTxn, state: Path) -> list[PoolRecord]:
    """Pools recorded by an absolute URL that lies inside `state`."""
    return [p for p in txn.iter_pools()
            if not is_private_url(p.url) and is_private_url(_recorded(state, p.url))]


def _store_id_at(state: Path) -> bytes | None:
    """The store id of the embedded store at `state`, or None if there is none."""
    meta = state / "meta"
    if not (meta / "data.mdb").is_file():
        return None
    from gfs.meta import LmdbEngine

    try:
        eng = LmdbEngine(str(meta), readonly=True)
    except Exception as e:  # unreadable: no store we could be a copy of
        log.info("cannot read the store at %s (%s)", state, e)
        return None
    try:
        with eng.read() as txn:
            return txn.get_meta(STORE_ID)
    finally:
        eng.close()


def relocate(engine: MetaEngine, state: Path, old: str, new: str) -> list[PoolRecord]:
    """Rewrite the pool URLs that start with `old` to start with `new` instead (a local
    path or any URL); pools that land inside `state` are recorded relative to it.
    Returns the changed records; raises ConfigError (changing nothing) when no pool
    matches or a new URL would clash with another pool's."""
    old_path, new_path = _local_path(old), _local_path(new)

    def rewrite(txn: WriteTxn) -> list[PoolRecord]:
        changed: list[PoolRecord] = []
        pools = list(txn.iter_pools())
        for p in pools:
            url = pool_location(state, p.url)
            target: str | None = None
            here = _local_path(url)
            if old_path is not None and here is not None:
                try:
                    rest = here.relative_to(old_path)
                except ValueError:
                    rest = None
                if rest is not None:
                    target = str((new_path or Path(new)) / rest) if new_path else \
                        new.rstrip("/") + "/" + rest.as_posix()
            elif url.startswith(old):
                target = new + url[len(old):]
            if target is None:
                continue
            rec = replace(p, url=record_url(state, target))
            if rec.url != p.url:
                changed.append(rec)
        if not changed:
            raise ConfigError(f"no pool URL of {state} starts with {old!r}; see "
                              "`hutong pool ls` for the recorded URLs")
        urls = {p.id: p.url for p in pools} | {r.id: r.url for r in changed}
        if len(set(urls.values())) != len(urls):
            raise ConfigError(f"relocating {old!r} to {new!r} would give two pools one URL")
        for rec in changed:
            txn.put_pool(rec)
        return changed

    return engine.transact(rewrite)
