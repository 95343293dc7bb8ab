"""A real PostgreSQL server for tests (pytest plugin: ``pytest_plugins = [...]``).

`postgres_server` (session): initdb into a temporary directory, start
`postgres` listening only on a unix socket in that directory under a free
port number, yield its URL, stop it (fast shutdown) at the end. As root the
server runs as the `postgres` user (PostgreSQL refuses to run as root).
`pg_url` (function): the server's URL with a fresh schema, dropped afterwards.
Needs Debian's `postgresql` package (`make setup`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

START_TIMEOUT = 60.0


@dataclass(frozen=True)
class PostgresServer:
    """A running test server: `url` reaches database `postgres` as superuser `hutong`."""

    url: str
    socket_dir: str
    port: int
    pid: int

    def url_for(self, schema: str) -> str:
        """The URL of a store in `schema`."""
        return f"{self.url}&schema={schema}"


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(base: str, *, netns: str | None = None, listen: str = ""
                 ) -> tuple[PostgresServer, subprocess.Popen[bytes]]:
    """initdb into `base`/data and start postgres; returns once it accepts connections.
    With `listen` (an address; in network namespace `netns` if given) it also takes
    TCP connections there, from any host, without a password (a test cluster)."""
    initdb, postgres = _bin("initdb"), _bin("postgres")
    if initdb is None or postgres is None:
        pytest.skip("PostgreSQL is not installed (Debian package `postgresql`; run make setup)")
    user: str | None = None
    if os.geteuid() == 0:
        user = "postgres"
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data = os.path.join(base, "data")
    subprocess.run([initdb, "-D", data, "-U", "hutong", "--auth=trust", "-E", "UTF8",
                    "--no-sync", "--no-instructions"], check=True, user=user,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_TIMEOUT)
    port = _free_port()
    argv = [postgres, "-D", data, "-p", str(port), "-k", base, "-c", f"listen_addresses={listen}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=300", "-c", "shared_buffers=64MB",
            # dynamic shared memory as files in the data directory, removed with it: POSIX
            # segments in /dev/shm outlive a server that is killed
            "-c", "dynamic_shared_memory_type=mmap"]
    if listen:
        with open(os.path.join(data, "pg_hba.conf"), "a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
    if netns is not None:
        drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        argv, user = ["ip", "netns", "exec", netns, *drop, *argv], None
    proc = subprocess.Popen(
        argv, user=user, stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(base, "log"), "wb"))  # noqa: SIM115
    server = PostgresServer(f"postgresql:///postgres?host={base}&port={port}&user=hutong",
                            base, port, proc.pid)
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            psycopg.connect(server.url.split("&schema")[0], connect_timeout=2).close()
            return server, proc
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_server(proc)
                with open(os.path.join(base, "log")) as f:
                    raise RuntimeError(f"postgres did not start: {f.read()[-2000:]}") from None
            time.sleep(0.05)  # polling for readiness with a deadline


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session."""
    base = tempfile.mkdtemp(prefix="hutong-pg-")  # /tmp: readable by the postgres user
    try:
        server, proc = start_server(base)
        try:
            yield server
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty store on the test server (its schema is dropped after)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield postgres_server.url_for(schema)
    import psycopg

    with contextlib.suppress(psycopg.Error), \
            psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        try:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except psycopg.errors.LockNotAvailable:
            # a connection the test left in a transaction (say, a generator holding a
            # read, kept alive by a failed test's traceback) holds the schema's tables:
            # end it, or the drop waits forever and the session with it
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                         "pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextlib.contextmanager
def round_trips() -> Iterator[list[int]]:
    """Count the round trips to PostgreSQL servers inside the block (each exchange of
    psycopg passes through `Connection.wait`): `with round_trips() as n: ...; n[0]`."""
    import psycopg

    count = [0]
    wait = psycopg.Connection.wait

    def counting(self: psycopg.Connection[object], *a: object, **k: object) -> object:
        count[0] += 1
        return wait(self, *a, **k)  # type: ignore[arg-type]

    psycopg.Connection.wait = counting  # type: ignore[method-assign, assignment]
    try:
        yield count
    finally:
        psycopg.Connection.wait = wait  # type: ignore[method-assign]
