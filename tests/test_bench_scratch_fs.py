"""The ingest bench's scratch filesystem: made fresh, really mounted, gone afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench._scratch_fs import has_journal, scratch_fs, unavailable

needs_mount = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


@needs_mount
def test_a_fresh_filesystem_is_mounted_and_removed(tmp_path: Path) -> None:
    with scratch_fs(tmp_path, 64 << 20, "fs") as mnt:
        assert mnt is not None and os.path.ismount(mnt)
        assert os.stat(mnt).st_dev != os.stat(tmp_path).st_dev
        assert sorted(p.name for p in mnt.iterdir()) == ["lost+found"]  # nothing carried over
        (mnt / "f").write_bytes(b"x" * 4096)
        assert has_journal(mnt) is (has_journal(tmp_path) is not False)
        # no kernel thread zeroing inode tables beside the tools' runs
        options = next(line.split()[3] for line in
                       Path("/proc/self/mounts").read_text().splitlines()
                       if line.split()[1] == str(mnt))
        assert "noinit_itable" in options.split(","), options
    assert not (tmp_path / "fs").exists()
    assert not (tmp_path / "fs.img").exists()
    assert str(tmp_path / "fs") not in Path("/proc/self/mounts").read_text()


@needs_mount
def test_a_failure_inside_still_unmounts_and_deletes(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), scratch_fs(tmp_path, 64 << 20, "fs") as mnt:
        assert mnt is not None
        (mnt / "half-written").write_bytes(b"y")
        raise RuntimeError("boom")
    assert str(tmp_path / "fs") not in Path("/proc/self/mounts").read_text()
    assert list(tmp_path.iterdir()) == []


def test_without_mount_rights_it_says_why_and_yields_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with scratch_fs(tmp_path, 64 << 20, "fs") as mnt:
        assert mnt is None
    assert "not root" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@needs_mount
def test_a_mount_that_fails_falls_back_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import bench._scratch_fs as scratch

    run = scratch._run

    def no_mount(argv: list[str]) -> None:
        if argv[0] == "mount":
            raise RuntimeError("mount: permission denied (no CAP_SYS_ADMIN)")
        run(argv)

    monkeypatch.setattr(scratch, "_run", no_mount)
    with scratch_fs(tmp_path, 64 << 20, "fs") as mnt:
        assert mnt is None
    assert "permission denied" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_the_ingest_bench_counts_every_entry_of_its_snapshots(tmp_path: Path) -> None:
    from bench.ingest import tree_entries

    snap = tmp_path / "v1"
    (snap / "a" / "b").mkdir(parents=True)
    (snap / "a" / "f").write_bytes(b"1")
    (snap / "g").write_bytes(b"")
    (snap / "link").symlink_to("g")
    (snap / "dangling").symlink_to("nowhere")
    # the root, a, a/b, a/f, g, link, dangling; twice over two snapshots
    assert tree_entries([snap]) == 7
    assert tree_entries([snap, snap]) == 14


@needs_mount
def test_the_ingest_bench_sizes_its_filesystem_for_every_tools_restore(tmp_path: Path) -> None:
    """The full releases run ran out of inodes on mkfs's default ratio (one per 16 KiB):
    each tool's restore of every snapshot stays until the run ends. Here two tools'
    copies of a tree of many empty files fill a filesystem made with the bench's count;
    mkfs's default for the same size has fewer inodes than the bench asks for."""
    from bench.ingest import REPO_INODES, scratch_inodes

    tools, entries = 2, 3000
    inodes = scratch_inodes(entries, tools)
    assert inodes >= tools * (entries + REPO_INODES)
    with scratch_fs(tmp_path, 512 << 20, "fs", inodes=inodes, block_size=4096) as mnt:
        assert mnt is not None
        assert os.statvfs(mnt).f_files >= inodes
        for t in range(tools):  # every tool's restore, kept
            d = mnt / f"tool{t}"
            d.mkdir()
            for i in range(entries):
                (d / str(i)).touch()
    with scratch_fs(tmp_path, 512 << 20, "fs", block_size=4096) as mnt:  # the default
        assert mnt is not None
        assert os.statvfs(mnt).f_files < tools * (entries + REPO_INODES)
