"""One loader for every user-written file: JSON or TOML into a strict pydantic model.

    class Job(Schema):
        name: str
        per_task: int = 1

    job = load(Job, "job.toml", what="job file")

Models derive from `Schema` (unknown keys are refused, types are strict: a
string is not a number). Every problem raises SchemaError, one line naming
the file, the key path, what was wrong and, for a misspelt key, the closest
valid one ("did you mean 'min_group_size'?"). On any problem nothing is
returned, so nothing half-read is ever used.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from gfs.errors import SchemaError
from gfs.tables import parse, read

M = TypeVar("M", bound=BaseModel)

#: Problems named in one message at most (the rest are counted).
MAX_PROBLEMS = 5


class Schema(BaseModel):
    """Base of the models of user-written files: unknown keys and loose types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _error(type(self), e, type(self).__name__, SchemaError) from None

    # Validation (model_validate) must not call this __init__ back: mark it as pydantic's own.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


def load(model: type[M], path: str | os.PathLike[str], *, what: str = "file",
         error: type[SchemaError] = SchemaError) -> M:
    """Read `path` (JSON or TOML) and validate it as `model`."""
    return validate(model, read(path, what=what, error=error), where=f"{what} {path}",
                    error=error)


def validate(model: type[M], data: Mapping[str, Any], *, where: str = "input",
             error: type[SchemaError] = SchemaError, strings: bool = False) -> M:
    """`data` as `model`; `strings` reads every leaf from text (environment variables)."""
    try:
        if strings:
            return model.model_validate_strings(dict(data))
        return model.model_validate(dict(data))
    except ValidationError as e:
        raise _error(model, e, where, error) from None


def validate_json(model: type[M], text: str | bytes, *, where: str = "input",
                  error: type[SchemaError] = SchemaError) -> M:
    """JSON `text` as `model`, validated in JSON mode (arrays fill tuples, as JSON has
    no tuple); the same errors as `validate`."""
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise error(f"{where}: not valid JSON: {first['msg']}") from None
        raise _error(model, e, where, error) from None


def _error(model: type[BaseModel], exc: ValidationError, where: str,
           error: type[SchemaError]) -> SchemaError:
    problems = [describe(model, d) for d in exc.errors(include_url=False)]
    shown = "; ".join(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        shown += f"; and {len(problems) - MAX_PROBLEMS} more"
    return error(f"{where}: {shown}", problems)


def key_path(loc: tuple[int | str, ...]) -> str:
    """`("links", 0, "mbps")` as `links[0].mbps`."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(model: type[BaseModel], err: ErrorDetails) -> str:
    """One problem of a validation, in words, naming its key path."""
    loc = tuple(err["loc"])
    where = key_path(loc)
    kind = err["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model, a dataclass
        valid = keys_at(model, loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = (f"did you mean {near[0]!r}?" if near else
                f"valid keys: {', '.join(sorted(valid))}" if valid else "remove it")
        return f"unknown key {where!r}; {hint}"
    if kind == "missing":
        return f"{where}: required key missing"
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind.startswith("value_error") or kind.startswith("assertion_error") or not loc:
        return f"{where}: {msg}" if where else msg
    return f"{where}: {msg[:1].lower()}{msg[1:]}, got {err['input']!r}"


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else next(
                (a for a in args if isinstance(a, type) and issubclass(a, BaseModel)),
                args[0])
        else:
            return tp


def keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys a table at `loc` of `model` may hold (empty when it is not a model)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        fields = _fields(tp)
        if fields is not None:
            field = fields.get(str(part))
            if field is None:
                return []
            tp = field.annotation
        elif origin in (dict, Mapping):
            tp = typing.get_args(tp)[1]
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return []
    fields = _fields(_unwrap(tp))
    return [] if fields is None else [f.alias or name for name, f in fields.items()]


def _fields(tp: Any) -> dict[str, Any] | None:
    """The fields of a model or a pydantic dataclass, else None."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return dict(tp.model_fields)
    got = getattr(tp, "__pydantic_fields__", None) if isinstance(tp, type) else None
    return dict(got) if got is not None else None


__all__ = ["Schema", "SchemaError", "describe", "key_path", "keys_at", "load", "parse",
           "read", "validate", "validate_json"]
