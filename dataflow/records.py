"""Records: typed state of a job (its tasks, their attempts, its transfers and
re-estimates) and of a lease, and the one place they are serialised.

The executor changes a `JobRecord` under its lock (`JobRecord.lock`) from the
threads that run each site; `to_json` / `from_json` turn any of these
dataclasses (and `Site`s, for `Topology.to_dict`) into JSON-ready dicts and
back (the embedded `jobs` table, the federation's
`/ENTITY/.dataflow/jobs/ID.json` and `leases/JOB.json`, docs/dataflow.md "Job
record"). Optional fields that are unset are left out of the JSON.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

JobStatus = Literal["running", "done", "failed"]
TaskStatus = Literal["pending", "done"]
AttemptStatus = Literal["running", "done", "failed"]

_T = TypeVar("_T")


def to_json(obj: Any, skip: frozenset[str] = frozenset(), *,
            keep_none: bool = False) -> dict[str, Any]:
    """The fields of dataclass `obj` but `skip` (those set to None too, with
    `keep_none`), as a dict."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.name not in skip and (keep_none or getattr(obj, f.name) is not None)}


def from_json(cls: type[_T], d: dict[str, Any]) -> _T:
    """A `cls` dataclass from dict `d` (keys that are not its fields are ignored)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Attempt:
    """One try of a task at a site."""

    site: str
    started: float
    status: AttemptStatus = "running"
    seconds: float | None = None
    """Compute seconds the task function took (done)."""
    finished: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass
class TransferRecord:
    """Chunks copied from `src` into `dst`'s store for a job (one group of a source)."""

    src: str
    dst: str
    group: int
    chunks: int
    started: float
    bytes: int = 0
    via: str | None = None
    """`mover` or `site-api` (federation), None embedded (the mover)."""
    moved: int | None = None
    skipped: int | None = None
    retries: int | None = None
    seconds: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass
class Lease:
    """What one running job of one driver has still to do, until `expires` (epoch s):
    flows (src, dst, chunks, bytes) and compute (task, site, seconds)."""

    job: str
    driver: str
    expires: float
    flows: list[tuple[str, str, int, int]] = field(default_factory=list)
    compute: list[tuple[str, str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:       # JSON gives lists: back to typed tuples
        self.flows = [(str(a), str(b), int(c), int(n)) for a, b, c, n in self.flows]
        self.compute = [(str(t), str(s), float(x)) for t, s, x in self.compute]
        self.expires = float(self.expires)

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lease:
        return from_json(cls, d)


@dataclass
class Reestimate:
    """A running job's estimate re-shared when other jobs' leases appeared on its links."""

    at: float
    """Epoch seconds of the re-estimate."""
    elapsed: float
    """Seconds the job had run by then."""
    seconds: float
    """The job's whole estimated makespan now (elapsed + what is left, links shared)."""
    leases: list[str] = field(default_factory=list)
    """The new leases (other drivers' job ids) that share its links."""

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass
class TaskRecord:
    """One task of a job: its input files, where it ran, what it wrote or returned."""

    files: list[str]
    status: TaskStatus = "pending"
    attempts: list[Attempt] = field(default_factory=list)
    site: str | None = None
    output: str | None = None
    output_bytes: int | None = None
    output_site: str | None = None
    value: Any = None
    """The task's JSON value (small values only)."""
    granted: dict[str, Any] | None = None
    """Files of other entities granted to the job's entity that the task read through
    their owners' primaries: {files, bytes, from}."""

    def to_dict(self) -> dict[str, Any]:
        d = to_json(self, frozenset({"attempts"}))
        d["attempts"] = [a.to_dict() for a in self.attempts]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskRecord:
        t = from_json(cls, {k: v for k, v in d.items() if k != "attempts"})
        t.attempts = [from_json(Attempt, a) for a in d.get("attempts", [])]
        return t


@dataclass
class JobRecord:
    """A job: its plan, tasks, transfers, re-plans and outcome."""

    id: str
    name: str
    created: float
    plan: dict[str, Any]
    output: str | None = None
    status: JobStatus = "running"
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    transfers: list[TransferRecord] = field(default_factory=list)
    replans: list[dict[str, Any]] = field(default_factory=list)
    reestimates: list[Reestimate] = field(default_factory=list)
    seconds: float | None = None
    error: str | None = None
    report: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held while a site's thread changes the record."""

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (the only serialisation of job records)."""
        with self.lock:
            d = to_json(self, frozenset({"tasks", "transfers", "reestimates", "lock"}))
            d["output"] = self.output
            d["tasks"] = {k: t.to_dict() for k, t in self.tasks.items()}
            d["transfers"] = [x.to_dict() for x in self.transfers]
            d["replans"] = list(self.replans)
            if self.reestimates:
                d["reestimates"] = [r.to_dict() for r in self.reestimates]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        """A record read back (unknown keys are ignored)."""
        rec = from_json(cls, {k: v for k, v in d.items()
                            if k not in ("tasks", "transfers", "reestimates", "lock")})
        rec.tasks = {k: TaskRecord.from_dict(t) for k, t in d.get("tasks", {}).items()}
        rec.transfers = [from_json(TransferRecord, x) for x in d.get("transfers", [])]
        rec.reestimates = [from_json(Reestimate, x) for x in d.get("reestimates", [])]
        return rec

    def written(self) -> dict[str, str | None]:
        """Task id -> output of the tasks done."""
        return {k: t.output for k, t in self.tasks.items() if t.status == "done"}


__all__ = ["Attempt", "AttemptStatus", "JobRecord", "JobStatus", "Lease", "Reestimate",
           "TaskRecord", "TaskStatus", "TransferRecord", "from_json", "to_json"]
