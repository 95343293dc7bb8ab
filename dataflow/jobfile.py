"""Job files of `hutong plan` / `hutong run`: the strict schema and the loader.

A job file is TOML (docs/dataflow.md, "CLI"); unknown keys and wrong types are
refused naming the key (gfs.schema).
"""

from __future__ import annotations

import importlib
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
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"must be https://HOST:PORT, got {url!r}")
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
