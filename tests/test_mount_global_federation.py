"""The global mount (`hutong mount MP --profile NAME`) on real sites on loopback: two
entities and a grant, ordinary programs (git, tar, pandas), close-to-open between two
mounts, a revoked grant, and kill -9 of the primary during reads and during a write."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gfs.federation.notices import LEASE_SECONDS
from gfs.federation.testing import Federation
from gfs.profiles import add_profile
from tests import test_federated_namespace as fedns
from tests.test_mount_helpers import Mounted, errno_of, needs_fuse, serve_child, wait_for

pytestmark = needs_fuse

TTL = 1.0
#: Entity lab: primary lab-1, lab-2 holding a mirror of /lab/d (the fixture, shared).
lab_fed = fedns.mirrored
_replicate = fedns._replicate


@contextmanager
def gmount(fed: Federation, profile: str, mnt: Path, ttl: float = TTL) -> Iterator[Mounted]:
    """`hutong --profile PROFILE mount MNT` in a child process (always unmounted)."""
    argv = [sys.executable, "-m", "gfs.cli", "-v", "--profile", profile, "mount", str(mnt),
            "--meta-ttl", str(ttl)]
    with serve_child(argv, fed.root, mnt) as m:
        yield m


def _needs_endpoint(fed: Federation, site: str, method: str, endpoint: str) -> None:
    """Skip unless the site serves `endpoint` (the grant view and attribute changes of
    the federated namespace come with the typed site server, issue 12 part 3)."""
    probe = fed.http(site, timeout=5)
    try:
        status, _, _ = probe.request(method, endpoint, query={"path": "/"})
    finally:
        probe.close()
    if status == 404 or status == 405:
        pytest.skip(f"site {site} does not serve {method} {endpoint} yet")


def _profile(fed: Federation, name: str, entity: str, site: str) -> str:
    add_profile(name, registry=fed.registry_url, entity=entity,
                keys=fed.sites[site]["state"] / "federation", near=site)
    return name


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with Federation(tmp_path_factory.mktemp("gmount"), ttl=1.5, heartbeat=0.2) as f:
        f.registry()
        f.site("bank-1", "bank", "cn-west", primary=True)
        f.site("telco-1", "telco", "cn-east", primary=True)
        with f.client("bank") as fc:
            fc.mkdir("/bank/shared/q1", parents=True)
            fc.mkdir("/bank/secret", parents=True)
            fc.write_bytes("/bank/shared/q1/data.csv", b"a,b\n1,2\n")
            fc.write_bytes("/bank/secret/keys.txt", b"do not read")
            fc.grant("/bank/shared/**", "telco", "read")
        yield f


@pytest.fixture
def telco(fed: Federation, tmp_path: Path) -> Iterator[Mounted]:
    with gmount(fed, _profile(fed, "tel", "telco", "telco-1"), tmp_path / "mnt") as m:
        yield m


def test_the_mount_shows_its_entity_and_the_granted_part(fed: Federation,
                                                        telco: Mounted) -> None:
    _needs_endpoint(fed, "bank-1", "GET", "/v1/ns/visible")
    mnt = telco.mnt
    assert os.listdir(mnt) == ["telco", "bank"]  # the caller's own entity first
    assert os.listdir(mnt / "bank") == ["shared"]
    assert (mnt / "bank" / "shared" / "q1" / "data.csv").read_bytes() == b"a,b\n1,2\n"
    for hidden in ("secret", "secret/keys.txt", "guess"):
        assert errno_of(os.stat, mnt / "bank" / hidden) == errno.ENOENT
    assert errno_of(os.mkdir, mnt / "bank" / "shared" / "mine") in (errno.EACCES, errno.EPERM)
    (mnt / "telco" / "own.txt").write_bytes(b"telco's own")
    assert (mnt / "telco" / "own.txt").read_bytes() == b"telco's own"


def test_special_files_and_hard_links(fed: Federation, telco: Mounted) -> None:
    """FIFOs and sockets are made through the site (and seen by other clients); device
    nodes and hard links are refused with EPERM, changing nothing; a grantee makes none
    where it may not write."""
    d = telco.mnt / "telco" / "special"
    d.mkdir()
    os.mkfifo(d / "pipe", 0o640)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(d / "sock"))
    finally:
        sock.close()
    assert stat.S_ISFIFO(os.lstat(d / "pipe").st_mode)
    assert stat.S_IMODE(os.lstat(d / "pipe").st_mode) == 0o640
    assert stat.S_ISSOCK(os.lstat(d / "sock").st_mode)
    with fed.client("telco") as fc:  # at the site, for every other client
        assert {s.name: s.kind for s in fc.ls("/telco/special")} == {
            "pipe": "fifo", "sock": "socket"}
    (d / "f").write_bytes(b"x")
    for make in (lambda: os.mknod(d / "tty", 0o600 | stat.S_IFCHR, os.makedev(4, 1)),
                 lambda: os.mknod(d / "sda", 0o600 | stat.S_IFBLK, os.makedev(8, 0)),
                 lambda: os.link(d / "f", d / "hard")):
        assert errno_of(make) == errno.EPERM
    assert sorted(os.listdir(d)) == ["f", "pipe", "sock"]
    with fed.client("telco") as fc:
        assert sorted(s.name for s in fc.ls("/telco/special")) == ["f", "pipe", "sock"]
    assert errno_of(os.mkfifo, telco.mnt / "bank" / "shared" / "p") in (errno.EACCES,
                                                                         errno.EPERM)
    with fed.client("bank") as fc:
        assert "p" not in {s.name for s in fc.ls("/bank/shared")}


def _repo(src: Path) -> None:
    src.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    for i in range(3):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1) * 100)
        (src / "sub").mkdir(exist_ok=True)
        (src / "sub" / f"g{i}.bin").write_bytes(os.urandom(20_000))
        for argv in (["init", "-q"] if i == 0 else [], ["add", "-A"],
                     ["commit", "-q", "-m", f"c{i}"]):
            if argv:
                subprocess.run(["git", "-C", str(src), *argv], check=True, env=env,
                               timeout=60)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".git" not in p.parts}


def test_git_clone_runs_on_the_mount(fed: Federation, telco: Mounted,
                                             tmp_path: Path) -> None:
    _needs_endpoint(fed, "telco-1", "POST", "/v1/ns/setattr")  # git chmods its files
    work = telco.mnt / "telco" / "work"
    work.mkdir()
    src = tmp_path / "src"
    _repo(src)
    subprocess.run(["git", "clone", "-q", str(src), str(work / "repo")], check=True,
                   timeout=120)
    fsck = subprocess.run(["git", "-C", str(work / "repo"), "fsck", "--strict"],
                          capture_output=True, timeout=120)
    assert fsck.returncode == 0, fsck.stderr
    status = subprocess.run(["git", "-C", str(work / "repo"), "status", "--porcelain"],
                            capture_output=True, check=True, timeout=60)
    assert status.stdout == b""
    log = subprocess.run(["git", "-C", str(work / "repo"), "log", "--oneline"],
                         capture_output=True, check=True, timeout=60)
    assert len(log.stdout.splitlines()) == 3
    assert _digests(work / "repo") == _digests(src)
    subprocess.run(["tar", "cf", str(tmp_path / "src.tar"), "-C", str(tmp_path), "src"],
                   check=True, timeout=120)
    subprocess.run(["tar", "xf", str(tmp_path / "src.tar"), "-C", str(work)], check=True,
                   timeout=120)  # GNU tar extracting into the mount (modes, times)
    assert _digests(work / "src") == _digests(src)


def test_tar_and_pandas_run_on_the_mount(telco: Mounted, tmp_path: Path) -> None:
    work = telco.mnt / "telco" / "data"
    work.mkdir()
    src = tmp_path / "src"
    _repo(src)
    with tarfile.open(work / "src.tar", "w") as tar:  # tar in, tar out
        tar.add(src, arcname="src")
    with tarfile.open(work / "src.tar") as tar:
        tar.extractall(tmp_path / "untar", filter="data")
    assert _digests(tmp_path / "untar" / "src") == _digests(src)

    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"k": range(5000), "v": [f"row {i}" for i in range(5000)]})
    df.to_parquet(work / "x.parquet")
    assert pd.read_parquet(work / "x.parquet").equals(df)


def test_two_mounts_see_closed_writes_and_never_a_torn_file(fed: Federation,
                                                            tmp_path: Path) -> None:
    prof = _profile(fed, "tel", "telco", "telco-1")
    with gmount(fed, prof, tmp_path / "a") as a, gmount(fed, prof, tmp_path / "b") as b:
        fa, fb = a.mnt / "telco" / "cto.bin", b.mnt / "telco" / "cto.bin"
        versions = [bytes([i]) * (100_000 * (i + 1)) for i in range(8)]
        fa.write_bytes(versions[0])
        assert fb.read_bytes() == versions[0]  # a closed write: seen at the next open
        w = open(fa, "wb")  # noqa: SIM115
        w.write(versions[1])
        w.flush()
        assert fb.read_bytes() == versions[0]  # not closed yet: the old version whole
        w.close()
        assert fb.read_bytes() == versions[1]
        seen: list[bytes] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                seen.append(fb.read_bytes())
        t = threading.Thread(target=reader)
        t.start()
        try:
            for v in versions[2:]:
                fa.write_bytes(v)
        finally:
            stop.set()
            t.join(60)
        assert seen and all(s in versions for s in seen), "a torn read"
        assert fb.read_bytes() == versions[-1]


def test_a_revoked_grant_stops_reads_within_the_ttl(fed: Federation, tmp_path: Path) -> None:
    _needs_endpoint(fed, "bank-1", "GET", "/v1/ns/visible")
    with fed.client("bank") as fc:
        fc.mkdir("/bank/lent", parents=True, exist_ok=True)
        fc.write_bytes("/bank/lent/f.txt", b"lent for a while")
        grant = fc.grant("/bank/lent/**", "telco", "read")
    with gmount(fed, _profile(fed, "tel", "telco", "telco-1"), tmp_path / "mnt") as m:
        f = m.mnt / "bank" / "lent" / "f.txt"
        wait_for(f.exists, "the new grant to show", timeout=30)
        assert f.read_bytes() == b"lent for a while"
        with fed.client("bank") as fc:
            fc.revoke("bank", str(grant["id"]))
        revoked = time.monotonic()

        def refused() -> bool:
            try:
                f.read_bytes()
            except OSError:
                return True
            return False
        wait_for(refused, "reads to stop", timeout=30)
        assert time.monotonic() - revoked <= TTL + 1.0  # the TTL, plus a request
        assert errno_of(f.read_bytes) == errno.ENOENT


# -- the primary fails ----------------------------------------------------------------------
def test_kill_9_of_the_primary_during_reads(lab_fed: Federation, tmp_path: Path) -> None:
    data = os.urandom(8 << 20)
    with lab_fed.client("lab") as fc:
        fc.mkdir("/lab/d/e", parents=True)
    _replicate(lab_fed, {"/lab/d/big.bin": data, "/lab/d/f.txt": b"committed",
                         "/lab/d/e/x.txt": b"deeper"})
    with gmount(lab_fed, _profile(lab_fed, "lab", "lab", "lab-1"), tmp_path / "mnt") as m:
        d = m.mnt / "lab" / "d"
        assert sorted(os.listdir(d)) == ["big.bin", "e", "f.txt"]  # seen before the failure
        with open(d / "big.bin", "rb", buffering=0) as f:
            head = f.read(1 << 20)
            lab_fed.kill("lab-1")  # kill -9, mid-read
            rest = b""
            while chunk := f.read(1 << 20):
                rest += chunk
        assert head + rest == data  # the rest came from the mirror
        lab_fed.wait_status("lab-1", "down")
        assert (d / "f.txt").read_bytes() == b"committed"  # new opens too
        # a directory never listed before the failure: listed from the mirror
        assert os.listdir(d / "e") == ["x.txt"]
        assert (d / "e" / "x.txt").read_bytes() == b"deeper"
        t0 = time.monotonic()
        assert errno_of(os.mkdir, d / "sub") == errno.EROFS
        for new in (d / "g.txt", d / "e" / "new.txt"):
            assert errno_of(new.write_bytes, b"x") == errno.EROFS
            assert not new.exists()  # at once, not after the TTL: the kernel was told
        assert time.monotonic() - t0 < 10  # refused, not hung


def test_kill_9_of_the_primary_during_a_write(lab_fed: Federation, tmp_path: Path) -> None:
    data = os.urandom(48 << 20)
    with lab_fed.client("lab") as fc:
        fc.write_bytes("/lab/up.bin", b"old")
    with gmount(lab_fed, _profile(lab_fed, "lab", "lab", "lab-1"), tmp_path / "mnt") as m:
        target = m.mnt / "lab" / "up.bin"
        w = open(target, "wb")  # noqa: SIM115
        w.write(data)  # spooled: the commit starts at close
        failure = fedns.kill_primary_during_commit(lab_fed, "lab-1", w)
        assert failure and isinstance(failure[0], OSError), failure
        assert failure[0].errno in (errno.EROFS, errno.EHOSTUNREACH), failure
    lab_fed.start("lab-1")
    lab_fed.wait_status("lab-1", "up")
    with lab_fed.client("lab") as fc:
        assert fc.read_bytes("/lab/up.bin") == b"old"  # nothing half-visible


def _requests(fed: Federation, site: str) -> Counter[str]:
    """Requests served by `site` so far, by route (its /metrics)."""
    text = fed.metrics(site, timeout=5).decode()
    out: Counter[str] = Counter()
    for line in text.splitlines():
        m = re.match(r'\w+_http_requests_total\{.*route="([^"]+)".*\} ([0-9.e+]+)$', line)
        if m:
            out[m.group(1)] += int(float(m.group(2)))
    return out


def test_ls_l_of_a_big_directory_is_one_listing_at_the_site(fed: Federation,
                                                             tmp_path: Path) -> None:
    """The listing answers every entry's stat: no request per entry. The mount's TTL is
    long here, so a slow `ls -l` on a loaded host does not outlive the listing (the
    count is what is tested, not the host's speed)."""
    n = 1000
    with fed.client("telco") as fc:
        fc.mkdir("/telco/many", parents=True)
        for i in range(n):
            fc.write_bytes(f"/telco/many/f{i:04d}", b"x" * (i % 7))
    with gmount(fed, _profile(fed, "tel", "telco", "telco-1"), tmp_path / "mnt",
                ttl=60.0) as telco:
        many = telco.mnt / "telco" / "many"
        assert many.is_dir()  # its parent's listing is not counted below
        before = _requests(fed, "telco-1")
        out = subprocess.run(["ls", "-l", str(many)], capture_output=True, check=True,
                             timeout=120).stdout.decode().splitlines()
        after = _requests(fed, "telco-1") - before
    assert len(out) == n + 1  # "total" and one line per entry
    assert after["/v1/ns/list"] == 1 and after["/v1/ns/stat"] <= 2, after


def test_an_open_costs_one_request_and_stats_a_listing(fed: Federation,
                                                       telco: Mounted) -> None:
    """Opening a file asks for its manifest only (the version read comes with it); the
    stats of a directory's files, without a listing first, cost one listing."""
    with fed.client("telco") as fc:
        fc.mkdir("/telco/opens", parents=True)
        for i in range(20):
            fc.write_bytes(f"/telco/opens/f{i:02d}", b"o" * i)
    d = telco.mnt / "telco" / "opens"
    before = _requests(fed, "telco-1")
    assert [os.stat(d / f"f{i:02d}").st_size for i in range(20)] == list(range(20))
    mid = _requests(fed, "telco-1")
    assert (d / "f07").read_bytes() == b"o" * 7
    after = _requests(fed, "telco-1")
    stats, opens = mid - before, after - mid
    assert stats["/v1/ns/list"] <= 2 and stats["/v1/ns/stat"] <= 1, stats
    assert opens["/v1/ns/manifest"] == 1 and opens["/v1/ns/stat"] == 0, opens


def test_a_reopen_after_another_writers_close_sees_its_bytes(fed: Federation,
                                                           telco: Mounted) -> None:
    """Close-to-open against the kernel's page cache: a file read through the mount (its
    pages kept across opens while its version is unchanged) and then rewritten, with
    the same size, by another client is read new and whole at the very next open."""
    path = "/telco/same-size.bin"
    f = telco.mnt / "telco" / "same-size.bin"
    with fed.client("telco") as other:
        for _ in range(5):
            data = os.urandom(1 << 20)
            other.write_bytes(path, data)  # closed: committed at the primary
            assert f.read_bytes() == data  # no wait: the next open sees it
            assert f.read_bytes() == data  # again, from the kernel's pages
        with f.open("rb") as held:  # a handle reads the version it opened
            first = held.read(4096)
            newer = os.urandom(1 << 20)
            other.write_bytes(path, newer)
            assert f.read_bytes() == newer
            assert first + held.read() == data


def test_a_reopen_of_an_unchanged_file_costs_no_request_under_a_lease(
        fed: Federation, telco: Mounted) -> None:
    """The reader of the version last opened is kept, and the mount holds a lease on the
    file (docs/leases.md): opening the same version again asks the site nothing (no
    stat, no manifest, no chunk), and the pages come from the kernel."""
    data = os.urandom(2 << 20)
    with fed.client("telco") as fc:
        fc.write_bytes("/telco/again.bin", data)
    f = telco.mnt / "telco" / "again.bin"
    assert f.read_bytes() == data
    assert f.read_bytes() == data  # (the notice stream is up by now: a lease is held)
    before = _requests(fed, "telco-1")
    assert f.read_bytes() == data
    again = _requests(fed, "telco-1") - before
    del again["/metrics"]  # (the count's own request)
    assert sum(again.values()) == 0, again  # no stat, no manifest, no chunk
    with f.open("rb") as one, f.open("rb") as two:  # in use: the second gets its own
        assert one.read(10) == two.read(10) == data[:10]
    both = _requests(fed, "telco-1") - before - again
    del both["/metrics"]
    assert both["/v1/ns/manifest"] == 0, both  # the manifest kept, under the lease


def test_a_reopen_after_the_lease_time_asks_nothing_but_renewals(fed: Federation,
                                                                 telco: Mounted) -> None:
    """A warm re-read long after the open that brought the lease (a cold read of 1 GiB
    over a WAN takes tens of seconds): the mount renewed its leases in the background
    (one request per site now and then), so the open and the lookups ask nothing."""
    data = os.urandom(1 << 20)
    with fed.client("telco") as fc:
        fc.write_bytes("/telco/long.bin", data)
    f = telco.mnt / "telco" / "long.bin"
    assert f.read_bytes() == data
    assert f.read_bytes() == data
    before = _requests(fed, "telco-1")
    end = time.monotonic() + 2.5 * LEASE_SECONDS  # two lease times and more
    while time.monotonic() < end:
        os.stat(f)  # the lookups use the leases, which keeps them renewed
        time.sleep(0.25)
    assert f.read_bytes() == data
    asked = _requests(fed, "telco-1") - before
    del asked["/metrics"]
    asked.pop("/v1/ns/notices", None)  # (counted when a stream of another test ends)
    assert asked["/v1/ns/notices/renew"] >= 2, asked
    assert sum(asked.values()) == asked["/v1/ns/notices/renew"], asked
