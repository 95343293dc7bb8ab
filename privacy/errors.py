"""Errors of the `privacy` package.

One base class, `PrivacyError` (a `gfs.errors.HutongError`, so the `hutong`
command prints it as one line); subclasses also inherit the builtin that fits.
Messages name the object and the remedy.
"""

from __future__ import annotations

from gfs.errors import HutongError, SchemaError


class PrivacyError(HutongError):
    """Base of every error raised by the privacy package."""


class PolicyError(PrivacyError, PermissionError):
    """An owner's policy refused a job or a release; the message names the rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"rule {rule}: {message}")
        self.rule = rule


class QueryError(PrivacyError, ValueError):
    """A job or query is malformed (unknown column, bad aggregate, bad key type)."""


class PolicyFileError(QueryError, SchemaError):
    """A policy file does not follow its schema; the message names the file, the key and,
    for a misspelt key, the closest valid one (gfs.schema)."""


class ProtocolError(PrivacyError, ConnectionError):
    """The peer failed, disconnected, timed out or sent something unexpected."""


class AuthError(ProtocolError):
    """The peer could not prove it is the entity it claims to be."""


class AuditError(PrivacyError, ValueError):
    """An audit log failed verification; the message names the first bad record."""
