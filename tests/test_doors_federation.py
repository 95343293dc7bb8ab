"""The doors on the federation through profiles, against real sites on loopback: the
ordinary `hutong` commands, `gfs.open_namespace` and `gfs://ENTITY/path` with pandas,
as the entity (its keys) and as a user holding a prefix token of it."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

import gfs
from gfs.federation.namespace import FederatedNamespace
from gfs.federation.testing import TWO_ENTITIES, Federation, populate, started
from gfs.profiles import add_profile
from tests.conftest import make_tree, tree_digest
from tests.test_cli_behaviour import assert_one_error, hutong

DATA = random.Random(12).randbytes(700_000)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with started(tmp_path_factory.mktemp("doors"), TWO_ENTITIES, ttl=3.0, heartbeat=0.3) as f:
        populate(f, "bank-a", {"/bank-a/shared/s.txt": b"shared with dan\n",
                               "/bank-a/data/x.bin": DATA},
                 grants=[("/bank-a/shared/**", "telco-b", "read")])
        yield f


@pytest.fixture
def profiles(fed: Federation) -> dict[str, str]:
    """Profile `bank` (bank-a's keys) and `dan` (a read token of bank-a for
    /bank-a/shared), in this test's own profiles file."""
    keys = fed.sites["a1"]["state"] / "federation"
    add_profile("bank", registry=fed.registry_url, entity="bank-a", keys=keys, near="a1")
    token = fed.keys("bank-a").mint_token("dan", "read", "/bank-a/shared", 600)
    add_profile("dan", registry=fed.registry_url, entity="bank-a", token=token,
                registry_ca=fed.registry_ca_file)
    add_profile("telco", registry=fed.registry_url, entity="telco-b",
                keys=fed.sites["t1"]["state"] / "federation")
    return {"bank": "bank", "dan": "dan", "telco": "telco"}


def test_open_namespace_picks_the_federation(profiles: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with gfs.open_namespace("bank") as ns:
        assert isinstance(ns, FederatedNamespace) and isinstance(ns, gfs.Namespace)
        assert ns.read_bytes("/bank-a/data/x.bin") == DATA
        assert "bank-a" in [s.name for s in ns.ls("/")]
    monkeypatch.setenv("HUTONG_PROFILE", "dan")
    with gfs.open_namespace() as ns:
        assert isinstance(ns, FederatedNamespace)
        assert ns.read_bytes("/bank-a/shared/s.txt") == b"shared with dan\n"
        assert not ns.exists("/bank-a/data/x.bin")


def test_ordinary_commands_on_a_federated_profile(profiles: dict[str, str],
                                                  tmp_path: Path) -> None:
    env = {"HUTONG_PROFILE": "bank", "HUTONG_STATE": str(tmp_path / "no-store")}

    def run(*args: str, stdin: bytes | None = None) -> bytes:
        return hutong(*args, env=env, stdin=stdin).stdout

    assert "bank-a/" in run("ls", "/").decode().split()
    run("mkdir", "-p", "/bank-a/cli/d")
    body = random.Random(3).randbytes(300_000)
    run("put", "-q", "-", "/bank-a/cli/d/in.bin", stdin=body)
    assert run("cat", "/bank-a/cli/d/in.bin") == body
    st = json.loads(run("stat", "--json", "/bank-a/cli/d/in.bin"))
    assert (st["kind"], st["size"]) == ("file", len(body))
    listing = json.loads(run("ls", "--json", "/bank-a/cli/d"))
    assert [e["name"] for e in listing] == ["in.bin"]
    assert "in.bin" in run("ls", "-l", "/bank-a/cli/d").decode()
    out = tmp_path / "out.bin"
    run("get", "-q", "/bank-a/cli/d/in.bin", str(out))
    assert out.read_bytes() == body
    assert run("get", "/bank-a/data/x.bin", "-") == DATA
    run("mv", "/bank-a/cli/d/in.bin", "/bank-a/cli/moved.bin")
    assert run("cat", "/bank-a/cli/moved.bin") == body
    run("rm", "-r", "/bank-a/cli")
    gone = hutong("stat", "/bank-a/cli/moved.bin", env=env, check=False)
    assert gone.returncode == 2
    assert_one_error(gone.stderr)
    assert not (tmp_path / "no-store").exists()  # the embedded store was never opened


def test_a_token_profile_reads_its_prefix_and_nothing_else(profiles: dict[str, str]) -> None:
    """What `hutong fed cat --token` did, now through a profile; outside the token's
    prefix the file does not exist for the caller, and it cannot write."""
    assert hutong("--profile", "dan", "cat", "/bank-a/shared/s.txt").stdout == \
        b"shared with dan\n"
    for argv in (["cat", "/bank-a/data/x.bin"], ["ls", "/bank-a/data"],
                 ["stat", "/bank-a/data/x.bin"]):
        proc = hutong("--profile", "dan", *argv, check=False)
        assert proc.returncode == 2, argv
        assert_one_error(proc.stderr)
        assert "no such file" in proc.stderr.decode()
    proc = hutong("--profile", "dan", "put", "-", "/bank-a/shared/new.txt", stdin=b"x",
                  check=False)
    assert proc.returncode == 2
    assert_one_error(proc.stderr)
    with gfs.open_namespace("bank") as ns:
        assert not ns.exists("/bank-a/shared/new.txt")


def test_admin_commands_take_the_registry_and_identity_of_the_profile(
        profiles: dict[str, str], fed: Federation) -> None:
    status = json.loads(hutong("--profile", "bank", "status", "--json",
                               env={"HUTONG_REGISTRY": ""}).stdout)
    assert {s["name"] for s in status["sites"]} == {"a1", "t1"}
    assert json.loads(hutong("--profile", "bank", "rule", "ls", "--json",
                             env={"HUTONG_REGISTRY": ""}).stdout) == []


def _frame(n: int = 20_000) -> object:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(5)
    return pd.DataFrame({"id": np.arange(n), "x": rng.normal(size=n),
                         "city": rng.choice(["beijing", "chengdu"], size=n)})


def test_pandas_parquet_round_trip_through_gfs_entity_urls(profiles: dict[str, str],
                                                           fed: Federation) -> None:
    import pandas as pd

    df = _frame()
    bank = {"profile": "bank", "skip_instance_cache": True}
    df.to_parquet("gfs://bank-a/shared/t.parquet", storage_options=bank)
    back = pd.read_parquet("gfs://bank-a/shared/t.parquet", storage_options=bank)
    pd.testing.assert_frame_equal(df, back)
    cols = pd.read_parquet("gfs://bank-a/shared/t.parquet", columns=["x"],
                           storage_options=bank)
    assert list(cols.columns) == ["x"]
    dan = {"profile": "dan", "skip_instance_cache": True}  # the token's reader
    pd.testing.assert_frame_equal(
        pd.read_parquet("gfs://bank-a/shared/t.parquet", storage_options=dan), df)
    with pytest.raises(FileNotFoundError):
        pd.read_parquet("gfs://bank-a/data/x.bin", storage_options=dan)
    with gfs.open_namespace("bank") as ns:  # the same file seen by the namespace API
        assert ns.stat("/bank-a/shared/t.parquet").size > 0


def test_gfs_filesystem_listing_and_ranges_on_the_federation(
        profiles: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    monkeypatch.setenv("HUTONG_PROFILE", "bank")
    fs = fsspec.filesystem("gfs", skip_instance_cache=True)
    try:
        assert "/bank-a" in fs.ls("/", detail=False)
        assert fs.cat_file("gfs://bank-a/data/x.bin", 1000, 1100) == DATA[1000:1100]
        assert fs.cat_file("gfs://bank-a/data/x.bin", -50) == DATA[-50:]
        with fs.open("gfs://bank-a/data/x.bin", "rb", block_size=1 << 16) as f:
            f.seek(600_000)
            assert f.read(10) == DATA[600_000:600_010]
        with fs.open("gfs://bank-a/fsspec/w.bin", "wb") as f:
            f.write(b"abc")
            assert not fs.exists("gfs://bank-a/fsspec/w.bin")  # close-to-open
        assert fs.cat("gfs://bank-a/fsspec/w.bin") == b"abc"
        with pytest.raises(RuntimeError), fs.open("gfs://bank-a/fsspec/w.bin", "wb") as f:
            f.write(b"half")
            raise RuntimeError("abandoned")
        assert fs.cat("gfs://bank-a/fsspec/w.bin") == b"abc"
        fs.rm("gfs://bank-a/fsspec", recursive=True)
        assert not fs.exists("gfs://bank-a/fsspec")
    finally:
        fs.close()
    assert os.environ["HUTONG_PROFILE"] == "bank"


def test_trees_put_and_get_on_the_federation(profiles: dict[str, str], tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=9, files=25)
    env = {"HUTONG_PROFILE": "bank"}
    put = json.loads(hutong("put", "--json", str(src), "/bank-a/tree", env=env).stdout)
    assert put["files"] > 0 and put["symlinks"] == 2
    again = json.loads(hutong("put", "--json", str(src), "/bank-a/tree", env=env).stdout)
    assert again["files"] == 0 and again["unchanged"] == put["files"] + put["symlinks"]
    out = tmp_path / "out"
    got = json.loads(hutong("get", "--json", "/bank-a/tree", str(out), env=env).stdout)
    assert got["files"] == put["files"]
    assert tree_digest(out) == tree_digest(src)
    du = json.loads(hutong("du", "--json", "/bank-a/tree", env=env).stdout)
    assert du["files"] == put["files"] and du["logical_bytes"] == put["bytes"]
    hutong("rm", "-r", "/bank-a/tree", env=env)


def test_a_grantee_entity_sees_the_granted_part_through_every_door(
        profiles: dict[str, str]) -> None:
    import pandas as pd

    env = {"HUTONG_PROFILE": "telco"}
    assert hutong("ls", "/", env=env).stdout.decode().split() == ["telco-b/", "bank-a/"]
    assert hutong("ls", "/bank-a", env=env).stdout.decode().split() == ["shared/"]
    assert hutong("cat", "/bank-a/shared/s.txt", env=env).stdout == b"shared with dan\n"
    for argv in (["cat", "/bank-a/data/x.bin"], ["ls", "/bank-a/data"],
                 ["get", "/bank-a/data/x.bin", "-"]):
        proc = hutong(*argv, env=env, check=False)
        assert proc.returncode == 2, argv
        assert "no such file" in proc.stderr.decode()
    df = _frame(500)
    with gfs.open_namespace("bank") as ns, ns.open("/bank-a/shared/g.parquet", "wb") as f:
        df.to_parquet(f)  # type: ignore[attr-defined]
    back = pd.read_parquet("gfs://bank-a/shared/g.parquet",
                           storage_options={"profile": "telco", "skip_instance_cache": True})
    pd.testing.assert_frame_equal(back, df)
    with pytest.raises(FileNotFoundError):
        pd.read_parquet("gfs://bank-a/data/x.bin",
                        storage_options={"profile": "telco", "skip_instance_cache": True})
