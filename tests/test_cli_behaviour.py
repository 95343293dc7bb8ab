"""How `hutong` behaves as a command: version, start-up, streams, JSON, pipes, errors,
resumed puts, damaged trees and repair. Each runs the real command in a process."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from gfs.cli import build_parser
from gfs.client import Client
from gfs.meta import Location
from gfs.packs import pack_key
from gfs.testing.faults import flip_byte
from tests.conftest import make_tree, tree_digest

HUTONG = [sys.executable, "-m", "gfs.cli"]
ROOT = Path(__file__).parent.parent


def hutong(*args: str, state: Path | None = None, stdin: bytes | None = None,
           check: bool = True, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[bytes]:
    argv = [*HUTONG, *(["--state", str(state)] if state else []), *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} -> {proc.returncode}\n{proc.stderr.decode()}")
    return proc


def assert_one_error(stderr: bytes) -> None:
    """One error line and one hint line; never a traceback."""
    text = stderr.decode()
    lines = text.strip().splitlines()
    assert "Traceback" not in text, text
    assert lines and lines[0].startswith("hutong: ") and "error" in lines[0], text
    assert len(lines) == 2 and lines[1].startswith("hint: "), text


@pytest.fixture
def state(tmp_path: Path) -> Path:
    s = tmp_path / "state"
    hutong("init", "-q", state=s)
    return s


def test_version_matches_the_installed_distribution() -> None:
    out = hutong("--version").stdout.decode().split()
    assert out == ["hutong", version("hutong")]


def test_help_and_completion_load_no_heavy_module() -> None:
    code = ("import sys, gfs.cli\n"
            "gfs.cli.build_parser()\n"
            "heavy = ('lmdb', 'aiohttp', 'dask', 'distributed', 'pyarrow', 'tenseal', "
            "'zstandard', 'asyncio', 'pydantic', 'fsspec', 'numpy', 'cryptography')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
            "             or m in ('gfs.client', 'gfs.store', 'gfs.meta', 'gfs.mover')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_completion_scripts_name_every_command() -> None:
    script = hutong("completion", "bash").stdout.decode()
    for word in ("put", "fsck", "mount", "registry", "--skip-damaged", "--repair"):
        assert word in script
    assert "compdef" in hutong("completion", "zsh").stdout.decode()


def test_init_quiet_prints_nothing(tmp_path: Path) -> None:
    proc = hutong("init", "-q", state=tmp_path / "s")
    assert proc.stdout == b"" and proc.stderr == b""


def test_put_and_get_stream_through_dash(state: Path) -> None:
    data = random.Random(1).randbytes(3_000_000)
    hutong("put", "-q", "-", "/streamed.bin", state=state, stdin=data)
    assert hutong("get", "/streamed.bin", "-", state=state).stdout == data
    assert hutong("cat", "/streamed.bin", state=state).stdout == data
    proc = hutong("get", "/", "-", state=state, check=False)
    assert proc.returncode == 2
    assert_one_error(proc.stderr)


def test_json_on_listings_and_reports(state: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=3, files=10)
    put = json.loads(hutong("put", "--json", str(src), "/t", state=state).stdout)
    assert put["files"] > 0 and put["new_raw_bytes"] > 0
    names = {e["name"] for e in json.loads(hutong("ls", "--json", "/t", state=state).stdout)}
    assert names == {p.name for p in src.iterdir()}
    assert json.loads(hutong("stat", "--json", "/t", state=state).stdout)["kind"] == "dir"
    assert json.loads(hutong("du", "--json", "/", state=state).stdout)["files"] == put["files"]
    assert "chunks_removed" in json.loads(hutong("gc", "--json", state=state).stdout)
    assert json.loads(hutong("fsck", "--json", state=state).stdout)["ok"] is True
    got = json.loads(hutong("get", "--json", "/t", str(tmp_path / "o"), state=state).stdout)
    assert got["files"] == put["files"] and got["damaged"] == []
    pools = json.loads(hutong("pool", "ls", "--json", state=state).stdout)
    assert pools[0]["name"] == "default" and pools[0]["used_bytes"] > 0
    status = json.loads(hutong("status", "--json", state=state).stdout)
    assert status["mode"] == "embedded" and status["usage"]["files"] == put["files"]
    assert json.loads(hutong("tier", "run", "--json", state=state).stdout)["moved"] == 0


def test_closed_pipe_is_quiet(state: Path) -> None:
    hutong("mkdir", "-p", *[f"/many/d{i:05d}" for i in range(3000)], state=state)
    proc = subprocess.Popen([*HUTONG, "--state", str(state), "ls", "/many"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert err == b""


def test_status_of_a_local_store_needs_no_registry(state: Path) -> None:
    out = hutong("status", state=state).stdout.decode()
    assert "embedded store at" in out and "default" in out


def test_repeated_put_resumes_instead_of_nesting(state: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "big", seed=6, files=40)
    hutong("put", "-q", str(src), "/big", state=state)
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*")
                   if p.is_file() and not p.is_symlink())
    hutong("rm", f"/big/{files[5]}", f"/big/{files[9]}", state=state)  # "interrupted"
    report = json.loads(hutong("put", "--json", str(src), "/big", state=state).stdout)
    assert report["files"] == 2 and report["unchanged"] == len(files) - 2
    assert hutong("stat", "/big/big", state=state, check=False).returncode == 2
    out = tmp_path / "out"
    hutong("get", "-q", "/big", str(out), state=state)
    assert tree_digest(out) == tree_digest(src)


def _chunk_location(state: Path, path: str, index: int = 0) -> tuple[str, Location]:
    with Client(state) as fs:
        m = fs.manifest(path)
        with fs.engine.read() as txn:
            rec = txn.get_chunk(m.chunks[index].id)
        assert rec is not None
        return pack_key(rec.locations[0].pack), rec.locations[0]


def _corrupt(state: Path, path: str) -> None:
    key, loc = _chunk_location(state, path)
    with Client(state) as fs:
        flip_byte(fs.store.pool(loc.pool), key, loc.offset + loc.length // 2)


def _damaged_tree(state: Path, tmp_path: Path) -> tuple[Path, str]:
    """A 231-file tree of distinct files in the store; one file's chunk corrupted."""
    src = tmp_path / "tree"
    rnd = random.Random(7)
    for i in range(231):
        d = src / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03d}.bin").write_bytes(rnd.randbytes(rnd.randrange(100, 20_000)))
    hutong("put", "-q", str(src), "/tree", state=state)
    victim = "/tree/d3/f010.bin"
    _corrupt(state, victim)
    return src, victim


def test_get_skip_damaged_restores_everything_readable(state: Path, tmp_path: Path) -> None:
    src, victim = _damaged_tree(state, tmp_path)
    out = tmp_path / "out"
    plain = hutong("get", "/tree", str(out), state=state, check=False)
    assert plain.returncode == 1  # without the flag the damage stops the get
    assert_one_error(plain.stderr)
    out2 = tmp_path / "out2"
    proc = hutong("get", "--skip-damaged", "--json", "/tree", str(out2), state=state,
                  check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["damaged"] == [victim] and report["files"] == 230
    restored = {str(p.relative_to(out2)) for p in out2.rglob("*") if p.is_file()}
    assert len(restored) == 230 and "d3/f010.bin" not in restored
    assert not [p for p in out2.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    for rel in restored:
        assert (out2 / rel).read_bytes() == (src / rel).read_bytes()


def test_fsck_repair_takes_good_copies_from_another_store(state: Path, tmp_path: Path) -> None:
    src, victim = _damaged_tree(state, tmp_path)
    backup = tmp_path / "backup"
    hutong("init", "-q", state=backup)
    hutong("put", "-q", str(src), "/tree", state=backup)  # the same data, another store
    assert hutong("fsck", "-q", state=state, check=False).returncode == 1
    proc = hutong("fsck", "--repair", "--json", "--from", str(backup), state=state)
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["repair"]["repaired"] == 1
    assert report["repair"]["lost"] == []
    assert hutong("cat", victim, state=state).stdout == (src / "d3/f010.bin").read_bytes()
    hutong("gc", "-q", state=state)
    assert hutong("fsck", "-q", state=state).returncode == 0


def test_fsck_repair_raises_reference_counts_below_the_references(state: Path,
                                                                  tmp_path: Path) -> None:
    """Counts left low (a PostgreSQL store before 2026-12, after an S3 multipart
    completion): fsck names them, `fsck --repair` raises them before gc can drop the
    chunks; a count above the references is left (a leak, not a loss)."""
    a, b = os.urandom(200_000), os.urandom(100_000)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    hutong("put", "-q", str(tmp_path / "a"), "/a", state=state)
    hutong("put", "-q", str(tmp_path / "b"), "/b", state=state)
    with Client(state) as fs:
        ids = [[r.id for r in fs.manifest(p).chunks] for p in ("/a", "/b")]
        fs.engine.transact(lambda txn: txn.add_refcounts(
            {**{c: -1 for c in ids[0]}, **{c: 1 for c in ids[1]}}))
    proc = hutong("fsck", "--json", "--no-data", state=state, check=False)
    low = json.loads(proc.stdout)["low_refcounts"]
    assert proc.returncode == 1 and sorted(low) == sorted([c.hex(), 0, 1] for c in ids[0])
    proc = hutong("fsck", "--repair", state=state, check=False)
    assert f"raised the reference counts of {len(ids[0])} chunks" in proc.stderr.decode()
    assert proc.returncode == 1  # b's counts, one too high, stay reported
    proc = hutong("fsck", "--json", "--no-data", state=state, check=False)
    report = json.loads(proc.stdout)
    assert report["low_refcounts"] == [] and len(report["problems"]) == len(ids[1])
    hutong("gc", "-q", state=state)
    assert hutong("cat", "/a", state=state).stdout == a
    assert hutong("cat", "/b", state=state).stdout == b


def test_repair_leaves_a_count_that_changed_since_fsck_read_it(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count another host's writer changed between fsck's read and the raise is left
    for the next run: adding the old difference could overshoot it."""
    from gfs import repair
    from gfs.fsck import FsckReport

    with Client(state) as fs:
        fs.write_bytes("/f", os.urandom(10_000))  # one chunk
        [cid] = [r.id for r in fs.manifest("/f").chunks]
        stale = FsckReport(low_refcounts=[(cid.hex(), 0, 2)])  # read before a change
        monkeypatch.setattr(repair, "check", lambda store, verify_data: stale)
        with fs.store.gc_exclusive():
            assert repair.raise_low_refcounts(fs.store) == 0
        with fs.engine.read() as txn:
            rec = txn.get_chunk(cid)
        assert rec is not None and rec.refcount == 1


def test_fsck_repair_marks_lost_chunks_and_a_new_put_heals(state: Path, tmp_path: Path) -> None:
    src, victim = _damaged_tree(state, tmp_path)
    proc = hutong("fsck", "--repair", "--json", state=state, check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["repair"]["damaged_files"] == [victim]
    assert len(report["repair"]["lost"]) == 1
    read = hutong("cat", victim, state=state, check=False)
    assert read.returncode == 1 and b"lost" in read.stderr
    assert_one_error(read.stderr)
    assert hutong("cat", "/tree/d3/f003.bin", state=state).stdout == \
        (src / "d3/f003.bin").read_bytes()
    hutong("gc", "-q", state=state)  # gc copes with the lost chunk and keeps the rest
    again = hutong("fsck", "--json", state=state, check=False)
    assert json.loads(again.stdout)["damaged_files"] == [victim]
    # the same content put anywhere again heals every file that names the chunk
    hutong("put", "-q", str(src / "d3/f010.bin"), "/healer.bin", state=state)
    assert hutong("cat", victim, state=state).stdout == (src / "d3/f010.bin").read_bytes()
    assert hutong("fsck", "-q", state=state).returncode == 0


def test_repair_keeps_the_good_of_two_copies(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as fs:
        data = random.Random(2).randbytes(100_000)
        fs.write_bytes("/f", data)
        cid = fs.manifest("/f").chunks[0].id
        with fs.engine.read() as txn:
            rec = txn.get_chunk(cid)
        assert rec is not None
        blob = fs.store.source.get_blob(cid)
        loc = rec.locations[0]
        flip_byte(fs.store.pool(loc.pool), pack_key(loc.pack), loc.offset + 40)
        assert fs.store.replace_copies({cid: blob}) == 1  # a second, good copy
        with fs.engine.write() as txn:  # keep both: one bad, one good
            fresh = txn.get_chunk(cid)
            assert fresh is not None
            from gfs.meta import ChunkRecord, PackRecord
            p = txn.get_pack(loc.pack)
            assert p is not None
            txn.put_pack(PackRecord(p.id, p.pool, p.size, p.nchunks, p.live_chunks + 1,
                                    p.live_bytes + loc.length, p.created_ns))
            txn.put_chunk(ChunkRecord(cid, fresh.raw_len, fresh.stored_len, fresh.codec,
                                      fresh.refcount, (loc, *fresh.locations)))
        assert not fs.fsck().ok
        r = fs.repair()
        assert r.dropped_copies == 1 and r.lost == [] and r.repaired == 0
        assert fs.fsck().ok and fs.read_bytes("/f") == data


def _leaf_commands() -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []

    def walk(p: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, (*prefix, name))
                return
        out.append(prefix)
    walk(build_parser(), ())
    return out


#: One wrong request for every command: a bad value, a path that does not exist, a
#: malformed file, a missing store or registry. Every one must exit 2 with one line.
BAD_INPUT: dict[tuple[str, ...], list[str]] = {
    ("init",): ["init", "--avg-size", "1000"],
    ("put",): ["put", "/no/such/local/path", "/x"],
    ("get",): ["get", "/missing", "OUT"],
    ("ls",): ["ls", "/missing"],
    ("cat",): ["cat", "/missing"],
    ("stat",): ["stat", "relative/path"],
    ("rm",): ["rm", "/missing"],
    ("mv",): ["mv", "/missing", "/y"],
    ("mkdir",): ["mkdir", "/a/../b"],
    ("du",): ["du", "/missing"],
    ("gc",): ["--state", "NOSTATE", "gc"],
    ("fsck",): ["fsck", "--repair", "--from", "NOSTATE"],
    ("completion",): ["completion", "powershell"],
    ("mount",): ["mount", "/no/such/mountpoint"],
    ("umount",): ["umount", "/no/such/mountpoint"],
    ("cache", "stats"): ["cache", "stats", "/no/such/mountpoint"],
    ("warmup",): ["warmup", "/missing"],
    ("mover", "serve"): ["mover", "serve", "--port", "99999"],
    ("copy",): ["copy", "/missing", "/x", "--to-state", "NOSTATE"],
    ("pool", "add"): ["pool", "add", "p1", "file:///tmp/x", "--capacity", "lots"],
    ("pool", "ls"): ["--state", "NOSTATE", "pool", "ls"],
    ("tier", "policy", "set"): ["tier", "policy", "set", "--demote-idle", "banana"],
    ("tier", "policy", "show"): ["--state", "NOSTATE", "tier", "policy", "show"],
    ("tier", "run"): ["--state", "NOSTATE", "tier", "run"],
    ("tier", "status"): ["--state", "NOSTATE", "tier", "status"],
    ("state", "show"): ["--state", "NOSTATE", "state", "show"],
    ("state", "relocate"): ["state", "relocate", "/no/such/pool", "/elsewhere"],
    ("meta", "dump"): ["meta", "dump", "/no/such/dir/meta.zst"],
    ("meta", "compact"): ["--state", "NOSTATE", "meta", "compact"],
    ("meta", "load"): ["meta", "load", "/no/such/meta.zst", "--meta", "mysql://x"],
    ("registry", "serve"): ["registry", "serve", "--port", "99999"],
    ("site", "init"): ["site", "init", "--entity", "bad entity!", "--name", "s",
                       "--region", "r"],
    ("site", "serve"): ["site", "serve", "--port", "-1"],
    ("token", "mint"): ["token", "mint", "--user", "u", "--ttl=-5m"],
    ("grant",): ["grant", "/x/**", "--to", "y", "--read"],
    ("entity", "revoke-cert"): ["entity", "revoke-cert", "not-a-serial"],
    ("rule", "add"): ["rule", "add", "/x/**", "--copies", "two"],
    ("rule", "ls"): ["rule", "ls"],
    ("rule", "rm"): ["rule", "rm", "r1"],
    ("rule", "reconcile"): ["rule", "reconcile"],
    ("status",): ["status", "--registry", "not a url"],
    ("profile", "add"): ["profile", "add", "p", "--registry", "http://127.0.0.1:9",
                         "--entity", "bank-a", "--keys", "/no/such/keys",
                         "--insecure-plaintext"],
    ("profile", "ls"): ["--profile", "nosuch", "profile", "ls"],
    ("profile", "use"): ["profile", "use", "nosuch"],
    ("profile", "rm"): ["profile", "rm", "nosuch"],
    ("plan",): ["plan", "/no/such/job.toml"],
    ("run",): ["run", "/no/such/job.toml"],
    ("join",): ["join", "--left", "a", "--right", "b", "--on", "k"],
    ("psi",): ["psi", "--left", "a", "--right", "b", "--on", "k"],
    ("query",): ["query", "--table", "nota:table", "--as", "e"],
    ("audit", "verify"): ["audit", "verify", "no-such-entity"],
    ("audit", "show"): ["audit", "show", "no-such-entity"],
    ("privacy", "keys"): ["privacy", "keys", "bad entity!"],
    ("privacy", "policy"): ["privacy", "policy", "e", "/no/such/policy.json"],
    ("gateway", "s3"): ["gateway", "s3", "--listen", "127.0.0.1:99999"],
    ("gateway", "webdav"): ["gateway", "webdav", "--listen", "nohost"],
    ("gateway", "credentials", "add"): ["gateway", "credentials", "add", "--bucket", "../x"],
    ("gateway", "credentials", "ls"): ["--state", "NOSTATE", "gateway", "credentials", "ls"],
    ("gateway", "credentials", "rm"): ["gateway", "credentials", "rm", "NOSUCHKEY"],
    ("gateway", "token-credentials"): ["gateway", "token-credentials", "not-a-token"],
    ("dashboard",): ["dashboard", "--listen", "127.0.0.1:abc"],
    ("registry", "admit"): ["registry", "admit", "bad name!", "--key", "xyz"],
    ("registry", "pending"): ["--state", "NOSTATE", "registry", "pending"],
    ("registry", "metrics-token"): ["--state", "NOSTATE", "registry", "metrics-token"],
    ("log",): ["--state", "NOSTATE", "log"],
}


def test_bad_input_table_covers_every_command() -> None:
    assert sorted(_leaf_commands()) == sorted(BAD_INPUT)


#: Flags with input, beyond each command's row above.
BAD_FLAGS: dict[str, list[str]] = {
    "entity revoke-cert zero": ["entity", "revoke-cert", "0"],
    "entity revoke-cert too long": ["entity", "revoke-cert", "ab" * 21],
    "entity revoke-cert no keys": ["entity", "revoke-cert", "1f", "--registry",
                                   "https://127.0.0.1:9", "--token", "t"],
    "mount --meta-entries": ["mount", "OUT", "--meta-entries", "0"],
    "pool add --encrypt": ["pool", "add", "p2", "nosuchproto://x", "--encrypt"],
    "init --encrypt": ["init", "--encrypt"],
    "log --since": ["log", "--since", "last tuesday"],
    "log --path": ["--state", "NOSTATE", "log", "--path", "/a/../b"],
    "mount --meta-ttl": ["mount", "OUT", "--meta-ttl", "-1"],
    "meta compact --min-free": ["meta", "compact", "--min-free", "101"],
    "meta compact --min-free nan": ["meta", "compact", "--min-free", "nan"],
    "registry metrics-token --ttl": ["registry", "metrics-token", "--ttl", "0"],
    "mount --profile": ["mount", "OUT", "--profile", "no-such-profile"],
    "gateway s3 --profile": ["gateway", "s3", "--profile", "no-such-profile", "--listen",
                             "127.0.0.1:0"],
    "profile add --registry-ca missing": ["profile", "add", "p", "--registry",
                                          "https://127.0.0.1:9", "--entity", "bank-a",
                                          "--token", "t", "--registry-ca", "/no/such/ca.pem"],
    "profile add --registry-ca garbage": ["profile", "add", "p", "--registry",
                                          "https://127.0.0.1:9", "--entity", "bank-a",
                                          "--token", "t", "--registry-ca", "pyproject.toml"],
    "grant --registry-ca garbage": ["grant", "/x/**", "--to", "y", "--read", "--registry",
                                    "https://127.0.0.1:9", "--token", "t", "--registry-ca",
                                    "pyproject.toml"],
}


@pytest.mark.parametrize("command", sorted(BAD_INPUT), ids=" ".join)
def test_bad_input_is_one_line_and_exit_2(command: tuple[str, ...], state: Path,
                                          tmp_path: Path) -> None:
    _assert_bad_input(BAD_INPUT[command], state, tmp_path)


@pytest.mark.parametrize("flag", sorted(BAD_FLAGS))
def test_bad_flag_is_one_line_and_exit_2(flag: str, state: Path, tmp_path: Path) -> None:
    _assert_bad_input(BAD_FLAGS[flag], state, tmp_path)


def _assert_bad_input(raw: list[str], state: Path, tmp_path: Path) -> None:
    argv = [a.replace("NOSTATE", str(tmp_path / "nostate")).replace("OUT", str(tmp_path / "o"))
            for a in raw]
    env = {"HUTONG_REGISTRY": "", "HUTONG_TOKEN": ""}
    before = sorted(p.name for p in (state / "pools" / "default").rglob("*"))
    proc = hutong(*argv, state=state, check=False, env=env)
    assert proc.returncode == 2, (argv, proc.stderr.decode())
    text = proc.stderr.decode()
    assert "Traceback" not in text and text.count("\n") <= 3, text
    assert "error" in text.splitlines()[0], text
    assert sorted(p.name for p in (state / "pools" / "default").rglob("*")) == before


@pytest.mark.parametrize("quiet", [True, False])
def test_put_and_get_without_a_bar_do_not_import_tqdm(state: Path, tmp_path: Path,
                                                      quiet: bool) -> None:
    """No terminal or --quiet: no bar, no progress callback and no tqdm import (it
    took 5% of the CPU of a put of 6,800 files)."""
    src = make_tree(tmp_path / "src", seed=4, files=8)
    q = ["-q"] if quiet else []
    code = ("import sys; from gfs.cli import main; "
            f"rc = main(['--state', {str(state)!r}, 'put', *{q!r}, {str(src)!r}, '/t']); "
            f"rc |= main(['--state', {str(state)!r}, 'get', *{q!r}, '/t', "
            f"{str(tmp_path / 'back')!r}]); "
            "print(rc, 'tqdm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          cwd=ROOT, check=True)
    assert proc.stdout.split()[-2:] == [b"0", b"False"]
    assert tree_digest(tmp_path / "back") == tree_digest(src)


def test_put_on_a_terminal_shows_the_bar(state: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from gfs.cli import main

    src = make_tree(tmp_path / "src", seed=5, files=8)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["--state", str(state), "put", str(src), "/t"]) == 0
    assert "put:" in capsys.readouterr().err  # tqdm's bar, named by its description


def test_the_put_bar_takes_its_total_from_the_put_walk(state: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded put's bar does not walk the tree before the put (a tree of millions
    of files was walked twice): its total grows with the put's own walk and ends at the
    tree's size, with every byte counted done."""
    import tqdm

    import gfs.cli as cli
    from gfs.cli import main

    src = make_tree(tmp_path / "src", seed=6, files=30)
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    bars: list[tqdm.tqdm] = []

    class Recorded(tqdm.tqdm):  # type: ignore[type-arg]
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)
            bars.append(self)

    def no_prewalk(path: str) -> int:
        raise AssertionError(f"the tree {path} was walked before the put")

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    monkeypatch.setattr(cli, "_local_size", no_prewalk)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["--state", str(state), "put", str(src), "/t"]) == 0
    (bar,) = bars
    assert bar.total == size and bar.n == size


def test_the_program_freezes_its_start_up_objects_and_a_caller_keeps_its_gc(state: Path
                                                                             ) -> None:
    """`hutong` (main without argv) moves the objects of its start-up out of the
    collector's way; main(argv) called from a program leaves that program's gc alone."""
    code = ("import gc, sys; from gfs.cli import main; "
            f"rc = main(['--state', {str(state)!r}, 'ls', '/']); before = gc.get_freeze_count(); "
            f"sys.argv = ['hutong', '--state', {str(state)!r}, 'ls', '/']; rc |= main(); "
            "print(rc, before, gc.get_freeze_count() > 1000)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          cwd=ROOT, check=True)
    assert proc.stdout.split()[-3:] == [b"0", b"0", b"True"]


def test_a_program_put_freezes_what_it_imported_and_collects_less_often(
        state: Path, tmp_path: Path) -> None:
    """`hutong put` (main without argv) freezes the objects of the modules it imported
    after start-up (gfs.client's among them) and raises the young generation's
    threshold for its loop; main(argv) called from a program changes neither."""
    src = make_tree(tmp_path / "src", seed=3, files=5)
    put = ["--state", str(state), "put", "--quiet", str(src)]
    program = (f"import gc, sys; from gfs import cli; sys.argv = ['hutong', *{[*put, '/a']!r}]; "
               "rc = cli.main(); import gfs.client; "
               "print(rc, gc.get_threshold()[0] == getattr(cli, 'PUT_GEN0_THRESHOLD', 0), "
               "all(o is not vars(gfs.client) for o in gc.get_objects()))")
    caller = ("import gc, sys; from gfs import cli; "
              f"rc = cli.main({[*put, '/b']!r}); "
              "print(rc, gc.get_threshold()[0], gc.get_freeze_count())")
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          cwd=ROOT, check=True).stdout.split()[-3:] for code in (program, caller)]
    assert out == [[b"0", b"True", b"True"], [b"0", b"700", b"0"]]


def test_a_program_get_freezes_what_it_imported_and_collects_less_often(
        state: Path, tmp_path: Path) -> None:
    """`hutong get` settles the collector as a put does: a get's plan makes an inode
    and a manifest per entry, and young collections (each holding the GIL the main
    thread needs) were a tenth of a small-file get's main thread."""
    src = make_tree(tmp_path / "src", seed=3, files=5)
    subprocess.run([sys.executable, "-m", "gfs.cli", "--state", str(state), "put", "--quiet",
                    str(src), "/a"], cwd=ROOT, check=True, timeout=120, capture_output=True)
    get = ["--state", str(state), "get", "--quiet", "/a", str(tmp_path / "out")]
    program = (f"import gc, sys; from gfs import cli; sys.argv = ['hutong', *{get!r}]; "
               "rc = cli.main(); import gfs.client; "
               "print(rc, gc.get_threshold()[0] == getattr(cli, 'PUT_GEN0_THRESHOLD', 0), "
               "all(o is not vars(gfs.client) for o in gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=120,
                         cwd=ROOT, check=True).stdout.split()[-3:]
    assert out == [b"0", b"True", b"True"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in src.iterdir())
