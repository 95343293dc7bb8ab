"""Fault injection: damaged chunks, truncated packs, a full disk, kill -9 mid-put."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from gfs.client import Client
from gfs.errors import ChunkMissingError, CorruptChunkError, NoSpaceError
from gfs.packs import pack_key
from gfs.testing.faults import FaultyPool, flip_byte, truncate_object
from tests.conftest import make_tree, tree_digest

T = TypeVar("T")


def _location(fs: Client, path: str, index: int = 0) -> tuple[str, int, int]:
    """(pack key, blob offset, blob length) of chunk `index` of file `path`."""
    with fs.engine.read() as txn:
        m = txn.get_manifest(fs.stat(path).ino)
        assert m is not None
        rec = txn.get_chunk(m.chunks[index].id)
        assert rec is not None
        loc = rec.locations[0]
    return pack_key(loc.pack), loc.offset, loc.length


def _two_files(fs: Client) -> tuple[bytes, bytes]:
    rnd = random.Random(11)
    a, b = rnd.randbytes(400_000), rnd.randbytes(400_000)
    fs.write_bytes("/victim", a)
    fs.write_bytes("/bystander", b)
    return a, b


@pytest.mark.parametrize("where", ["payload", "header", "last"])
def test_flipped_byte_fails_loudly_and_fsck_names_file(fs: Client, where: str) -> None:
    _, b = _two_files(fs)
    key, off, length = _location(fs, "/victim", 1)
    target = {"payload": off + length // 2, "header": off + 3, "last": off + length - 1}[where]
    flip_byte(fs.store.pool(0), key, target)
    with pytest.raises(CorruptChunkError) as e:
        fs.read_bytes("/victim")
    assert "/victim" in str(e.value) and "fsck" in str(e.value)
    assert fs.read_bytes("/bystander") == b  # nothing else is harmed
    report = fs.fsck()
    assert not report.ok
    assert report.damaged_files == ["/victim"]


def test_truncated_pack_fails_loudly(fs: Client) -> None:
    _two_files(fs)
    key, off, length = _location(fs, "/victim", 2)
    truncate_object(fs.store.pool(0), key, off + length // 2)
    with pytest.raises((CorruptChunkError, ChunkMissingError)):
        fs.read_bytes("/victim")
    report = fs.fsck()
    assert not report.ok and "/victim" in report.damaged_files


def test_pack_cut_between_blobs_is_found(fs: Client) -> None:
    _two_files(fs)
    key, off, length = _location(fs, "/victim", 0)
    truncate_object(fs.store.pool(0), key, off + length)  # ends exactly after one blob
    report = fs.fsck()
    assert not report.ok
    assert any("its record says" in p for p in report.problems)


def test_missing_pack_reported(fs: Client) -> None:
    _two_files(fs)
    key, _, _ = _location(fs, "/victim")
    fs.store.pool(0).delete(key)
    with pytest.raises(ChunkMissingError):
        fs.read_bytes("/victim")
    report = fs.fsck()
    assert not report.ok
    assert any("missing" in p for p in report.problems)


def test_fsck_cli_exit_code_on_damage(fs: Client) -> None:
    from gfs.cli import main

    _two_files(fs)
    assert main(["--state", str(fs.state), "fsck", "-q"]) == 0
    key, off, length = _location(fs, "/victim")
    flip_byte(fs.store.pool(0), key, off + length - 5)
    assert main(["--state", str(fs.state), "fsck", "-q"]) == 1


@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_full_disk_during_put_changes_nothing(fs: Client, tmp_path: Path, when: str) -> None:
    fs.write_bytes("/existing", b"committed before" * 1000)
    src = make_tree(tmp_path / "src", seed=4, files=40)
    inner = fs.store.pool(0)
    fs.store._pools[0] = FaultyPool(inner, "put", after=0,
                                    error=OSError(errno.ENOSPC, "No space left on device"),
                                    when=when)
    with pytest.raises((NoSpaceError, OSError)) as e:
        fs.put(src, "/new")
    assert e.value.errno == errno.ENOSPC
    fs.store._pools[0] = inner
    assert not fs.exists("/new")
    assert fs.read_bytes("/existing") == b"committed before" * 1000
    report = fs.fsck()
    assert report.ok, report.problems
    fs.gc()
    after = fs.fsck()
    assert after.ok and after.orphan_packs == 0 and after.unreferenced_chunks == 0
    fs.put(src, "/new")  # the same put works once there is space
    out = tmp_path / "out"
    fs.get("/new", out)
    assert tree_digest(out) == tree_digest(src)


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    return ok


def test_real_full_filesystem(tmp_path: Path) -> None:
    """A store whose state lives on a tiny tmpfs: put fails with ENOSPC, state stays sound."""
    if os.geteuid() != 0 or not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs root and permission to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        fs = Client.init(mnt / "state", pack_size=1 << 20)
        try:
            fs.write_bytes("/small", b"fits" * 100)
            src = tmp_path / "big"
            src.mkdir()
            (src / "noise").write_bytes(random.Random(0).randbytes(12_000_000))
            with pytest.raises(NoSpaceError):
                fs.put(src, "/big")
            assert not fs.exists("/big")
            assert fs.read_bytes("/small") == b"fits" * 100
            fs.gc()
            report = fs.fsck()
            assert report.ok and report.orphan_packs == 0, report.problems
        finally:
            fs.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


KILLER = textwrap.dedent("""
    import sys, time
    from gfs import store
    from gfs.client import Client
    {prelude}
    fs = Client(sys.argv[1], {settings})
    seen = 0
    def progress(n):
        global seen
        seen += 1
        print("progress", flush=True)
        if seen == 60:  # held mid-put until killed: a fast put finished before the
            time.sleep(120)  # parent, busy on a loaded machine, read its 60th report
    fs.put(sys.argv[2], "/big", progress=progress)
    print("done", flush=True)
""")


def kill_put_midway(state: Path, src: Path, *,
                    settings: str = "pack_size=1 << 20, commit_files=5", prelude: str = "",
                    before_kill: Callable[[], T] | None = None) -> T | None:
    """Put `src` into the store at `state` in a child (a Client with `settings`, after
    the statement `prelude`) and kill -9 it after 60 progress reports (asserting the
    kill landed before the put finished); returns what `before_kill` returned, called
    while the child is held after its 60th report."""
    script = KILLER.format(settings=settings, prelude=prelude)
    proc = subprocess.Popen([sys.executable, "-c", script, str(state), str(src)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    seen = 0
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        seen += line.startswith("progress")
        if seen >= 60 or time.monotonic() > deadline:
            break
    try:
        found = before_kill() if before_kill is not None and seen >= 60 else None
    finally:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert seen >= 60, "the put finished or stalled before it could be killed"
    return found


def test_kill9_mid_put_leaves_no_half_visible_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Client.init(state).close()
    src = make_tree(tmp_path / "src", seed=21, files=200, max_size=400_000)
    kill_put_midway(state, src)
    fs = Client(state)
    try:
        report = fs.fsck()
        assert report.ok, report.problems
        # every visible file is complete and correct
        originals = tree_digest(src)
        visible = 0
        for st in fs.walk("/"):
            if st.kind == "file":
                rel = st.path.removeprefix("/big/")
                assert fs.read_bytes(st.path) == originals[rel][2]
                visible += 1
        assert visible < len([v for v in originals.values() if v[0] == "file"])
        fs.gc()
        after = fs.fsck()
        assert after.ok and after.orphan_packs == 0 and after.unreferenced_chunks == 0
        assert after.temporaries == 0
        fs.put(f"{src}/", "/big")  # resuming is putting the contents again
        out = tmp_path / "out"
        fs.get("/big", out)
        assert tree_digest(out) == originals
    finally:
        fs.close()


GC_LOOP = textwrap.dedent("""
    import sys, time
    from gfs.client import Client
    fs = Client(sys.argv[1])
    end = time.monotonic() + float(sys.argv[2])
    runs = 0
    while time.monotonic() < end:
        fs.gc()
        runs += 1
    print(runs, flush=True)
""")


def test_gc_running_alongside_writers_loses_nothing(tmp_path: Path) -> None:
    """gc in another process, in a loop, while this process puts, overwrites and removes."""
    state = tmp_path / "state"
    Client.init(state, pack_size=1 << 20).close()
    gc_proc = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(state), "8"],
                               stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent.parent)
    fs = Client(state, pack_size=1 << 20, commit_files=7)
    try:
        rnd = random.Random(5)
        expected: dict[str, bytes] = {}
        for round_ in range(12):
            src = make_tree(tmp_path / f"src{round_}", seed=round_, files=25)
            fs.put(f"{src}/", f"/r{round_ % 4}")  # overwrites older rounds' files
            for p in src.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    expected[f"/r{round_ % 4}/{p.relative_to(src)}"] = p.read_bytes()
            if round_ % 3 == 2:
                victim = rnd.choice(sorted(expected))
                fs.rm(victim)
                del expected[victim]
        out, _ = gc_proc.communicate(timeout=60)
        assert int(out.strip()) > 0, "gc never ran"
        for path, data in expected.items():
            assert fs.read_bytes(path) == data, path
        report = fs.fsck()
        assert report.ok, report.problems
    finally:
        if gc_proc.poll() is None:
            gc_proc.kill()
            gc_proc.wait(timeout=10)
        fs.close()


def test_replace_copies_repairs_only_damaged_chunks(fs: Client, tmp_path: Path) -> None:
    from gfs.codec import encode_blob

    a, b = _two_files(fs)
    key, off, length = _location(fs, "/victim", 1)
    flip_byte(fs.store.pool(0), key, off + length - 2)
    with fs.engine.read() as txn:
        m = txn.get_manifest(fs.stat("/victim").ino)
        other = txn.get_manifest(fs.stat("/bystander").ino)
    assert m is not None and other is not None
    bad, good = m.chunks[1].id, other.chunks[0].id
    raw = a[sum(c.length for c in m.chunks[:1]):][:m.chunks[1].length]
    h, p = encode_blob(raw, 3, bad)
    hg, pg = encode_blob(b[:other.chunks[0].length], 3, good)
    with pytest.raises(CorruptChunkError):  # never "repairs" with bad bytes
        fs.store.replace_copies({bad: h + bytes(p)[:-1] + b"\x00"})
    assert fs.store.replace_copies({bad: h + bytes(p), good: hg + bytes(pg)}) == 1
    assert fs.read_bytes("/victim") == a and fs.read_bytes("/bystander") == b
    fs.gc()
    report = fs.fsck()
    assert report.ok, report.problems


COPIER = textwrap.dedent("""
    import sys
    from gfs import mover
    from gfs.client import Client
    with Client(sys.argv[1]) as src, Client(sys.argv[2]) as dst:
        mover.copy_tree(src, dst, "/big", streams=1)
    print("done", flush=True)
""")


def _size(entry: os.DirEntry[str]) -> int:
    """The size of a file the running process may remove meanwhile (0 once gone)."""
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0


def _freeze_with_spool(proc: subprocess.Popen[str], spools: Path) -> list[str]:
    """Stop `proc` (SIGSTOP: every thread at once) at a moment its receiver holds a spool
    in `spools`; returns the spools seen while it is stopped."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if spools.is_dir() and any(_size(e) for e in os.scandir(spools)):
            proc.send_signal(signal.SIGSTOP)
            held = os.listdir(spools)
            if held:
                return held
            proc.send_signal(signal.SIGCONT)  # the spool became a pack meanwhile
        time.sleep(0.001)
    return []


def test_kill9_of_a_receiver_leaves_temporaries_fsck_reports_and_removes(
        tmp_path: Path) -> None:
    """A receiving store killed -9 mid-transfer kept its spool files: fsck said nothing of
    them and nothing removed them. fsck now reports them and `fsck --repair` removes them
    (gc too); the copy then resumes to an intact tree."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    with Client.init(src) as fs:
        fs.mkdir("/big")
        for i in range(4):
            fs.write_bytes(f"/big/f{i}", random.Random(i).randbytes(24 << 20))
    Client.init(dst).close()
    proc = subprocess.Popen([sys.executable, "-c", COPIER, str(src), str(dst)],
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    try:
        held = _freeze_with_spool(proc, dst / "pools" / "default" / "tmp")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert held, "the copy finished or stalled before a spool could be caught"
    hutong = [sys.executable, "-m", "gfs.cli", "--state", str(dst), "fsck"]
    out = subprocess.run(hutong, capture_output=True, text=True, timeout=120)
    assert f"{len(held)} temporaries of interrupted writes" in out.stderr, out.stderr
    out = subprocess.run([*hutong, "--repair"], capture_output=True, text=True, timeout=120)
    assert f"removed {len(held)} temporaries" in out.stderr, out.stderr
    with Client(dst) as fs:
        report = fs.fsck()
        assert report.ok and report.temporaries == 0, report.problems
    with Client(src) as s, Client(dst) as d:
        from gfs import mover

        mover.copy_tree(s, d, "/big", streams=1)
        assert all(d.read_bytes(f"/big/f{i}") == s.read_bytes(f"/big/f{i}") for i in range(4))
