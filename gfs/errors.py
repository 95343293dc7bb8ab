"""Errors of the `gfs` package.

One base class, `HutongError`; every subclass that has a builtin meaning also
inherits the builtin (`NotFoundError` is a `FileNotFoundError`), so callers
need nothing special, and OS-level ones carry an errno for the FUSE layer.
Messages name the object and, where there is one, the remedy.
"""

from __future__ import annotations

import errno as _errno


class HutongError(Exception):
    """Base of every error raised by Hutong."""


class _OSLike(HutongError, OSError):
    """An error with an errno, raised as `OSError(errno, message, path)`."""

    errno_value: int = _errno.EIO
    message: str = "input/output error"

    def __init__(self, path: str = "", message: str | None = None) -> None:
        OSError.__init__(self, self.errno_value, message or self.message, path or None)

    def __str__(self) -> str:
        where = f": {self.filename}" if self.filename else ""
        return f"{self.strerror}{where}"


class NotFoundError(_OSLike, FileNotFoundError):
    """No such file or directory in the namespace."""

    errno_value = _errno.ENOENT
    message = "no such file or directory"


class ExistsError(_OSLike, FileExistsError):
    """The path exists already."""

    errno_value = _errno.EEXIST
    message = "already exists"


class NotADirError(_OSLike, NotADirectoryError):
    """A path component is not a directory."""

    errno_value = _errno.ENOTDIR
    message = "not a directory"


class IsADirError(_OSLike, IsADirectoryError):
    """A file operation was asked of a directory."""

    errno_value = _errno.EISDIR
    message = "is a directory"


class NotEmptyError(_OSLike):
    """The directory is not empty."""

    errno_value = _errno.ENOTEMPTY
    message = "directory not empty"


class PermissionDeniedError(_OSLike, PermissionError):
    """The operation is not allowed on this path."""

    errno_value = _errno.EACCES
    message = "permission denied"


class NotPermittedError(_OSLike, PermissionError):
    """The operation is never allowed on this kind of object (EPERM)."""

    errno_value = _errno.EPERM
    message = "operation not permitted"


class TooManyLinksError(_OSLike):
    """The inode has as many hard links as it may have (EMLINK)."""

    errno_value = _errno.EMLINK
    message = "too many links"


class FileTooLargeError(_OSLike):
    """The size asked for is above the largest file (EFBIG)."""

    errno_value = _errno.EFBIG
    message = "file too large"


class InvalidPathError(_OSLike, ValueError):
    """The path is not a valid namespace path (relative, '..', NUL, too long)."""

    errno_value = _errno.EINVAL
    message = "invalid namespace path"


class ReadOnlyError(_OSLike):
    """Writes are refused for now (EROFS): on the federation, the entity's primary site
    is unreachable; reads continue from its mirrors."""

    errno_value = _errno.EROFS
    message = "read-only file system"


class UnavailableSiteError(_OSLike, ConnectionError):
    """No site holding the data answered (EHOSTUNREACH); retry when one is back."""

    errno_value = _errno.EHOSTUNREACH
    message = "no site holding this data is reachable"


class CrossEntityError(_OSLike):
    """A rename between two entities' subtrees (EXDEV): they live at different sites;
    copy the data, then remove the original."""

    errno_value = _errno.EXDEV
    message = "cannot move across entities"


class CorruptChunkError(_OSLike):
    """A stored chunk does not match its digest; run `hutong fsck` to find every damaged file."""

    errno_value = _errno.EIO
    message = "corrupt chunk"


class ChunkMissingError(_OSLike):
    """A chunk referenced by a manifest has no readable copy; run `hutong fsck`."""

    errno_value = _errno.EIO
    message = "chunk missing"


class NoSpaceError(_OSLike):
    """A pool ran out of space; nothing was committed. Free space or add a pool."""

    errno_value = _errno.ENOSPC
    message = "no space left in pool"


class PoolError(_OSLike):
    """A pool could not complete an operation."""

    errno_value = _errno.EIO
    message = "pool error"


class PoolObjectMissingError(PoolError, FileNotFoundError):
    """An object (pack) is not in its pool."""

    errno_value = _errno.ENOENT
    message = "object missing from pool"


class FormatError(HutongError, ValueError):
    """Bytes that do not follow the documented format (docs/format.md)."""


class MetadataDamagedError(FormatError):
    """A record of the store's own metadata does not decode (`hutong fsck` lists each)."""


class ConfigError(HutongError, ValueError):
    """An invalid configuration value; the message names the key and where it came from."""


class SchemaError(ConfigError):
    """A file or value does not follow its schema; the message names the key and the fix."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class StateError(HutongError):
    """The state directory is missing, not initialised or of another format version."""


class MetaConflictError(StateError):
    """A metadata write transaction lost a serialisation conflict with another writer
    and changed nothing; run it again (`MetaEngine.transact` does)."""


class NativeExtensionMissing(HutongError, ImportError):
    """The C extension gfs._native is not built. Run `make setup` (or
    `python setup.py build_ext --inplace`) in the source tree."""
