"""Unified identifiers of entities, sites and pools (docs/format.md, "Unified identifiers").

    >>> ident = UnifiedId("BANK-A", "FIN", "CN-WEST", "P", "HOT", 42)
    >>> str(ident)
    'BANK-A.FIN.CN-WEST.P.HOT.000042.K'
    >>> parse(str(ident)) == ident
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gfs.errors import FormatError

INDUSTRIES = ("FIN", "TEL", "EDU", "GOV", "MED", "ENE", "MFG", "RES", "TRN", "GEN")
TYPES = {"E": "entity", "S": "site", "P": "pool"}
MAX_SERIAL = 999_999
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE = {c: i for i, c in enumerate(_ALNUM)}
_CODE = re.compile(r"[A-Z0-9](?:-?[A-Z0-9])*")
_SPEC = re.compile(r"[A-Z0-9]{1,8}")
_NAME = re.compile(r"[a-z0-9](?:-?[a-z0-9])*")


class IdentifierError(FormatError):
    """An identifier or name that does not follow docs/format.md ("Unified identifiers")."""


def check_char(body: str) -> str:
    """The ISO 7064 MOD 37,36 check character of the letters and digits of `body`."""
    p = 36
    for c in body:
        if c in ".-":
            continue
        v = _VALUE.get(c)
        if v is None:
            raise IdentifierError(f"identifier {body!r}: character {c!r} is not A-Z, 0-9, "
                                  "'.' or '-'")
        s = (p + v) % 36 or 36
        p = (2 * s) % 37
    return _ALNUM[(37 - p) % 36]


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is a valid entity/site/region name (lower case, 2-16 chars), else raise."""
    if not isinstance(name, str) or not 2 <= len(name) <= 16 or not _NAME.fullmatch(name):
        raise IdentifierError(f"{what} {name!r} is invalid: use 2 to 16 characters a-z, 0-9 "
                              "and single '-' between them (e.g. 'bank-a')")
    return name


def _code(value: str, field: str) -> str:
    if not 2 <= len(value) <= 16 or not _CODE.fullmatch(value):
        raise IdentifierError(f"identifier field {field} {value!r} is invalid: 2 to 16 "
                              "characters A-Z, 0-9 and single '-' between them")
    return value


@dataclass(frozen=True, slots=True)
class UnifiedId:
    """One identifier: owner, industry, region, type (E/S/P), spec and serial."""

    owner: str
    industry: str
    region: str
    type: str
    spec: str
    serial: int

    def __post_init__(self) -> None:
        _code(self.owner, "OWNER")
        if self.industry not in INDUSTRIES:
            raise IdentifierError(f"identifier field INDUSTRY {self.industry!r} is not one of "
                                  + " ".join(INDUSTRIES))
        _code(self.region, "REGION")
        if self.type not in TYPES:
            raise IdentifierError(f"identifier field TYPE {self.type!r} is not E, S or P")
        if not _SPEC.fullmatch(self.spec):
            raise IdentifierError(f"identifier field SPEC {self.spec!r} must be 1 to 8 "
                                  "characters A-Z, 0-9")
        if not isinstance(self.serial, int) or not 1 <= self.serial <= MAX_SERIAL:
            raise IdentifierError(f"identifier field SERIAL {self.serial!r} must be 1 to "
                                  f"{MAX_SERIAL}")

    @property
    def body(self) -> str:
        """The six fields without the check character."""
        return (f"{self.owner}.{self.industry}.{self.region}.{self.type}.{self.spec}."
                f"{self.serial:06d}")

    @property
    def kind(self) -> str:
        """'entity', 'site' or 'pool'."""
        return TYPES[self.type]

    def __str__(self) -> str:
        return f"{self.body}.{check_char(self.body)}"


def make(owner: str, industry: str, region: str, type: str, spec: str,
         serial: int) -> UnifiedId:
    """An identifier from lower- or upper-case names (`bank-a`, `cn-west`, `hot`)."""
    return UnifiedId(owner.upper(), industry.upper(), region.upper(), type.upper(),
                     spec.upper(), serial)


def parse(text: str) -> UnifiedId:
    """Parse and validate an identifier (case-insensitive); `IdentifierError` names the field."""
    if not isinstance(text, str):
        raise IdentifierError(f"identifier {text!r} is not a string")
    canon = text.strip().upper()
    fields = canon.split(".")
    if len(fields) != 7:
        raise IdentifierError(f"identifier {text!r} has {len(fields)} fields; expected 7: "
                              "OWNER.INDUSTRY.REGION.TYPE.SPEC.SERIAL.CHECK")
    owner, industry, region, typ, spec, serial, check = fields
    if len(serial) != 6 or not serial.isdigit() or not serial.isascii():
        raise IdentifierError(f"identifier {text!r}: SERIAL {serial!r} must be 6 digits")
    ident = UnifiedId(owner, industry, region, typ, spec, int(serial))
    if len(check) != 1 or check_char(ident.body) != check:
        raise IdentifierError(f"identifier {text!r}: check character {check!r} is wrong "
                              "(a typing error?)")
    return ident


def is_valid(text: str) -> bool:
    """Whether `text` parses as an identifier."""
    try:
        parse(text)
    except IdentifierError:
        return False
    return True
