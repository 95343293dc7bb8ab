"""Start-up cost of `hutong`: the everyday commands never import the heavy modules, and
the plain config check (which keeps pydantic out of them) accepts nothing that the
pydantic model of the config refuses or converts differently."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.cli import EXTENSIONS, _command_of, main
from gfs.client import Client
from gfs.config import FIELDS, StoreConfig, plain, plain_text
from gfs.errors import SchemaError

#: Modules no plain command may load (each costs 20-200 ms of CPU to import).
HEAVY = ("pydantic", "aiohttp", "pyarrow", "tenseal", "psycopg", "prometheus_client",
         "distributed", "dask")

_RUN = """
import json, sys
from gfs.cli import main
code = main(sys.argv[1:])
heavy = {heavy!r}
print(json.dumps([code, sorted(m for m in heavy if m in sys.modules)]))
"""
#: ... nor, for the commands defined in gfs.cli, the other command modules (their
#: parsers cost ~40 ms to build).
NOT_LOADED = (*HEAVY, *EXTENSIONS)

#: Modules only other paths need, imported where used (issue 17: together ~25 ms of
#: the CPU of a small put): no everyday command imports them...
LAZY = ("gfs.units", "decimal", "gfs.relocate", "gfs.meta.record_check", "gfs.disk_cache",
        "gfs.disk_writer", "gfs.read.disk", "gfs.read.stack", "gfs.read.reader", "gfs.files",
        "_hashlib", "hmac", "ctypes")
#: ... and each command leaves out what only the others use.
NOT_BY = {
    "put": (*LAZY, "gfs.namespace_api", "gfs.get_plan", "gfs.spill", "sqlite3", "tempfile",
            "random"),
    "get": (*LAZY, "gfs.namespace_api", "sqlite3"),
    "ls": (*LAZY, "gfs.get_plan", "gfs.spill", "sqlite3", "tempfile", "random"),
    "du": (*LAZY, "gfs.get_plan", "tempfile", "random"),
}


def _run(*argv: str, watch: tuple[str, ...] = NOT_LOADED) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTONG_")}
    env["HUTONG_PROFILES"] = "/nonexistent/profiles.toml"
    out = subprocess.run([sys.executable, "-c", _RUN.format(heavy=watch), *argv], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    code, loaded = json.loads(out.strip().splitlines()[-1])
    return int(code), list(loaded)


def test_everyday_commands_import_no_heavy_module(tmp_path: Path) -> None:
    state = tmp_path / "s"
    Client.init(state).close()
    local = tmp_path / "f.txt"
    local.write_bytes(b"hello\n" * 100)
    s = str(state)
    for argv in (["--state", s, "put", str(local), "/f.txt"],
                 ["--state", s, "ls", "-l", "/"], ["--state", s, "stat", "/f.txt"],
                 ["--state", s, "get", "/f.txt", str(tmp_path / "back.txt")],
                 ["--state", s, "du", "/"]):
        code, loaded = _run(*argv)
        assert code == 0, argv
        assert loaded == [], f"hutong {' '.join(argv[2:])} imported {loaded}"
    assert (tmp_path / "back.txt").read_bytes() == local.read_bytes()


def test_everyday_commands_import_only_what_they_use(tmp_path: Path) -> None:
    """put, get, ls and du leave out the modules only other paths need (the put's data
    is new, so it writes packs; the get restores it)."""
    state = tmp_path / "s"
    Client.init(state).close()
    local = tmp_path / "d"
    (local / "sub").mkdir(parents=True)
    for i in range(3):
        (local / "sub" / f"f{i}").write_bytes(os.urandom(40_000))
        (local / f"s{i}").write_bytes(os.urandom(300))
    s = str(state)
    for argv in (["put", "--quiet", str(local), "/d"],
                 ["get", "--quiet", "/d", str(tmp_path / "back")],
                 ["ls", "-l", "/d"], ["du", "/d"]):
        code, loaded = _run("--state", s, *argv, watch=NOT_BY[argv[0]])
        assert code == 0, argv
        assert loaded == [], f"hutong {' '.join(argv)} imported {loaded}"
    assert (tmp_path / "back" / "sub" / "f2").read_bytes() == (local / "sub" / "f2").read_bytes()


def test_the_lazy_names_are_still_exported() -> None:
    """What moved out of the start-up path is still importable where it was."""
    import gfs.client
    import gfs.read
    from gfs.meta import shared_manifests
    from gfs.namespace_api import DuReport, Stat

    assert (gfs.client.Stat, gfs.client.DuReport) == (Stat, DuReport)
    for name in gfs.read.__all__:
        module = importlib.import_module(gfs.read.__getattr__(name).__module__)
        assert getattr(module, name) is getattr(gfs.read, name)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        gfs.read.Nothing  # noqa: B018
    assert shared_manifests.blake2b is hashlib.blake2b  # the same keys as before


_SPAWNS = """
import json, subprocess, sys
spawned = []
real = subprocess.Popen.__init__
def spy(self, args, *rest, **kw):
    spawned.append(str(args))
    real(self, args, *rest, **kw)
subprocess.Popen.__init__ = spy
from gfs.cli import main
code = main(sys.argv[1:])
print(json.dumps([code, spawned]))
"""


def test_a_put_starts_no_child_process(tmp_path: Path) -> None:
    """No command pays for a child process at start-up (finding the C library with
    `ctypes.util.find_library` ran `ldconfig -p`: ~7 ms of each put's wall)."""
    state = tmp_path / "s"
    Client.init(state).close()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_bytes(b"hello\n" * 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTONG_")}
    out = subprocess.run([sys.executable, "-c", _SPAWNS, "--state", str(state), "put",
                          str(tmp_path / "d"), "/d"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [0, []]


def test_help_imports_no_heavy_module() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTONG_")}
    code = ("import runpy, sys\nsys.argv = ['hutong', '--help']\ntry:\n"
            "    runpy.run_module('gfs.cli', run_name='__main__')\nexcept SystemExit:\n"
            f"    pass\nprint([m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_config_with_units_or_a_bad_value_still_goes_through_the_model(
        tmp_path: Path) -> None:
    state = tmp_path / "s"
    Client.init(state).close()
    cfg = state / "config.toml"
    cfg.write_text(cfg.read_text().replace("cache_bytes = 67108864", 'cache_bytes = "1MiB"')
                   .replace("gc_grace = 3600", 'gc_grace = "2h"'))
    loaded = StoreConfig.load(state)
    assert (loaded.cache_bytes, loaded.gc_grace) == (1 << 20, 7200.0)
    cfg.write_text(cfg.read_text().replace("zstd_level = 3", "zstd_level = 23"))
    with pytest.raises(SchemaError, match=r"config file .*store\.zstd_level: input should "
                       r"be less than or equal to 22, got 23"):
        StoreConfig.load(state)
    with pytest.raises(SchemaError, match="workers: input should be less than or equal"):
        StoreConfig(workers=257)
    with pytest.raises(SchemaError, match="delta: input should be a valid boolean, got 1"):
        StoreConfig(delta=1)  # type: ignore[arg-type]


def _read_alike(data: dict[str, Any], fast: dict[str, Any] | None, strings: bool) -> None:
    """What the plain check accepted (`fast`), the model reads to the same values."""
    from gfs._config_model import checked_settings

    try:
        slow: dict[str, Any] | None = checked_settings(data, "test", strings)
    except SchemaError:
        slow = None
    if fast is not None:
        assert slow == fast
        assert all(type(fast[k]) is type(slow[k]) for k in fast)


_VALUES = st.one_of(st.integers(-(1 << 41), 1 << 41), st.sampled_from([0, 1, 64, 1 << 16,
                    1 << 30, (1 << 30) + 1, 1 << 40, (1 << 40) + 1, -7, -8, 22, 23, 256, 257]),
                    st.booleans(), st.floats(allow_nan=True), st.text(max_size=6),
                    st.sampled_from(["64KiB", "2h", "3", "true"]), st.none())


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*FIELDS, "zstd_levl"]), _VALUES, max_size=4))
def test_the_plain_check_accepts_only_what_the_model_accepts_alike(
        data: dict[str, Any]) -> None:
    _read_alike(data, plain(data), strings=False)


_TEXTS = st.one_of(st.from_regex(r"-?[0-9]{1,16}(\.[0-9]{0,7})?", fullmatch=True),
                   st.sampled_from(["0", "1", "true", "false", "True", "yes", "on", "01",
                                    "1e3", " 1", "1_000", "64KiB", "2h", "", "0.5", "22",
                                    "23", "257", "99999999999999999"]), st.text(max_size=4))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*FIELDS, "zstd_levl"]), _TEXTS, max_size=4))
def test_the_plain_text_check_accepts_only_what_the_model_reads_alike(
        data: dict[str, str]) -> None:
    _read_alike(data, plain_text(data), strings=True)


def test_a_delta_flag_in_the_environment_imports_no_heavy_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "s"
    Client.init(state).close()
    code = ("import json, os, sys\nfrom gfs.config import StoreConfig\n"
            f"c = StoreConfig.load(__import__('pathlib').Path({str(state)!r}))\n"
            f"print(json.dumps([c.delta, c.zstd_level, sorted(m for m in {HEAVY!r} "
            "if m in sys.modules)]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTONG_")}
    env |= {"HUTONG_DELTA": "1", "HUTONG_ZSTD_LEVEL": "5"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [True, 5, []]
    monkeypatch.setenv("HUTONG_ZSTD_LEVEL", "23")  # out of bounds: the model names it
    with pytest.raises(SchemaError, match="HUTONG_ZSTD_LEVEL"):
        StoreConfig.load(state)


def test_the_command_is_found_after_hutong_own_options_or_left_to_the_parser(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _command_of(["--state", "s", "-q", "--profile=p", "put", "a", "b"]) == "put"
    assert _command_of(["-v", "--state=s", "tier", "policy"]) == "tier"
    for unclear in ([], ["--help"], ["-qv", "ls"], ["--state"], ["--version"]):
        assert _command_of(unclear) is None
    state = str(tmp_path / "s")
    assert main(["--state", state, "init"]) == 0
    capsys.readouterr()
    assert main(["--state", state, "tier", "policy", "show"]) == 0  # an extension's command
    assert '"write_tier": "warm"' in capsys.readouterr().out


_EXIT_CHILD = """
import atexit, os, sys, threading, time
import gfs.cli
marker, mode = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(marker + ".atexit", "w").close())
if mode == "thread":  # a thread still running when the command returns
    def late() -> None:
        time.sleep(0.3)
        open(marker + ".thread", "w").close()
    threading.Thread(target=late).start()
if mode == "no-runner":  # an interpreter without CPython's private atexit runner
    del atexit._run_exitfuncs
def command(argv=None):
    sys.stdout.write("x" * (1 << 20))  # more than a pipe holds: flushed at the exit
    sys.stdout.write("end\\n")
    return 3
gfs.cli.main = command
gfs.cli.run()
"""


@pytest.mark.parametrize("mode", ["alone", "thread", "no-runner"])
def test_the_program_exits_fast_with_its_code_output_and_exit_handlers(
        tmp_path: Path, mode: str) -> None:
    """`run` (the console script) ends the process without the interpreter's teardown,
    yet with the command's code, all of its buffered output, the atexit handlers run,
    and, with another thread alive, only once that thread has ended; without the
    interpreter's atexit runner, by the normal exit."""
    marker = str(tmp_path / "m")
    r = subprocess.run([sys.executable, "-c", _EXIT_CHILD, marker, mode],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "x" * (1 << 20) + "end\n"
    assert os.path.exists(marker + ".atexit")
    assert os.path.exists(marker + ".thread") == (mode == "thread")


def test_the_installed_program_reports_as_before(tmp_path: Path) -> None:
    """The `hutong` program: a listing on standard output and code 0, an error's line
    and hint on standard error and code 2, and a listing cut short by its reader (a
    closed pipe) ends quietly with 141."""
    state = tmp_path / "s"
    Client.init(state).close()
    prog = [sys.executable, "-m", "gfs.cli", "--state", str(state)]
    for d in ("/alpha", "/beta"):
        subprocess.run([*prog, "mkdir", d], check=True, timeout=60)
    ok = subprocess.run([*prog, "ls", "/"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.split() == ["alpha/", "beta/"], ok
    bad = subprocess.run([*prog, "ls", "/missing"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr, bad
    reader = subprocess.Popen([*prog, "ls", "/"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # the reader goes before the listing is written
    assert reader.wait(timeout=60) == 141
    assert reader.stderr.read() == b""
