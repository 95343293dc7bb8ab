"""The gfs:// fsspec filesystem: its own contract, and real consumers on top of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from gfs.client import Client
from gfs.fsspec_fs import HutongFileSystem


@pytest.fixture
def gfs(fs: Client) -> Iterator[HutongFileSystem]:
    yield HutongFileSystem(client=fs, skip_instance_cache=True)


def test_registered_by_entry_point(fs: Client) -> None:
    assert fsspec.get_filesystem_class("gfs") is HutongFileSystem
    g = fsspec.filesystem("gfs", state=str(fs.state), skip_instance_cache=True)
    g.pipe("gfs:///a/b.txt", b"hello")
    assert fs.read_bytes("/a/b.txt") == b"hello"
    with fsspec.open("gfs:///a/b.txt", "rb", state=str(fs.state)) as f:
        assert f.read() == b"hello"


def test_state_from_environment(fs: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTONG_STATE", str(fs.state))
    fs.write_bytes("/env.txt", b"x")
    g = HutongFileSystem(skip_instance_cache=True)
    assert g.cat("/env.txt") == b"x"


def test_paths_all_forms(gfs: HutongFileSystem) -> None:
    for p in ("gfs:///a/b", "gfs://a/b", "/a/b", "a/b/", "gfs::/a//b"):
        assert gfs._strip_protocol(p) == "/a/b"
    assert gfs._strip_protocol("gfs://") == "/"


def test_ls_info_find_glob(gfs: HutongFileSystem) -> None:
    gfs.pipe({"/d/x.csv": b"1", "/d/y.csv": b"22", "/d/sub/z.txt": b"333"})
    assert gfs.ls("/d", detail=False) == ["/d/sub", "/d/x.csv", "/d/y.csv"]
    info = gfs.info("/d/y.csv")
    assert info["type"] == "file" and info["size"] == 2
    assert gfs.info("/d")["type"] == "directory"
    assert gfs.find("/d") == ["/d/sub/z.txt", "/d/x.csv", "/d/y.csv"]
    assert gfs.find("/d", maxdepth=1) == ["/d/x.csv", "/d/y.csv"]
    assert gfs.find("/d", withdirs=True)[:2] == ["/d", "/d/sub"]
    assert gfs.glob("/d/*.csv") == ["/d/x.csv", "/d/y.csv"]
    assert gfs.glob("gfs:///d/**/*.txt") == ["/d/sub/z.txt"]
    assert gfs.du("/d") == 6
    with pytest.raises(FileNotFoundError):
        gfs.info("/nope")
    with pytest.raises(FileNotFoundError):
        gfs.ls("/nope")


def test_open_ranged_reads_and_pinned_version(gfs: HutongFileSystem) -> None:
    data = os.urandom(3_000_000)
    gfs.pipe_file("/big.bin", data)
    assert gfs.cat_file("/big.bin", 10, 20) == data[10:20]
    assert gfs.cat_file("/big.bin", -100) == data[-100:]
    assert gfs.cat_file("/big.bin", 5, -5) == data[5:-5]
    assert gfs.cat_file("/big.bin", 2_999_990, 4_000_000) == data[2_999_990:]
    with gfs.open("/big.bin", "rb", block_size=1 << 16) as f:
        f.seek(1_000_000)
        assert f.read(100) == data[1_000_000:1_000_100]
        gfs.pipe_file("/big.bin", b"new")  # the open file keeps its version
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
    assert gfs.cat("/big.bin") == b"new"


def test_write_is_visible_on_close_only(gfs: HutongFileSystem) -> None:
    data = os.urandom(600_000)
    f = gfs.open("/w/out.bin", "wb", block_size=1 << 16)
    f.write(data[:300_000])
    f.flush()
    assert not gfs.exists("/w/out.bin")
    f.write(data[300_000:])
    f.close()
    assert gfs.cat("/w/out.bin") == data
    with gfs.open("/w/out.bin", "ab") as f:
        f.write(b"tail")
    assert gfs.cat("/w/out.bin") == data + b"tail"
    with pytest.raises(RuntimeError), gfs.open("/w/out.bin", "wb") as f:
        f.write(b"half")
        raise RuntimeError("abandon")
    assert gfs.cat("/w/out.bin") == data + b"tail"  # nothing committed
    with pytest.raises(FileExistsError):
        gfs.open("/w/out.bin", "xb")


def test_put_get_rm_mv_mkdir(gfs: HutongFileSystem, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "in").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a" * 1000)
    (src / "in" / "b.txt").write_bytes(b"b")
    gfs.put(str(src), "/up", recursive=True)
    assert sorted(gfs.find("/up")) == ["/up/a.txt", "/up/in/b.txt"]
    out = tmp_path / "out"
    gfs.get("/up", str(out), recursive=True)
    assert (out / "in" / "b.txt").read_bytes() == b"b"
    assert (out / "a.txt").read_bytes() == b"a" * 1000
    gfs.mv("/up/a.txt", "/up/c.txt")
    assert gfs.cat("/up/c.txt") == b"a" * 1000 and not gfs.exists("/up/a.txt")
    gfs.copy("/up/c.txt", "/up/d.txt")
    assert gfs.cat("/up/d.txt") == b"a" * 1000
    gfs.mkdir("/m/n")
    with pytest.raises(FileExistsError):
        gfs.mkdir("/m/n")
    gfs.makedirs("/m/n", exist_ok=True)
    with pytest.raises(OSError):
        gfs.rmdir("/up")  # not empty
    gfs.rm("/up", recursive=True)
    assert not gfs.exists("/up")
    gfs.rm("/m/n")
    assert gfs.ls("/m") == []


def test_checksum_and_ukey_follow_content(gfs: HutongFileSystem) -> None:
    gfs.pipe_file("/a", b"one")
    gfs.pipe_file("/b", b"one")
    k = gfs.ukey("/a")
    assert k == gfs.ukey("/b") and gfs.checksum("/a") == gfs.checksum("/b")
    gfs.pipe_file("/a", b"two")
    assert gfs.ukey("/a") != k


def _frame(n: int = 20_000) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "id": np.arange(n), "x": rng.normal(size=n),
        "city": rng.choice(["beijing", "chengdu", "shanghai"], size=n),
    })


def test_pandas_parquet_round_trip(fs: Client) -> None:
    import pandas as pd

    df = _frame()
    opts = {"state": str(fs.state)}
    df.to_parquet("gfs:///tables/t.parquet", storage_options=opts)
    back = pd.read_parquet("gfs:///tables/t.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(df, back)
    cols = pd.read_parquet("gfs:///tables/t.parquet", storage_options=opts, columns=["x"])
    assert list(cols.columns) == ["x"]
    df.to_csv("gfs:///tables/t.csv", index=False, storage_options=opts)
    pd.testing.assert_frame_equal(pd.read_csv("gfs:///tables/t.csv", storage_options=opts), df)


def test_pyarrow_dataset_partitioned(gfs: HutongFileSystem) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds

    df = _frame()
    table = pa.Table.from_pandas(df, preserve_index=False)
    ds.write_dataset(table, "/ds", filesystem=gfs, format="parquet",
                     partitioning=["city"], partitioning_flavor="hive")
    assert len(gfs.glob("/ds/city=*/*.parquet")) == 3
    dset = ds.dataset("/ds", filesystem=gfs, format="parquet", partitioning="hive")
    got = dset.to_table(filter=ds.field("city") == "chengdu").to_pandas()
    assert len(got) == int((df.city == "chengdu").sum())
    assert dset.count_rows() == len(df)


def test_dask_dataframe_read(fs: Client) -> None:
    import dask
    import dask.dataframe as dd

    df = _frame()
    opts = {"state": str(fs.state)}
    for i in range(4):
        df.iloc[i * 5000:(i + 1) * 5000].to_parquet(f"gfs:///dk/part{i}.parquet",
                                                    storage_options=opts)
    ddf = dd.read_parquet("gfs:///dk/*.parquet", storage_options=opts)
    with dask.config.set(scheduler="threads"):
        assert ddf.npartitions == 4
        assert int(ddf.id.sum().compute()) == int(df.id.sum())
        means = ddf.groupby("city").x.mean().compute()
    assert means.round(9).to_dict() == df.groupby("city").x.mean().round(9).to_dict()


def test_the_instance_cache_follows_the_selected_tree(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec caches filesystems by their options; the tree they select is resolved
    first, so switching $HUTONG_STATE (or the profile) never reuses the other tree's."""
    for name in ("one", "two"):
        with Client.init(tmp_path / name) as c:
            c.write_bytes("/which", name.encode())
    monkeypatch.setenv("HUTONG_STATE", str(tmp_path / "one"))
    assert fsspec.filesystem("gfs").cat("/which") == b"one"
    monkeypatch.setenv("HUTONG_STATE", str(tmp_path / "two"))
    assert fsspec.filesystem("gfs").cat("/which") == b"two"
    assert fsspec.filesystem("gfs", state=str(tmp_path / "one")).cat("/which") == b"one"
