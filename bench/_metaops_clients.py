"""Namespace operations per second from several client processes, through the Python
API or through a mounted file system.

Each client is its own process. Through the API it opens its own `Client` on one
store (LMDB in a state directory, or PostgreSQL); through a mount (a Hutong or
JuiceFS FUSE mount) it uses plain POSIX calls. Each works in its own directory. The phases (create,
stat, ls, rename, unlink) start together at a barrier, and a phase's rate is all
clients' operations over the wall time from the barrier to the last client done.
An operation that still lost its PostgreSQL serialisation conflicts after every
retry (`MetaConflictError`) is counted as failed, not hidden. Files have distinct
contents (a create benchmark, not a dedup one).
"""

from __future__ import annotations

import multiprocessing as mp
import os
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

    with Client(state) as fs:
        d = f"/c{k}"
        fs.mkdir(d, exist_ok=True)
        out.put((k, *_phases(n, barrier, {
            "create": lambda i: fs.write_bytes(f"{d}/f{i}", payload(k, i)),
            "stat": lambda i: fs.stat(f"{d}/f{i}"),
            "ls": lambda i: fs.ls(d),
            "rename": lambda i: fs.mv(f"{d}/f{i}", f"{d}/g{i}"),
            "unlink": lambda i: fs.rm(f"{d}/g{i}"),
        })))


def _posix_client(mnt: str, k: int, n: int, barrier: Barrier, out: Results) -> None:
    d = os.path.join(mnt, f"c{k}")
    os.makedirs(d, exist_ok=True)

    def create(i: int) -> None:
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(payload(k, i))

    out.put((k, *_phases(n, barrier, {
        "create": create,
        "stat": lambda i: os.stat(os.path.join(d, f"f{i}")),
        "ls": lambda i: os.listdir(d),
        "rename": lambda i: os.rename(os.path.join(d, f"f{i}"), os.path.join(d, f"g{i}")),
        "unlink": lambda i: os.unlink(os.path.join(d, f"g{i}")),
    })))


def _phases(n: int, barrier: Barrier, steps: dict[str, Callable[[int], object]]
            ) -> tuple[dict[str, float], int]:
    """Run each phase after the barrier; (start and end time of each phase, as
    "PHASE:start" and "PHASE", failed operations)."""
    from gfs.errors import MetaConflictError

    failed = 0
    done: dict[str, float] = {}
    for phase in PHASES:
        barrier.wait()
        done[f"{phase}:start"] = time.perf_counter()
        for i in range(n if phase != "ls" else max(n // 10, 1)):
            try:
                steps[phase](i)
            except MetaConflictError:
                failed += 1
            except FileNotFoundError:  # renamed or removed: its create had failed
                failed += 1
        done[phase] = time.perf_counter()
    return done, failed


def rates(state: str, clients: int, n: int, *, mount: bool = False
          ) -> tuple[dict[str, float], int]:
    """Operations per second of each phase with `clients` processes, `n` files each,
    and the number of operations that failed; `mount`: `state` is a mounted
    directory, worked on with POSIX calls, else a Hutong state directory."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    out: Results = ctx.Queue()
    procs = [ctx.Process(target=_posix_client if mount else _client,
                         args=(state, k, n, barrier, out))
             for k in range(clients)]
    for p in procs:
        p.start()
    try:
        for _ in PHASES:
            barrier.wait(timeout=600)
        got = [out.get(timeout=600) for _ in procs]
        results = [r[1] for r in got]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    ops = {ph: clients * (n if ph != "ls" else max(n // 10, 1)) for ph in PHASES}
    # a phase runs from the first client's start after the barrier to the last one's end
    # (times of the clients themselves: this process may run late on a loaded machine)
    return ({ph: ops[ph] / (max(r[ph] for r in results) - min(r[f"{ph}:start"]
                                                             for r in results))
             for ph in PHASES},
            sum(r[2] for r in got))
