"""The mount rows of `bench metaops`, measured in interleaved pairs.

Measuring one system whole and then the other lets load drift between the two halves
move their ratio (this machine is shared). Here one team of client processes works
on both mounts, phase by phase: for each phase, round r runs system A then B (B then
A in odd rounds: A B B A ...), each round in its own directories, so every A run has
a B run next to it in time. A system's figure is the median of its rounds; the ratio
is the median of the per-round ratios A/B.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import TypeAlias

from bench._metaops_clients import PHASES, payload

#: A client's command: (its round's directory, phase, files) or None to stop.
Command: TypeAlias = "tuple[str, str, int] | None"
#: A client's answer: (its number, phase start, phase end, failed operations).
Answer: TypeAlias = "tuple[int, float, float, int]"


def ops_of(phase: str, n: int) -> int:
    """Operations one client runs in `phase` with `n` files (ls lists n/10 times)."""
    return max(n // 10, 1) if phase == "ls" else n


def schedule(rounds: int) -> list[tuple[int, int]]:
    """The order of (round, system) runs of one phase for systems 0 and 1: A B, B A,
    A B, ... so neither system always runs first."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    return [(r, s) for r in range(rounds) for s in ((0, 1) if r % 2 == 0 else (1, 0))]


@dataclass(frozen=True)
class Paired:
    """One phase's rates of both systems over the rounds, in round order."""

    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def a_median(self) -> float:
        return statistics.median(self.a)

    @property
    def b_median(self) -> float:
        return statistics.median(self.b)

    @property
    def ratios(self) -> tuple[float, ...]:
        """A/B of each round (its two runs were next to each other in time)."""
        return tuple(x / y for x, y in zip(self.a, self.b, strict=True))

    @property
    def ratio(self) -> float:
        """The median of the per-round ratios."""
        return statistics.median(self.ratios)


def _client(k: int, cmds: mp.Queue[Command], barrier: Barrier,
            out: mp.Queue[Answer]) -> None:
    """Client `k`: run each phase it is sent in `DIR/c{k}` after the barrier."""
    while (cmd := cmds.get()) is not None:
        root, phase, n = cmd
        d = os.path.join(root, f"c{k}")
        os.makedirs(d, exist_ok=True)
        failed = 0
        barrier.wait()
        t0 = time.perf_counter()
        for i in range(ops_of(phase, n)):
            try:
                _step(phase, d, k, i)
            except FileNotFoundError:  # renamed or removed: its create had failed
                failed += 1
        out.put((k, t0, time.perf_counter(), failed))


def _step(phase: str, d: str, k: int, i: int) -> None:
    if phase == "create":
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(payload(k, i))
    elif phase == "stat":
        os.stat(os.path.join(d, f"f{i}"))
    elif phase == "ls":
        os.listdir(d)
    elif phase == "rename":
        os.rename(os.path.join(d, f"f{i}"), os.path.join(d, f"g{i}"))
    else:
        os.unlink(os.path.join(d, f"g{i}"))


class Team:
    """`clients` processes that run one phase at a time, together, where told."""

    def __init__(self, clients: int) -> None:
        ctx = mp.get_context("spawn")
        self.clients = clients
        self._barrier = ctx.Barrier(clients + 1)
        self._out: mp.Queue[Answer] = ctx.Queue()
        self._cmds: list[mp.Queue[Command]] = [ctx.Queue() for _ in range(clients)]
        self._procs = [ctx.Process(target=_client, args=(k, q, self._barrier, self._out))
                       for k, q in enumerate(self._cmds)]
        for p in self._procs:
            p.start()

    def run(self, root: str, phase: str, n: int) -> tuple[float, int]:
        """(ops/s of all clients, failed operations) of `phase` in `root`; the rate is
        from the first client's start to the last one's end, by the clients' clocks."""
        for q in self._cmds:
            q.put((root, phase, n))
        self._barrier.wait(timeout=600)
        got = [self._out.get(timeout=600) for _ in self._procs]
        wall = max(g[2] for g in got) - min(g[1] for g in got)
        return self.clients * ops_of(phase, n) / wall, sum(g[3] for g in got)

    def close(self) -> None:
        for q in self._cmds:
            q.put(None)
        for p in self._procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def measure(team: Team, roots: Sequence[str], n: int, rounds: int
            ) -> tuple[dict[str, Paired], int]:
    """Each phase on the two systems mounted at `roots` in `rounds` interleaved rounds
    (round r works in ROOT/r{r}); (each phase's paired rates, failed operations)."""
    if len(roots) != 2:
        raise ValueError(f"two systems to pair, got {len(roots)}")
    out: dict[str, Paired] = {}
    failed = 0
    for phase in PHASES:
        got: dict[tuple[int, int], float] = {}
        for r, s in schedule(rounds):
            got[(r, s)], f = team.run(os.path.join(roots[s], f"r{r}"), phase, n)
            failed += f
        out[phase] = Paired(tuple(got[(r, 0)] for r in range(rounds)),
                            tuple(got[(r, 1)] for r in range(rounds)))
    return out, failed


def single(team: Team, root: str, n: int) -> tuple[dict[str, float], int]:
    """Each phase once on one system (no peer to pair it with)."""
    rates: dict[str, float] = {}
    failed = 0
    for phase in PHASES:
        rates[phase], f = team.run(os.path.join(root, "r0"), phase, n)
        failed += f
    return rates, failed
