"""The site's write lock (gfs/federation/site_lock.py): file writes share it, so 64
clients' writes no longer queue one behind another (`python -m bench load`: the site
sat at ~20 % CPU with every worker waiting for the lock); namespace edits and gc
still hold it alone, and a waiting gc is not starved by a stream of writes."""

from __future__ import annotations

import threading

from gfs.federation.site_lock import WriteLock

WAIT = 10.0  # seconds any expected event may take
ABSENT = 0.3  # how long to watch for an event that must not happen


def test_shared_holders_run_side_by_side() -> None:
    lock = WriteLock()
    both = threading.Barrier(2, timeout=WAIT)
    done: list[bool] = []

    def write() -> None:
        with lock.shared():
            both.wait()  # each waits for the other inside: a broken barrier if exclusive
            done.append(True)
    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert done == [True, True]


def test_exclusive_excludes_and_is_not_starved() -> None:
    lock = WriteLock()
    in_shared, release_shared = threading.Event(), threading.Event()
    got_exclusive, late_shared = threading.Event(), threading.Event()
    release_exclusive = threading.Event()

    def writer() -> None:
        with lock.shared():
            in_shared.set()
            release_shared.wait(WAIT)

    def gc() -> None:
        with lock:
            got_exclusive.set()
            release_exclusive.wait(WAIT)

    def late_writer() -> None:
        with lock.shared():
            late_shared.set()
    w = threading.Thread(target=writer)
    w.start()
    assert in_shared.wait(WAIT)
    g = threading.Thread(target=gc)
    g.start()
    assert not got_exclusive.wait(ABSENT)  # a write is in progress
    late = threading.Thread(target=late_writer)
    late.start()
    assert not late_shared.wait(ABSENT)  # gc waits: new writes queue behind it
    release_shared.set()
    assert got_exclusive.wait(WAIT)
    assert not late_shared.is_set()  # gc runs alone
    release_exclusive.set()
    assert late_shared.wait(WAIT)
    for t in (w, g, late):
        t.join(WAIT)
