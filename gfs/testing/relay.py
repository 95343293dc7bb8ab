"""A loopback TCP relay that counts what it forwards: one home for benches and tests.

`TcpRelay(target)` listens on 127.0.0.1 (port 0), opens one upstream connection
per accepted client and pumps both directions on threads, counting every byte.
Subclasses change what is forwarded by overriding `pump` (the mover tests'
tampering relay does).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpRelay:
    """Forwards loopback connections to `target`; `bytes` counts both directions."""

    def __init__(self, target: tuple[str, int], *, connect_timeout: float = 60.0) -> None:
        self.target = target
        self.bytes = 0
        self.connections = 0
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=self._connect_timeout)
            except OSError:  # the target is gone or refuses: so does the relay, and goes on
                with contextlib.suppress(OSError):
                    client.close()
                continue
            with self._lock:
                number = self.connections
                self.connections += 1
                self._sockets += [client, upstream]
            for a, b, direction in ((client, upstream, "c2s"), (upstream, client, "s2c")):
                t = threading.Thread(target=self._run_pump, args=(a, b, direction, number),
                                     daemon=True)
                t.start()
                self._threads.append(t)

    def _run_pump(self, a: socket.socket, b: socket.socket, direction: str, number: int) -> None:
        try:
            self.pump(a, b, direction, number)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.pump_ended(direction, number)

    def count(self, n: int) -> None:
        """Add `n` forwarded bytes to `bytes` (thread-safe)."""
        with self._lock:
            self.bytes += n

    def pump(self, a: socket.socket, b: socket.socket, direction: str, number: int) -> None:
        """Forward `a` to `b` until `a` ends ("c2s" or "s2c", connection `number`)."""
        while data := a.recv(1 << 18):
            b.sendall(data)
            self.count(len(data))

    def pump_ended(self, direction: str, number: int) -> None:
        """Called once each pump has stopped and both its sockets are shut down."""

    def close(self, *, join: float = 30.0, cut: bool = False) -> None:
        """Stop accepting and wait up to `join` seconds for each pump to end; with
        `cut`, first shut down every relayed connection (kept-alive ones too)."""
        self.listener.close()
        if cut:
            with self._lock:
                sockets = list(self._sockets)
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in self._threads[1:]:
            t.join(timeout=join)
