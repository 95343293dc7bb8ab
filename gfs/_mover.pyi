"""Typed stubs of the native mover (native/mover_module.c; contract in native/mover.h)."""

from collections.abc import Callable

OK: int
ERR_IO: int
ERR_TIMEOUT: int
ERR_CLOSED: int
ERR_PROTOCOL: int
ERR_LIMIT: int
ERR_AUTH: int
ERR_CANCELLED: int
ERR_CALLBACK: int
ERR_PEER: int
ERR_NOMEM: int
ERR_ARG: int
OP_FETCH: int
OP_SEND: int
MAX_BATCH: int
MAX_PAIRS: int
FLAG_DELTA: int
SPOOL_RESERVE: int
DEFAULT_MAX_BLOB: int
ENTRY_LEN: int
ENTRY_VERIFIED: int
SENDFILE_AUTO: int
ERR_RECORD: int
ERR_REKEY: int
CIPHER_NONE: int
CIPHER_AES128GCM: int
CIPHER_AES256GCM: int
CIPHER_CHACHA20: int
CIPHER_AUTO: int
RECORD_MAX: int
DEFAULT_MAX_CONNS: int
DEFAULT_MIN_RATE: int
DEFAULT_HANDSHAKE_TIMEOUT: float

Resolve = Callable[[bytes], list[tuple[str, int, int] | None]]
Need = Callable[[bytes], bytes]
Spool = Callable[[str, bytes], tuple[int, int]]
Bases = Callable[[bytes], bytes]
Holds = Callable[[bytes], bytes]
Deltas = Callable[[bytes], list[tuple[str, int, int] | None]]

class Server:
    port: int
    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        resolve: Resolve,
        need: Need,
        spool: Spool,
        spool_dir: str,
        spool_limit: int = ...,
        timeout: float = ...,
        max_blob: int = ...,
        sendfile: int = ...,
        sndbuf: int = ...,
        rcvbuf: int = ...,
        congestion: str = ...,
        direct: bool = ...,
        allow_plaintext: bool = ...,
        max_conns: int = ...,
        handshake_timeout: float = ...,
        min_rate: int = ...,
        bases: Bases | None = ...,
        holds: Holds | None = ...,
        deltas: Deltas | None = ...,
    ) -> None: ...
    def close(self) -> None: ...
    def counters(self) -> dict[str, int]: ...

def transfer(
    op: int,
    host: str,
    port: int,
    secret: bytes,
    ids: list[bytes],
    *,
    resolve: Resolve | None = ...,
    spool: Spool | None = ...,
    spool_dir: str = ...,
    spool_limit: int = ...,
    timeout: float = ...,
    max_blob: int = ...,
    sendfile: int = ...,
    progress: Callable[[int, int], object] | None = ...,
    tick: float = ...,
    sndbuf: int = ...,
    rcvbuf: int = ...,
    streams: int = ...,
    batch: int = ...,
    congestion: str = ...,
    direct: bool = ...,
    cipher: int = ...,
    bases: Bases | None = ...,
    holds: Holds | None = ...,
    deltas: Deltas | None = ...,
) -> list[tuple[int, str, int, int, int, int, int, str]]: ...
def hmac_sha256(key: bytes, msg: bytes, /) -> bytes: ...
def check_frames(buf: bytes, max_blob: int = ..., /) -> tuple[int, int, str]: ...
def strerror(status: int, /) -> str: ...
def record_keys(
    secret: bytes, dh: bytes, cn: bytes, sn: bytes, op: int, cipher: int, /
) -> tuple[bytes, bytes, bytes, bytes]: ...
def check_records(cipher: int, key: bytes, iv: bytes, buf: bytes, /) -> tuple[int, int, str]: ...
def seal_record(
    cipher: int, key: bytes, iv: bytes, seq: int, plaintext: bytes, /
) -> tuple[int, bytes, str]: ...
def cipher_name(cipher: int, /) -> str: ...
def cipher_backend(cipher: int, /) -> str: ...
def cipher_rate(cipher: int, seconds: float, /) -> float: ...
