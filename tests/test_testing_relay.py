"""The shared loopback relay forwards both ways and counts every byte."""

from __future__ import annotations

import contextlib
import socket
import threading

from gfs.testing.relay import TcpRelay


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_relay_forwards_and_counts_both_directions() -> None:
    srv, t = _echo_server()
    relay = TcpRelay(srv.getsockname()[:2])
    payload = bytes(range(256)) * 1000
    try:
        with socket.create_connection(relay.address, timeout=10) as c:
            c.sendall(payload)
            got = bytearray()
            while len(got) < len(payload) and (data := c.recv(65536)):
                got += data
        assert bytes(got) == payload
    finally:
        relay.close(join=10)
        srv.close()
        t.join(10)
    assert relay.connections == 1  # the pumps ended when the client closed
    assert relay.bytes == 2 * len(payload)


class _Upper(TcpRelay):
    def pump(self, a: socket.socket, b: socket.socket, direction: str, number: int) -> None:
        while data := a.recv(4096):
            b.sendall(data.upper() if direction == "s2c" else data)
            self.count(len(data))


def test_a_subclass_changes_what_is_forwarded() -> None:
    srv, t = _echo_server()
    relay = _Upper(srv.getsockname()[:2])
    try:
        with socket.create_connection(relay.address, timeout=10) as c:
            c.sendall(b"hello")
            got = b""
            while len(got) < 5 and (data := c.recv(100)):
                got += data
        assert got == b"HELLO"
    finally:
        relay.close(join=10)
        srv.close()
        t.join(10)


def test_a_refused_upstream_closes_that_client_and_the_relay_goes_on() -> None:
    """With its target gone, the relay closes each client it accepts (as the target
    would refuse it) and keeps accepting; once the target is back it forwards again.
    No thread dies with an unhandled exception (pytest would report it)."""
    gone = socket.create_server(("127.0.0.1", 0))
    target = gone.getsockname()[:2]
    gone.close()  # nothing listens there now
    relay = TcpRelay(target, connect_timeout=5)
    srv = None
    try:
        for _ in range(2):
            with socket.create_connection(relay.address, timeout=10) as c, \
                    contextlib.suppress(ConnectionResetError):  # a reset is closed too
                assert c.recv(1) == b""  # closed by the relay
        srv = socket.create_server(target)
        echo = threading.Thread(target=lambda: _echo_once(srv), daemon=True)
        echo.start()
        with socket.create_connection(relay.address, timeout=10) as c:
            c.sendall(b"back")
            assert c.recv(4) == b"back"
        echo.join(10)
    finally:
        relay.close(join=10)
        if srv is not None:
            srv.close()
    assert relay.connections == 1


def _echo_once(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(4))
