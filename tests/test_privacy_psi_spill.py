"""PSI beyond memory: results identical to the plain-set answer with a tiny budget
(many partitions), memory not growing with the set size, temporaries removed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from gfs.client import Client
from privacy import psi, spill
from privacy.errors import ProtocolError
from privacy.jobs import FAULT_ENV, JobSpec, run_job
from privacy.testing import open_policy, put_policy, put_table, run_pair

TINY = 16 << 10  # bytes: forces dozens of partitions for a few thousand keys


def run(x: list[str], y: list[str], output: str, tmp: Path,
        budget: int = TINY) -> tuple[psi.PsiResult, psi.PsiResult]:
    r, s, _ = run_pair(
        lambda ch, pool: psi.receiver(ch, iter(x), "j", output, pool, batch_rows=300,
                                      budget=budget, workdir=tmp / "r"),
        lambda ch, pool: psi.sender(ch, iter(y), "j", output, pool, batch_rows=300,
                                    budget=budget, workdir=tmp / "s"),
        workers=1)
    if isinstance(r, BaseException):
        raise r
    if isinstance(s, BaseException):
        raise s
    assert isinstance(r, psi.PsiResult) and isinstance(s, psi.PsiResult)
    return r, s


def leftovers(tmp: Path) -> list[Path]:
    return [p for p in tmp.rglob("*") if p.is_file()]


@pytest.mark.parametrize("case", ["random", "empty", "identical", "disjoint", "duplicates"])
@pytest.mark.parametrize("output", ["intersection", "cardinality"])
def test_tiny_budget_gives_the_exact_answer(case: str, output: str, tmp_path: Path) -> None:
    rnd = random.Random(case)
    pool = list(dict.fromkeys(f"k{rnd.randrange(10**9)}" for _ in range(4000)))
    x, y = {
        "random": (pool[:2200], pool[1500:3900]),
        "empty": ([], pool[:700]),
        "identical": (pool[:2000], list(reversed(pool[:2000]))),
        "disjoint": (pool[:1500], pool[1500:3000]),
        "duplicates": ([rnd.choice(pool[:900]) for _ in range(5000)],
                       [rnd.choice(pool[600:1500]) for _ in range(5000)]),
    }[case]
    r, s = run(x, y, output, tmp_path)
    want = set(x) & set(y)
    assert r.size == len(want)
    assert (r.receiver_count, r.sender_count) == (len(set(x)), len(set(y)))
    assert (s.receiver_count, s.sender_count) == (len(set(x)), len(set(y)))
    assert r.intersection == (sorted(want) if output == "intersection" else None)
    assert leftovers(tmp_path) == []


def test_key_partitions_are_distinct_shuffled_and_split(tmp_path: Path) -> None:
    keys = [str(i % 3000) for i in range(9000)]
    with spill.Workdir(tmp_path) as wd:
        parts = list(spill.KeyPartitions(wd, iter(keys), budget=8 << 10))
        assert len(parts) > 16  # re-split on the way: no hint was given
        flat = [k for p in parts for k in p]
        assert sorted(flat) == sorted(set(keys))
        assert flat != sorted(flat, key=int)
        assert leftovers(tmp_path) == []
        again = [k for p in spill.KeyPartitions(wd, iter(keys), budget=8 << 10) for k in p]
        assert again != flat  # a fresh PRF key and fresh shuffles every time
    assert not wd.path.exists()


def test_value_partitions_keep_every_record(tmp_path: Path) -> None:
    blob = os.urandom(12 * 5000)
    with spill.Workdir(tmp_path) as wd:
        for rnd in (False, True):
            vp = spill.ValuePartitions(wd, "v", 12, 7, 1 << 12, random=rnd)
            for i in range(0, len(blob), 12 * 999):
                vp.add(blob[i:i + 12 * 999])
            vp.close()
            got = [d for d in vp]
            assert len(got) == 7 and vp.total == 5000
            recs = sorted(d[i:i + 12] for d in got for i in range(0, len(d), 12))
            assert recs == sorted(blob[i:i + 12] for i in range(0, len(blob), 12))
            if not rnd:  # by prefix: partitions are ordered ranges of the leading bytes
                firsts = [d[:4] for d in got if d]
                assert all(max(a[i:i + 4] for i in range(0, len(a), 12)) < b
                           for a, b in zip([d for d in got if d], firsts[1:], strict=False))


_KILLED_AT = """
import os, signal, subprocess, sys
from pathlib import Path
from privacy import spill
root, at = sys.argv[1], sys.argv[2]
if at == "watchdog":  # killed as the watchdog is about to be started
    def popen(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    spill.subprocess.Popen = popen
else:  # killed right after the directory is made
    real_mkdir = Path.mkdir
    def mkdir(self, *a, **k):
        real_mkdir(self, *a, **k)
        if self.parent.name == "psi":
            os.kill(os.getpid(), signal.SIGKILL)
    Path.mkdir = mkdir
spill.Workdir(root)
"""


@pytest.mark.parametrize("at", ["watchdog", "directory"])
def test_a_party_killed_while_making_its_workdir_leaves_nothing(tmp_path: Path, at: str
                                                                ) -> None:
    """Whether the party is killed just before its watchdog starts or just after its
    directory is made, no directory is left behind (with the directory made first, a
    kill before the watchdog's fork left it until the next job at that site)."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT, str(tmp_path), at],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr
    base = tmp_path / "tmp" / "psi"
    deadline = time.monotonic() + 30
    while base.exists() and any(base.iterdir()):
        assert time.monotonic() < deadline, sorted(base.iterdir())
        time.sleep(0.05)


def test_stale_directories_of_dead_jobs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / "tmp" / "psi" / f"{dead.stdout.strip()}-abc"
    stale.mkdir(parents=True)
    (stale / "keys-1").write_bytes(b"secret")
    live = tmp_path / "tmp" / "psi" / f"{os.getppid()}-def"  # a running process: kept
    live.mkdir()
    with spill.Workdir(tmp_path) as wd:
        assert not stale.exists() and live.exists() and wd.path.exists()
    assert not wd.path.exists()


_HALF = r"""
import json, resource, sys
from privacy import psi
from privacy.testing import run_pair
n, budget, tmp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def keys(lo):
    return (f"customer-{i:012d}" for i in range(lo, lo + n))
r, s, _ = run_pair(
    lambda ch, pool: psi.receiver(ch, keys(0), "j", "cardinality", pool, batch_rows=2048,
                                  budget=budget, workdir=tmp),
    lambda ch, pool: psi.sender(ch, keys(n // 2), "j", "cardinality", pool, batch_rows=2048,
                                budget=budget, workdir=tmp),
    workers=1)
assert not isinstance(r, BaseException), r
assert not isinstance(s, BaseException), s
print(json.dumps({"size": r.size, "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _peak(n: int, budget: int, tmp: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _HALF, str(n), str(budget), str(tmp)],
                         capture_output=True, text=True, check=True, timeout=600)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return int(d["size"]), int(d["rss_kb"])


@pytest.mark.parametrize("n", [30_000, pytest.param(250_000, marks=pytest.mark.slow)])
def test_peak_memory_does_not_grow_with_the_set(tmp_path: Path, n: int) -> None:
    """Both halves in one process (the workers are separate): peak RSS for 4n keys
    exceeds that for n by far less than the in-memory data would grow (~100 B/key)."""
    budget = 1 << 20
    size1, rss1 = _peak(n, budget, tmp_path)
    size4, rss4 = _peak(4 * n, budget, tmp_path)
    assert (size1, size4) == (n // 2, 2 * n)
    data_growth_kb = 2 * 3 * n * 100 // 1024  # both parties, 3n more keys, ~100 B each
    assert rss4 - rss1 < data_growth_kb // 3, (rss1, rss4, data_growth_kb)
    assert leftovers(tmp_path) == []


BANK = "/bank-a/ids.parquet"
TELCO = "/telco-b/ids.parquet"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    state = tmp_path_factory.mktemp("psi-spill") / "state"
    rnd = random.Random(11)
    bank = [f"138{rnd.randrange(6000):07d}" for _ in range(3000)]
    telco = [f"138{rnd.randrange(6000):07d}" for _ in range(3000)]
    with Client.init(state) as fs:
        put_table(fs, BANK, pa.table({"phone": bank}))
        put_table(fs, TELCO, pa.table({"phone": telco}))
        put_policy(fs, open_policy("bank-a", "telco-b", BANK))
        put_policy(fs, open_policy("telco-b", "bank-a", TELCO))
    return state, set(bank), set(telco)


def temporaries(state: Path) -> list[Path]:
    return sorted((state / "tmp" / "psi").glob("*")) if (state / "tmp" / "psi").exists() else []


@pytest.mark.parametrize("output", ["intersection", "cardinality"])
def test_job_with_a_tiny_budget_matches_and_cleans_up(world: tuple[Path, set[str], set[str]],
                                                      output: str) -> None:
    state, bank, telco = world
    res = run_job(JobSpec("psi", BANK, TELCO, "phone", output=output, protocol="ecdh"), state,
                  env={spill.BUDGET_ENV: "0.02"})
    assert res.answer["size"] == len(bank & telco)
    assert res.answer.get("intersection") == (sorted(bank & telco)
                                              if output == "intersection" else None)
    assert temporaries(state) == []


@pytest.mark.parametrize("fault", ["left:psi-b", "right:psi-a", "left:psi-c"])
def test_party_dying_mid_psi_leaves_no_temporaries(world: tuple[Path, set[str], set[str]],
                                                   fault: str) -> None:
    state, bank, telco = world
    spec = JobSpec("psi", BANK, TELCO, "phone", output="intersection",
                   protocol="ecdh", timeout=60)  # the ECDH spill path
    with pytest.raises(ProtocolError, match=r"closed the connection|died"):
        run_job(spec, state, env={FAULT_ENV: fault, spill.BUDGET_ENV: "0.02"})
    # the survivor removed its files; the killed party's watchdog removed its own
    deadline = time.monotonic() + 30
    while temporaries(state) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the file system with a deadline
    assert temporaries(state) == []
    res = run_job(JobSpec("psi", BANK, TELCO, "phone"), state, env={spill.BUDGET_ENV: "0.02"})
    assert res.answer["size"] == len(bank & telco)
    assert temporaries(state) == []
