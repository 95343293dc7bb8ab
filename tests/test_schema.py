"""One schema-validated loader for user-written files (gfs.schema): for each kind of
file, a misspelt key and a wrong type are refused naming the key, and nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

from gfs.cli import main
from gfs.client import Client
from gfs.config import StoreConfig
from gfs.errors import ConfigError, HutongError
from gfs.schema import Schema, SchemaError, load, validate
from gfs.tiering.policy import TierPolicy
from gfs.units import Duration, Size


class _Inner(Schema):
    min_group_size: int = 1
    epsilon: float | None = None


class _Doc(Schema):
    name: str
    limit: Size = 0
    every: Duration = 60.0
    inner: _Inner = _Inner()
    parts: dict[str, _Inner] = Field(default_factory=dict)
    items: list[_Inner] = Field(default_factory=list)


# -- the loader -----------------------------------------------------------------------------


def test_error_class() -> None:
    with pytest.raises(SchemaError) as e:
        validate(_Doc, {"name": "x", "limt": 1})
    assert isinstance(e.value, HutongError) and isinstance(e.value, ValueError)
    assert isinstance(e.value, ConfigError)


@pytest.mark.parametrize("data, words", [
    ({"name": "x", "inner": {"min_group_sise": 10}},
     ["unknown key 'inner.min_group_sise'", "did you mean 'min_group_size'?"]),
    ({"name": "x", "parts": {"a": {"epsilonn": 1.0}}},
     ["'parts.a.epsilonn'", "did you mean 'epsilon'?"]),
    ({"name": "x", "items": [{}, {"min_grop_size": 2}]},
     ["'items[1].min_grop_size'", "did you mean 'min_group_size'?"]),
    ({"name": "x", "zzz": 1}, ["unknown key 'zzz'", "valid keys: every, inner"]),
    ({"name": "x", "inner": {"epsilon": "0.5"}}, ["inner.epsilon:", "'0.5'"]),
    ({"name": "x", "inner": {"min_group_size": "10"}}, ["inner.min_group_size:", "'10'"]),
    ({"name": "x", "inner": {"min_group_size": True}}, ["inner.min_group_size:"]),
    ({"name": 5}, ["name:", "valid string"]),
    ({}, ["name: required key missing"]),
    ({"name": "x", "limit": "lots"}, ["limit: not a size: 'lots'", "e.g. 512k"]),
    ({"name": "x", "every": "soon"}, ["every: not a duration: 'soon'", "e.g. 45s"]),
])
def test_problems_name_the_key(data: dict[str, object], words: list[str]) -> None:
    with pytest.raises(SchemaError) as e:
        validate(_Doc, data, where="test file t.toml")
    text = str(e.value)
    assert text.startswith("test file t.toml: ") and "\n" not in text
    for w in words:
        assert w in text


def test_files_json_and_toml(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('name = "a"\nlimit = "64KiB"\nevery = "1h30m"\n'
                                     '[inner]\nmin_group_size = 3\n')
    doc = load(_Doc, tmp_path / "a.toml", what="test file")
    assert (doc.limit, doc.every, doc.inner.min_group_size) == (65536, 5400.0, 3)
    (tmp_path / "a.json").write_text(json.dumps({"name": "b", "limit": 10}))
    assert load(_Doc, tmp_path / "a.json").limit == 10
    for name, text, word in (("bad.toml", "name = ", "not valid TOML"),
                             ("bad.json", "{", "not valid JSON"),
                             ("list.json", "[1]", "must be a table"),
                             ("missing.toml", None, "No such file")):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(SchemaError, match=word) as e:
            load(_Doc, tmp_path / name, what="test file")
        assert f"test file {tmp_path / name}" in str(e.value)


def test_direct_construction_raises_the_same_error() -> None:
    with pytest.raises(SchemaError, match="did you mean 'min_group_size'"):
        _Inner(min_group_sze=3)  # type: ignore[call-arg]


# -- store config (STATE/config.toml, HUTONG_* environment, arguments) ---------------------


def test_store_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "s"
    Client.init(state).close()
    cfg = state / "config.toml"
    good = cfg.read_text()
    cfg.write_text(good.replace("zstd_level", "zstd_levl"))
    with pytest.raises(SchemaError, match=r"unknown key 'store\.zstd_levl'; did you mean "
                       r"'zstd_level'\?") as e:
        Client(state)
    assert str(cfg) in str(e.value)
    cfg.write_text(good.replace("zstd_level = 3", 'zstd_level = "3"'))
    with pytest.raises(SchemaError, match=r"store\.zstd_level: input should be a valid "
                       r"integer, got '3'"):
        Client(state)
    cfg.write_text(good.replace("pack_size = 16777216", 'pack_size = "1MiB"'))
    with Client(state) as fs:
        assert fs.config.pack_size == 1 << 20
    monkeypatch.setenv("HUTONG_PACK_SIZE", "2M")
    assert StoreConfig.load(state).pack_size == 2 << 20
    monkeypatch.setenv("HUTONG_WORKERS", "four")
    with pytest.raises(SchemaError, match="environment HUTONG_WORKERS: workers"):
        StoreConfig.load(state)
    monkeypatch.delenv("HUTONG_WORKERS")
    assert StoreConfig.load(state, {"pack_size": "4MiB"}).pack_size == 4 << 20
    with pytest.raises(SchemaError, match=r"argument: unknown key 'pack_sise'; did you mean"):
        StoreConfig.load(state, {"pack_sise": 1})
    with pytest.raises(SchemaError, match="power of two"):
        StoreConfig.load(state, {"avg_size": 65535})


def test_cli_refuses_a_bad_config_file(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "s"
    Client.init(state).close()
    (state / "config.toml").write_text("[store]\ncomit_files = 10\n")
    assert main(["--state", str(state), "ls", "/"]) != 0
    err = capsys.readouterr().err
    assert "did you mean 'commit_files'?" in err and "Traceback" not in err


# -- tier policy (`hutong tier policy set`, stored as JSON) --------------------------------


def test_tier_policy_keys_and_types() -> None:
    with pytest.raises(SchemaError, match="did you mean 'demote_idle'"):
        validate(TierPolicy, {"demote_idel": "7d"}, where="tier policy")
    with pytest.raises(SchemaError, match="promote_reads: input should be a valid number"):
        validate(TierPolicy, {"promote_reads": "3"}, where="tier policy")
    p = validate(TierPolicy, {"demote_idle": "1w", "rate": "100MB"}, where="tier policy")
    assert (p.demote_idle, p.rate) == (604800.0, 100 << 20)
    with pytest.raises(ConfigError, match="set it again"):
        TierPolicy.from_json(b'{"window": "3600", "demote_idle": "soon"}')


def test_refused_policy_set_changes_nothing(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    s = ["--state", str(tmp_path / "s")]
    assert main([*s, "init"]) == 0
    assert main([*s, "tier", "policy", "set", "--window", "2h", "--pin", "/keep=hot"]) == 0
    with Client(tmp_path / "s") as fs:
        before = fs.policy()
    assert before.window == 7200.0
    refused = [["--low", "0.95"],                         # above high: refused by the model
               ["--window", "1h", "--price", "lukewarm=1"],   # unknown tier key
               ["--window", "1h", "--pin", "/x=tepid"],   # unknown tier value
               ["--window", "1h", "--cold-level", "40"]]
    for args in refused:
        capsys.readouterr()
        assert main([*s, "tier", "policy", "set", *args]) == 2  # a wrong request
        err = capsys.readouterr().err
        assert "tier policy" in err and "Traceback" not in err
    for args in (["--window", "soon"], ["--rate", "-1"], ["--demote-idle", ""]):
        with pytest.raises(SystemExit) as e:
            main([*s, "tier", "policy", "set", *args])
        assert e.value.code == 2
    with Client(tmp_path / "s") as fs:
        assert fs.policy() == before


# -- dataflow job files and sites files ------------------------------------------------------

SITES = ('[defaults]\ninter_mbps = 100\n[sites.a]\nregion = "west"\nentity = "bank-a"\n'
         '[sites.b]\nregion = "east"\nentity = "lab"\n'
         '[[links]]\na = "a"\nb = "b"\nmbps = 50\nrtt_ms = 40\n'
         '[owners.bank-a]\nallow = "region=west"\n')
JOB = 'sites = "sites.toml"\ninputs = ["/bank-a/x/**"]\nentry = "m:f"\n[constraints]\n'


@pytest.mark.parametrize("text, words", [
    (SITES.replace("inter_mbps", "inter_mpbs"),
     ["unknown key 'defaults.inter_mpbs'", "did you mean 'inter_mbps'?"]),
    (SITES.replace("rtt_ms = 40", "rtt_msec = 40"),
     ["unknown key 'links[0].rtt_msec'", "did you mean 'rtt_ms'?"]),
    (SITES.replace('region = "east"', 'regoin = "east"'),
     ["unknown key 'sites.b.regoin'", "did you mean 'region'?"]),
    (SITES.replace("mbps = 50", 'mbps = "50"'), ["links[0].mbps:", "got '50'"]),
    (SITES + "[sites.c]\nslots = \"4\"\n", ["sites.c.slots:", "got '4'"]),
    (SITES.replace("inter_mbps = 100", "inter_mbps = 0"), ["defaults.inter_mbps:"]),
    (SITES.replace('allow = "region=west"', 'allow = "region=(("'),
     ["owners.bank-a.allow: expression 'region=(('"]),
    (SITES.replace('b = "b"', 'b = "zz"'), ["links[0]: unknown site 'zz'"]),
    ('secret = "xyz"\n' + SITES, ["secret: must be hex"]),
    (SITES + 'secret = "ab"\n', ["unknown key 'owners.bank-a.secret'"]),  # TOML: in the table
])
def test_sites_file_problems_name_the_key(tmp_path: Path, text: str, words: list[str]) -> None:
    from dataflow import ConfigError as DataflowConfigError
    from dataflow import Topology

    p = tmp_path / "sites.toml"
    p.write_text(text)
    with pytest.raises(DataflowConfigError) as e:
        Topology.from_config(p)
    assert isinstance(e.value, SchemaError) and f"sites file {p}" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_sites_file_good_and_as_a_dict(tmp_path: Path) -> None:
    from dataflow import Topology

    (tmp_path / "sites.toml").write_text(SITES)
    topo = Topology.from_config(tmp_path / "sites.toml")
    assert topo.link("b", "a").bandwidth == 50e6 / 8 and topo.owners == {"bank-a": "region=west"}
    assert topo.sites["a"].entity == "bank-a" and topo.sites["b"].slots == 1
    with pytest.raises(SchemaError, match=r"sites: unknown key 'sites\.a\.slot'; did you mean "
                       r"'slots'\?"):
        Topology.from_config({"sites": {"a": {"slot": 2}}})


@pytest.mark.parametrize("text, words", [
    (JOB + "deadlin = 60\n", ["unknown key 'constraints.deadlin'", "did you mean 'deadline'?"]),
    (JOB.replace("entry", "entyr"), ["unknown key 'entyr'", "did you mean 'entry'?",
                                     "entry: required key missing"]),
    (JOB + 'deadline = "soon"\n', ["constraints.deadline: not a duration: 'soon'"]),
    (JOB + 'budget = "1.0"\n', ["constraints.budget:", "got '1.0'"]),
    (JOB.replace("[constraints]", 'per_task = "2"\n[constraints]'),
     ["per_task: input should be a valid integer, got '2'"]),
    (JOB.replace('entry = "m:f"', 'entry = "nocolon"'), ["entry: must be 'module:function'"]),
    (JOB + "[federation]\nregistyr = 'http://x'\n",
     ["unknown key 'federation.registyr'", "did you mean 'registry'?"]),
])
def test_job_file_problems_name_the_key(tmp_path: Path, text: str, words: list[str]) -> None:
    from dataflow.jobfile import load_job

    p = tmp_path / "job.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_job(p)
    assert f"job file {p}" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_job_file_durations_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataflow.jobfile import load_job

    (tmp_path / "sites.toml").write_text(SITES)
    p = tmp_path / "job.toml"
    p.write_text(JOB + 'deadline = "1h30m"\nobjective = "time"\n')
    job = load_job(p)
    assert (job.deadline, job.objective, job.inputs) == (5400.0, "time", ["/bank-a/x/**"])
    p.write_text(JOB + 'objectiv = "time"\n')
    assert main(["plan", str(p)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'objective'?" in err and "Traceback" not in err


# -- federation: rules (`hutong rule add`, POST /v1/rules) and site.json -----------------------


def test_rules_and_site_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gfs.federation.http import BadRequestError
    from gfs.federation.testing import Federation

    def hutong(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gfs.cli", *args], capture_output=True,
                              text=True, timeout=60)

    with Federation(tmp_path) as fed:
        fed.registry()
        fed.site("a1", "bank-a", "cn-west", primary=True)
        state = str(fed.sites["a1"]["state"])
        with fed.client("bank-a") as fc:
            before = fc.rules("bank-a")
            primary = fc.entity_site("bank-a")
            for body, words in (
                    ({"pattern": "/bank-a/x", "copies": 1, "wehre": "site=a1"},
                     ["rule: unknown key 'wehre'", "did you mean 'where'?"]),
                    ({"pattern": "/bank-a/x", "copies": "2"},
                     ["copies: input should be a valid integer, got '2'"]),
                    ({"pattern": "/bank-a/x", "copies": 1, "lifetime": "soon"},
                     ["lifetime: not a duration: 'soon'"]),
                    ({"pattern": "/bank-a/x", "copies": 1, "where": "region=("},
                     ["where: expression 'region=('"])):
                with pytest.raises(BadRequestError) as e:
                    primary.call("POST", "/v1/rules", body)
                for w in words:
                    assert w in str(e.value)
            assert fc.rules("bank-a") == before                      # nothing was added
            r = fc.rule_add("/bank-a/x", 1, "site=a1", lifetime=None)
            assert r["expires"] is None
        out = hutong("rule", "add", "/bank-a/y", "--copies", "1", "--lifetime", "1w",
                     "--state", state)
        assert out.returncode == 0, out.stderr
        bad = hutong("rule", "add", "/bank-a/y", "--copies", "1", "--lifetime", "soon",
                     "--state", state)
        assert bad.returncode == 2 and "e.g. 45s" in bad.stderr
        with fed.client("bank-a") as fc:
            [week] = [r for r in fc.rules("bank-a") if r["pattern"] == "/bank-a/y"]
            assert 604000 < week["expires"] - week["created"] <= 604800
    from gfs.federation.site import SiteConfig

    site_json = fed.sites["a1"]["state"] / "federation" / "site.json"
    good = site_json.read_text()
    site_json.write_text(good.replace('"primary"', '"primray"'))
    with pytest.raises(SchemaError, match="did you mean 'primary'"):
        SiteConfig.load(fed.sites["a1"]["state"])
    site_json.write_text(good.replace('"primary": true', '"primary": "yes"'))
    with pytest.raises(SchemaError, match="primary: input should be a valid boolean"):
        SiteConfig.load(fed.sites["a1"]["state"])
