"""Attribute expressions over sites and pools: `region=cn-west & tier=hot`.

Grammar (docs/format.md, "Attribute expressions")::

    expr := conj ('|' conj)*      conj := unary ('&' unary)*
    unary := '!' unary | '(' expr ')' | KEY OP VALUE      OP := = != >= <= > <

An empty expression matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from gfs.errors import FormatError

Attrs = Mapping[str, object]
Predicate = Callable[[Attrs], bool]

_TOKEN = re.compile(r"\s*(?:(?P<op>!=|>=|<=|[=<>&|!()])|(?P<word>[A-Za-z0-9_.:*\-]+))")
MAX_EXPR = 1024
MAX_DEPTH = 32
"""Deepest nesting of `!` and `(` accepted (a deeper one is refused, never recursed into)."""


class ExpressionError(FormatError):
    """A malformed attribute expression; the message names the position."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExpressionError(f"expression {text!r}: unexpected {text[pos:pos + 10]!r} "
                                  f"at position {pos}")
        kind = "op" if m.group("op") else "word"
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def _compare(key: str, op: str, value: str) -> Predicate:
    def num(v: object) -> float | None:
        try:
            return float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    def pred(attrs: Attrs) -> bool:
        have = attrs.get(key)
        if have is None:
            return op == "!="
        if op in ("=", "!="):
            eq = str(have) == value
            return eq if op == "=" else not eq
        a, b = num(have), num(value)
        if a is None or b is None:
            return False
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
    return pred


def checked(text: str) -> str:
    """`text` itself once it parses (ExpressionError otherwise): a validator for models."""
    parse(text)
    return text


def parse(text: str) -> Predicate:
    """Compile `text` into a predicate over attribute mappings; `ExpressionError` if malformed."""
    if not isinstance(text, str) or len(text) > MAX_EXPR:
        raise ExpressionError(f"expression must be a string of at most {MAX_EXPR} characters")
    toks = _tokens(text)
    if not toks:
        return lambda attrs: True
    i = 0
    depth = 0

    def peek() -> tuple[str, str, int] | None:
        return toks[i] if i < len(toks) else None

    def fail(what: str) -> ExpressionError:
        t = peek()
        where = f"position {t[2]} ({t[1]!r})" if t else "the end"
        return ExpressionError(f"expression {text!r}: {what} at {where}")

    def take(kind: str, value: str | None = None) -> str:
        nonlocal i
        t = peek()
        if t is None or t[0] != kind or (value is not None and t[1] != value):
            raise fail(f"expected {value or kind}")
        i += 1
        return t[1]

    def nested(parse_inner: Callable[[], Predicate]) -> Predicate:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise fail(f"nesting deeper than {MAX_DEPTH} levels of '!' and '('; simplify "
                       "the expression")
        try:
            return parse_inner()
        finally:
            depth -= 1

    def unary() -> Predicate:
        nonlocal i
        t = peek()
        if t is None:
            raise fail("expected a term")
        if t == ("op", "!", t[2]):
            i += 1
            inner = nested(unary)
            return lambda a: not inner(a)
        if t[0] == "op" and t[1] == "(":
            i += 1
            inner = nested(disj)
            take("op", ")")
            return inner
        key = take("word")
        t = peek()
        if t is None or t[0] != "op" or t[1] not in ("=", "!=", ">=", "<=", ">", "<"):
            raise fail("expected a comparison (= != >= <= > <)")
        i += 1
        return _compare(key, t[1], take("word"))

    def conj() -> Predicate:
        parts = [unary()]
        while (t := peek()) is not None and t[:2] == ("op", "&"):
            take("op", "&")
            parts.append(unary())
        return parts[0] if len(parts) == 1 else (lambda a: all(p(a) for p in parts))

    def disj() -> Predicate:
        parts = [conj()]
        while (t := peek()) is not None and t[:2] == ("op", "|"):
            take("op", "|")
            parts.append(conj())
        return parts[0] if len(parts) == 1 else (lambda a: any(p(a) for p in parts))

    pred = disj()
    if i != len(toks):
        raise fail("unexpected token")
    return pred
