"""The `hutong` command line, run as a user runs it (a real process) and in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gfs.cli import main
from tests.conftest import make_tree, tree_digest

HUTONG = [sys.executable, "-m", "gfs.cli"]


def run(*args: str, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([*HUTONG, *args], capture_output=True, text=True, env=full_env,
                          timeout=120, cwd=Path(__file__).parent.parent)
    if check and proc.returncode != 0:
        raise AssertionError(f"hutong {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def test_full_session_through_processes(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    src = make_tree(tmp_path / "src", seed=5, files=25)
    assert "initialised" in run("--state", state, "init").stdout
    run("--state", state, "put", "--quiet", str(src), "/proj/v1")
    run("put", "-q", str(src), "/proj/v2", env={"HUTONG_STATE": state})
    ls = run("--state", state, "ls", "/proj").stdout.split()
    assert ls == ["v1/", "v2/"]
    long = run("--state", state, "ls", "-l", "/proj/v1").stdout
    assert "link -> file0.bin" in long
    du = json.loads(run("--state", state, "du", "--json", "/proj").stdout)
    assert du["dedup_ratio"] >= 1.9 and du["logical_bytes"] > 0
    assert {"logical_bytes", "stored_bytes", "unique_bytes", "compression_ratio",
            "total_ratio", "files", "dirs"} <= du.keys()
    text = run("--state", state, "du", "/proj").stdout
    assert "dedup ratio" in text and "compression ratio" in text
    first = next(p for p in sorted(src.rglob("file*.bin")) if p.stat().st_size)
    rel = first.relative_to(src)
    cat = subprocess.run([*HUTONG, "--state", state, "cat", f"/proj/v1/{rel}"],
                         capture_output=True, timeout=60, check=True).stdout
    assert cat == first.read_bytes()
    st = json.loads(run("--state", state, "stat", "--json", f"/proj/v1/{rel}").stdout)
    assert st["size"] == first.stat().st_size and st["kind"] == "file"
    out = tmp_path / "out"
    run("--state", state, "get", "-q", "/proj/v2", str(out))
    assert tree_digest(out) == tree_digest(src)
    run("--state", state, "mv", "/proj/v2", "/old")
    run("--state", state, "mkdir", "-p", "/a/b/c")
    run("--state", state, "rm", "-r", "/old")
    assert "gc:" in run("--state", state, "gc").stdout
    fsck = run("--state", state, "fsck")
    assert "fsck: ok" in fsck.stdout


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    proc = run("--state", state, "ls", "/", check=False)
    assert proc.returncode == 2
    assert_one_error(proc.stderr)
    assert "hutong init" in proc.stderr
    run("--state", state, "init")
    for args, needle in [
        (("ls", "/missing"), "no such file"),
        (("cat", "/"), "is a directory"),
        (("get", "/missing", str(tmp_path / "x")), "no such file"),
        (("put", str(tmp_path / "nope"), "/x"), "local path not found"),
        (("mkdir", "/a/../b"), "not allowed"),
        (("rm", "/"), "root"),
        (("init",), "already initialised"),
    ]:
        proc = run("--state", state, *args, check=False)
        assert proc.returncode == 2, args  # the request was wrong
        assert needle in proc.stderr, (args, proc.stderr)
        assert_one_error(proc.stderr)
    proc = run("--state", state, "frobnicate", check=False)
    assert proc.returncode == 2
    proc = run("--state", state, "put", check=False)
    assert proc.returncode == 2


def assert_one_error(stderr: str) -> None:
    """An error is one line, then one hint line; never a traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith("hutong: error: ") and lines[1].startswith("hint: "), stderr
    assert "Traceback" not in stderr


def test_help_is_followable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("init", "put", "get", "du", "fsck", "gc", "HUTONG_STATE", "examples"):
        assert word in out


def test_state_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("HUTONG_STATE", str(a))
    assert main(["init"]) == 0
    assert main(["--state", str(b), "init"]) == 0
    assert main(["mkdir", "/only-in-a"]) == 0
    capsys.readouterr()
    assert main(["--state", str(b), "ls", "/"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["ls", "/"]) == 0
    assert "only-in-a" in capsys.readouterr().out
    monkeypatch.delenv("HUTONG_STATE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["init"]) == 0
    assert (tmp_path / "home" / ".hutong" / "config.toml").exists()


def test_bad_config_value_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "s"
    assert main(["--state", str(state), "init"]) == 0
    monkeypatch.setenv("HUTONG_ZSTD_LEVEL", "eleven")
    assert main(["--state", str(state), "ls"]) == 2
    assert "HUTONG_ZSTD_LEVEL" in capsys.readouterr().err


def test_relative_state_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--state", "rel-state", "init"]) == 0
    assert main(["--state", "rel-state", "mkdir", "/x"]) == 0
    monkeypatch.chdir(tmp_path / "rel-state")  # the pool URL recorded at init is absolute
    assert main(["--state", str(tmp_path / "rel-state"), "fsck", "-q"]) == 0
