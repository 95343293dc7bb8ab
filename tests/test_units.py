"""Sizes and durations: one parser for every flag and config file (gfs.units)."""

from __future__ import annotations

import argparse
import re
from decimal import Decimal

import hypothesis.strategies as st
import pytest
from hypothesis import given
from pydantic import BaseModel, ConfigDict, ValidationError

from gfs.errors import ConfigError, HutongError
from gfs.units import (
    Duration,
    Size,
    UnitError,
    duration_arg,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    positive_duration_arg,
    size_arg,
)

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("text, n", [
    ("1T", TIB), ("1TiB", TIB), ("1tb", TIB), ("1.5G", GIB * 3 // 2), ("512k", 512 * KIB),
    ("64KiB", 64 * KIB), ("64 KiB", 64 * KIB), ("100MB", 100 * MIB), ("100M", 100 * MIB),
    ("2P", 2 << 50), ("4096", 4096), ("4096B", 4096), ("0", 0), (" 7g ", 7 * GIB),
    (".5k", 512), ("1.1k", 1126), (123, 123),
])
def test_sizes(text: str | int, n: int) -> None:
    assert parse_size(text) == n
    assert size_arg(str(text)) == n


def test_mb_is_binary_everywhere() -> None:
    """"MB" means 2^20, as do "M" and "MiB" (docs/format.md, "Sizes and durations")."""
    assert parse_size("1MB") == parse_size("1M") == parse_size("1MiB") == 1 << 20
    assert parse_size("1KB") == 1024


@pytest.mark.parametrize("text, s", [
    ("1w", 604800), ("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45),
    ("500ms", 0.5), ("1h30m", 5400), ("1h 30m", 5400), ("2d12h", 216000), ("90", 90),
    ("2.5", 2.5), ("1.5h", 5400), ("0", 0), ("1m30s", 90), ("1s500ms", 1.5), (15, 15),
    (0.25, 0.25),
])
def test_durations(text: str | float, s: float) -> None:
    assert parse_duration(text) == s
    assert duration_arg(str(text)) == s


BAD_SIZES = ["", "  ", "-1", "-1G", "lots", "1x", "G", "1.5", "1.5B", "1GG", "1 2", "1e3",
             "inf", "nan", "0x10", "1Gi", "1ZiB", "١٢k", "1_000"]
BAD_DURATIONS = ["", "-1", "-1h", "soon", "1x", "h", "30m1h", "1h1h", "1mm", "inf", "nan",
                 "1h-30m", "5 minutes", "1y", "1e3", "+5", "١٢"]


@pytest.mark.parametrize("text", BAD_SIZES)
def test_bad_sizes_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(UnitError, match=r"size.*e\.g\. 512k") as e:
        parse_size(text)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, ValueError)
    if text.strip():
        assert repr(text) in str(e.value)
    with pytest.raises(argparse.ArgumentTypeError, match=r"e\.g\."):
        size_arg(text)


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_bad_durations_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(UnitError, match=r"duration.*e\.g\. 45s") as e:
        parse_duration(text)
    assert isinstance(e.value, HutongError)
    if text.strip():
        assert repr(text) in str(e.value)
    with pytest.raises(argparse.ArgumentTypeError, match=r"e\.g\."):
        duration_arg(text)


def test_positive_duration_refuses_zero() -> None:
    assert positive_duration_arg("1h") == 3600
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0"):
        positive_duration_arg("0s")


def test_non_text_values_are_refused() -> None:
    for bad in (True, None, [1], -5, -0.5):
        with pytest.raises(UnitError):
            parse_size(bad)  # type: ignore[arg-type]
        with pytest.raises(UnitError):
            parse_duration(bad)  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------

sizes = st.integers(0, 1 << 62)
#: Durations as whole milliseconds, so they are exact in float.
millis = st.integers(0, 10**12)


@given(sizes)
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(millis)
def test_duration_round_trip(ms: int) -> None:
    s = float(Decimal(ms) / 1000)
    assert parse_duration(format_duration(s)) == s


@given(st.floats(0, 1e9, allow_nan=False))
def test_any_float_duration_round_trips(s: float) -> None:
    assert parse_duration(format_duration(s)) == s


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from("kKmMgGtT"),
       st.sampled_from(["", "B", "iB", "ib"]))
def test_size_is_monotonic(a: int, b: int, unit: str, suffix: str) -> None:
    lo, hi = sorted((a, b))
    assert parse_size(f"{lo}{unit}{suffix}") <= parse_size(f"{hi}{unit}{suffix}")
    assert parse_size(f"{lo}{unit}{suffix}") <= parse_size(f"{lo}.5{unit}{suffix}") \
        <= parse_size(f"{lo + 1}{unit}{suffix}")


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(["w", "d", "h", "m", "s",
                                                                        "ms", ""]))
def test_duration_is_monotonic(a: int, b: int, unit: str) -> None:
    lo, hi = sorted((a, b))
    assert parse_duration(f"{lo}{unit}") <= parse_duration(f"{hi}{unit}")


@given(st.lists(st.sampled_from(["w", "d", "h", "m", "s", "ms"]), min_size=1, unique=True))
def test_units_order(units: list[str]) -> None:
    order = ["w", "d", "h", "m", "s", "ms"]
    text = "".join(f"1{u}" for u in units)
    if units == sorted(units, key=order.index):
        assert parse_duration(text) > 0
    else:
        with pytest.raises(UnitError, match="largest down"):
            parse_duration(text)


@given(st.text(max_size=12) | st.from_regex(r"[0-9.\s]{1,4}[kKmMgGbBiIsSwdhx]{0,3}",
                                            fullmatch=True))
def test_garbage_is_refused_or_a_valid_spelling(text: str) -> None:
    """Arbitrary text is either refused with UnitError or parses to a value >= 0."""
    valid_size = re.fullmatch(r"(\d+(\.\d*)?|\.\d+)\s*([kmgtp](i?b)?|b)?", text.strip(),
                              re.IGNORECASE | re.ASCII)
    try:
        n = parse_size(text)
    except UnitError:
        pass
    else:
        assert valid_size and n >= 0
    try:
        s = parse_duration(text)
    except UnitError:
        pass
    else:
        assert s >= 0 and text.strip().isascii()


# -- pydantic types -----------------------------------------------------------------------


class _Settings(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    cache: Size = 0
    ttl: Duration = 0.0


def test_model_types_share_the_parser() -> None:
    m = _Settings.model_validate({"cache": "1.5G", "ttl": "1h30m"})
    assert (m.cache, m.ttl) == (GIB * 3 // 2, 5400.0)
    assert _Settings.model_validate({"cache": 4096, "ttl": 2}).ttl == 2.0
    for bad in ({"cache": "lots"}, {"cache": True}, {"cache": -1}, {"cache": 1.5},
                {"ttl": "soon"}, {"ttl": True}, {"ttl": -3}):
        with pytest.raises(ValidationError, match=r"e\.g\."):
            _Settings.model_validate(bad)


# -- every size and duration flag of `hutong` ------------------------------------------------

FLAGS = [
    (["init", "--avg-size", "64KiB", "--min-size", "16k", "--max-size", "256KB"],
     {"avg_size": 65536, "min_size": 16384, "max_size": 262144}),
    (["mount", "/m", "--cache-size", "1T", "--disk-cache-size", "1.5G", "--attr-timeout",
      "500ms"], {"cache_size": TIB, "disk_cache_size": GIB * 3 // 2, "attr_timeout": 0.5}),
    (["warmup", "/x", "--disk-cache-size", "2GiB"], {"disk_cache_size": 2 * GIB}),
    (["pool", "add", "p", "/tmp/p", "--capacity", "1T"], {"capacity": TIB}),
    (["tier", "policy", "set", "--window", "1h30m", "--demote-idle", "1w", "--rate", "100MB"],
     {"window": 5400.0, "demote_idle": 604800.0, "rate": 100 * MIB}),
    (["registry", "serve", "--ttl", "1w"], {"ttl": 604800.0}),
    (["site", "serve", "--heartbeat", "500ms", "--tier-interval", "1h",
      "--reconcile-interval", "0"], {"heartbeat": 0.5, "tier_interval": 3600.0,
                                     "reconcile_interval": 0.0}),
    (["token", "mint", "--user", "u", "--ttl", "1w"], {"ttl": 604800.0}),
    (["rule", "add", "/e/x", "--copies", "1", "--lifetime", "7d"], {"lifetime": 604800.0}),
]


@pytest.mark.parametrize("argv, want", FLAGS)
def test_every_flag_takes_the_same_spellings(argv: list[str], want: dict[str, object]) -> None:
    from gfs.cli import build_parser

    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in want} == want


@pytest.mark.parametrize("argv", [
    ["mount", "/m", "--cache-size", "lots"], ["pool", "add", "p", "/p", "--capacity=-1G"],
    ["registry", "serve", "--ttl", "0"], ["tier", "policy", "set", "--window", "1x"],
    ["rule", "add", "/e/x", "--copies", "1", "--lifetime", "forever"],
    ["site", "serve", "--heartbeat", ""],
])
def test_bad_flag_values_exit_2_with_an_example(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gfs.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "e.g." in err and "Traceback" not in err
