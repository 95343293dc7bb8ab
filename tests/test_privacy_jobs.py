"""Privacy jobs end to end: two party processes over an authenticated loopback
channel, policies enforced before any data is read, audit logs, dropped parties,
and the `hutong` commands."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from gfs.cli import main as hutong
from gfs.client import Client
from privacy import jobs, keys
from privacy.audit import AuditLog
from privacy.errors import AuthError, PolicyError, ProtocolError, QueryError
from privacy.jobs import FAULT_ENV, JobSpec, run_job
from privacy.policy import complementary_suppression
from privacy.testing import open_policy, put_policy, put_table

BANK = "/bank-a/customers.parquet"
TELCO = "/telco-b/subscribers.parquet"
N = 3000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, pa.Table, pa.Table]]:
    state = tmp_path_factory.mktemp("privacy") / "state"
    rnd = random.Random(5)
    bank = pa.table({"phone": [f"138{rnd.randrange(2 * N):07d}" for _ in range(N)],
                     "balance": [rnd.randrange(0, 50000) for _ in range(N)],
                     "segment": [rnd.choice(["retail", "sme"]) for _ in range(N)],
                     "income": [rnd.randrange(1000) for _ in range(N)]})
    telco = pa.table({"phone": [f"138{p:07d}" for p in rnd.sample(range(2 * N), N)],
                      "region": [rnd.choice(["north", "south", "east", "west"])
                                 for _ in range(N - 3)] + ["island"] * 3})
    with Client.init(state) as fs:
        put_table(fs, BANK, bank)
        put_table(fs, TELCO, telco)
        put_policy(fs, open_policy("bank-a", "telco-b", BANK, columns=["balance", "segment"],
                                   group_by=["segment"], min_group_size=10,
                                   table_extra={"clip": {"balance": [0, 1_000_000]}}))
        put_policy(fs, open_policy("telco-b", "bank-a", TELCO, columns=["region"],
                                   group_by=["region"], min_group_size=10))
    yield state, bank, telco


def expected(bank: pa.Table, telco: pa.Table) -> dict[str, tuple[int, int]]:
    b = bank.to_pandas()
    t = telco.to_pandas().drop_duplicates()
    m = b.merge(t, on="phone")
    g = m.groupby("region")["balance"].agg(["count", "sum"])
    return {str(k): (int(r["count"]), int(r["sum"])) for k, r in g.iterrows()}


def suppressed(bank: pa.Table, telco: pa.Table) -> set[str]:
    """The regions a minimum of 10 suppresses (complementary suppression included)."""
    m = bank.to_pandas().merge(telco.to_pandas(), on="phone")
    return complementary_suppression(m.groupby("region")["phone"].nunique().to_dict(), 10)


def records(state: Path, entity: str) -> list[dict[str, object]]:
    with Client(state) as fs:
        log = AuditLog(fs, entity)
        log.verify()
        return log.records()


def test_join_matches_plaintext_and_suppresses_small_groups(world: tuple[Path, pa.Table, pa.Table],
                                                            ) -> None:
    state, bank, telco = world
    steps: list[str] = []
    spec = JobSpec("join", BANK, TELCO, "phone", aggs="count(*),sum(balance),mean(balance)",
                   group_by="region")
    res = run_job(spec, state, lambda s, d, t: steps.append(s))
    ans = res.answer
    assert ans["role"] == "selector" and ans["scheme"] == "bfv"
    want = expected(bank, telco)
    got = {r["region"]: (r["count(*)"], r["sum(balance)"]) for r in ans["groups"]}
    hidden = suppressed(bank, telco)
    assert got == {g: v for g, v in want.items() if g not in hidden}
    assert "island" in hidden and len(hidden) == 2 and ans["suppressed"] == 2
    for r in ans["groups"]:
        assert r["mean(balance)"] == pytest.approx(r["sum(balance)"] / r["count(*)"])
    assert res.left["role"] == "value-holder" and "groups" not in res.left
    assert any(s.startswith("left:") for s in steps) and any(s.startswith("right:")
                                                             for s in steps)
    kinds = [r["kind"] for r in records(state, "bank-a") if r.get("job") == spec.job_id]
    assert kinds == ["job-start", "release", "suppressed", "job-done"]


def test_psi_intersection_through_processes(world: tuple[Path, pa.Table, pa.Table]) -> None:
    state, bank, telco = world
    spec = JobSpec("psi", BANK, TELCO, "phone", output="intersection")
    ans = run_job(spec, state).answer
    want = set(bank.column("phone").to_pylist()) & set(telco.column("phone").to_pylist())
    assert ans["size"] == len(want) and ans["intersection"] == sorted(want)
    card = run_job(JobSpec("psi", BANK, TELCO, "phone"), state).answer
    assert card["size"] == len(want) and "intersection" not in card


@pytest.mark.parametrize("spec,rule", [
    (JobSpec("join", BANK, TELCO, "phone", aggs="sum(income)"), "columns"),
    (JobSpec("join", BANK, TELCO, "phone", aggs="sum(segment)"), None),
    (JobSpec("join", BANK, TELCO, "phone", aggs="count(distinct balance)"), None),
    (JobSpec("join", BANK, TELCO, "balance=phone"), "key_columns"),
    (JobSpec("psi", BANK, "/telco-c/x.parquet", "phone"), "partners"),
])
def test_policy_refusal_before_any_data(world: tuple[Path, pa.Table, pa.Table], spec: JobSpec,
                                        rule: str | None) -> None:
    state, _, _ = world
    with Client(state) as fs:
        if spec.right.startswith("/telco-c"):
            keys.identity(fs.state, "telco-c")
            put_table(fs, spec.right, pa.table({"phone": ["1"]}))
            put_policy(fs, open_policy("telco-c", "bank-a", spec.right))
    with pytest.raises((PolicyError, QueryError)) as ei:
        run_job(spec, state)
    if rule is not None:
        assert isinstance(ei.value, PolicyError) and ei.value.rule == rule
        assert f"rule {rule}" in str(ei.value)
    for ent in ("bank-a",):
        recs = [r for r in records(state, ent) if r.get("job") == spec.job_id]
        assert "job-start" not in [r["kind"] for r in recs]
        assert "release" not in [r["kind"] for r in recs]


def test_wrong_pinned_key_fails_the_handshake(world: tuple[Path, pa.Table, pa.Table]) -> None:
    state, _, _ = world
    for entity in ("bank-a", "telco-b"):  # made by the first job, if one ran before
        keys.identity(state, entity)
    pub = keys.key_dir(state) / "telco-b.pub"
    good = pub.read_text()
    pub.write_text("11" * 32 + "\n")
    try:
        with pytest.raises(AuthError, match="failed to prove its entity key"):
            run_job(JobSpec("psi", BANK, TELCO, "phone"), state)
    finally:
        pub.write_text(good)


@pytest.mark.parametrize("fault", ["right:pjc-aggregate", "left:pjc-encrypt"])
def test_party_dropping_mid_protocol_releases_nothing(world: tuple[Path, pa.Table, pa.Table],
                                                      fault: str) -> None:
    state, _, _ = world
    spec = JobSpec("join", BANK, TELCO, "phone", aggs="count(*),sum(balance)",
                   group_by="region", timeout=60)
    shm = Path("/dev/shm")
    before = set(shm.glob("sem.mp-*"))
    with pytest.raises(ProtocolError, match=r"closed the connection|died"):
        run_job(spec, state, env={FAULT_ENV: fault})
    # the dead party's worker pool left no named semaphore behind (its tracker was let be)
    assert set(shm.glob("sem.mp-*")) <= before
    survivor = "bank-a" if fault.startswith("right") else "telco-b"
    recs = [r for r in records(state, survivor) if r.get("job") == spec.job_id]
    kinds = [r["kind"] for r in recs]
    assert kinds[-1] == "job-failed" and "release" not in kinds
    assert "closed the connection" in str(recs[-1]["error"])


def test_compute_to_data_query(world: tuple[Path, pa.Table, pa.Table]) -> None:
    state, bank, _ = world
    spec = JobSpec("query", BANK, "telco-b", "-", aggs="count(*),mean(balance)",
                   group_by="segment", where={"segment": "retail"})
    ans = run_job(spec, state).answer
    b = bank.to_pandas()
    r = b[b.segment == "retail"]
    assert ans["groups"] == [{"group": "retail", "count(*)": len(r),
                              "mean(balance)": pytest.approx(r.balance.mean())}]
    with pytest.raises(PolicyError, match="rule group_by"):
        run_job(JobSpec("query", BANK, "telco-b", "-", group_by="phone"), state)


def test_cli_join_psi_and_audit(world: tuple[Path, pa.Table, pa.Table],
                                capsys: pytest.CaptureFixture[str]) -> None:
    state, bank, telco = world
    assert hutong(["--state", str(state), "join", "--left", BANK, "--right", TELCO, "--on",
                   "phone", "--agg", "count(*),mean(balance)", "--group-by", "region",
                   "--json"]) == 0
    ans = json.loads(capsys.readouterr().out)
    want = expected(bank, telco)
    assert {r["region"]: r["count(*)"] for r in ans["groups"]} == {
        g: c for g, (c, _) in want.items() if g not in suppressed(bank, telco)}
    assert hutong(["--state", str(state), "join", "--left", BANK, "--right", TELCO, "--on",
                   "phone", "--agg", "sum(income)"]) == 2
    assert "rule columns" in capsys.readouterr().err
    assert hutong(["--state", str(state), "audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "audit bank-a: ok" in out and "audit telco-b: ok" in out


def test_python_api(world: tuple[Path, pa.Table, pa.Table]) -> None:
    state, bank, telco = world
    ans = jobs.join(BANK, TELCO, "phone", "count(*),mean(balance)", "segment", state=state)
    b = bank.to_pandas()
    m = b[b.phone.isin(set(telco.column("phone").to_pylist()))]
    want = m.groupby("segment")["balance"].agg(["count", "mean"])
    assert [r["segment"] for r in ans["groups"]] == list(want.index)
    for r in ans["groups"]:
        assert r["count(*)"] == want.loc[r["segment"], "count"]
        assert r["mean(balance)"] == pytest.approx(want.loc[r["segment"], "mean"])
    assert jobs.intersect(BANK, TELCO, "phone", state=state)["size"] == len(
        set(b.phone) & set(telco.column("phone").to_pylist()))
    with pytest.raises(QueryError, match="ungrouped"):  # V groups: S cannot find its extreme
        jobs.join(BANK, TELCO, "phone", "max(balance)", group_by="segment", state=state)


def test_refusal_comes_before_the_table_is_opened(world: tuple[Path, pa.Table, pa.Table],
                                                  ) -> None:
    state, _, _ = world
    with Client(state) as fs:
        fs.write_bytes("/bank-a/broken.parquet", b"not parquet at all")
    spec = JobSpec("psi", "/bank-a/broken.parquet", TELCO, "phone")
    with pytest.raises(PolicyError, match=r"rule tables: .*broken\.parquet"):
        run_job(spec, state)


def test_dp_budget_is_charged_and_then_refuses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    n = 300
    with Client.init(state) as fs:
        put_table(fs, "/lab-x/v.parquet", pa.table({"id": list(range(n)),
                                                     "score": [i % 50 for i in range(n)]}))
        put_table(fs, "/lab-y/s.parquet", pa.table({"id": list(range(0, 2 * n, 2))}))
        put_policy(fs, open_policy("lab-x", "lab-y", "/lab-x/v.parquet", key="id",
                                   columns=["score"], epsilon_per_release=1.0,
                                   epsilon_budget=1.5,
                                   table_extra={"clip": {"score": [0, 50]}}))
        put_policy(fs, open_policy("lab-y", "lab-x", "/lab-y/s.parquet", key="id"))
    spec = JobSpec("join", "/lab-x/v.parquet", "/lab-y/s.parquet", "id",
                   aggs="count(*),sum(score)")
    answer = run_job(spec, state).answer
    first = answer["groups"][0]
    assert first["noise"]["count"]["mechanism"] == "discrete laplace (opendp)"
    assert first["noise"]["score"]["epsilon"] == pytest.approx(1.0 / 3)
    assert answer["epsilon_left"] == pytest.approx(0.5)
    assert abs(first["count(*)"] - 150) < 100
    with pytest.raises(PolicyError, match="rule epsilon_budget"):
        run_job(JobSpec("join", "/lab-x/v.parquet", "/lab-y/s.parquet", "id",
                        aggs="count(*),sum(score)"), state)
    with Client(state) as fs:
        log = AuditLog(fs, "lab-x")
        assert log.spent("lab-y") == 1.0 and log.verify() > 0
