"""Privacy jobs between two real sites (loopback addresses, real site daemons, the
registry, mutual TLS): each entity's half runs at its own primary site on its own
store and keys; the answers equal DuckDB's; the registry keeps each party's
countersigned audit head, so a rewrite that both parties agree on is still caught."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gfs.cli import main as hutong
from gfs.client import Client
from gfs.errors import HutongError
from gfs.federation.client import FederationClient
from gfs.federation.http import HttpClient
from gfs.federation.testing import Federation
from gfs.federation.tls import trust_for
from privacy import remote
from privacy.audit import AuditLog, audit_path, record_hash
from privacy.errors import AuditError, AuthError, ProtocolError, QueryError
from privacy.jobs import JobSpec
from privacy.testing import open_policy, put_policy, put_table
from privacy.transport import SiteParty
from tests.test_privacy_audit import rechain
from tests.test_privacy_sql import check, reference

FACT, DIM, DIM2 = "/shop-a/fact.parquet", "/ref-b/dim.parquet", "/ref-b/dim2.parquet"
SECRET = "/ref-b/secret.parquet"
IDS_A, IDS_B = "/shop-a/ids.parquet", "/ref-b/ids.parquet"
KEYS = 40
PSI_KEYS = 40_000


def tables(n: int = 300, keys: int = KEYS) -> dict[str, pa.Table]:
    """A fact table of `n` rows (many rows per key, some keys unmatched), a dimension
    table (one row per key of `keys`) and one with 1-3 rows per key (many-to-many)."""
    fact = pa.table({"k": [(i * 7) % (keys + 8) for i in range(n)],
                     "g": [("a", "b", "c")[(i * 5) % 3] for i in range(n)],
                     "amt": [(i * 37) % 400 - 20 for i in range(n)]})
    dim = pa.table({"k": list(range(keys)), "v": [(k * 13) % 90 for k in range(keys)],
                    "region": [("north", "south")[k % 2] for k in range(keys)]})
    dup = [k for k in range(keys) for _ in range(1 + k % 3)]
    dim2 = pa.table({"k": dup, "w": [(i * 11) % 60 for i in range(len(dup))],
                     "zone": [("east", "west")[k % 2] for k in dup]})
    return {"fact": fact, "dim": dim, "dim2": dim2}


def policies() -> tuple[dict[str, Any], dict[str, Any]]:
    """shop-a's and ref-b's policies: each lets the other join and intersect."""
    a = open_policy("shop-a", "ref-b", FACT, key="k", columns=["amt", "g"], group_by=["g"])
    a["partners"]["ref-b"]["tables"][IDS_A] = {"key_columns": ["id"],
                                               "psi_outputs": ["cardinality"]}
    b = open_policy("ref-b", "shop-a", DIM, key="k", columns=["v", "region"],
                    group_by=["region"])
    b["partners"]["shop-a"]["tables"][DIM2] = {
        "key_columns": ["k"], "columns": ["w", "zone"], "group_by": ["zone"],
        "aggregates": ["count", "sum", "mean"]}
    b["partners"]["shop-a"]["tables"][IDS_B] = {"key_columns": ["id"],
                                                "psi_outputs": ["cardinality"]}
    return a, b


class Sites:
    """shop-a at site a1, ref-b at site b1, each the primary of its entity."""

    def __init__(self, fed: Federation, t: dict[str, pa.Table]) -> None:
        self.fed, self.t = fed, t
        self.a = fed.client("shop-a")
        self.b = fed.client("ref-b")

    def run(self, fc: FederationClient, entity: str, spec: JobSpec) -> dict[str, Any]:
        return remote.run(fc, entity, spec)

    def state(self, site: str) -> Path:
        return Path(self.fed.sites[site]["state"])

    def partner_result(self, entity: str, job: str) -> dict[str, Any]:
        """The result of `entity`'s half of `job`, read at its site when it ends."""
        fc = self.a if entity == "shop-a" else self.b
        return remote.wait(fc.entity_site(entity), job, 60)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    t = tables()
    with Federation(tmp_path_factory.mktemp("psites"), heartbeat=0.3) as fed:
        fed.registry()
        fed.site("a1", "shop-a", "cn-east", primary=True)
        fed.site("b1", "ref-b", "cn-west", primary=True)
        s = Sites(fed, t)
        put_table(s.a, FACT, t["fact"])
        put_table(s.a, IDS_A, pa.table({"id": list(range(PSI_KEYS))}))
        doc_a, doc_b = policies()
        put_policy(s.a, doc_a)
        put_table(s.b, DIM, t["dim"])
        put_table(s.b, DIM2, t["dim2"])
        put_table(s.b, SECRET, t["dim"])
        put_table(s.b, IDS_B, pa.table({"id": list(range(PSI_KEYS // 2, 2 * PSI_KEYS))}))
        put_policy(s.b, doc_b)
        try:
            yield s
        finally:
            s.a.close()
            s.b.close()


def test_each_half_runs_at_its_own_site_and_the_join_equals_sql(
        sites: Sites, capsys: pytest.CaptureFixture[str]) -> None:
    """SELECT g, count(*), avg(v) FROM fact JOIN dim USING (k) GROUP BY g, started by
    shop-a's user: shop-a's half at a1 on a1's store, ref-b's at b1 on b1's."""
    spec = JobSpec("join", FACT, DIM, "k", aggs="count(*),mean(v)", group_by="g")
    ans = sites.run(sites.a, "shop-a", spec)
    assert ans["entity"] == "shop-a" and ans["role"] == "selector" and ans["receiver"]
    want = reference(sites.t, 'SELECT g, count(*) AS "count(*)", avg(v) AS "mean(v)" '
                              "FROM fact JOIN dim USING (k) GROUP BY g")
    check(ans["groups"], want, ["g"])
    other = sites.partner_result("ref-b", spec.job_id)
    assert other["role"] == "value-holder" and "groups" not in other
    # neither store holds the other's table; each log verifies with the entity's key
    with Client(sites.state("a1")) as fs:
        assert not fs.exists(DIM) and not fs.exists("/ref-b")
        assert AuditLog(fs, "shop-a", SiteParty.load(sites.state("a1")).identity()).verify()
    with Client(sites.state("b1")) as fs:
        assert not fs.exists(FACT)
        log = AuditLog(fs, "ref-b", SiteParty.load(sites.state("b1")).identity())
        assert log.verify() and log.anchored_head("shop-a") is not None
    for site, entity in (("a1", "shop-a"), ("b1", "ref-b")):
        assert hutong(["--state", str(sites.state(site)), "audit", "verify", entity]) == 0
        assert "the registry keeps" in capsys.readouterr().out


def test_many_to_many_started_by_the_right_party_result_there(sites: Sites) -> None:
    """The right party (ref-b) starts the job and receives it; the value column is
    shop-a's, groups come from both sides; shop-a's half listens, ref-b's connects."""
    spec = JobSpec("join", FACT, DIM2, "k", aggs="count(*),sum(amt),mean(amt)",
                   group_by="zone,g", receiver="right")
    ans = sites.run(sites.b, "ref-b", spec)
    assert ans["entity"] == "ref-b" and ans["receiver"]
    want = reference(sites.t, 'SELECT zone, g, count(*) AS "count(*)", sum(amt) AS '
                              '"sum(amt)", avg(amt) AS "mean(amt)" FROM fact JOIN dim2 '
                              "USING (k) GROUP BY zone, g")
    check(ans["groups"], want, ["zone", "g"])
    assert "groups" not in sites.partner_result("shop-a", spec.job_id)


def test_a_query_runs_at_the_owners_site_for_the_asker(sites: Sites) -> None:
    """Compute-to-data: shop-a asks ref-b's site for aggregates of ref-b's table; the
    query runs at ref-b's site on ref-b's store and shop-a receives the released rows."""
    spec = JobSpec("query", DIM, "shop-a", "-", aggs="count(*),sum(v)", group_by="region")
    ans = sites.run(sites.a, "shop-a", spec)
    want = reference(sites.t, 'SELECT region AS "group", count(*) AS "count(*)", '
                              'sum(v) AS "sum(v)" FROM dim GROUP BY region')
    assert ans["role"] == "querier"
    check(ans["groups"], want, ["group"])
    owner = sites.partner_result("ref-b", spec.job_id)
    assert owner["role"] == "owner" and "groups" not in owner


def test_the_partner_site_refuses_before_starting_a_half(sites: Sites) -> None:
    spec = JobSpec("join", FACT, SECRET, "k", aggs="count(*)")  # no policy for SECRET
    with pytest.raises(HutongError, match=r"secret.parquet"):
        remote.start(sites.a.entity_site("shop-a"), spec)
    with Client(sites.state("b1")) as fs:
        assert not list((sites.state("b1") / "privacy" / "jobs").glob(f"{spec.job_id}*"))
        recs = AuditLog(fs, "ref-b", SiteParty.load(sites.state("b1")).identity()).records()
        assert all(r.get("job") != spec.job_id for r in recs)


@pytest.mark.parametrize("raw, message", [
    ({"kind": "join", "left": FACT, "right": DIM, "on": "k", "job_id": "../../../etc/x"},
     "job id must be 32 hex digits"),
    ({"kind": "join", "left": FACT, "right": DIM, "on": "k", "evil": 1},
     "unknown job spec field"),
    ({"kind": "join", "left": FACT, "right": DIM, "on": "k", "timeout": "9"}, "'timeout'"),
    ({"kind": "join", "left": FACT, "right": DIM, "on": "k", "where": {"g": 1}}, "'where'"),
    ({"kind": "join", "left": FACT, "right": DIM}, r"field\(s\) on missing"),
    ("join", "JSON object"),
])
def test_a_spec_from_another_site_is_checked_field_by_field(raw: object, message: str
                                                           ) -> None:
    with pytest.raises(QueryError, match=message):
        JobSpec.from_wire(raw)


def test_only_the_named_partner_may_ask_for_a_half(sites: Sites) -> None:
    """shop-a's site cannot make b1 run a half of a job between other entities, and
    shop-a's users cannot start a job at ref-b's site."""
    spec = JobSpec("join", "/other-c/t.parquet", DIM, "k")
    h = sites.fed.http("b1", keys=sites.fed.keys("shop-a"))
    try:
        with pytest.raises(HutongError, match="not the other party"):
            h.call("POST", "/v1/privacy/peer-jobs", {"spec": asdict(spec)})
    finally:
        h.close()
    # a user of shop-a cannot start a job at ref-b's site
    with pytest.raises(HutongError, match="only users of ref-b"):
        remote.start(sites.a.entity_site("ref-b"),
                     JobSpec("join", FACT, DIM, "k"))


def spill_dirs(state: Path) -> list[Path]:
    """The PSI spill directories of a site (`<pid>-<random>`, the pid of the half)."""
    base = state / "tmp" / "psi"
    return sorted(base.iterdir()) if base.exists() else []


def kill_mid_psi(state: Path, started: float, timeout: float = 60) -> int:
    """SIGKILL the half at the site of `state` as soon as its spill directory exists
    (its PSI is running); returns its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dirs = [d for d in spill_dirs(state) if d.stat().st_mtime >= started - 1]
        if dirs:
            pid = int(dirs[0].name.split("-", 1)[0])
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.01)
    raise TimeoutError(f"the half at {state} never started its PSI")


def wait_empty(states: list[Path], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(spill_dirs(s) for s in states):
        assert time.monotonic() < deadline, [spill_dirs(s) for s in states]
        time.sleep(0.05)


def test_a_half_killed_mid_job_leaves_no_spill_files_at_either_site(sites: Sites) -> None:
    spec = JobSpec("psi", IDS_A, IDS_B, "id")
    site = sites.a.entity_site("shop-a")
    started = time.time()
    remote.start(site, spec)
    kill_mid_psi(sites.state("b1"), started)
    with pytest.raises(ProtocolError, match="ref-b"):  # the kill landed mid-job
        remote.wait(site, spec.job_id, 120)
    wait_empty([sites.state("a1"), sites.state("b1")])
    # the next PSI between them still runs and is right
    ans = sites.run(sites.a, "shop-a", JobSpec("psi", IDS_A, IDS_B, "id"))
    assert ans["size"] == PSI_KEYS // 2
    wait_empty([sites.state("a1"), sites.state("b1")])


def _connect(host: str, port: int, cert: tuple[Path, Path] | None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx.wrap_socket(socket.create_connection((host, port), timeout=30))


@pytest.mark.parametrize("cert", ["none", "registry"])
def test_a_listening_half_admits_only_the_partners_certificate(sites: Sites, cert: str
                                                                ) -> None:
    """An attacker who learns where ref-b's half listens connects first, without a
    client certificate or with one no shop-a CA issued: TLS refuses it and the half
    ends without reading a byte of the job (nothing released, the job failed)."""
    spec = JobSpec("join", FACT, DIM, "k", aggs="count(*)")
    h = sites.fed.http("b1", keys=sites.fed.keys("shop-a"))
    try:  # as shop-a's site would: ref-b's site starts its half and says where
        where = h.call("POST", "/v1/privacy/peer-jobs", {"spec": asdict(spec)})
    finally:
        h.close()
    reg_tls = sites.fed.root / "registry" / "tls"
    pair = None if cert == "none" else (reg_tls / "node.pem", reg_tls / "node.key")
    with contextlib.suppress(ssl.SSLError, OSError):
        s = _connect(where["host"], int(where["port"]), pair)
        s.sendall(b"HUTONG-PRIV/1\n")  # TLS 1.3: the refusal arrives with the first read
        assert s.recv(1) == b""
    with pytest.raises(AuthError, match="TLS handshake with shop-a's party failed"):
        remote.wait(sites.b.entity_site("ref-b"), spec.job_id, 60)


def test_registry_keeps_each_head_and_refuses_to_go_back(sites: Sites) -> None:
    keys = sites.fed.keys("shop-a")
    reg = HttpClient(sites.fed.registry_url, keys=keys, tls=trust_for(keys))
    try:
        rec = reg.call("GET", "/v1/audit/shop-a/head")
        with Client(sites.state("a1")) as fs:
            log = AuditLog(fs, "shop-a", SiteParty.load(sites.state("a1")).identity())
            assert (rec["seq"], rec["head"]) == log.head()
        with pytest.raises(HutongError, match="rewritten or cut"):
            reg.call("PUT", "/v1/audit/shop-a/head", {"seq": rec["seq"] - 1,
                                                      "head": "0" * 64})
        with pytest.raises(HutongError, match="bad signature"):
            reg.call("PUT", "/v1/audit/ref-b/head", {"seq": 99, "head": "0" * 64})
    finally:
        reg.close()


def test_a_log_rewritten_with_the_key_is_caught_by_the_registry(sites: Sites) -> None:
    """An insider of shop-a rewrites the release record of the last job and
    re-chains the log with the entity key, so that it verifies on its own; the
    record the registry keeps no longer matches: the next job is refused."""
    state = sites.state("a1")
    ident = SiteParty.load(state).identity()
    path = audit_path("shop-a")
    with Client(state) as fs:
        original = fs.read_bytes(path)
        key = AuditLog(fs, "shop-a", ident)._key
        lines = original.decode().splitlines()
        i = max(n for n, ln in enumerate(lines) if json.loads(ln)["kind"] == "release")
        lines[i] = json.dumps({**json.loads(lines[i]), "groups": 0})  # "nothing released"
        rechain(lines, lambda p, r: record_hash(key, p, r))
        fs.write_bytes(path, ("\n".join(lines) + "\n").encode())
        assert AuditLog(fs, "shop-a", ident).verify() == len(lines)
    try:
        with pytest.raises(AuditError, match="not the one the registry countersigned: the "
                                             "log was rewritten"):
            sites.run(sites.a, "shop-a", JobSpec("join", FACT, DIM, "k", aggs="count(*)"))
    finally:
        with Client(state) as fs:
            fs.write_bytes(path, original)


def _cut(state: Path, entity: str, n: int) -> None:
    """An insider cuts the entity's log back to its first `n` records (a prefix of a
    chain verifies on its own)."""
    ident = SiteParty.load(state).identity()
    with Client(state) as fs:
        path = audit_path(entity)
        lines = fs.read_bytes(path).decode().splitlines()[:n]
        fs.write_bytes(path, ("\n".join(lines) + "\n").encode())
        assert AuditLog(fs, entity, ident).verify() == n


def _length(state: Path, entity: str) -> int:
    with Client(state) as fs:
        return len(AuditLog(fs, entity, SiteParty.load(state).identity()).records())


@pytest.mark.parametrize("how", ["never-started", "site-killed"])
def test_a_listening_half_ends_promptly_when_the_initiator_is_gone(sites: Sites, how: str
                                                                   ) -> None:
    """shop-a's site has ref-b's site start a half and then never connects: its own
    half never started (a1 has no record of the job), or a1 is killed -9 while b1's
    half listens. b1's half notices within a few heartbeats, not after its 60 s
    accept wait, fails naming the reason, and leaves no spill files."""
    spec = JobSpec("psi", IDS_A, IDS_B, "id")
    if how == "site-killed":
        sites.fed.kill("a1", signal.SIGKILL)
    h = sites.fed.http("b1", keys=sites.fed.keys("shop-a"))
    try:
        h.call("POST", "/v1/privacy/peer-jobs", {"spec": asdict(spec)})
        t0 = time.monotonic()
    finally:
        h.close()
    try:
        why = "unreachable" if how == "site-killed" else "does not run it"
        with pytest.raises(ProtocolError, match=f"will not connect: .*{why}"):
            remote.wait(sites.b.entity_site("ref-b"), spec.job_id, 60)
        assert time.monotonic() - t0 < 15
        wait_empty([sites.state("b1")])
    finally:
        if how == "site-killed":  # back on a new port: a fresh client finds it
            sites.fed.start("a1")
            sites.fed.wait_status("a1", "up")
            sites.a.close()
            sites.a = sites.fed.client("shop-a")
    if how == "site-killed":  # the pair works again once a1 is back
        assert sites.run(sites.a, "shop-a", JobSpec("psi", IDS_A, IDS_B, "id"))["size"] == \
            PSI_KEYS // 2


def test_a_cut_both_parties_agree_on_is_caught_by_the_registry(
        sites: Sites, capsys: pytest.CaptureFixture[str]) -> None:
    """Both insiders cut their last job from their logs (so each still holds the head
    the other countersigned before it, and the peers' check passes); the registry's
    copy of each head is newer: the next job is refused. (Runs last: it breaks the
    logs.)"""
    before = {s: _length(sites.state(s), e) for s, e in (("a1", "shop-a"), ("b1", "ref-b"))}
    sites.run(sites.a, "shop-a", JobSpec("join", FACT, DIM, "k", aggs="count(*),sum(v)",
                                         group_by="g"))
    for site, entity in (("a1", "shop-a"), ("b1", "ref-b")):
        _cut(sites.state(site), entity, before[site])
    with pytest.raises(AuditError, match=r"the registry countersigned .*tail was cut"):
        sites.run(sites.a, "shop-a", JobSpec("join", FACT, DIM, "k", aggs="count(*)"))
    assert hutong(["--state", str(sites.state("b1")), "audit", "verify", "ref-b"]) == 1
    assert "the registry countersigned" in capsys.readouterr().err
