"""WebDAV over the namespace: a WsgiDAV provider on the Client API, served by cheroot.

Users sign in with HTTP basic auth: user name = gateway access key, password = its
secret (gfs.gateway.credentials), so S3 and WebDAV share one set of keys. Dead
properties and locks are kept in memory for the life of the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_NOT_FOUND,
    DAVError,
)
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider
from wsgidav.dc.base_dc import BaseDomainController
from wsgidav.wsgidav_app import WsgiDAVApp

from gfs import paths
from gfs.client import Client
from gfs.errors import (
    ExistsError,
    HutongError,
    InvalidPathError,
    NotADirError,
    NotEmptyError,
    NotFoundError,
)
from gfs.files import NsWriter
from gfs.gateway import credentials, metrics
from gfs.namespace_api import Stat

_CLIENT = "hutong.client"
_STATUS = ((NotFoundError, HTTP_NOT_FOUND), (ExistsError, HTTP_CONFLICT),
           (NotEmptyError, HTTP_CONFLICT), (NotADirError, HTTP_CONFLICT),
           (InvalidPathError, HTTP_BAD_REQUEST))


def _dav(e: HutongError) -> DAVError:
    status = next((s for cls, s in _STATUS if isinstance(e, cls)), HTTP_FORBIDDEN)
    return DAVError(status, str(e))


class _Upload:
    """The file a PUT writes into: committed on close only if the whole body came."""

    def __init__(self, writer: NsWriter, expected: int | None) -> None:
        self._writer = writer
        self._expected = expected
        self._n = 0

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        self._n += len(data)

    def close(self) -> None:
        if self._expected is not None and self._n != self._expected:
            self._writer.abort()
            raise DAVError(HTTP_BAD_REQUEST, f"body ended after {self._n} of "
                           f"{self._expected} bytes; nothing was stored")
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


class _Common:
    """What files and directories share: the namespace path and its Stat."""

    provider: HutongProvider
    path: str

    def _init(self, provider: HutongProvider, st: Stat) -> None:
        self.st = st
        self.ns = st.path
        self.fs = provider.fs

    def get_creation_date(self) -> float:
        return self.st.ctime_ns / 1e9

    def get_last_modified(self) -> float:
        return self.st.mtime_ns / 1e9

    def get_display_name(self) -> str:
        return self.st.name

    def get_etag(self) -> str:
        return f"{self.st.ino:x}-{self.st.version:x}-{self.st.mtime_ns:x}"

    def support_etag(self) -> bool:
        return True

    def support_recursive_move(self, dest_path: str) -> bool:
        return True

    def move_recursive(self, dest_path: str) -> None:
        try:
            self.fs.mv(self.ns, self.provider.ns_path(dest_path))
        except HutongError as e:
            raise _dav(e) from None

    def delete(self) -> None:
        try:
            self.fs.rm(self.ns, recursive=True)
        except HutongError as e:
            raise _dav(e) from None
        self.remove_all_properties(recursive=True)  # type: ignore[attr-defined]
        self.remove_all_locks(recursive=True)  # type: ignore[attr-defined]

    def set_last_modified(self, dest_path: str, time_stamp: Any, *, dry_run: bool) -> bool:
        secs = time_stamp if isinstance(time_stamp, int) else util.parse_time_string(time_stamp)
        if not dry_run:
            ns = int(secs * 1_000_000_000)
            self.fs.utime(self.provider.ns_path(dest_path), ns, ns)
        return True


class HutongFile(_Common, DAVNonCollection):  # type: ignore[misc]
    """A namespace file as a WebDAV resource."""

    def __init__(self, path: str, environ: dict[str, Any], provider: HutongProvider,
                 st: Stat) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self._init(provider, st)
        self._upload: _Upload | None = None

    def get_content_length(self) -> int:
        return self.st.size

    def get_content_type(self) -> str:
        return str(util.guess_mime_type(self.path))

    def support_ranges(self) -> bool:
        return True

    def get_content(self) -> BinaryIO:
        return self.fs.open(self.ns)

    def begin_write(self, *, content_type: str | None = None) -> _Upload:
        length = self.environ.get("CONTENT_LENGTH")
        self._upload = _Upload(self.fs.open(self.ns, "wb"),  # type: ignore[arg-type]
                               int(length) if length else None)
        return self._upload

    def end_write(self, *, with_errors: bool) -> None:
        if with_errors and self._upload is not None:
            self._upload.abort()

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        try:  # the copy shares the chunks: no data is read or written
            self.fs.concat(self.provider.ns_path(dest_path), [self.ns])
        except HutongError as e:
            raise _dav(e) from None


class HutongDir(_Common, DAVCollection):  # type: ignore[misc]
    """A namespace directory as a WebDAV collection."""

    def __init__(self, path: str, environ: dict[str, Any], provider: HutongProvider,
                 st: Stat) -> None:
        DAVCollection.__init__(self, path, environ)
        self._init(provider, st)

    def get_member_names(self) -> list[str]:
        return [st.name for st in self.fs.ls(self.ns) if st.kind != "symlink"]

    def get_member(self, name: str) -> HutongFile | HutongDir | None:
        return self.provider.get_resource_inst(util.join_uri(self.path, name), self.environ)

    def create_empty_resource(self, name: str) -> HutongFile | HutongDir | None:
        path = util.join_uri(self.path, name)
        try:
            self.fs.write_bytes(self.provider.ns_path(path), b"")
        except HutongError as e:
            raise _dav(e) from None
        return self.provider.get_resource_inst(path, self.environ)

    def create_collection(self, name: str) -> None:
        try:
            self.fs.mkdir(self.provider.ns_path(util.join_uri(self.path, name)))
        except HutongError as e:
            raise _dav(e) from None

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        try:
            self.fs.mkdir(self.provider.ns_path(dest_path), exist_ok=True)
        except HutongError as e:
            raise _dav(e) from None


class HutongProvider(DAVProvider):  # type: ignore[misc]
    """Serves the namespace below `root` of store `fs`."""

    def __init__(self, fs: Client, root: str = "/") -> None:
        super().__init__()
        self.fs = fs
        self.root = paths.normalize(root)

    def ns_path(self, dav_path: str) -> str:
        """The namespace path of a WebDAV path ('..' and the like are refused)."""
        try:
            return paths.join([*paths.split(self.root),
                               *paths.split(paths.normalize("/" + dav_path.strip("/")))])
        except InvalidPathError as e:
            raise DAVError(HTTP_BAD_REQUEST, str(e)) from None

    def get_resource_inst(self, path: str, environ: dict[str, Any]
                          ) -> HutongFile | HutongDir | None:
        try:
            st = self.fs.stat(self.ns_path(path))
        except (NotFoundError, NotADirError):
            return None
        if st.is_dir:
            return HutongDir(path, environ, self, st)
        if st.kind == "file":
            return HutongFile(path, environ, self, st)
        return None  # symlinks are not served


class CredentialDomainController(BaseDomainController):  # type: ignore[misc]
    """Basic auth against the store's gateway credentials (access key / secret)."""

    def __init__(self, wsgidav_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, config)
        self.fs: Client = config[_CLIENT]

    def get_domain_realm(self, path_info: str, environ: dict[str, Any] | None) -> str:
        return "hutong"

    def require_authentication(self, realm: str, environ: dict[str, Any] | None) -> bool:
        return True

    def basic_auth_user(self, realm: str, user_name: str, password: str,
                        environ: dict[str, Any]) -> bool:
        import hmac

        cred = credentials.lookup(self.fs, user_name)
        return cred is not None and not cred.buckets and hmac.compare_digest(
            cred.secret_key.encode(), password.encode())

    def supports_http_digest_auth(self) -> bool:
        return False


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _timed(app: WSGIApp) -> WSGIApp:
    """WSGI middleware: the request latency histogram of the "webdav" gateway."""
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == metrics.METRICS_PATH:
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            yield generate_latest(metrics.REGISTRY)
            return
        started = time.perf_counter()
        status = ["500"]

        def start(s: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            status[0] = s.split(" ", 1)[0]
            return start_response(s, headers, *exc)
        try:
            yield from app(environ, start)
        finally:
            metrics.LATENCY.labels("webdav", environ.get("REQUEST_METHOD", "?"),
                                   status[0]).observe(time.perf_counter() - started)
    return wrapped


def make_app(fs: Client, root: str = "/", *, auth: bool = True) -> WSGIApp:
    """The WebDAV WSGI application serving `root` of store `fs`."""
    config: dict[str, Any] = {
        "provider_mapping": {"/": HutongProvider(fs, root)},
        "http_authenticator": {"domain_controller": CredentialDomainController,
                               "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False},
        "simple_dc": {"user_mapping": {"*": True}},
        "verbose": 1,
        "logging": {"enable": False},
        "property_manager": True,
        "lock_storage": True,
        "dir_browser": {"enable": True},
        _CLIENT: fs,
    }
    if not auth:
        config["http_authenticator"]["domain_controller"] = None
    return _timed(WsgiDAVApp(config))


def serve(app: WSGIApp, host: str, port: int, on_ready: Callable[[str], None],
          threads: int = 16) -> Any:
    """A cheroot server for `app` bound to host:port (0: any free port); `on_ready` gets
    its URL. Returns the server; `serve_forever()` runs it, `stop()` ends it."""
    from cheroot import wsgi

    server = wsgi.Server((host, port), app, numthreads=threads)
    server.prepare()
    bound = server.bind_addr[1]
    on_ready(f"http://{host}:{bound}" if ":" not in host else f"http://[{host}]:{bound}")
    return server
