"""Property tests of the dedup-aware cost model and the planner (no stores, no clusters)."""

from __future__ import annotations

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
