"""Errors of the dataflow package: one base, subclasses that also inherit a builtin."""

from __future__ import annotations

from gfs import errors as gfs_errors
from gfs.errors import HutongError
from gfs.errors import SchemaError as _GfsSchemaError


class DataflowError(HutongError):
    """Base of every dataflow error."""


class ConfigError(DataflowError, gfs_errors.ConfigError):
    """A sites file, job file or argument is invalid; the message names the field."""


class SchemaError(ConfigError, _GfsSchemaError):
    """A sites or job file does not follow its schema (gfs.schema names the key)."""


class UnknownSiteError(DataflowError, KeyError):
    """A site name that the topology does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown site"


class DatasetError(DataflowError, FileNotFoundError):
    """A dataset selector matches nothing, or names a path no site holds."""


class PlanError(DataflowError, ValueError):
    """No placement satisfies the job's constraints (every alternative is named)."""


class SiteLostError(DataflowError, ConnectionError):
    """A site stopped answering during a job (its cluster or its mover)."""

    def __init__(self, site: str, message: str) -> None:
        super().__init__(message)
        self.site = site


class JobFailedError(DataflowError, RuntimeError):
    """A job could not finish; `report` lists what is missing and what was written."""

    def __init__(self, message: str, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}
