"""The hash-chained audit log: appends verify; any edit, removal or reordering fails."""

from __future__ import annotations

import json

import pytest

from gfs.cli import main as hutong
from gfs.client import Client
from privacy.audit import AuditLog, audit_path
from privacy.errors import AuditError


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
    # an attacker who recomputes the edited record's hash still breaks the next link
    from privacy.audit import record_hash
    rec = json.loads(lines[2])
    rec["epsilon"] = 0.0
    rec["hash"] = record_hash(rec["prev"], rec)
    lines[2] = json.dumps(rec)


@pytest.mark.parametrize("edit,where", [(set_field, "record 2"), (drop_middle, "record 1"),
                                        (swap, "record 1"), (garbage, "record 3"),
                                        (rehash_one, "record 3")])
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
