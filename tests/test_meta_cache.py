"""The metadata cache of the global mount (gfs.meta_cache) and its inode table
(gfs.mount_inodes), over the embedded store, with an injected clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from gfs.client import Client
from gfs.errors import NotADirError, NotFoundError, UnavailableSiteError
from gfs.meta_cache import MetaCache
from gfs.mount_inodes import ROOT_INO, InodeTable, entity_scope, one_scope
from gfs.namespace_api import Stat


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """The embedded store, counting the calls made of it."""

    def __init__(self, inner: Client) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return call


class Versioned(Counting):
    """A back end with cheap revalidation (as the federation's sites answer it)."""

    def __init__(self, inner: Client) -> None:
        super().__init__(inner)
        self.version = 1

    def ls_if_changed(self, path: str, version: int | None
                      ) -> tuple[Stat, list[Stat] | None]:
        self.calls["ls_if_changed"] += 1
        st = replace(self.inner.stat(path), version=self.version)
        if version == self.version:
            return st, None
        return st, self.inner.ls(path)


@pytest.fixture
def ns(fs: Client) -> Iterator[Counting]:
    fs.mkdir("/d")
    for i in range(50):
        fs.write_bytes(f"/d/f{i:02d}", b"x" * i)
    yield Counting(fs)


def test_one_listing_answers_every_entry_and_every_absent_name(ns: Counting) -> None:
    clock = Clock()
    c = MetaCache(ns, ttl=1.0, clock=clock)  # type: ignore[arg-type]
    assert len(c.ls("/d")) == 50
    assert [c.stat(f"/d/f{i:02d}").size for i in range(50)] == list(range(50))
    with pytest.raises(NotFoundError):
        c.stat("/d/nope")
    assert ns.calls == Counter({"ls": 1})
    clock.now = 1.5  # past the TTL: asked again
    assert c.stat("/d/f07").size == 7
    assert ns.calls["stat"] == 1


def test_ttl_bounds_staleness_and_invalidate_drops_at_once(ns: Counting) -> None:
    clock = Clock()
    c = MetaCache(ns, ttl=1.0, clock=clock)  # type: ignore[arg-type]
    assert c.stat("/d/f03").size == 3
    ns.inner.write_bytes("/d/f03", b"longer")  # changed behind the cache's back
    clock.now = 0.9
    assert c.stat("/d/f03").size == 3  # within the TTL: the cached answer
    clock.now = 1.0
    assert c.stat("/d/f03").size == 6  # at the TTL: fetched again
    ns.inner.write_bytes("/d/f03", b"")
    c.invalidate("/d/f03")  # a change made through the cache's owner
    assert c.stat("/d/f03").size == 0
    with pytest.raises(NotFoundError):
        c.stat("/d/new")
    ns.inner.write_bytes("/d/new", b"1")
    with pytest.raises(NotFoundError):  # a negative answer is cached too
        c.stat("/d/new")
    c.invalidate("/d/new")
    assert c.stat("/d/new").size == 1


def test_invalidate_subtree(ns: Counting) -> None:
    c = MetaCache(ns, ttl=60.0)  # type: ignore[arg-type]
    c.ls("/d")
    ns.inner.mv("/d", "/e")
    c.invalidate("/d", subtree=True)
    with pytest.raises(NotFoundError):
        c.stat("/d/f01")
    assert c.stat("/e/f01").size == 1


def test_bounded_in_entries(ns: Counting) -> None:
    c = MetaCache(ns, ttl=60.0, max_entries=60)  # type: ignore[arg-type]
    c.ls("/d")  # weighs 51
    for i in range(20):
        c.stat(f"/d/f{i:02d}")  # from the listing: no call
    assert ns.calls["ls"] == 1 and ns.calls["stat"] == 0
    ns.inner.mkdir("/x")
    for i in range(20):
        ns.inner.write_bytes(f"/x/g{i}", b"")
        c.stat(f"/x/g{i}")  # 20 more entries: the listing must go
    c.ls("/d")
    assert ns.calls["ls"] == 2
    with pytest.raises(ValueError, match="must be >= 1"):
        MetaCache(ns, max_entries=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TTL"):
        MetaCache(ns, ttl=-1)  # type: ignore[arg-type]


def test_revalidation_by_version(fs: Client) -> None:
    fs.mkdir("/d")
    fs.write_bytes("/d/a", b"1")
    ns = Versioned(fs)
    clock = Clock()
    c = MetaCache(ns, ttl=1.0, clock=clock)  # type: ignore[arg-type]
    assert [s.name for s in c.ls("/d")] == ["a"]
    clock.now = 2.0
    assert [s.name for s in c.ls("/d")] == ["a"]  # unchanged: renewed without a listing
    assert ns.calls == Counter({"ls_if_changed": 2})
    assert c.counters.revalidated == 1
    fs.write_bytes("/d/b", b"2")
    ns.version = 2
    clock.now = 4.0
    assert [s.name for s in c.ls("/d")] == ["a", "b"]  # changed: the new entries
    assert c.counters.revalidated == 1


def test_stats_in_one_directory_cost_one_listing_per_ttl(ns: Counting) -> None:
    """A stat that misses lists the parent: the files of one directory stat'ed one by
    one (no ls first, and again after the TTL) cost one listing, then one cheap
    revalidation, never a request per file."""
    v = Versioned(ns.inner)
    clock = Clock()
    c = MetaCache(v, ttl=1.0, clock=clock)  # type: ignore[arg-type]
    assert [c.stat(f"/d/f{i:02d}").size for i in range(50)] == list(range(50))
    with pytest.raises(NotFoundError):
        c.stat("/d/nope")
    assert v.calls == Counter({"ls_if_changed": 1})
    clock.now = 1.5  # expired: revalidated once by the directory's version
    assert [c.stat(f"/d/f{i:02d}").size for i in range(50)] == list(range(50))
    assert v.calls == Counter({"ls_if_changed": 2})
    assert c.counters.revalidated == 1
    ns.inner.write_bytes("/d/f07", b"new")
    v.version = 2
    clock.now = 3.0  # changed: the new listing, with the new size
    assert c.stat("/d/f07").size == 3
    assert v.calls["stat"] == 0


def test_cached_never_asks_the_back_end(ns: Counting) -> None:
    """`cached` (answered on the mount's event loop) tells a fresh answer, present or
    absent, and None otherwise, without a call of the back end."""
    clock = Clock()
    c = MetaCache(ns, ttl=1.0, clock=clock)  # type: ignore[arg-type]
    assert c.cached("/d/f03") is None
    assert ns.calls == Counter()
    c.ls("/d")
    cached = c.cached("/d/f03")
    assert cached is not None and cached.size == 3
    with pytest.raises(NotFoundError):
        c.cached("/d/nope")
    clock.now = 1.5
    assert c.cached("/d/f03") is None
    assert ns.calls == Counter({"ls": 1})


def test_a_stat_under_a_file_is_asked_alone(ns: Counting) -> None:
    v = Versioned(ns.inner)
    c = MetaCache(v, ttl=1.0, clock=Clock())  # type: ignore[arg-type]
    with pytest.raises(NotADirError):
        c.stat("/d/f01/x")  # the parent is a file: no listing answers for it
    assert v.calls["stat"] == 1


def _st(path: str, ino: int) -> Stat:
    return Stat(path, "file", 0, 0o100644, 0, 0, 0, 0, 0, ino, 1, "")


def test_inode_numbers_per_entity_stable_across_renames() -> None:
    t = InodeTable(entity_scope)
    a = t.ino_for(_st("/bank-a/x", 5))
    b = t.ino_for(_st("/telco-b/x", 5))  # the same back-end number at another entity
    assert len({a, b, ROOT_INO}) == 3
    t.moved("/bank-a/x", "/bank-a/y")
    assert t.ino_for(_st("/bank-a/y", 5)) == a and t.path(a) == "/bank-a/y"
    synthetic = t.ino_for(_st("/bank-a", 0))  # no back-end number: known by its path
    t.moved("/bank-a", "/bank-z")
    assert t.ino_for(_st("/bank-z", 0)) == synthetic
    assert t.ino_for(_st("/", 0)) == ROOT_INO


def test_removed_entries_live_until_forgotten() -> None:
    t = InodeTable(one_scope)
    a = t.ino_for(_st("/f", 9))
    t.looked_up(a, 2)
    t.removed("/f")
    assert t.path(a) == "/f"  # the kernel still holds it
    t.forget(a, 1)
    assert t.path(a) == "/f"
    t.forget(a, 1)
    with pytest.raises(NotFoundError):
        t.path(a)
    assert t.ino_for(_st("/f", 9)) != a  # a new entry gets a new number
    assert len(t) == 2


def test_the_last_answer_is_served_while_the_back_end_is_unreachable(ns: Counting) -> None:
    clock = Clock()
    c = MetaCache(ns, ttl=1.0, clock=clock)  # type: ignore[arg-type]
    c.ls("/d")
    assert c.stat("/d/f05").size == 5
    down = UnavailableSiteError("/d", "primary down")

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise down
    ns.inner = type("Down", (), {"stat": unreachable, "ls": unreachable})()  # type: ignore[assignment]
    clock.now = 10.0  # long past the TTL
    assert c.stat("/d/f05").size == 5  # seen before: the last answer
    assert [s.name for s in c.ls("/d")][:2] == ["f00", "f01"]
    with pytest.raises(NotFoundError):  # not in the last listing: still absent
        c.stat("/d/new")
    assert c.counters.stale == 3
    with pytest.raises(UnavailableSiteError):
        c.stat("/never/seen")


def test_a_created_file_keeps_its_number_and_its_path_is_free_after_a_rename() -> None:
    """git's lock files: create x.lock (no back-end inode until its first commit),
    commit, rename over x, create x.lock again: a new number, not x's."""
    t = InodeTable(one_scope)
    lock = t.ino_for(_st("/r/config.lock", 0))  # created here, not committed
    t.expect("/r/config.lock", lock)  # committed: its back-end inode is not known yet
    t.moved("/r/config.lock", "/r/config")
    assert t.ino_for(_st("/r/config", 41)) == lock  # first seen after the rename
    assert t.ino_for(_st("/r/config", 41)) == lock
    again = t.ino_for(_st("/r/config.lock", 0))
    assert again != lock and t.path(lock) == "/r/config"
    t.looked_up(again)
    t.removed("/r/config.lock")  # unlinked while the kernel holds it
    assert t.ino_for(_st("/r/config.lock", 0)) not in (again, lock)
