"""Pools: storage backends for pack objects (see `Pool` for the contract)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from gfs.errors import ConfigError
from gfs.pools.base import Pool, PoolUsage, check_key
from gfs.pools.local import LocalPool

__all__ = ["FsspecPool", "LocalPool", "Pool", "PoolUsage", "check_key", "open_pool"]


def _local_root(url: str) -> str:
    if not url.startswith("file:"):
        return url
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(
            f"pool URL {url!r}: file:// URLs must name a local path (file:///abs/path)"
        )
    return unquote(parts.path)


def open_pool(url: str, **storage_options: Any) -> Pool:
    """Open the pool at `url`.

    Plain paths and ``file://`` URLs give a `LocalPool`; any other protocol
    known to fsspec gives an `FsspecPool` (`storage_options` go to fsspec).
    Raises `ConfigError` for an unknown protocol or a missing fsspec backend,
    naming the package to install.
    """
    if not url:
        raise ConfigError("pool URL is empty; give a directory or an fsspec URL")
    if "://" not in url or url.startswith("file:"):
        if storage_options:
            raise ConfigError(f"pool URL {url!r}: local pools take no storage options")
        return LocalPool(_local_root(url))
    protocol = url.split("://", 1)[0].split("::")[0]
    from fsspec.registry import get_filesystem_class, known_implementations

    try:
        get_filesystem_class(protocol)
    except ImportError as e:
        hint = known_implementations.get(protocol, {}).get("err") or str(e)
        raise ConfigError(
            f"pool URL {url!r}: protocol {protocol!r} needs an fsspec backend that is not "
            f"installed ({hint}); install it into the environment (e.g. pip install s3fs)"
        ) from e
    except ValueError as e:
        raise ConfigError(
            f"pool URL {url!r}: unknown protocol {protocol!r}; use a local path, file://, "
            "or a protocol fsspec knows (s3://, gs://, az://, memory://, ...), installing "
            "its fsspec backend (e.g. pip install s3fs for s3://)"
        ) from e
    from gfs.pools.fsspec_pool import FsspecPool

    return FsspecPool(url, **storage_options)


def __getattr__(name: str) -> Any:
    # FsspecPool imports fsspec (tens of ms): load it only when asked for.
    if name == "FsspecPool":
        from gfs.pools.fsspec_pool import FsspecPool

        return FsspecPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
