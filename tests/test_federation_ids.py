"""Unified identifiers: format, parse, check character (hypothesis)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gfs.errors import FormatError
from gfs.federation import ids

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
codes = st.from_regex(r"[A-Z0-9](-?[A-Z0-9]){1,7}", fullmatch=True)
idents = st.builds(ids.UnifiedId, codes, st.sampled_from(ids.INDUSTRIES), codes,
                   st.sampled_from(sorted(ids.TYPES)), st.from_regex(r"[A-Z0-9]{1,8}",
                                                                     fullmatch=True),
                   st.integers(1, ids.MAX_SERIAL))


def _s_final(text: str) -> int:
    p, s = 36, 0
    for c in text:
        if c in ".-":
            continue
        s = (p + ALNUM.index(c)) % 36 or 36
        p = (2 * s) % 37
    return s


def test_example() -> None:
    i = ids.make("bank-a", "fin", "cn-west", "p", "hot", 42)
    assert str(i) == "BANK-A.FIN.CN-WEST.P.HOT.000042.K"
    assert ids.parse("bank-a.fin.cn-west.p.hot.000042.k") == i
    assert i.kind == "pool"


@given(idents)
def test_roundtrip_and_check_property(i: ids.UnifiedId) -> None:
    text = str(i)
    assert ids.parse(text) == i
    assert _s_final(text) == 1  # ISO 7064: the loop over body + check ends at 1


@given(idents, st.data())
def test_single_substitution_detected(i: ids.UnifiedId, data: st.DataObject) -> None:
    text = str(i)
    pos = data.draw(st.sampled_from([k for k, c in enumerate(text) if c in ALNUM]))
    new = data.draw(st.sampled_from([c for c in ALNUM if c != text[pos]]))
    bad = text[:pos] + new + text[pos + 1:]
    assert not ids.is_valid(bad)


def test_adjacent_transpositions_almost_always_detected() -> None:
    """MOD 37,36 catches every single substitution (above) but, being a hybrid
    system, not quite every swap of neighbours: measure the rate on a fixed sample."""
    rnd = random.Random(1)
    total = caught = 0
    for _ in range(1000):
        body = "".join(rnd.choice(ALNUM) for _ in range(20))
        text = body + ids.check_char(body)
        for a in range(len(text) - 1):
            if text[a] != text[a + 1]:
                swapped = text[:a] + text[a + 1] + text[a] + text[a + 2:]
                total += 1
                caught += ids.check_char(swapped[:-1]) != swapped[-1]
    assert caught / total > 0.995


@given(st.text(max_size=60))
def test_garbage_never_crashes(text: str) -> None:
    with contextlib.suppress(FormatError):
        ids.parse(text)


@pytest.mark.parametrize("bad, field", [
    ("BANK-A.FIN.CN-WEST.P.HOT.000042", "7"),
    ("BANK-A.XXX.CN-WEST.P.HOT.000042.K", "INDUSTRY"),
    ("BANK-A.FIN.CN-WEST.Q.HOT.000042.K", "TYPE"),
    ("BANK-A.FIN.CN-WEST.P.HOT.00042X.K", "SERIAL"),
    ("B.FIN.CN-WEST.P.HOT.000042.K", "OWNER"),
    ("BANK-A.FIN.CN-WEST.P.HOT.000042.7", "check"),
])
def test_errors_name_the_field(bad: str, field: str) -> None:
    with pytest.raises(ids.IdentifierError, match=field):
        ids.parse(bad)


def test_names() -> None:
    assert ids.check_name("bank-a") == "bank-a"
    for bad in ("Bank", "a", "-ab", "ab-", "a--b", "x" * 17, "a/b"):
        with pytest.raises(ids.IdentifierError):
            ids.check_name(bad)
