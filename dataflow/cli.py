"""`hutong plan JOBFILE` and `hutong run JOBFILE`: jobs described in a small file.

A job file (TOML, or JSON when it ends in .json)::

    name = "count-rows"
    sites = "sites.toml"              # relative to the job file; --sites overrides
    inputs = ["/bank-a/loans/**"]     # paths or globs
    entry = "mypkg.jobs:count_rows"   # module:function, called with a list of InputFile
    output = "/bank-a/out/rows"       # optional: each task writes OUTPUT/TASK
    at = "auto"                       # or a site name
    per_task = 1                      # files per task
    [constraints]                     # all optional
    forbid = ["c"]
    only = "region=cn-west"
    deadline = 60.0                   # seconds, or a duration such as "1h30m"
    budget = 1.0                      # money
    objective = "balanced"            # or "time" or "money"
    compute_mbps = 800                # input processing rate of one slot
    [federation]                      # optional: federation mode (docs/dataflow.md)
    registry = "http://10.0.0.1:8700"
    keys = "state/federation"         # the entity's keys (relative to the job file)
    schedulers = {w1 = "tcp://10.0.0.2:8786"}   # else Site.scheduler, else a LocalCluster

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from dataflow.cost import Constraints
from dataflow.errors import ConfigError, SchemaError
from gfs.schema import Schema, load
from gfs.units import Duration


def _absolute(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"must be an absolute namespace path or glob, got {path!r}")
    return path


def _entry(entry: str) -> str:
    if entry.count(":") != 1 or not all(entry.split(":")):
        raise ValueError(f"must be 'module:function', got {entry!r}")
    return entry


def _registry(url: str) -> str:
    if not url.startswith("http://"):
        raise ValueError(f"must be http://HOST:PORT, got {url!r}")
    return url


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Positive = Annotated[float, Field(gt=0)]
NsPath = Annotated[str, AfterValidator(_absolute)]


class ConstraintsSpec(Schema):
    """`[constraints]` of a job file."""

    forbid: list[str] = Field(default_factory=list)
    only: str = ""
    deadline: Annotated[Duration, Field(gt=0)] | None = None
    budget: Positive | None = None
    objective: Literal["time", "balanced", "money"] = "balanced"
    compute_mbps: Positive | None = None


class FederationSpec(Schema):
    """`[federation]` of a job file."""

    registry: Annotated[str, AfterValidator(_registry)] | None = None
    keys: str | None = None
    schedulers: dict[str, str] = Field(default_factory=dict)


class JobSpec(Schema):
    """A job file as written (docs/dataflow.md, "CLI")."""

    name: str | None = None
    sites: str | None = None
    inputs: Annotated[list[NsPath], BeforeValidator(_one_or_many), Field(min_length=1)]
    entry: Annotated[str, AfterValidator(_entry)]
    output: NsPath | None = None
    at: str = "auto"
    per_task: Annotated[int, Field(ge=1)] = 1
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    job_id: str | None = None
    federation: FederationSpec = Field(default_factory=FederationSpec)


@dataclass
class JobFile:
    """A parsed and checked job file."""

    path: Path
    name: str
    sites: Path | None
    inputs: list[str]
    entry: str
    output: str | None = None
    at: str = "auto"
    per_task: int = 1
    constraints: Constraints = field(default_factory=Constraints)
    deadline: float | None = None
    budget: float | None = None
    objective: str = "balanced"
    compute_mbps: float | None = None
    job_id: str | None = None
    registry: str | None = None
    keys: Path | None = None
    schedulers: dict[str, str] = field(default_factory=dict)

    def function(self) -> Callable[..., Any]:
        """Import the entry point (ConfigError names what is wrong)."""
        mod, _, attr = self.entry.partition(":")
        try:
            module = importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"job file {self.path}: entry {self.entry!r}: cannot import "
                              f"module {mod!r} ({e}); put it on PYTHONPATH") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ConfigError(f"job file {self.path}: entry {self.entry!r}: module {mod!r} has "
                              f"no function {attr!r}")
        return fn  # type: ignore[no-any-return]


def load_job(path: str | Path) -> JobFile:
    """Read and check a job file; every problem is a ConfigError naming the key."""
    p = Path(path)
    spec = load(JobSpec, p, what="job file", error=SchemaError)
    c, fed = spec.constraints, spec.federation
    return JobFile(p, spec.name or p.stem,
                   (p.parent / spec.sites).absolute() if spec.sites else None,
                   list(spec.inputs), spec.entry, spec.output, spec.at, spec.per_task,
                   Constraints(frozenset(c.forbid), c.only), deadline=c.deadline,
                   budget=c.budget, objective=c.objective, compute_mbps=c.compute_mbps,
                   job_id=spec.job_id, registry=fed.registry,
                   keys=(p.parent / fed.keys).absolute() if fed.keys else None,
                   schedulers=dict(fed.schedulers))


def _open(args: argparse.Namespace, job: JobFile) -> Any:
    from dataflow.ops import Dataflow

    sites = Path(args.sites) if args.sites else job.sites
    registry = args.registry or job.registry
    if registry:
        from dataflow.federated import FederatedDataflow

        keys = args.keys or (str(job.keys) if job.keys else None)
        if keys is None:
            raise ConfigError(f"job file {job.path}: federation mode needs the entity's keys; "
                              f"set federation.keys or pass --keys DIR")
        return FederatedDataflow(registry, keys_dir=keys,
                                 config=str(sites) if sites else None,
                                 schedulers=job.schedulers,
                                 progress=not args.quiet and sys.stderr.isatty(),
                                 objective=job.objective)  # type: ignore[arg-type]
    if sites is None:
        raise ConfigError(f"job file {job.path}: no sites file; set `sites = FILE` in it or "
                          f"pass --sites FILE")
    return Dataflow.open(str(sites), progress=not args.quiet and sys.stderr.isatty(),
                         objective=job.objective)


def cmd_plan(args: argparse.Namespace) -> int:
    job = load_job(args.jobfile)
    with _open(args, job) as df:
        plan = df.plan(job.inputs, at=job.at, per_task=job.per_task,
                       constraints=job.constraints, compute_mbps=job.compute_mbps,
                       deadline=job.deadline, budget=job.budget)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
    else:
        print(plan.explain())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    job = load_job(args.jobfile)
    fn = job.function()
    with _open(args, job) as df:
        j = df.run(fn, job.inputs, at=job.at, output=job.output, job_id=args.job_id or
                   job.job_id, per_task=job.per_task, constraints=job.constraints,
                   compute_mbps=job.compute_mbps, deadline=job.deadline, budget=job.budget)
        res = j.wait()
    if args.json:
        print(json.dumps(res.record, indent=2, sort_keys=True, default=str))
    elif not args.quiet:
        est = j.plan.estimate
        print(f"job {res.id}: {j.plan.strategy}; {len(res.record['tasks'])} tasks done in "
              f"{res.seconds:.3f} s (estimated {est.seconds:.3f} s); {res.wan_bytes} bytes "
              f"moved (estimated {est.wan_bytes})")
        for tid, out in sorted(res.outputs.items()):
            print(f"  {tid} -> {out} at {res.record['tasks'][tid].get('output_site')}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `plan` and `run` to the `hutong` parser."""
    for name, func, text in (("plan", cmd_plan, "show where a job would run and what it "
                              "would move (nothing runs)"),
                             ("run", cmd_run, "plan and run a job on the sites' Dask "
                              "clusters")):
        p = sub.add_parser(name, parents=[common], help=text, description=text +
                           ". JOBFILE is TOML (or .json): inputs, entry = 'module:function', "
                           "output, constraints; see docs/dataflow.md.")
        p.add_argument("jobfile", metavar="JOBFILE")
        p.add_argument("--sites", metavar="FILE", help="sites file (overrides the job file's)")
        p.add_argument("--json", action="store_true", help="print the plan or record as JSON")
        p.add_argument("--registry", metavar="URL",
                       help="federation mode: the registry (overrides the job file's)")
        p.add_argument("--keys", metavar="DIR",
                       help="federation mode: the entity's keys directory")
        if name == "run":
            p.add_argument("--job-id", help="resume the job with this id (or name a new one)")
        p.set_defaults(func=func)
