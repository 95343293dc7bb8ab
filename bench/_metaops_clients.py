"""Namespace operations per second through the Python API, from several client processes.

Each client is its own process with its own `Client` on one store (LMDB in a state
directory, or PostgreSQL); it works in its own directory. The phases (create,
stat, ls, rename, unlink) start together at a barrier, and a phase's rate is all
clients' operations over the wall time from the barrier to the last client done.
An operation that still lost its PostgreSQL serialisation conflicts after every
retry (`MetaConflictError`) is counted as failed, not hidden. Files have distinct
contents (a create benchmark, not a dedup one).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from typing import TypeAlias

PHASES = ("create", "stat", "ls", "rename", "unlink")
#: Bytes per created file; each file's content is distinct (as files are), so no two
#: clients write the same chunk (which would meet on its reference count).
FILE_BYTES = 100


def payload(k: int, i: int) -> bytes:
    """The content of client `k`'s file `i`."""
    return f"client {k} file {i} ".encode().ljust(FILE_BYTES, b".")


#: Where each client puts (its number, the end time of each phase, failed operations).
Results: TypeAlias = "mp.Queue[tuple[int, dict[str, float], int]]"


def _client(state: str, k: int, n: int, barrier: Barrier, out: Results) -> None:
    from gfs import Client
    from gfs.errors import MetaConflictError

    failed = 0
    with Client(state) as fs:
        d = f"/c{k}"
        fs.mkdir(d, exist_ok=True)
        done: dict[str, float] = {}
        steps: dict[str, Callable[[int], object]] = {
            "create": lambda i: fs.write_bytes(f"{d}/f{i}", payload(k, i)),
            "stat": lambda i: fs.stat(f"{d}/f{i}"),
            "ls": lambda i: fs.ls(d),
            "rename": lambda i: fs.mv(f"{d}/f{i}", f"{d}/g{i}"),
            "unlink": lambda i: fs.rm(f"{d}/g{i}"),
        }
        for phase in PHASES:
            barrier.wait()
            for i in range(n if phase != "ls" else max(n // 10, 1)):
                try:
                    steps[phase](i)
                except MetaConflictError:
                    failed += 1
                except FileNotFoundError:  # renamed or removed: its create had failed
                    failed += 1
            done[phase] = time.perf_counter()
        out.put((k, done, failed))


def rates(state: str, clients: int, n: int) -> tuple[dict[str, float], int]:
    """Operations per second of each phase with `clients` processes, `n` files each,
    and the number of operations that failed."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    out: Results = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(state, k, n, barrier, out))
             for k in range(clients)]
    for p in procs:
        p.start()
    starts: dict[str, float] = {}
    try:
        for phase in PHASES:
            barrier.wait(timeout=600)
            starts[phase] = time.perf_counter()
        got = [out.get(timeout=600) for _ in procs]
        results = [r[1] for r in got]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    ops = {ph: clients * (n if ph != "ls" else max(n // 10, 1)) for ph in PHASES}
    return ({ph: ops[ph] / (max(r[ph] for r in results) - starts[ph]) for ph in PHASES},
            sum(r[2] for r in got))
