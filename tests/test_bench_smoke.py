"""The ingest benchmark machinery on a tiny synthetic dataset (no network), hutong only."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench import datasets
from bench._measure import VerifyError, hutong_available, tree_digests, verify_tree
from bench.ingest import Hutong, Result, print_results, run_tool, source_digests, tree_bytes


def _make_snapshots(root: Path) -> list[Path]:
    """Three versions of a small tree: mostly shared content, some edits, a new file each."""
    rng = random.Random(7)
    base = {f"pkg/mod{i}.py": ("\n".join(f"def f{i}_{j}(): return {j}" for j in range(400)))
            .encode() for i in range(6)}
    base["data/blob.bin"] = rng.randbytes(300_000)
    base["empty.txt"] = b""
    snaps = []
    for v in range(1, 4):
        snap = root / f"v{v}"
        files = dict(base)
        files["pkg/mod0.py"] = base["pkg/mod0.py"] + f"\n# version {v}\n".encode()
        files[f"new/added_in_v{v}.txt"] = rng.randbytes(50_000)
        for rel, data in files.items():
            path = snap / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        snaps.append(snap)
    return snaps


def test_verify_tree_catches_differences(tmp_path: Path) -> None:
    src, dst = _make_snapshots(tmp_path / "a")[0], tmp_path / "b"
    expected = tree_digests(src)
    with pytest.raises(VerifyError, match="missing"):
        verify_tree(expected, dst)
    dst.mkdir()
    (dst / "pkg").mkdir()
    with pytest.raises(VerifyError, match="missing"):
        verify_tree(expected, dst)
    for rel in expected:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes((src / rel).read_bytes())
    assert verify_tree(expected, dst) == len(expected)
    (dst / "data/blob.bin").write_bytes(b"x" + (src / "data/blob.bin").read_bytes()[1:])
    with pytest.raises(VerifyError, match="different"):
        verify_tree(expected, dst)


def test_snapshot_dirs_order(tmp_path: Path) -> None:
    for name in ("v10", "v2", "v1", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "v3").write_text("a file, not a snapshot")
    assert [p.name for p in datasets.snapshot_dirs(tmp_path)] == ["v1", "v2", "v10"]


def test_ingest_machinery_hutong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("gfs.cli") is None:
        pytest.skip("the hutong CLI (gfs/cli.py) is not written yet")
    why = hutong_available()
    if why:
        pytest.skip(why)
    snaps = _make_snapshots(tmp_path / "data")
    expected = source_digests(snaps)
    logical = tree_bytes(snaps)
    tool = Hutong(tmp_path / "work")
    res = run_tool(tool, snaps, expected, logical)
    assert isinstance(res, Result)
    assert res.files == sum(len(e) for e in expected.values()) == 27
    assert res.logical == logical > 0
    assert res.stored > 0 and res.ingest_s > 0 and res.restore_s > 0
    # measured right after the ingest, and again after the restore (which records heat)
    assert res.stored_after_restore >= res.stored
    assert res.ingest_mbs > 0 and res.restore_mbs > 0 and res.peak_rss_kib > 0
    assert res.ingest_cpu > 0 and res.restore_cpu > 0  # CPU seconds of the commands
    assert len(res.per_snapshot_s) == 3
    assert int(str(res.details["logical_bytes"])) == logical
    assert 0 < int(str(res.details["stored_bytes"])) < logical  # shared content deduplicated
    # metadata per file, manifests inline (before) and content-addressed (now)
    assert int(str(res.details["meta_bytes_per_file"])) > 0
    assert 0 < int(str(res.details["manifest_bytes_per_file_shared"])) \
        <= int(str(res.details["manifest_bytes_per_file_inline"]))
    assert not tool.work.exists()  # cleaned up
    print_results([res])
    out = capsys.readouterr().out
    assert "hutong" in out and "ingest:" in out and "stored MB after restore" in out


@pytest.mark.slow
def test_globalfs_quick_runs_every_system() -> None:
    """`python -m bench globalfs --quick`: the topology on the emulated WAN, the link
    measured, JuiceFS beside us (unless it is not installed, which the table says), our
    federated rows; about a minute on an idle machine, 90 s at a load of 9 on 2 cores."""
    from gfs.testing.wan import unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(why)
    from bench import _federated, _juicefs

    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "bench", "globalfs", "--quick"],
                         capture_output=True, text=True, timeout=240, check=False)
    elapsed = time.monotonic() - t
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("globalfs: ") and " target=" in last, out.stdout
    figures = dict(kv.split("=", 1) for kv in last.removeprefix("globalfs: ").split())
    assert float(figures["rtt_ms"]) == pytest.approx(40, abs=8)
    assert float(figures["link_mbs"]) > 5
    jfs_why = _juicefs.unavailable_reason()
    if jfs_why:
        assert f"juicefs: not measured: {jfs_why}" in out.stdout
    else:
        assert float(figures["cold_wan_jfs"]) > 0 and float(figures["ls_jfs_rtts"]) > 0
    ours_why = _federated.unavailable_reason()
    if ours_why:
        assert f"ours: not measured: {ours_why}" in out.stdout
    else:
        for key in ("cold_wan_mount", "cold_wan_gfs", "warm_wan_mount", "cold_lo_mount",
                    "ls_mount_rtts", "stat_mount_rtts", "creates_hutong_per_s",
                    "cold_wan_mount_client_ms_mb", "cold_wan_mount_site_ms_mb",
                    "cold_lo_mount_client_ms_mb", "cold_lo_mount_site_ms_mb",
                    "cold_lo_embedded_client_ms_mb"):
            assert float(figures[key]) > 0, (key, last)
    assert elapsed < 150, f"globalfs --quick took {elapsed:.0f} s"  # ~60 s on an idle machine


def test_dictionaries_bench_accounts_every_small_chunk(tmp_path: Path) -> None:
    """`bench dictionaries` on small generated files: every small chunk is counted once
    (repeats across snapshots are not new), and a dictionary row never stores more than
    whole plus its dictionaries (a chunk keeps the dictionary only when it pays)."""
    from bench.dictionaries import measure, small_packs
    from tests.similar_data import text

    rng = random.Random(5)
    files = {f"f{i}.txt": text(rng, rng.randrange(500, 6000)) for i in range(300)}
    for snap in ("v1", "v2"):
        for name, data in files.items():
            (tmp_path / snap).mkdir(exist_ok=True)
            (tmp_path / snap / name).write_bytes(data)
    plain, rows, npacks, nchunks = measure(small_packs(
        datasets.snapshot_dirs(tmp_path), 16 << 10, 64 << 10))
    assert nchunks == len(set(files.values())) and npacks >= 2
    for r in rows:
        assert r.stored <= plain.stored
        assert r.kept > 0  # similar text: the dictionary pays for some chunks


def test_smallfiles_dataset_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The small-files shape unpacks each snapshot's wheel (and, unless quick, its sdist)
    from the download cache, records them, and a wheel's '..' entry stays inside."""
    import io
    import tarfile
    import zipfile

    def fake_download(downloads: Path, package: str, version: str, binary: bool) -> Path:
        where = downloads / f"{package}-{version}-{'whl' if binary else 'sdist'}"
        where.mkdir(parents=True, exist_ok=True)
        if binary:
            path = where / f"Django-{version}-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("django/__init__.py", f"VERSION = {version!r}\n")
                z.writestr("../escape.txt", "outside")
            return path
        path = where / f"django-{version}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            data = f"# {version}\n".encode()
            info = tarfile.TarInfo(f"Django-{version}/setup.py")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return path

    monkeypatch.setattr(datasets, "DATA", tmp_path / "data")
    monkeypatch.setattr(datasets, "_download", fake_download)
    monkeypatch.setattr(datasets, "DJANGO", ["1.0", "1.1", "1.2"])
    monkeypatch.setattr(datasets, "NUMPY", ["x", "x", "x"])
    full = datasets.fetch("smallfiles")
    assert [p.name for p in datasets.snapshot_dirs(full)] == ["v1", "v2", "v3"]
    assert (full / "v2/django-wheel/django/__init__.py").read_text() == "VERSION = '1.1'\n"
    assert (full / "v3/Django-1.2/setup.py").read_text() == "# 1.2\n"
    assert not list(tmp_path.rglob("escape.txt")) or all(
        full in p.parents for p in tmp_path.rglob("escape.txt"))
    assert "v1=Django 1.0 unpacked" in datasets.describe(full)
    quick = datasets.fetch("smallfiles", quick=True)
    assert [p.name for p in datasets.snapshot_dirs(quick)] == ["v1", "v2"]
    assert not (quick / "v1/Django-1.0").exists()  # quick: wheels only
    assert datasets.fetch("smallfiles") == full  # cached: checked, not rebuilt
    with pytest.raises(datasets.DatasetError, match="choose one of releases, smallfiles"):
        datasets.fetch("nope")


def test_each_tool_run_reads_the_sources_first(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`warm` reads every regular file of the snapshots, and `run_tool` calls it before
    the tool's first command (the machine pages out what was idle for a minute)."""
    import bench.ingest as ingest

    snaps = _make_snapshots(tmp_path / "data")
    assert ingest.warm(snaps) == tree_bytes(snaps) > 0
    order: list[str] = []
    monkeypatch.setattr(ingest, "warm", lambda s: order.append("warm") or 0)

    class Failing(Hutong):
        def init(self) -> None:
            order.append("init")
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        run_tool(Failing(tmp_path / "work"), snaps, {}, 1)
    assert order == ["warm", "init"]


def test_each_timed_phase_starts_with_nothing_left_to_write_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_tool` writes every dirty page out before the ingest and before the restore,
    so neither phase pays for the writeback of what ran before it."""
    import bench.ingest as ingest

    why = hutong_available()
    if why:
        pytest.skip(why)
    snaps = _make_snapshots(tmp_path / "data")
    order: list[str] = []
    monkeypatch.setattr(ingest.os, "sync", lambda: order.append("sync"))

    class Logged(Hutong):
        def init(self) -> None:
            order.append("init")
            super().init()

        def restore(self, names: Sequence[str], target: Path) -> None:
            order.append("restore")
            super().restore(names, target)

    run_tool(Logged(tmp_path / "work"), snaps, source_digests(snaps), tree_bytes(snaps))
    assert order == ["sync", "init", "sync", "restore"]


def test_a_bad_round_count_is_refused_before_any_work(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import bench.ingest as ingest

    def no_fetch(*_: object) -> Path:
        raise AssertionError("the dataset was fetched")

    monkeypatch.setattr(ingest.datasets, "fetch", no_fetch)
    assert ingest.main(["--rounds", "0"]) == 2
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err
