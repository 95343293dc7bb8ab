"""Sizes and durations: one parser each, for flags and for config files.

Sizes are binary: `K`, `M`, `G`, `T`, `P` are powers of 1024, with or
without `B` or `iB` and in any case (`64k` = `64KB` = `64KiB` = 65536 bytes;
`1MB` is 2^20 bytes, never 10^6). A plain integer is bytes. Fractions are
allowed before a unit (`1.5G`) and rounded down to a whole byte.

Durations are `w`, `d`, `h`, `m`, `s`, `ms`, alone or combined from the
largest unit down (`1h30m`, `2d12h`); a plain number is seconds (`2.5`).

Negative, empty and malformed values raise UnitError (a ConfigError, so a
ValueError) naming the value and showing a valid one. `size_arg` and
`duration_arg` are argparse `type=` callables; `Size` and `Duration` are
pydantic-annotated types, so config files accept the same spellings
(docs/format.md, "Sizes and durations").
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

from gfs.errors import ConfigError

#: Bytes per size unit letter (binary).
SIZE_UNITS: dict[str, int] = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30,
                              "t": 1 << 40, "p": 1 << 50}
#: Seconds per duration unit, largest first (the order compound durations must follow).
DURATION_UNITS: dict[str, Decimal] = {"w": Decimal(604800), "d": Decimal(86400),
                                      "h": Decimal(3600), "m": Decimal(60), "s": Decimal(1),
                                      "ms": Decimal("0.001")}
SIZE_EXAMPLE = "e.g. 512k, 64KiB, 1.5G, 10GB, 1T or 4096 (bytes); K/M/G/T/P are powers of 1024"
DURATION_EXAMPLE = "e.g. 45s, 30m, 12h, 7d, 1w, 500ms, 1h30m or 90 (seconds)"

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_PLAIN = re.compile(_NUMBER, re.ASCII)
_SIZE = re.compile(_NUMBER + r"\s*(?:([kmgtp])(?:i?b)?|(b)?)", re.IGNORECASE | re.ASCII)
_PART = re.compile(_NUMBER + r"\s*(ms|[wdhms])\s*", re.IGNORECASE | re.ASCII)


class UnitError(ConfigError):
    """A size or duration that cannot be read; the message shows valid spellings."""


def _text(value: object, what: str, example: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise UnitError(f"not a {what}: {value!r} ({example})")
    text = str(value).strip()
    if not text:
        raise UnitError(f"empty {what} ({example})")
    if text.startswith("-"):
        raise UnitError(f"negative {what}: {value!r} ({example})")
    return text


def parse_size(value: str | int) -> int:
    """Bytes of `value`: `"1T"`, `"1TiB"`, `"1.5G"`, `"512k"`, `"64KiB"`, `"100MB"`, `4096`."""
    text = _text(value, "size", SIZE_EXAMPLE)
    m = _SIZE.fullmatch(text)
    if m is None:
        raise UnitError(f"not a size: {value!r} ({SIZE_EXAMPLE})")
    number = Decimal(m.group(1))
    unit = (m.group(2) or "").lower()
    n = number * SIZE_UNITS[unit]
    if not unit and n != n.to_integral_value():
        raise UnitError(f"size {value!r} is not a whole number of bytes ({SIZE_EXAMPLE})")
    return int(n)


def parse_duration(value: str | float) -> float:
    """Seconds of `value`: `"1w"`, `"7d"`, `"12h"`, `"30m"`, `"45s"`, `"500ms"`, `"1h30m"`,
    `90` or `"2.5"`."""
    text = _text(value, "duration", DURATION_EXAMPLE)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise UnitError(f"not a duration: {value!r} ({DURATION_EXAMPLE})")
        return float(value)
    seconds = Decimal(text) if _PLAIN.fullmatch(text) else _compound(text, value)
    return float(seconds)


def _compound(text: str, value: object) -> Decimal:
    total = Decimal(0)
    pos = 0
    last = -1
    order = list(DURATION_UNITS)
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        rank = order.index(m.group(2).lower())
        if rank <= last:
            raise UnitError(f"duration {value!r}: units must go from the largest down, "
                            f"each once ({DURATION_EXAMPLE})")
        last = rank
        total += Decimal(m.group(1)) * DURATION_UNITS[m.group(2).lower()]
        pos = m.end()
    if pos != len(text) or last < 0:
        raise UnitError(f"not a duration: {value!r} ({DURATION_EXAMPLE})")
    return total


def format_size(n: int) -> str:
    """The shortest exact spelling of `n` bytes (`"64KiB"`, `"3GiB"`, `"1536"`)."""
    if n < 0:
        raise UnitError(f"negative size: {n}")
    for letter, mult in reversed(SIZE_UNITS.items()):
        if letter and n and n % mult == 0:
            return f"{n // mult}{letter.upper()}iB"
    return str(n)


def format_duration(seconds: float) -> str:
    """An exact spelling of `seconds` with the largest units first (`"1h30m"`, `"500ms"`)."""
    if seconds < 0:
        raise UnitError(f"negative duration: {seconds}")
    rest = Decimal(seconds)
    parts = []
    for unit, mult in DURATION_UNITS.items():
        count = rest // mult
        if count:
            parts.append(f"{count}{unit}")
            rest -= count * mult
    if rest or not parts:
        return format(Decimal(repr(float(seconds))), "f")
    return "".join(parts)


def size_arg(text: str) -> int:
    """argparse `type=` for a size in bytes (0 allowed)."""
    try:
        return parse_size(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def duration_arg(text: str) -> float:
    """argparse `type=` for a duration in seconds (0 allowed)."""
    try:
        return parse_duration(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_duration_arg(text: str) -> float:
    """argparse `type=` for a duration in seconds that must be more than 0."""
    seconds = duration_arg(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be more than 0 "
                                         f"({DURATION_EXAMPLE})")
    return seconds


def _size_value(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return parse_size(value)  # type: ignore[arg-type]


def _duration_value(value: object) -> float:
    return parse_duration(value)  # type: ignore[arg-type]


class _Parsed:
    """Pydantic metadata: run `parse` on the input before the annotated type's own check.

    pydantic is imported only when a model is built, so the CLI's flags do not pay for it.
    """

    def __init__(self, parse: Callable[[object], object]) -> None:
        self.parse = parse

    def _validate(self, value: object) -> object:
        try:
            return self.parse(value)
        except UnitError as e:
            raise ValueError(str(e)) from None

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(self._validate, handler(source))


#: A size in bytes in a pydantic model: an integer, or a string such as "64KiB".
Size = Annotated[int, _Parsed(_size_value)]
#: A duration in seconds in a pydantic model: a number, or a string such as "1h30m".
Duration = Annotated[float, _Parsed(_duration_value)]

__all__ = ["DURATION_EXAMPLE", "SIZE_EXAMPLE", "Duration", "Size", "UnitError",
           "duration_arg", "format_duration", "format_size", "parse_duration", "parse_size",
           "positive_duration_arg", "size_arg"]
