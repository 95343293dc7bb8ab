"""Property tests of the dedup-aware cost model and the planner (no stores, no clusters)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.cost import Constraints, CostModel, Task
from dataflow.datasets import FileEntry
from dataflow.errors import PlanError
from dataflow.planner import TOLERANCE, Planner
from dataflow.sites import Link, Site, Topology
from gfs.meta import ChunkRef, Manifest

SITES = ["s0", "s1", "s2", "s3"]


def _topo(bw: list[float]) -> Topology:
    topo = Topology({n: Site(n, "r0" if i < 2 else "r1", "ent", slots=1 + i % 2)
                     for i, n in enumerate(SITES)})
    k = 0
    for a in SITES:
        for b in SITES:
            if a != b:
                topo.configured[(a, b)] = Link(a, b, bw[k % len(bw)], 0.01 * (1 + k % 3),
                                               0.01 * (k % 4))
                k += 1
    return topo


world = st.fixed_dictionaries({
    "bw": st.lists(st.floats(1e5, 1e9), min_size=1, max_size=12),
    # each file: a list of chunk indexes into a shared pool of 40 chunks
    "files": st.lists(st.lists(st.integers(0, 39), min_size=1, max_size=12), min_size=1,
                      max_size=6),
    # each chunk: the set of sites holding it (at least one)
    "holders": st.lists(st.sets(st.sampled_from(SITES), min_size=1), min_size=40,
                        max_size=40),
    "lengths": st.lists(st.integers(1, 1 << 20), min_size=40, max_size=40),
})


def _build(w: dict[str, object]) -> tuple[Topology, list[Task], dict[bytes, dict[str, str]],
                                          dict[bytes, int]]:
    lengths = w["lengths"]
    holders = w["holders"]
    assert isinstance(lengths, list) and isinstance(holders, list)
    cid = [i.to_bytes(16, "big") for i in range(40)]
    locations = {cid[i]: dict.fromkeys(sorted(holders[i]), "warm") for i in range(40)}
    tasks = []
    files = w["files"]
    assert isinstance(files, list)
    for n, idx in enumerate(files):
        m = Manifest(1, tuple(ChunkRef(cid[i], lengths[i]) for i in idx))
        home = sorted(holders[idx[0]])[0]
        tasks.append(Task(f"t{n}", (FileEntry(f"/ent/f{n}", m, home, (home,)),)))
    bw = w["bw"]
    assert isinstance(bw, list)
    return _topo(bw), tasks, locations, {c: lengths[i] for i, c in enumerate(cid)}


@settings(max_examples=150, deadline=None)
@given(world, st.sampled_from(SITES))
def test_bytes_moved_are_the_missing_distinct_chunks(w: dict[str, object], dst: str) -> None:
    topo, tasks, locations, lengths = _build(w)
    model = CostModel(topo, locations)
    est = model.estimate({t.id: dst for t in tasks}, tasks)
    needed = {c for t in tasks for c in t.chunks}
    missing = {c for c in needed if dst not in locations[c]}
    assert est.wan_bytes == sum(lengths[c] for c in missing)
    assert sum(f.chunks for f in est.flows) == len(missing)
    # never more than a file-level copy would send, shared chunks counted once
    assert est.wan_bytes <= sum(t.input_bytes for t in tasks)
    assert all(f.dst == dst and f.src != dst for f in est.flows)
    assert est.seconds >= max((f.seconds for f in est.flows), default=0.0)


@settings(max_examples=100, deadline=None)
@given(world, st.sampled_from(SITES))
def test_more_replicas_at_the_destination_never_cost_more(w: dict[str, object],
                                                          dst: str) -> None:
    topo, tasks, locations, _ = _build(w)
    placement = {t.id: dst for t in tasks}
    before = CostModel(topo, locations).estimate(placement, tasks)
    richer = {c: {**loc, dst: "hot"} for c, loc in list(locations.items())[::2]}
    after = CostModel(topo, {**locations, **richer}).estimate(placement, tasks)
    assert after.wan_bytes <= before.wan_bytes
    assert after.money <= before.money + 1e-12
    assert after.seconds <= before.seconds + 1e-9


@settings(max_examples=60, deadline=None)
@given(world, st.sets(st.sampled_from(SITES), max_size=3))
def test_planner_picks_the_best_alternative_and_obeys_forbid(w: dict[str, object],
                                                             forbid: set[str]) -> None:
    topo, tasks, locations, _ = _build(w)
    model = CostModel(topo, locations, Constraints(forbid=frozenset(forbid)))
    plan = Planner("time").plan(tasks, model)
    assert not set(plan.placement.values()) & forbid
    for a in plan.alternatives:
        if a.estimate is not None:
            assert plan.estimate.seconds <= a.estimate.seconds * (1 + TOLERANCE) + 1e-9
    assert "chosen" in plan.explain()
    # balanced: within its tolerance of the fastest, and the cheapest of those
    bal = Planner("balanced")
    plan = bal.plan(tasks, model)
    fastest = min(a.estimate.seconds for a in plan.alternatives if a.estimate)
    assert plan.estimate.seconds <= fastest * (1 + bal.tolerance) + 1e-9
    for a in plan.alternatives:
        if a.estimate and a.estimate.seconds <= fastest * (1 + bal.tolerance):
            assert plan.estimate.money <= a.estimate.money + 1e-9


def test_owner_rules_and_grants_forbid_sites() -> None:
    topo = _topo([1e8])
    topo.sites["s3"] = Site("s3", "r1", "other")
    topo.owners["ent"] = "region=r0 | entity=other"
    m = Manifest(1, (ChunkRef(b"\x01" * 16, 10),))
    task = Task("t0", (FileEntry("/ent/a", m, "s0", ("s0",)),))
    model = CostModel(topo, {b"\x01" * 16: {"s0": "warm"}})
    assert model.allowed_sites(task) == ["s0", "s1"]      # s2: region; s3: no grant
    assert "granted" in (model.refusal(task, "s3") or "")
    topo.grants["ent"] = [("/ent/**", "other")]
    assert CostModel(topo, {}).allowed_sites(task) == ["s0", "s1", "s3"]
    try:
        Planner().plan([task], model, at="s2")
    except PlanError as e:
        assert "region=r0" in str(e)
    else:
        raise AssertionError("a forbidden pinned site was accepted")


# -- link backlog of started jobs (contention) ------------------------------------------------

reservations = st.lists(st.tuples(st.sampled_from(SITES), st.sampled_from(SITES),
                                  st.integers(1, 200), st.integers(1, 1 << 30)),
                        min_size=1, max_size=6)


def _single_holder(w: dict[str, object]) -> dict[str, object]:
    """The same world with one holder per chunk (the source of each chunk is fixed)."""
    holders = w["holders"]
    assert isinstance(holders, list)
    return {**w, "holders": [{sorted(h)[0]} for h in holders]}


@settings(max_examples=100, deadline=None)
@given(world, st.sampled_from(SITES), reservations)
def test_backlog_delays_flows_by_their_queue_and_no_more(w: dict[str, object], dst: str,
                                                        res: list[tuple[str, str, int, int]]
                                                        ) -> None:
    topo, tasks, locations, _ = _build(_single_holder(w))
    placement = {t.id: dst for t in tasks}
    free = CostModel(topo, locations).estimate(placement, tasks)
    topo.reserve("earlier", res)
    model = CostModel(topo, locations)
    busy = model.estimate(placement, tasks)
    assert busy.wan_bytes == free.wan_bytes              # queueing moves no extra byte
    assert busy.seconds >= free.seconds - 1e-9
    assert busy.seconds <= free.seconds + busy.queue_seconds + 1e-9
    before = {(f.src, f.dst): f for f in free.flows}
    for f in busy.flows:
        fair = topo.queue_seconds(f.src, f.dst, nbytes=f.bytes)   # shared fairly
        assert f.queue == fair and 0 <= fair <= topo.queue_seconds(f.src, f.dst)
        assert abs(f.seconds - before[(f.src, f.dst)].seconds - f.queue) < 1e-9
    # a reserved link shows its bytes until its transfers are observed or released
    for src, dst, _, _ in res:
        if src != dst:
            assert topo.pending(src, dst) > 0
    topo.release("earlier")
    assert topo.backlog() == {}
    again = CostModel(topo, locations).estimate(placement, tasks)
    assert again.seconds == free.seconds


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(1, 1 << 26)), min_size=1,
                max_size=4),
       st.lists(st.integers(0, 60), max_size=8))
def test_observed_transfers_drain_the_backlog(jobs: list[tuple[int, int]],
                                              observed: list[int]) -> None:
    topo = _topo([1e8])
    for i, (chunks, nbytes) in enumerate(jobs):
        topo.reserve(f"j{i}", [("s0", "s2", chunks, nbytes)])
    total = sum(b for _, b in jobs)
    assert topo.pending("s0", "s2") == total
    last = float(total)
    for n in observed:
        topo.observe("s0", "s2", 0, n, 0.0)
        now = topo.pending("s0", "s2")
        assert 0 <= now <= last
        last = now
    if sum(observed) >= sum(c for c, _ in jobs):
        assert last == 0
    assert topo.pending("s2", "s0") == 0 and topo.pending("s0", "s1") == 0
    # jobs end: each settles the chunks it moved itself; nothing is left at the end
    for i in range(len(jobs)):
        topo.release(f"j{i}", {("s0", "s2"): jobs[i][0]})
    assert topo.backlog() == {}


def test_backlog_of_another_job_is_not_settled_by_one_that_ends() -> None:
    topo = _topo([1e8])
    topo.reserve("a", [("s0", "s2", 100, 100 << 20)])
    topo.reserve("b", [("s0", "s2", 50, 50 << 20)])
    topo.observe("s0", "s2", 50 << 20, 50, 1.0)       # b's transfer finished first
    topo.release("b", {("s0", "s2"): 50})             # ... and b ended
    assert topo.pending("s0", "s2") == 100 << 20       # all of a's bytes are still ahead
    topo.observe("s0", "s2", 100 << 20, 100, 1.0)
    assert topo.pending("s0", "s2") == 0
    topo.release("a", {("s0", "s2"): 100})
    assert topo.backlog() == {}


def test_nic_backlog_queues_flows_on_other_links() -> None:
    topo = _topo([1e8])
    topo.sites["s0"] = Site("s0", "r0", "ent", nic_mbps=80)        # 10 MB/s out of s0
    topo.reserve("earlier", [("s0", "s1", 10, 50_000_000)])     # 5 s of s0's NIC
    assert topo.queue_seconds("s0", "s1") == max(50_000_000 / topo.link("s0", "s1").bandwidth,
                                                 5.0)
    assert topo.queue_seconds("s0", "s2") == 5.0                # another link, same NIC
    assert topo.queue_seconds("s1", "s2") == 0.0
    topo.sites["s3"] = Site("s3", "r1", "ent", nic_mbps=200)
    topo.reserve("into-s3", [("s1", "s3", 1, 50_000_000)])
    assert topo.inbound_queue_seconds("s3") == 2.0
    assert topo.queue_seconds("s2", "s3") == 2.0                # s3's NIC is busy


def test_second_job_queues_behind_or_avoids_a_busy_link() -> None:
    topo = Topology({"a": Site("a", "r0", "ent"), "b": Site("b", "r0", "ent"),
                     "c": Site("c", "r1", "ent", slots=8, compute_mbps=8000)})
    for x, y, bw in (("a", "c", 50e6), ("b", "c", 37.5e6), ("a", "b", 100e6)):
        topo.configured[(x, y)] = Link(x, y, bw, 0.001)
        topo.configured[(y, x)] = Link(y, x, bw, 0.001)
    cids = [bytes([i]) * 16 for i in range(4)]
    m = Manifest(1, tuple(ChunkRef(c, 4 << 20) for c in cids))
    task = Task("t0", (FileEntry("/ent/f", m, "a", ("a",)),))
    only_a = {c: {"a": "warm"} for c in cids}
    p0 = Planner("time").plan([task], CostModel(topo, only_a), at="c")
    assert "queued" not in p0.explain()
    # an earlier job is moving 64 MiB over a -> c: the flow queues, and the plan says so
    topo.reserve("earlier", [("a", "c", 16, 64 << 20)])
    p2 = Planner("time").plan([task], CostModel(topo, only_a), at="c")
    [f] = p2.estimate.flows
    assert p2.estimate.seconds == pytest.approx(p0.estimate.seconds + f.queue)
    assert f.queue == (16 << 20) / 50e6   # the link is shared: 16 MiB of the 64 hold it up
    assert "queued" in p2.explain() and "queueing" in p2.explain()
    assert p2.estimate.to_dict()["flows"][0]["queue"] == round(f.queue, 4)
    # a slow site holding the data: moving to c wins while a -> c is free, computing
    # where the data is wins once a -> c is busy for longer than that computation
    topo.release("earlier")
    topo.sites["a"] = Site("a", "r0", "ent", compute_mbps=40)
    no_b = Constraints(forbid=frozenset({"b"}))
    assert Planner("time").plan([task], CostModel(topo, only_a, no_b)).placement == \
        {"t0": "c"}
    for i in range(16):                     # 16 jobs share a -> c: 16 x 16 MiB ahead
        topo.reserve(f"earlier{i}", [("a", "c", 64, 256 << 20)])
    auto = Planner("time").plan([task], CostModel(topo, only_a, no_b))
    assert auto.placement == {"t0": "a"}
    assert any(a.estimate is not None and a.estimate.queue_seconds > 5
               for a in auto.alternatives if a.strategy == "move data to c")


def test_own_reservation_is_no_queue_and_sources_weigh_other_jobs_queues() -> None:
    """A chunk held at a (50 MB/s to c) and b (25 MB/s) comes from a while a -> c is
    free or briefly busy, from b once other jobs' backlog on a -> c outweighs the
    faster link; a job's own reservation never counts against it (`job=`)."""
    topo = Topology({"a": Site("a", "r0", "ent"), "b": Site("b", "r0", "ent"),
                     "c": Site("c", "r1", "ent")})
    for x, bw in (("a", 50e6), ("b", 25e6)):
        topo.configured[(x, "c")] = Link(x, "c", bw, 0.001)
    cids = [bytes([i]) * 16 for i in range(4)]
    m = Manifest(1, tuple(ChunkRef(c, 4 << 20) for c in cids))
    task = Task("t0", (FileEntry("/ent/f", m, "a", ("a", "b")),))
    both = {c: {"a": "warm", "b": "warm"} for c in cids}
    at_c = {"t0": "c"}

    def sources(model: CostModel) -> dict[str, float]:
        return {f.src: f.queue for f in model.estimate(at_c, [task]).flows}
    assert sources(CostModel(topo, both)) == {"a": 0.0}
    topo.reserve("j1", [("a", "c", 2, 8 << 20)])            # 0.17 s ahead: still a
    assert topo.queue_seconds("a", "c") == (8 << 20) / 50e6
    assert topo.queue_seconds("a", "c", exclude="j1") == 0.0
    assert topo.pending("a", "c", exclude="j1") == 0.0
    assert sources(CostModel(topo, both)) == {"a": (8 << 20) / 50e6}
    assert sources(CostModel(topo, both, job="j1")) == {"a": 0.0}
    topo.reserve("j2", [("a", "c", 16, 64 << 20)])          # 1.5 s ahead: b is sooner
    assert sources(CostModel(topo, both)) == {"b": 0.0}
    # j2 itself (planned before it reserved, now running) keeps its source: only j1 is
    # ahead of it, as when it was planned
    assert sources(CostModel(topo, both, job="j2")) == {"a": (8 << 20) / 50e6}
    assert topo.queue_seconds("a", "c", exclude="j2") == (8 << 20) / 50e6
    topo.sites["c"] = Site("c", "r1", "ent", nic_mbps=80)      # the NIC term leaves j2 out too
    assert topo.inbound_queue_seconds("c", exclude="j2") == (8 << 20) / 10e6
    assert topo.inbound_queue_seconds("c") == (72 << 20) / 10e6
    topo.release("j1")
    topo.release("j2")
    assert topo.backlog() == {}


def test_compute_backlog_of_started_jobs_sends_a_job_elsewhere() -> None:
    """Tasks of started jobs keep their site's slots busy (their planned seconds over the
    slots) until each is done; a job planned meanwhile goes where the slots are free
    when that is sooner, and its plan says why."""
    topo = Topology({"a": Site("a", "r0", "ent", slots=2, compute_mbps=8),
                     "b": Site("b", "r0", "ent", compute_mbps=8)})
    topo.configured[("a", "b")] = Link("a", "b", 100e6, 0.001)
    cids = [bytes([i]) * 16 for i in range(2)]
    m = Manifest(1, tuple(ChunkRef(c, 1 << 20) for c in cids))
    task = Task("t0", (FileEntry("/ent/f", m, "a", ("a",)),))
    at_a = {c: {"a": "warm"} for c in cids}
    assert Planner("time").plan([task], CostModel(topo, at_a)).placement == {"t0": "a"}
    topo.reserve_compute("j1", [("t0", "a", 30.0), ("t1", "a", 10.0), ("t2", "b", 1.0)])
    topo.reserve_compute("j2", [("t0", "a", 2.0)])
    assert topo.compute_backlog() == {"a": 21.0, "b": 1.0}          # 42 s over 2 slots
    assert topo.compute_backlog(exclude="j1") == {"a": 1.0}
    busy = CostModel(topo, at_a, backlog=topo.compute_backlog())
    plan = Planner("time").plan([task], busy)
    assert plan.placement == {"t0": "b"}
    assert plan.estimate.backlog == {"b": 1.0}
    assert plan.estimate.site_seconds["b"] >= 1.0
    text = plan.explain()
    assert "compute queue" in text and "a busy 21.000 s" in text
    assert "incl. 1.000 s behind earlier jobs' tasks" in text
    assert plan.to_dict()["compute_queue"] == {"a": 21.0, "b": 1.0}
    [stay] = [x for x in plan.alternatives if x.strategy == "move data to a"]
    assert stay.estimate is not None and stay.estimate.seconds > 21.0
    topo.compute_done("j1", "t0")                   # finished tasks free their share
    topo.move_compute("j1", {"t1": "b"})            # re-planned tasks move
    topo.move_compute("nobody", {"t1": "a"})        # a job without a reservation: nothing
    assert topo.compute_backlog() == {"a": 1.0, "b": 11.0}
    topo.release_compute("j1")
    topo.release_compute("j2")
    assert topo.compute_backlog() == {}
    assert Planner("time").plan([task], CostModel(topo, at_a, backlog=topo.compute_backlog())
                                ).placement == {"t0": "a"}


def test_a_link_is_shared_fairly_among_overlapping_flows() -> None:
    """A new flow is held up by each other job's bytes up to its own size (processor
    sharing), not by the whole backlog (FIFO): small flows pass large ones."""
    topo = Topology.from_config({"sites": {"a": {"region": "r"}, "c": {"region": "r"}},
                                 "links": [{"a": "a", "b": "c", "mbps": 80}]})   # 10 MB/s
    topo.reserve("big", [("a", "c", 100, 100_000_000)])
    topo.reserve("small", [("a", "c", 10, 10_000_000)])
    assert topo.queue_seconds("a", "c") == pytest.approx(11.0)                  # FIFO
    assert topo.queue_seconds("a", "c", nbytes=20_000_000) == pytest.approx(3.0)
    assert topo.queue_seconds("a", "c", nbytes=1_000_000) == pytest.approx(0.2)
    # the cost model charges a new 20 MB flow its fair delay: 2 s alone + 3 s shared
    topo.release("small")
    topo.set_external({"other-driver": ([("a", "c", 10, 10_000_000)], [])})
    assert topo.pending("a", "c") == 110_000_000                   # another driver's load
    assert topo.queue_seconds("a", "c", nbytes=20_000_000) == pytest.approx(3.0)
    assert topo.queue_seconds("a", "c", nbytes=20_000_000,
                              exclude="other-driver") == pytest.approx(2.0)
    topo.set_external({})
    assert topo.queue_seconds("a", "c", nbytes=20_000_000) == pytest.approx(2.0)
