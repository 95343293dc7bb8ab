"""The planner: move data to compute, move compute to data, or split by chunk locality.

    plan = Planner(topo).plan(tasks, model)
    print(plan.explain())       # the choice, the rejected alternatives, time and cost

Alternatives evaluated (docs/dataflow.md, "Planner"):

* `move data to X` for every site X allowed for all tasks: everything runs at X;
* `compute to data`: each task at the allowed site holding most of its chunk bytes;
* `split by locality`: starting from the better of the two, tasks move one at a
  time to the site that lowers the objective most, until no move helps (shared
  chunks of tasks placed together are fetched once, so the search groups them).

Objectives: `time` takes the lowest makespan, preferring the cheaper plan among
those within 2 % of it; `balanced` (the default) the cheapest plan (money, then
bytes moved) among those within 50 % of the fastest; `money` the cheapest, then
the fastest.
A `deadline` (seconds) or `budget` (money) rejects alternatives past it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from dataflow.cost import CostModel, Estimate, Task
from dataflow.errors import PlanError

#: Per objective: plans within this fraction of the fastest count as fast enough
#: (the cheaper wins).
TOLERANCES = {"time": 0.02, "balanced": 0.5}
TOLERANCE = TOLERANCES["time"]
#: Passes of the local search of `split by locality`.
MAX_PASSES = 4

Objective = Literal["time", "balanced", "money"]


@dataclass
class Alternative:
    """One evaluated strategy: its placement and estimate, or why it was impossible."""

    strategy: str
    placement: dict[str, str] = field(default_factory=dict)
    estimate: Estimate | None = None
    refused: str = ""


@dataclass
class Plan:
    """The chosen placement of a job's tasks, with every alternative considered."""

    tasks: list[Task]
    strategy: str
    placement: dict[str, str]
    estimate: Estimate
    alternatives: list[Alternative]
    objective: str = "balanced"
    compute_queue: dict[str, float] = field(default_factory=dict)
    """Seconds each site's slots are busy with the tasks of jobs started earlier (the
    cost model's backlog when this was planned)."""

    def sites(self) -> list[str]:
        """Sites that run at least one task."""
        return sorted(set(self.placement.values()))

    def explain(self) -> str:
        """A human-readable account: choice, estimate, flows, and the rejected alternatives."""
        e = self.estimate
        lines = [f"plan: {self.strategy} ({len(self.tasks)} tasks at "
                 f"{', '.join(self.sites())}; objective {self.objective})",
                 f"  estimate: {e.seconds:.3f} s, {_human(e.wan_bytes)} over the WAN "
                 f"({_human(e.logical_bytes)} without dedup), cost {e.money:.4f}"]
        if e.queue_seconds > 0:
            lines.append(f"  queueing: flows wait up to {e.queue_seconds:.3f} s behind the "
                         f"transfers of jobs started earlier (link/NIC backlog)")
        if self.compute_queue:
            lines.append("  compute queue: tasks of jobs started earlier keep " + ", ".join(
                f"{s} busy {secs:.3f} s" for s, secs in sorted(self.compute_queue.items())))
        for f in e.flows:
            wait = f" (incl. {f.queue:.3f} s queued)" if f.queue > 0 else ""
            lines.append(f"  move {_human(f.bytes)} ({f.chunks} chunks) {f.src} -> {f.dst}: "
                         f"{f.seconds:.3f} s{wait}, {f.money:.4f}")
        per: dict[str, list[str]] = {}
        for t in self.tasks:
            per.setdefault(self.placement[t.id], []).append(t.id)
        for s, ids in sorted(per.items()):
            behind = e.backlog.get(s, 0.0)
            after = f" (incl. {behind:.3f} s behind earlier jobs' tasks)" if behind > 0 else ""
            lines.append(f"  run at {s}: {len(ids)} task(s), done after "
                         f"{e.site_seconds.get(s, 0.0):.3f} s{after}")
        lines.append("  alternatives:")
        for a in self.alternatives:
            if a.strategy == self.strategy and a.estimate is self.estimate:
                mark = "chosen  "
            else:
                mark = "rejected"
            if a.estimate is None:
                lines.append(f"    {mark} {a.strategy}: impossible: {a.refused}")
            else:
                x = a.estimate
                why = f" ({a.refused})" if a.refused else ""
                lines.append(f"    {mark} {a.strategy}: {x.seconds:.3f} s, "
                             f"{_human(x.wan_bytes)}, cost {x.money:.4f}{why}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for job records and `hutong plan --json`."""
        return {"strategy": self.strategy, "objective": self.objective,
                "placement": self.placement, "estimate": self.estimate.to_dict(),
                "compute_queue": {k: round(v, 4) for k, v in self.compute_queue.items()},
                "tasks": {t.id: [f.path for f in t.files] for t in self.tasks},
                "alternatives": [{"strategy": a.strategy, "refused": a.refused,
                                  "estimate": a.estimate.to_dict() if a.estimate else None}
                                 for a in self.alternatives]}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Planner:
    """Chooses a placement for a job's tasks under a cost model."""

    def __init__(self, objective: Objective = "balanced", *, deadline: float | None = None,
                 budget: float | None = None, tolerance: float | None = None) -> None:
        if objective not in ("time", "balanced", "money"):
            raise PlanError(f"objective must be 'time', 'balanced' or 'money', got "
                            f"{objective!r}")
        self.objective: Objective = objective
        self.deadline = deadline
        self.budget = budget
        self.tolerance = tolerance if tolerance is not None else TOLERANCES.get(objective, 0.0)
        if not 0 <= self.tolerance <= 100:
            raise PlanError(f"tolerance must be 0 to 100 (a fraction), got {tolerance}")

    def key(self, e: Estimate, best_seconds: float) -> tuple[float, ...]:
        """Ordering of estimates under the objective."""
        if self.objective == "money":
            return (round(e.money, 9), e.seconds, e.wan_bytes)
        slow = e.seconds > best_seconds * (1 + self.tolerance) + 1e-9
        return (float(slow), e.seconds if slow else 0.0, round(e.money, 9), e.wan_bytes,
                e.seconds)

    def _score(self, e: Estimate) -> tuple[float, ...]:
        """Key for the local search (strict: no tolerance)."""
        if self.objective == "money":
            return (round(e.money, 9), e.seconds)
        return (e.seconds, round(e.money, 9))

    def plan(self, tasks: Sequence[Task], model: CostModel, *, at: str = "auto") -> Plan:
        """The best placement of `tasks`; `at` pins every task to one site."""
        tasks = list(tasks)
        if not tasks:
            raise PlanError("the job has no input files; nothing to plan")
        allowed = {t.id: model.allowed_sites(t) for t in tasks}
        for t in tasks:
            if not allowed[t.id]:
                why = "; ".join(f"{s.name}: {model.refusal(t, s.name)}"
                                for s in model.topo.sites.values())
                raise PlanError(f"task {t.id} ({t.files[0].path}) may run at no site: {why}")
        alts: list[Alternative] = []
        if at != "auto":
            model.topo.site(at)
            alts.append(self._try(f"run at {at}", {t.id: at for t in tasks}, tasks, model))
        else:
            common = set.intersection(*(set(v) for v in allowed.values()))
            for s in model.topo.up():
                if s.name in common:
                    alts.append(self._try(f"move data to {s.name}",
                                          {t.id: s.name for t in tasks}, tasks, model))
            local = {t.id: self._local_site(t, allowed[t.id], model) for t in tasks}
            alts.append(self._try("compute to data", local, tasks, model))
            ok = [a for a in alts if a.estimate is not None]
            if ok:
                start = min(ok, key=lambda a: self._score(a.estimate))  # type: ignore[arg-type]
                alts.append(self._split(start.placement, tasks, allowed, model))
        ok = [a for a in alts if a.estimate is not None]
        if not ok:
            raise PlanError("no placement is possible: " +
                            "; ".join(f"{a.strategy}: {a.refused}" for a in alts))
        fine = [a for a in ok if self._within_limits(a)]
        if not fine:
            raise PlanError("every placement misses the deadline or budget: " +
                            "; ".join(f"{a.strategy}: {a.refused}" for a in ok))
        best_s = min(a.estimate.seconds for a in fine)  # type: ignore[union-attr]
        chosen = min(fine, key=lambda a: self.key(a.estimate, best_s))  # type: ignore[arg-type]
        assert chosen.estimate is not None
        return Plan(tasks, chosen.strategy, chosen.placement, chosen.estimate, alts,
                    self.objective, {s: v for s, v in sorted(model.backlog.items()) if v > 0})

    def _within_limits(self, a: Alternative) -> bool:
        e = a.estimate
        assert e is not None
        if self.deadline is not None and e.seconds > self.deadline:
            a.refused = f"misses the deadline of {self.deadline:g} s"
            return False
        if self.budget is not None and e.money > self.budget:
            a.refused = f"over the budget of {self.budget:g}"
            return False
        return True

    @staticmethod
    def _try(name: str, placement: dict[str, str], tasks: Sequence[Task],
             model: CostModel) -> Alternative:
        try:
            return Alternative(name, placement, model.estimate(placement, tasks))
        except PlanError as e:
            return Alternative(name, placement, None, str(e))

    @staticmethod
    def _local_site(task: Task, allowed: list[str], model: CostModel) -> str:
        held: dict[str, int] = dict.fromkeys(allowed, 0)
        for cid, n in task.chunks.items():
            for s in model.locations.get(cid, {}):
                if s in held:
                    held[s] += n
        return max(allowed, key=lambda s: (held[s], model.topo.site(s).slots, s))

    def _split(self, start: dict[str, str], tasks: Sequence[Task],
               allowed: dict[str, list[str]], model: CostModel) -> Alternative:
        """Local search: first the objective strictly, then (`time`, `balanced`) the
        cheapest placement whose makespan stays within the tolerance of the fastest found."""
        placement = dict(start)
        best = model.estimate(placement, tasks)
        best = self._search(placement, best, tasks, allowed, model, self._score)
        if self.objective != "money":
            limit = best.seconds * (1 + self.tolerance)

            def cheap(e: Estimate) -> tuple[float, ...]:
                return (float(e.seconds > limit), round(e.money, 9), e.wan_bytes, e.seconds)
            best = self._search(placement, best, tasks, allowed, model, cheap)
        return Alternative("split by locality", placement, best)

    @staticmethod
    def _search(placement: dict[str, str], best: Estimate, tasks: Sequence[Task],
                allowed: dict[str, list[str]], model: CostModel,
                score: Callable[[Estimate], tuple[float, ...]]) -> Estimate:
        """Move single tasks while `score` improves (at most MAX_PASSES passes)."""
        order = sorted(tasks, key=lambda t: -t.input_bytes)
        for _ in range(MAX_PASSES):
            improved = False
            for t in order:
                here = placement[t.id]
                for s in allowed[t.id]:
                    if s == here:
                        continue
                    placement[t.id] = s
                    try:
                        e = model.estimate(placement, tasks)
                    except PlanError:
                        continue
                    if score(e) < score(best):
                        best, here, improved = e, s, True
                placement[t.id] = here
            if not improved:
                break
        return best
