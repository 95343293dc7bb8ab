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

The entry's module is imported with the current directory first on sys.path
(as `python -m` does), by `plan` as well as `run`.

Registered through `gfs.cli.EXTENSIONS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataflow.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dataflow.jobfile import JobFile


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


def _entry_function(job: JobFile) -> Callable[..., Any]:
    """The job's entry function, imported as `python -m` would: with the current
    directory on sys.path (the console script's own sys.path[0] is its bin
    directory), so `entry = "mypkg.jobs:f"` is found where the user runs hutong."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return job.function()


def cmd_plan(args: argparse.Namespace) -> int:
    from dataflow.jobfile import load_job  # pydantic, Dask and LMDB load only here

    job = load_job(args.jobfile)
    with _open(args, job) as df:
        _entry_function(job)  # a wrong entry fails here, as it would at `run`
        plan = df.plan(job.inputs, at=job.at, per_task=job.per_task,
                       constraints=job.constraints, compute_mbps=job.compute_mbps,
                       deadline=job.deadline, budget=job.budget)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
    else:
        print(plan.explain())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dataflow.jobfile import load_job  # pydantic, Dask and LMDB load only here

    job = load_job(args.jobfile)
    fn = _entry_function(job)
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
