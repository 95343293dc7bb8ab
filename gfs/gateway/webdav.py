"""WebDAV over the namespace: a WsgiDAV provider on the namespace API, served by cheroot.

Users sign in with HTTP basic auth, checked by the S3 gateway's `Access`
(gfs.gateway.access): on the embedded store, user name = gateway access key and
password = its secret, so S3 and WebDAV share one set of keys; on the federation
(`--profile`), user name = a token's id and password = the token, and each request
acts on that token's namespace. Dead properties and locks are kept in memory for
the life of the server.
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
from gfs.accesslog import AccessLog
from gfs.accesslog_gateway import webdav_middleware
from gfs.errors import (
    ExistsError,
    HutongError,
    InvalidPathError,
    NotADirError,
    NotEmptyError,
    NotFoundError,
)
from gfs.files import CloseToOpenWriter
from gfs.gateway import metrics
from gfs.gateway.access import Access
from gfs.gateway.backend import Backend
from gfs.gateway.credentials import Credential
from gfs.namespace_api import Stat

_ACCESS = "hutong.access"
_CRED = "hutong.credential"
#: Methods a read-only credential may use.
_READS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND"})
_STATUS = ((NotFoundError, HTTP_NOT_FOUND), (ExistsError, HTTP_CONFLICT),
           (NotEmptyError, HTTP_CONFLICT), (NotADirError, HTTP_CONFLICT),
           (InvalidPathError, HTTP_BAD_REQUEST))


def _dav(e: HutongError) -> DAVError:
    status = next((s for cls, s in _STATUS if isinstance(e, cls)), HTTP_FORBIDDEN)
    return DAVError(status, str(e))


class _Upload:
    """The file a PUT writes into: committed on close only if the whole body came."""

    def __init__(self, writer: CloseToOpenWriter, expected: int | None) -> None:
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

    def _init(self, provider: HutongProvider, st: Stat, backend: Backend) -> None:
        self.st = st
        self.ns = st.path
        self.backend = backend
        self.fs = backend.ns

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
                 st: Stat, backend: Backend) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self._init(provider, st, backend)
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
        writer = self.fs.open(self.ns, "wb")
        assert isinstance(writer, CloseToOpenWriter)
        self._upload = _Upload(writer, int(length) if length else None)
        return self._upload

    def end_write(self, *, with_errors: bool) -> None:
        if with_errors and self._upload is not None:
            self._upload.abort()

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        try:  # the copy shares the chunks: no data is read or written
            self.backend.concat(self.provider.ns_path(dest_path), [self.ns], lambda _: {}, [])
        except HutongError as e:
            raise _dav(e) from None


class HutongDir(_Common, DAVCollection):  # type: ignore[misc]
    """A namespace directory as a WebDAV collection."""

    def __init__(self, path: str, environ: dict[str, Any], provider: HutongProvider,
                 st: Stat, backend: Backend) -> None:
        DAVCollection.__init__(self, path, environ)
        self._init(provider, st, backend)

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
    """Serves the namespace below `root` of the store each request's credential maps to
    (`access`; without authentication, the first store)."""

    def __init__(self, access: Access, root: str = "/") -> None:
        super().__init__()
        self.access = access
        self.root = paths.normalize(root)

    def backend(self, environ: dict[str, Any]) -> Backend:
        """The back end the request acts on."""
        cred: Credential | None = environ.get(_CRED)
        store = self.access.store(cred) if cred is not None else self.access.stores()[0]
        return store.backend

    def ns_path(self, dav_path: str) -> str:
        """The namespace path of a WebDAV path ('..' and the like are refused)."""
        try:
            return paths.join([*paths.split(self.root),
                               *paths.split(paths.normalize("/" + dav_path.strip("/")))])
        except InvalidPathError as e:
            raise DAVError(HTTP_BAD_REQUEST, str(e)) from None

    def get_resource_inst(self, path: str, environ: dict[str, Any]
                          ) -> HutongFile | HutongDir | None:
        backend = self.backend(environ)
        try:
            st = backend.ns.stat(self.ns_path(path))
        except (NotFoundError, NotADirError):
            return None
        if st.is_dir:
            return HutongDir(path, environ, self, st, backend)
        if st.kind == "file":
            return HutongFile(path, environ, self, st, backend)
        return None  # symlinks are not served


class CredentialDomainController(BaseDomainController):  # type: ignore[misc]
    """Basic auth through `Access.basic` (an access key and its secret, or a token id
    and the token); a read-only credential may only read."""

    def __init__(self, wsgidav_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, config)
        self.access: Access = config[_ACCESS]

    def get_domain_realm(self, path_info: str, environ: dict[str, Any] | None) -> str:
        return "hutong"

    def require_authentication(self, realm: str, environ: dict[str, Any] | None) -> bool:
        return True

    def basic_auth_user(self, realm: str, user_name: str, password: str,
                        environ: dict[str, Any]) -> bool:
        cred = self.access.basic(user_name, password)
        if cred is None or cred.buckets:  # WebDAV sees all of ROOT: no bucket-scoped keys
            return False
        if cred.read_only and environ.get("REQUEST_METHOD") not in _READS:
            return False
        environ[_CRED] = cred
        return True

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


def make_app(access: Access, root: str = "/", *, auth: bool = True,
             log: AccessLog | None = None) -> WSGIApp:
    """The WebDAV WSGI application serving `root` of the stores of `access`; each request
    is recorded in `log` when given."""
    config: dict[str, Any] = {
        "provider_mapping": {"/": HutongProvider(access, root)},
        "http_authenticator": {"domain_controller": CredentialDomainController,
                               "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False},
        "simple_dc": {"user_mapping": {"*": True}},
        "verbose": 1,
        "logging": {"enable": False},
        "property_manager": True,
        "lock_storage": True,
        "dir_browser": {"enable": True},
        _ACCESS: access,
    }
    if not auth:
        config["http_authenticator"]["domain_controller"] = None
    app = WsgiDAVApp(config)
    return _timed(app if log is None else webdav_middleware(log, _CRED, app))


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
