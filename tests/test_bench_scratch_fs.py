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
