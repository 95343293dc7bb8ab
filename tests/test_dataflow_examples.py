"""The defects issue 11 found by running docs/dataflow.md as written, one test each."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dataflow.federated import FederatedDataflow
from tests.federated_sites import FederatedSites
from tests.test_dataflow import _df, world  # noqa: F401  (world is a fixture)


def test_replicate_after_migrate_of_the_same_dataset_object(
        world: tuple[Path, dict[str, bytes]]) -> None:  # noqa: F811
    """docs/dataflow.md: `df.migrate(ds, to="b")` then `df.replicate(ds, ...)` raised
    NotFoundError: the Dataset object still named site a as the home of files
    migrate had removed there."""
    root, data = world
    with _df(root) as df:
        ds = df.dataset("loans", "/bank-a/loans/**")
        mig = df.migrate(ds, to="b")
        assert mig.removed == 2                       # x1, x2 left site a
        assert not df.rt.stores.get("a").exists("/bank-a/loans/x1")
        reps = df.replicate(ds, copies=2, where="region=west")
        assert sorted(r.site for r in reps) == ["a", "b"]
        for s in "ab":
            store = df.rt.stores.get(s)
            assert {p: store.read_bytes(p) for p in data} == data


def test_federated_dataflow_without_schedulers_runs_on_an_embedded_cluster(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without `schedulers=`, a LocalCluster is started for the site; it was started on
    Dask's in-process transport, which the task's comms cannot use, so the job
    reported "site a1 lost" while a1 was up."""
    sites = FederatedSites(tmp_path, [("a1", "bank-a", "cn-west", True)], [], driver="a1")
    try:
        with sites.fed.client("bank-a") as fc:
            fc.mkdir("/bank-a/in", parents=True)
            fc.write_bytes("/bank-a/in/x", b"hello " * 1000)
        with caplog.at_level(logging.WARNING, logger="hutong.dataflow"), \
                FederatedDataflow(sites.fed.registry_url, progress=False, keys_dir=str(
                    sites.fed.sites["a1"]["state"] / "federation")) as df:
            job = df.run(size_of, "/bank-a/in/**", output="/bank-a/out/n")
        assert job.result.record["status"] == "done"
        assert list(job.result.values.values()) == [6000]
        assert not [r for r in caplog.records if "lost" in r.getMessage()]
    finally:
        sites.close()


def size_of(files: list[Any]) -> int:
    return sum(len(f.read()) for f in files)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_cli_imports_the_entry_module_from_the_current_directory(
        world: tuple[Path, dict[str, bytes]], command: str) -> None:  # noqa: F811
    """docs/dataflow.md: a job module next to the job file, `hutong run job.toml` from
    there. The console script's sys.path[0] is its bin directory, not the cwd, so
    `run` could not import the module; `plan` did not try (a wrong entry passed)."""
    root, data = world
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "jobs.py").write_text(
        "def count_rows(inputs):\n    return sum(f.read().count(b'\\n') for f in inputs)\n")
    (root / "job.toml").write_text(
        'sites = "sites.toml"\ninputs = ["/bank-a/loans/**"]\n'
        'entry = "mypkg.jobs:count_rows"\noutput = "/bank-a/out/rows"\n')
    hutong = Path(sys.executable).with_name("hutong")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run([str(hutong), command, "job.toml", "-q", "--json"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    if command == "run":
        rec = json.loads(r.stdout)
        assert rec["status"] == "done" and len(rec["tasks"]) == len(data)
    (root / "job.toml").write_text(
        'sites = "sites.toml"\ninputs = ["/bank-a/loans/**"]\nentry = "mypkg.jobs:nope"\n')
    r = subprocess.run([str(hutong), command, "job.toml"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no function 'nope'" in r.stderr, r.stderr
