"""Namespace paths: validation and splitting (docs/format.md, "Namespace paths")."""

from __future__ import annotations

from gfs.errors import InvalidPathError

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


def split(path: str) -> list[str]:
    """The components of an absolute namespace path; `/` gives [].

    Repeated and trailing slashes are folded. Relative paths, `.` and `..`
    components, NUL, over-long names or paths raise InvalidPathError.
    """
    if not isinstance(path, str):
        raise InvalidPathError(repr(path), "namespace path must be a string")
    if not path.startswith("/"):
        raise InvalidPathError(path, "namespace path must be absolute (start with '/')")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPathError(path[:64] + "...",
                               f"namespace path longer than {MAX_PATH_BYTES} bytes")
    parts = [p for p in path.split("/") if p]
    for p in parts:
        check_name(p, path)
    return parts


def check_name(name: str, path: str | None = None) -> str:
    """`name` if it is a valid single component, else InvalidPathError."""
    where = path if path is not None else name
    if name in ("", ".", ".."):
        raise InvalidPathError(where, f"path component {name!r} is not allowed")
    if "/" in name or "\0" in name:
        raise InvalidPathError(where, "path component contains '/' or NUL")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidPathError(where, "path component is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise InvalidPathError(where, f"path component longer than {MAX_NAME_BYTES} bytes")
    return name


def join(parts: list[str]) -> str:
    """The canonical path of `parts`."""
    return "/" + "/".join(parts)


def normalize(path: str) -> str:
    """The canonical form of a namespace path (validated)."""
    return join(split(path))


def parent_of(path: str) -> str:
    """The parent directory of absolute path `path` ("/" for "/")."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def child_path(parent: str, name: str) -> str:
    """`name` in directory `parent`."""
    return f"{parent.rstrip('/')}/{name}"


def covers(prefix: str, path: str) -> bool:
    """Whether namespace `path` is `prefix` or below it."""
    p = prefix.rstrip("/")
    return path == p or path.startswith(p + "/") or p == ""
