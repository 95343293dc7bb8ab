"""`HttpClient` keeps its connections for any thread: requests made one after another
from different threads (a FUSE worker each, a renewal) open one connection, not one
each (every new one costs a TCP and a TLS handshake on a long link)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from gfs.federation.http import HttpClient, UnavailableError
from gfs.federation.tls import Trust


class _Counting(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    connections: ClassVar[list[object]] = []

    def setup(self) -> None:
        super().setup()
        type(self).connections.append(self.connection)

    def do_GET(self) -> None:
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    _Counting.connections = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _client(srv: http.server.ThreadingHTTPServer) -> HttpClient:
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    return HttpClient(url, tls=Trust(url, None, plaintext=True), timeout=10)


def test_requests_from_many_threads_one_after_another_share_one_connection(
        server: http.server.ThreadingHTTPServer) -> None:
    h = _client(server)
    for _ in range(6):
        t = threading.Thread(target=lambda: h.call("GET", "/x"))
        t.start()
        t.join(10)
    assert len(_Counting.connections) == 1
    h.close()


def test_concurrent_requests_each_get_a_connection(
        server: http.server.ThreadingHTTPServer) -> None:
    h = _client(server)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait(10)
            assert h.call("GET", "/x") == {"ok": True}
        except BaseException as e:
            errors.append(e)
    ts = [threading.Thread(target=call) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert not errors and 1 <= len(_Counting.connections) <= 3
    h.close()


def test_a_server_gone_is_an_error() -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    h = _client(srv)
    srv.server_close()  # nothing listens there any more
    with pytest.raises(UnavailableError):
        h.call("GET", "/x")
