"""Privacy computing across entities: ECDH-PSI, private join-and-aggregate with
TenSEAL, owner policies, compute-to-data and a hash-chained audit log.

See docs/privacy.md for the threat model and what each party learns.
"""

from __future__ import annotations

from privacy.errors import (
    AuditError,
    AuthError,
    PolicyError,
    PrivacyError,
    ProtocolError,
    QueryError,
)

__all__ = ["AuditError", "AuthError", "PolicyError", "PrivacyError", "ProtocolError",
           "QueryError"]
