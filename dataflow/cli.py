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
    deadline = 60.0                   # seconds
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
import importlib
import json
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflow.cost import Constraints
from dataflow.errors import ConfigError

_KEYS = {"name", "sites", "inputs", "entry", "output", "at", "per_task", "constraints",
         "job_id", "federation"}
_FKEYS = {"registry", "keys", "schedulers"}
_CKEYS = {"forbid", "only", "deadline", "budget", "objective", "compute_mbps"}


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


def _num(v: Any, what: str, path: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ConfigError(f"job file {path}: {what} must be a positive number, got {v!r}")
    return float(v)


def load_job(path: str | Path) -> JobFile:
    """Read and check a job file; every problem is a ConfigError naming the field."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"job file {p}: {e.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except ValueError as e:
        raise ConfigError(f"job file {p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"job file {p}: must be a table of keys")
    bad = set(data) - _KEYS
    if bad:
        raise ConfigError(f"job file {p}: unknown key(s) {sorted(bad)}; allowed: "
                          f"{sorted(_KEYS)}")
    inputs = data.get("inputs")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or \
            not all(isinstance(i, str) and i.startswith("/") for i in inputs):
        raise ConfigError(f"job file {p}: inputs must be a list of absolute paths or globs")
    entry = data.get("entry")
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        raise ConfigError(f"job file {p}: entry must be 'module:function', got {entry!r}")
    sites = data.get("sites")
    if sites is not None and not isinstance(sites, str):
        raise ConfigError(f"job file {p}: sites must be a path to a sites file")
    output = data.get("output")
    if output is not None and (not isinstance(output, str) or not output.startswith("/")):
        raise ConfigError(f"job file {p}: output must be an absolute namespace path")
    per_task = data.get("per_task", 1)
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise ConfigError(f"job file {p}: per_task must be an integer >= 1")
    at = data.get("at", "auto")
    if not isinstance(at, str):
        raise ConfigError(f"job file {p}: at must be 'auto' or a site name")
    c = data.get("constraints", {})
    if not isinstance(c, dict):
        raise ConfigError(f"job file {p}: [constraints] must be a table")
    bad = set(c) - _CKEYS
    if bad:
        raise ConfigError(f"job file {p}: unknown constraint(s) {sorted(bad)}; allowed: "
                          f"{sorted(_CKEYS)}")
    forbid = c.get("forbid", [])
    if not isinstance(forbid, list) or not all(isinstance(s, str) for s in forbid):
        raise ConfigError(f"job file {p}: constraints.forbid must be a list of site names")
    only = c.get("only", "")
    if not isinstance(only, str):
        raise ConfigError(f"job file {p}: constraints.only must be a site expression")
    objective = c.get("objective", "balanced")
    if objective not in ("time", "balanced", "money"):
        raise ConfigError(f"job file {p}: constraints.objective must be 'time', 'balanced' "
                          f"or 'money'")
    job = JobFile(p, str(data.get("name", p.stem)),
                  (p.parent / sites).absolute() if sites else None, inputs, entry, output,
                  at, per_task, Constraints(frozenset(forbid), only), objective=objective,
                  job_id=data.get("job_id"))
    fed = data.get("federation", {})
    if not isinstance(fed, dict):
        raise ConfigError(f"job file {p}: [federation] must be a table")
    bad = set(fed) - _FKEYS
    if bad:
        raise ConfigError(f"job file {p}: unknown federation key(s) {sorted(bad)}; allowed: "
                          f"{sorted(_FKEYS)}")
    reg = fed.get("registry")
    if reg is not None and (not isinstance(reg, str) or not reg.startswith("http://")):
        raise ConfigError(f"job file {p}: federation.registry must be http://HOST:PORT")
    keys = fed.get("keys")
    if keys is not None and not isinstance(keys, str):
        raise ConfigError(f"job file {p}: federation.keys must be a directory")
    scheds = fed.get("schedulers", {})
    if not isinstance(scheds, dict) or not all(isinstance(v, str) for v in scheds.values()):
        raise ConfigError(f"job file {p}: federation.schedulers must map site names to "
                          f"scheduler addresses")
    job.registry = reg
    job.keys = (p.parent / keys).absolute() if keys else None
    job.schedulers = {str(k): v for k, v in scheds.items()}
    if "deadline" in c:
        job.deadline = _num(c["deadline"], "constraints.deadline", p)
    if "budget" in c:
        job.budget = _num(c["budget"], "constraints.budget", p)
    if "compute_mbps" in c:
        job.compute_mbps = _num(c["compute_mbps"], "constraints.compute_mbps", p)
    return job


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
