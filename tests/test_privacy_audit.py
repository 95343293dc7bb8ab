"""The hash-chained audit log: appends verify; any edit, removal or reordering fails."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from gfs.cli import main as hutong
from gfs.client import Client
from privacy.audit import AuditLog, audit_path, record_hash
from privacy.errors import AuditError
from privacy.jobs import JobSpec, run_job
from privacy.testing import open_policy, put_policy, put_table


def filled(fs: Client, n: int = 5) -> AuditLog:
    log = AuditLog(fs, "bank-a")
    for i in range(n):
        log.append("release", job=f"j{i}", partner="telco-b", epsilon=0.5 if i % 2 else None)
    return log


def rewrite(fs: Client, edit: object) -> None:
    path = audit_path("bank-a")
    lines = fs.read_bytes(path).decode().splitlines()
    assert callable(edit)
    edit(lines)
    fs.write_bytes(path, ("\n".join(lines) + "\n").encode())


def test_append_and_verify(fs: Client) -> None:
    log = filled(fs)
    assert log.verify() == 5
    recs = log.records()
    assert [r["seq"] for r in recs] == list(range(5))
    assert recs[0]["prev"] == "0" * 64 and recs[1]["prev"] == recs[0]["hash"]
    assert log.spent("telco-b") == pytest.approx(1.0)
    assert log.spent("other") == 0


def set_field(lines: list[str]) -> None:
    rec = json.loads(lines[2])
    rec["partner"] = "mallory"
    lines[2] = json.dumps(rec)


def drop_middle(lines: list[str]) -> None:
    del lines[1]


def swap(lines: list[str]) -> None:
    lines[1], lines[2] = lines[2], lines[1]


def garbage(lines: list[str]) -> None:
    lines[3] = lines[3][:-5]


def rehash_one(lines: list[str]) -> None:
    # an attacker without the entity key cannot compute a record's keyed hash
    rec = json.loads(lines[2])
    rec["epsilon"] = 0.0
    rec["hash"] = unkeyed(rec["prev"], rec)
    lines[2] = json.dumps(rec)


def unkeyed(prev: str, rec: dict[str, object]) -> str:
    """The old chain's hash: SHA-256(prev || canonical JSON), computable by anyone."""
    body = {k: v for k, v in rec.items() if k != "hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev.encode() + canon.encode()).hexdigest()


def rechain(lines: list[str], hasher: Callable[[str, dict[str, object]], str]) -> None:
    """Renumber and re-hash every record, as a forger who dropped some would."""
    prev = "0" * 64
    for i, line in enumerate(lines):
        rec = json.loads(line)
        rec["seq"], rec["prev"] = i, prev
        rec["hash"] = prev = hasher(prev, rec)
        lines[i] = json.dumps(rec)


def drop_releases_and_rechain(lines: list[str]) -> None:
    # the attack: drop the DP release records and re-hash the whole chain
    lines[:] = [ln for ln in lines if json.loads(ln)["kind"] != "release"]
    rechain(lines, unkeyed)


@pytest.mark.parametrize("edit,where", [(set_field, "record 2"), (drop_middle, "record 1"),
                                        (swap, "record 1"), (garbage, "record 3"),
                                        (rehash_one, "record 2"),
                                        (drop_releases_and_rechain, "record 0")])
def test_tampering_is_detected(fs: Client, edit: object, where: str) -> None:
    log = filled(fs)
    rewrite(fs, edit)
    with pytest.raises(AuditError, match=where):
        log.verify()


def test_append_refuses_a_tampered_tail(fs: Client) -> None:
    log = filled(fs, 3)
    rewrite(fs, set_field)
    with pytest.raises(AuditError, match="hutong audit verify"):
        log.append("job-done", job="x")
    with pytest.raises(ValueError, match="unknown audit record kind"):
        log.append("coffee")


def test_cli_audit_verify_exit_codes(fs: Client, capsys: pytest.CaptureFixture[str]) -> None:
    filled(fs)
    AuditLog(fs, "telco-b").append("job-start", job="j")
    state = str(fs.state)
    assert hutong(["--state", state, "audit", "verify"]) == 0
    assert "audit bank-a: ok, 5 records" in capsys.readouterr().out
    rewrite(fs, swap)
    assert hutong(["--state", state, "audit", "verify", "bank-a", "telco-b"]) == 1
    captured = capsys.readouterr()
    assert "audit bank-a: FAILED" in captured.err and "audit telco-b: ok" in captured.out


# -- anchored at the peer: rewriting with the key, or cutting the tail, is caught ----
V, S = "/lab-x/v.parquet", "/lab-y/s.parquet"


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    n = 200
    with Client.init(state) as fs:
        put_table(fs, V, pa.table({"id": list(range(n)), "score": [i % 50 for i in range(n)]}))
        put_table(fs, S, pa.table({"id": list(range(0, 2 * n, 2))}))
        put_policy(fs, open_policy("lab-x", "lab-y", V, key="id", columns=["score"],
                                   epsilon_per_release=1.0, epsilon_budget=1.5,
                                   table_extra={"clip": {"score": [0, 50]}}))
        put_policy(fs, open_policy("lab-y", "lab-x", S, key="id"))
    return state


def dp_join(state: Path) -> dict[str, object]:
    return run_job(JobSpec("join", V, S, "id", aggs="count(*),sum(score)"), state).answer


def edit_log(state: Path, entity: str, edit: Callable[[list[str]], None]) -> None:
    with Client(state) as fs:
        path = audit_path(entity)
        lines = fs.read_bytes(path).decode().splitlines()
        edit(lines)
        fs.write_bytes(path, ("\n".join(lines) + "\n").encode())


def test_a_rewritten_log_resets_no_budget_and_runs_no_job(lab: Path) -> None:
    dp_join(lab)  # spends 1.0 of 1.5: a second job would exceed the budget
    edit_log(lab, "lab-x", drop_releases_and_rechain)
    with Client(lab) as fs, pytest.raises(AuditError, match="keyed hash"):
        AuditLog(fs, "lab-x").verify()
    with pytest.raises(AuditError, match=r"lab-x.*keyed hash"):
        dp_join(lab)


def test_rechaining_with_the_key_is_caught_by_the_peers_anchor(lab: Path) -> None:
    dp_join(lab)
    with Client(lab) as fs:
        log = AuditLog(fs, "lab-x")
        key = log._key
        assert log.anchored_head("lab-y") is not None  # lab-x countersigned lab-y's head
    # an insider with lab-x's key drops the release and re-chains: it verifies locally
    def forge(lines: list[str]) -> None:
        lines[:] = [ln for ln in lines if json.loads(ln)["kind"] != "release"]
        rechain(lines, lambda p, r: record_hash(key, p, r))
    edit_log(lab, "lab-x", forge)
    with Client(lab) as fs:
        log = AuditLog(fs, "lab-x")
        assert log.verify() > 0 and log.spent("lab-y") == 0.0
    with pytest.raises(AuditError, match=r"not the one lab-y countersigned|tail was cut"):
        dp_join(lab)


def test_a_cut_tail_is_caught_by_the_peers_anchor(lab: Path) -> None:
    dp_join(lab)
    def cut(lines: list[str]) -> None:
        del lines[-3:]
    edit_log(lab, "lab-x", cut)
    with Client(lab) as fs:
        assert AuditLog(fs, "lab-x").verify() > 0  # a prefix of a chain verifies alone
    with pytest.raises(AuditError, match="tail was cut"):
        dp_join(lab)


def test_cli_labels_noise_and_budget_left(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hutong(["--state", str(lab), "-q", "join", "--left", V, "--right", S, "--on", "id",
                   "--agg", "count(*),sum(score)"]) == 0
    out = capsys.readouterr().out
    assert "(noisy: count discrete laplace (opendp), epsilon 0.3333, scale 3;" in out
    assert "(privacy budget left: epsilon 0.5)" in out
