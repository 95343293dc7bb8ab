"""Gateway servers for tests: a store, a credential and `hutong gateway s3` running as a
real process on 127.0.0.1 port 0, with boto3 and s3fs clients for it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gfs.client import Client
from gfs.federation.testing import Proc
from gfs.gateway import credentials
from gfs.gateway.credentials import Credential


@dataclass
class S3Server:
    """A running S3 gateway over the store in `state`."""

    state: Path
    url: str
    cred: Credential
    proc: Proc

    def client(self, cred: Credential | None = None, **config: Any) -> Any:
        """A boto3 S3 client signing with `cred` (default: the server's credential)."""
        c = cred or self.cred
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=c.access_key,
            aws_secret_access_key=c.secret_key, region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}, **config))

    def s3fs(self) -> Any:
        """An s3fs filesystem for the server (no instance cache)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.cred.access_key, secret=self.cred.secret_key,
                                 endpoint_url=self.url, skip_instance_cache=True,
                                 client_kwargs={"region_name": "us-east-1"})

    def store(self) -> Client:
        """The store, opened in this process (LMDB lets the server share it)."""
        return Client(self.state)


def code(e: pytest.ExceptionInfo[Any]) -> str:
    """The S3 error code of a botocore ClientError."""
    return str(e.value.response["Error"]["Code"])


def cli(*args: str) -> list[str]:
    """argv of `hutong ARGS` with this interpreter."""
    return [sys.executable, "-m", "gfs.cli", *args]


def start_s3(root: Path, *extra: str, meta: str | None = None) -> S3Server:
    """Create a store under `root` (its metadata at `meta`, a PostgreSQL URL; default
    embedded) and serve it over S3."""
    state = root / "state"
    with Client.init(state, meta=meta) as fs:
        cred = credentials.add(fs)
    proc = Proc(cli("--state", str(state), "gateway", "s3", "--listen", "127.0.0.1:0",
                    *extra), root / "gateway.log")
    return S3Server(state, proc.url, cred, proc)


@pytest.fixture
def s3server(tmp_path: Path) -> Iterator[S3Server]:
    """A fresh store served by `hutong gateway s3`."""
    server = start_s3(tmp_path)
    try:
        yield server
    finally:
        server.proc.stop()
