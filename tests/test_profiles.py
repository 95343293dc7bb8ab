"""Profiles (gfs.profiles, `hutong profile ...`) and `gfs.open_namespace` on the embedded
side: add/ls/use/rm through the real command, bad input that changes nothing, and the
commands that need an embedded store refusing a federated profile."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import gfs
from gfs.client import Client
from gfs.federation.auth import EntityKeys
from gfs.profiles import (
    PROFILES_ENV,
    ProfileError,
    add_profile,
    load_profiles,
    open_namespace,
    selected,
)
from tests.test_cli_behaviour import assert_one_error, hutong

REGISTRY = "http://127.0.0.1:8700"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    EntityKeys.create(d, "bank-a")
    return d


@pytest.fixture
def profiles() -> Path:
    return Path(os.environ[PROFILES_ENV])


def test_add_ls_use_rm_through_the_command(keys: Path, profiles: Path) -> None:
    token = EntityKeys.load(keys).mint_token("ann", "read", "/bank-a", 600)
    hutong("profile", "add", "a", "--registry", REGISTRY, "--entity", "bank-a", "--keys",
           str(keys), "--near", "w1")
    hutong("profile", "add", "t", "--registry", REGISTRY + "/", "--entity", "bank-a",
           "--token", token, "--use")
    rows = json.loads(hutong("profile", "ls", "--json").stdout)
    assert [(r["name"], r["current"], r["identity"]) for r in rows] == [
        ("a", False, "keys"), ("t", True, "token")]
    assert rows[0]["keys"] == str(keys) and rows[0]["near"] == "w1"
    assert rows[1]["registry"] == REGISTRY  # normalised
    text = hutong("profile", "ls").stdout.decode()
    assert token not in text and "* t" in text  # the secret is never printed
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    assert selected() == "t"
    hutong("profile", "use", "a")
    assert selected() == "a"
    assert selected("t") == "t"  # the argument wins
    os.environ["HUTONG_PROFILE"] = "t"
    try:
        assert selected() == "t"  # then the environment
    finally:
        del os.environ["HUTONG_PROFILE"]
    hutong("profile", "use", "local")
    assert selected() is None
    hutong("profile", "rm", "a")
    assert [r["name"] for r in json.loads(hutong("profile", "ls", "--json").stdout)] == ["t"]


@pytest.mark.parametrize("argv, words", [
    (["--token", "x.y", "--keys", "KEYS"], "not allowed with"),
    (["--keys", "/no/such/keys"], "does not exist"),
    (["--keys", "EMPTY"], "holds no usable entity keys"),
    (["--token", "garbage"], "not a Hutong user token"),
    (["--token", "TOKEN_OF_OTHER"], "issued by entity 'telco-b'"),
    (["--keys", "KEYS", "--registry", "ftp://x"], "registry URL"),
    (["--keys", "KEYS", "--registry", "http://h:99999"], "invalid port"),
    (["--keys", "KEYS", "--near", "Bad Site"], "site"),
], ids=["both", "missing-keys", "empty-keys", "bad-token", "other-token", "url", "port",
        "near"])
def test_bad_profile_is_refused_and_changes_nothing(argv: list[str], words: str, keys: Path,
                                                    profiles: Path, tmp_path: Path) -> None:
    hutong("profile", "add", "keep", "--registry", REGISTRY, "--entity", "bank-a", "--keys",
           str(keys), "--use")
    before = profiles.read_bytes()
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other"
    EntityKeys.create(other, "telco-b")
    subst = {"KEYS": str(keys), "EMPTY": str(tmp_path / "empty"),
             "TOKEN_OF_OTHER": EntityKeys.load(other).mint_token("u", "read", "/telco-b", 60)}
    argv = [subst.get(a, a) for a in argv]
    if "--registry" not in argv:
        argv += ["--registry", REGISTRY]
    proc = hutong("profile", "add", "keep", "--entity", "bank-a", *argv, check=False)
    assert proc.returncode == 2, proc.stderr.decode()
    assert words in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
    assert profiles.read_bytes() == before


def test_keys_of_another_entity_and_reserved_names_are_refused(keys: Path,
                                                                profiles: Path) -> None:
    with pytest.raises(ProfileError, match="keys of entity 'bank-a', not 'telco-b'"):
        add_profile("x", registry=REGISTRY, entity="telco-b", keys=keys)
    with pytest.raises(ProfileError, match="reserved"):
        add_profile("local", registry=REGISTRY, entity="bank-a", keys=keys)
    with pytest.raises(ProfileError, match="invalid"):
        add_profile("../x", registry=REGISTRY, entity="bank-a", keys=keys)
    assert not profiles.exists()


def test_unknown_profile_names_the_remedy(state_dir: Path, keys: Path,
                                          profiles: Path) -> None:
    hutong("profile", "add", "keep", "--registry", REGISTRY, "--entity", "bank-a", "--keys",
           str(keys), "--use")
    before = profiles.read_bytes()
    for argv in (["profile", "use", "nope"], ["profile", "rm", "nope"],
                 ["--profile", "nope", "ls", "/"], ["--profile", "nope", "profile", "ls"]):
        proc = hutong(*argv, state=state_dir, check=False)
        assert proc.returncode == 2, argv
        assert_one_error(proc.stderr)
        assert "no profile 'nope'" in proc.stderr.decode()
        assert profiles.read_bytes() == before


def test_corrupt_file_is_a_clear_error(profiles: Path, state_dir: Path) -> None:
    profiles.write_text("[profiles.a]\nregistry = 'http://x:1'\nentity = 'bank-a'\ntoken = \n")
    proc = hutong("ls", "/", state=state_dir, check=False)
    assert proc.returncode == 2
    assert_one_error(proc.stderr)
    assert f"profiles file {profiles}: not valid TOML" in proc.stderr.decode()
    profiles.write_text("current = 'a'\n[profiles.a]\nregistry = 'http://x:1'\n"
                        "entity = 'bank-a'\ntokne = 't'\n")
    proc = hutong("ls", "/", state=state_dir, check=False)
    assert proc.returncode == 2
    assert "did you mean 'token'?" in proc.stderr.decode()
    assert_one_error(proc.stderr)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    s = tmp_path / "state"
    hutong("init", "-q", state=s)
    return s


def test_no_profile_means_the_embedded_store(state_dir: Path, keys: Path) -> None:
    with open_namespace(state=state_dir) as ns:
        assert isinstance(ns, Client) and isinstance(ns, gfs.Namespace)
        ns.write_bytes("/x", b"embedded")
    with gfs.open_namespace("local", state=state_dir, memory_bytes=1 << 20) as ns:
        assert ns.read_bytes("/x") == b"embedded"
    hutong("profile", "add", "fed", "--registry", REGISTRY, "--entity", "bank-a", "--keys",
           str(keys))  # defined but not in use: still the embedded store
    assert hutong("cat", "/x", state=state_dir).stdout == b"embedded"
    with pytest.raises(ProfileError, match="store settings"):
        open_namespace("fed", pack_size=1 << 20)


def test_store_commands_refuse_a_federated_profile(state_dir: Path, keys: Path,
                                                   profiles: Path) -> None:
    hutong("profile", "add", "fed", "--registry", REGISTRY, "--entity", "bank-a", "--keys",
           str(keys), "--use")
    for argv in (["gc"], ["fsck"], ["pool", "ls"], ["tier", "status"]):
        proc = hutong(*argv, state=state_dir, check=False)
        assert proc.returncode == 2, argv
        assert_one_error(proc.stderr)
        assert "needs an embedded store" in proc.stderr.decode()
        assert "--profile local" in proc.stderr.decode()
    assert "chunks_removed" in hutong("--profile", "local", "gc", "--json",
                                      state=state_dir).stdout.decode()
    assert load_profiles(profiles).current == "fed"
