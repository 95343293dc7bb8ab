"""Privacy jobs: a spec both parties agree on, each party's half (`run_party`),
and a launcher that runs the two halves as two processes over an authenticated
loopback channel (`run_job`).

Kinds: `psi` (the left party receives the intersection or its size), `join`
(join-and-aggregate; the party owning the aggregated columns is the value
holder, the other receives the aggregates) and `query` (compute-to-data: the
right party's entity asks the left party, the owner, for aggregates of its table).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from gfs.client import Client
from gfs.env import state_dir
from privacy import c2d, errors, he, keys, pjc, psi, psi_ot
from privacy.audit import AnchorStore, AuditLog, close_session, note_failure, open_session
from privacy.channel import Channel, handshake
from privacy.ec import GroupPool
from privacy.ec import backend as ec_backend
from privacy.errors import AuthError, PolicyError, PrivacyError, ProtocolError, QueryError
from privacy.policy import Policy, ReleaseTerms, clip_value
from privacy.process_group import end_group
from privacy.spill import budget_from_env
from privacy.tables import check_columns, entity_of, iter_batches, key_strings, num_rows

KINDS = ("psi", "join", "query")
PSI_PROTOCOLS = ("auto", "ot", "ecdh")
_AGG = re.compile(r"^\s*(count|sum|mean|min|max)\s*\(\s*(distinct\s+)?"
                  r"(\*|[A-Za-z_][\w.-]*)\s*\)\s*$", re.I)
FAULT_ENV = "HUTONG_PRIVACY_FAULT"


def parse_aggs(text: str) -> list[tuple[str, str | None]]:
    """"count(*),mean(balance)" -> [("count", None), ("mean", "balance")];
    "count(distinct k)" -> ("count_distinct", "k")."""
    out: list[tuple[str, str | None]] = []
    for part in [p for p in text.split(",") if p.strip()]:
        m = _AGG.match(part)
        if not m:
            raise QueryError(f"bad aggregate {part.strip()!r}; use count(*), sum(col), "
                             f"mean(col), min(col), max(col) or count(distinct col)")
        func, col = m.group(1).lower(), m.group(3)
        if m.group(2):
            if func != "count" or col == "*":
                raise QueryError(f"bad aggregate {part.strip()!r}: distinct goes with "
                                 f"count and a column, as in count(distinct k)")
            func = "count_distinct"
        if col == "*" and func != "count":
            raise QueryError(f"{func}(*) is not defined; name a column")
        out.append((func, None if col == "*" else col))
    if not out:
        raise QueryError("no aggregate given; e.g. --agg 'count(*),mean(balance)'")
    return out


@dataclass
class JobSpec:
    """What both parties agree to run (its digest is checked in the handshake)."""

    kind: str
    left: str
    right: str
    on: str
    output: str = "cardinality"
    aggs: str = "count(*)"
    group_by: str | None = None
    scheme: str = "auto"
    degree: int = 8192
    where: dict[str, str] = field(default_factory=dict)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timeout: float = 600.0
    #: who receives a join's result: "auto" (the party without the aggregated
    #: columns), "left" or "right"
    receiver: str = "auto"
    #: PSI protocol: "ot" (KKRT16 OT extension, privacy.psi_ot), "ecdh" (privacy.psi)
    #: or "auto" (ot for the intersection, ecdh for cardinality only)
    protocol: str = "auto"

    def psi_protocol(self) -> str:
        """The PSI protocol this job runs ("ot" or "ecdh"); see docs/privacy.md."""
        if self.protocol != "auto":
            return self.protocol
        return "ot" if self.output == "intersection" else "ecdh"

    @classmethod
    def from_wire(cls, raw: object) -> JobSpec:
        """A spec from its JSON form (another site's request), every field checked;
        QueryError naming the first bad one."""
        if not isinstance(raw, dict):
            raise QueryError("the job spec must be a JSON object")
        unknown = sorted(set(raw) - set(_WIRE_TYPES))
        if unknown:
            raise QueryError(f"unknown job spec field(s): {', '.join(unknown)}")
        for name, typ in _WIRE_TYPES.items():
            if name in raw and (not isinstance(raw[name], typ) or isinstance(raw[name], bool)):
                raise QueryError(f"job spec field {name!r} has the wrong type")
        where = raw.get("where", {})
        if not all(isinstance(v, str) for v in where.values()):
            raise QueryError("job spec field 'where' maps columns to strings")
        missing = [n for n in ("kind", "left", "right", "on") if n not in raw]
        if missing:
            raise QueryError(f"job spec field(s) {', '.join(missing)} missing")
        spec = cls(**raw)
        spec.validate()
        return spec

    def group_columns(self) -> list[str]:
        """The group-by columns ("region,segment" -> ["region", "segment"])."""
        return [c.strip() for c in (self.group_by or "").split(",") if c.strip()]

    def validate(self) -> None:
        """Refuse a malformed spec before anything runs."""
        if self.kind not in KINDS:
            raise QueryError(f"job kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "query":
            if "/" in self.right or not self.right:
                raise QueryError(f"a query names the asking entity, not a table: {self.right!r}")
            if entity_of(self.left) == self.right:
                raise QueryError("an owner does not query its own table through a privacy job")
        elif entity_of(self.left) == entity_of(self.right):
            raise QueryError("both tables belong to one entity; a privacy job joins two")
        if self.kind == "psi" and self.output not in psi.OUTPUTS:
            raise QueryError(f"PSI output must be one of {', '.join(psi.OUTPUTS)}")
        if self.protocol not in PSI_PROTOCOLS:
            raise QueryError(f"PSI protocol must be one of {', '.join(PSI_PROTOCOLS)}, "
                             f"got {self.protocol!r}")
        if self.kind == "psi" and self.protocol == "ot" and self.output != "intersection":
            raise QueryError("OT-PSI tells the receiver which of its keys matched, so it "
                             "cannot release the cardinality only; use protocol ecdh or auto")
        if self.kind != "psi":
            aggs = parse_aggs(self.aggs)
            keys = set(self.keys()) if self.kind == "join" else set()
            for f, c in aggs:
                if f == "count_distinct" and self.kind == "join" and c not in keys:
                    raise QueryError(f"count(distinct {c}) in a join counts the join key only "
                                     f"({' or '.join(sorted(keys))}); ask the owner for other "
                                     f"distinct counts with a query job")
                if f == "count_distinct" and self.kind == "query":
                    raise QueryError("count(distinct ...) is released by joins only; a query "
                                     "reports count, sum, mean, min and max")
        if self.receiver not in ("auto", "left", "right"):
            raise QueryError(f"receiver must be auto, left or right, got {self.receiver!r}")
        if self.scheme not in ("auto", "bfv", "ckks"):
            raise QueryError("scheme must be auto, bfv or ckks")
        if not _JOB_ID.fullmatch(self.job_id):
            raise QueryError(f"job id must be 32 hex digits, got {self.job_id!r}")
        if not 1 <= self.timeout <= 86400:
            raise QueryError(f"timeout must be 1 to 86400 s, got {self.timeout:g}")
        if self.kind != "query":
            self.keys()

    def keys(self) -> tuple[str, str]:
        """Key column of the left and the right table ("a" or "a=b")."""
        parts = [p.strip() for p in self.on.split("=")]
        if len(parts) == 1 and parts[0]:
            return parts[0], parts[0]
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
        raise QueryError(f"--on must be COLUMN or LEFT_COLUMN=RIGHT_COLUMN, got {self.on!r}")

    def digest(self) -> str:
        """The spec's hash both parties must agree on."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def partner_of(self, side: str) -> str:
        """The entity on the other side."""
        return entity_of(self.right if side == "left" else self.left)


_JOB_ID = re.compile(r"[0-9a-f]{32}")
_WIRE_TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str, "left": str, "right": str, "on": str, "output": str, "aggs": str,
    "group_by": (str, type(None)), "scheme": str, "degree": int, "where": dict,
    "job_id": str, "timeout": (int, float), "receiver": str, "protocol": str}
Progress = Callable[[str, int, int], None]


def _fault(side: str) -> Callable[[str], None]:
    """Test hook: HUTONG_PRIVACY_FAULT=SIDE:STEP makes that party exit at STEP."""
    spec = os.environ.get(FAULT_ENV, "")
    if ":" not in spec:
        return lambda step: None
    f_side, f_step = spec.split(":", 1)

    def check(step: str) -> None:
        if f_side == side and step == f_step:
            os._exit(3)
    return check


#: Separates the values of several group-by columns in one group label.
LABEL_SEP = "\x1f"


def value_columns(aggs: list[tuple[str, str | None]]) -> set[str]:
    """The value columns aggregates read (the key of count(distinct k) is not one)."""
    return {c for f, c in aggs if c and f != "count_distinct"}


def _read_keys_values(fs: Client, path: str, key: str, values: list[str], group: list[str],
                      clip: dict[str, tuple[float, float]], where: dict[str, str],
                      ) -> tuple[list[str | None], dict[str, list[Any]], list[str] | None]:
    """A party's join input: keys, clipped values and group labels (the group-by
    columns' values joined by LABEL_SEP) of the rows that pass its own filters."""
    cols = list(dict.fromkeys([key, *values, *group, *where]))
    ks: list[str | None] = []
    vals: dict[str, list[Any]] = {c: [] for c in values}
    groups: list[str] | None = [] if group else None
    for b in iter_batches(fs, path, cols):
        data = {c: b.column(c).to_pylist() for c in cols if c != key}
        rows = [i for i in range(b.num_rows)
                if all(str(data[c][i]) == want for c, want in where.items())]
        bkeys = key_strings(b.column(key))
        ks.extend(bkeys[i] for i in rows)
        for c in values:
            vals[c].extend(clip_value(0 if data[c][i] is None else data[c][i], clip.get(c))
                           for i in rows)
        if groups is not None:
            groups.extend(LABEL_SEP.join("(null)" if data[g][i] is None else str(data[g][i])
                                         for g in group) for i in rows)
    return ks, vals, groups


def run_party(spec: JobSpec, side: str, state: str | os.PathLike[str] | None,
              sock: socket.socket, progress: Progress | None = None,
              creds: keys.Credentials | None = None,
              anchors: AnchorStore | None = None) -> dict[str, Any]:
    """Run one party's half of `spec` on a connected socket; returns what this
    party learns. The left side initiates the handshake. `creds` default to the
    privacy keys of the state directory; `anchors` (at a site: the registry) keep a
    countersigned copy of the audit head, checked before and renewed after the job."""
    spec.validate()
    fault = _fault(side)

    def prog(step: str, done: int, total: int) -> None:
        fault(step)
        if progress is not None:
            progress(step, done, total)

    table = spec.left if side == "left" else spec.right
    me, peer = party_entity(spec, side), party_entity(spec, "right" if side == "left" else "left")
    sock.settimeout(spec.timeout)
    with Client(state) as fs:
        if creds is None:
            creds = keys.local_credentials(fs.state, me, peer)
        ch = handshake(sock, creds.identity, side, peer, creds.peer_key, spec.digest(),
                       initiator=side == "left")
        audit = AuditLog(fs, me, creds.identity)
        try:
            if anchors is not None:
                anchors.check(audit)  # the registry's copy of our head is still in the log
            open_session(ch, audit, peer)  # no job on a log that fails verification
            if spec.kind == "query":
                if side == "left":
                    out = c2d.serve(ch, fs, spec.left, peer, parse_aggs(spec.aggs),
                                    spec.group_by, spec.where, audit, spec.job_id)
                else:
                    out = c2d.submit(ch, spec.left, parse_aggs(spec.aggs), spec.group_by,
                                     spec.where)
            else:
                out = _run_two_party(spec, side, fs, ch, audit, me, peer, table, prog)
            close_session(ch, audit, peer, creds.peer_key)
            if anchors is not None:
                anchors.anchor(audit)
            return out
        except BaseException as e:
            ch.abort(str(e))
            if isinstance(e, PolicyError):
                note_failure(audit, "policy-refused", job=spec.job_id, partner=peer,
                             rule=e.rule, message=str(e))
            else:
                note_failure(audit, "job-failed", job=spec.job_id, partner=peer, step=ch.step,
                             error=str(e)[:500])
            raise
        finally:
            ch.close()


def _run_two_party(spec: JobSpec, side: str, fs: Client, ch: Channel, audit: AuditLog,
                   me: str, peer: str, table: str, prog: Progress) -> dict[str, Any]:
    key = spec.keys()[0 if side == "left" else 1]
    policy = Policy.load(fs, me)
    policy.check_partner(peer, table, key)  # before the table is opened at all
    aggs = parse_aggs(spec.aggs) if spec.kind == "join" else []
    value_cols = value_columns(aggs)
    wanted = sorted(value_cols | set(spec.group_columns()) | set(spec.where))
    sch = check_columns(fs, table, [key])  # the schema only: no rows are read yet
    has = [c for c in wanted if c in sch.names]
    ch.step = "hello"
    ch.send("hello", {"has": has})
    other = ch.recv("hello").meta["has"]
    both = set(has) & set(other)
    if both:
        raise QueryError(f"column(s) {', '.join(sorted(both))} exist in both tables; rename "
                         f"one so that each aggregate names one party's column")
    missing = set(wanted) - set(has) - set(other)
    if missing:
        raise QueryError(f"column(s) {', '.join(sorted(missing))} are in neither table")
    if spec.kind == "psi":
        terms = policy.check_psi(peer, table, key, spec.output, spent=audit.spent(peer))
    else:
        mine_values = value_cols & set(has)
        if value_cols and not mine_values and value_cols - set(other):
            raise QueryError("aggregated columns must all belong to one party")
        if value_cols and mine_values and mine_values != value_cols:
            raise QueryError("aggregated columns must all belong to one party")
        for c in sorted(mine_values):
            t = sch.field(c).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                raise QueryError(f"column {c!r} of {table} is {t}, not numeric; sum and mean "
                                 f"need numbers")
        own_aggs = [(f, c if c in has and f != "count_distinct" else None) for f, c in aggs]
        terms = policy.check_aggregate(peer, table, key, own_aggs,
                                       [g for g in spec.group_columns() if g in has],
                                       [c for c in spec.where if c in has],
                                       spent=audit.spent(peer),
                                       releases=audit.releases(peer))
    ch.send("ready", {"terms": terms.to_dict()})
    peer_terms = ch.recv("ready").meta["terms"]
    audit.append("job-start", job=spec.job_id, job_kind=spec.kind, partner=peer, table=table,
                 key=key, aggs=spec.aggs if spec.kind == "join" else spec.output,
                 group_by=spec.group_by)
    started = time.monotonic()
    out: dict[str, Any]
    with GroupPool() as pool:
        if spec.kind == "psi" and spec.psi_protocol() == "ot":
            out = psi_ot.run_half(side, ch, psi_ot.TableKeys(fs, table, key), spec.job_id,
                                  prog, min_receiver=terms.min_group_size, workdir=fs.state)
        elif spec.kind == "psi":
            ks = psi.iter_keys(fs, table, key)
            mem, hint = budget_from_env(), num_rows(fs, table)
            if side == "left":
                r = psi.receiver(ch, ks, spec.job_id, spec.output, pool, prog,
                                 budget=mem, workdir=fs.state, hint=hint)
                out = {"size": r.size, "own_keys": r.receiver_count,
                       "peer_keys": r.sender_count}
                if r.intersection is not None:
                    out["intersection"] = r.intersection
            else:
                r = psi.sender(ch, ks, spec.job_id, spec.output, pool, prog,
                               budget=mem, workdir=fs.state, hint=hint,
                               min_receiver=terms.min_group_size)
                out = {"own_keys": r.sender_count, "peer_keys": r.receiver_count}
        if spec.kind == "psi":
            out["protocol"] = spec.psi_protocol()
            if out["protocol"] == "ecdh":
                out["ec_backend"] = ec_backend()
            out["noise"] = "none: PSI sizes are exact; the release is metered, not noised"
            out["epsilon_left"] = terms.epsilon_left
            audit.append("release", job=spec.job_id, partner=peer,
                         what=("psi-" + spec.output) if side == "left" else "psi-sender",
                         size=out.get("size"), epsilon=terms.epsilon)
        else:
            out = _join(spec, side, fs, ch, audit, peer, table, key, aggs, has, other, terms,
                        peer_terms, pool, prog)
    out.update({"role": out.get("role", "receiver" if side == "left" else "sender"),
                "job": spec.job_id, "entity": me, "seconds": round(time.monotonic() - started, 3),
                "bytes_sent": ch.bytes_sent, "bytes_received": ch.bytes_received})
    audit.append("job-done", job=spec.job_id, partner=peer)
    return out


def _join(spec: JobSpec, side: str, fs: Client, ch: Channel, audit: AuditLog, peer: str,
          table: str, key: str, aggs: list[tuple[str, str | None]], has: list[str],
          other: list[str], terms: ReleaseTerms, peer_terms: dict[str, Any],
          pool: GroupPool, prog: Progress) -> dict[str, Any]:
    value_cols = sorted(value_columns(aggs))
    i_hold = bool(set(value_cols) & set(has)) or (not value_cols and side == "left")
    receiver = spec.receiver if spec.receiver != "auto" else None
    i_receive = (receiver == side) if receiver else not i_hold
    group = [g for g in spec.group_columns() if g in has]
    where = {c: v for c, v in spec.where.items() if c in has}
    bound = [b for b in (terms.max_rows_per_key, peer_terms.get("max_rows_per_key")) if b]
    if i_hold:
        sch = check_columns(fs, table, value_cols)
        ints = all(pa.types.is_integer(sch.field(c).type) for c in value_cols)
        scheme = spec.scheme
        if scheme == "auto":
            scheme = "bfv" if ints else "ckks"
        elif scheme == "bfv" and not ints:
            raise QueryError("bfv sums integers only; use --scheme ckks for real-valued columns")
        ks, vals, groups = _read_keys_values(fs, table, key, value_cols, group, terms.clip,
                                             where)
        eps = [e for e in (terms.epsilon, peer_terms.get("epsilon")) if e]
        bounds = {c: max(abs(x) for x in terms.clip[c]) for c in value_cols if c in terms.clip}
        rules = pjc.ReleaseRules(max(terms.min_group_size, int(peer_terms["min_group_size"])),
                                 min(eps) if eps else None, bounds,
                                 min(bound) if bound else None, terms.epsilon_left)

        def on_release(released: list[dict[str, Any]], suppressed: list[str]) -> None:
            audit.append("release", job=spec.job_id, partner=peer, groups=len(released),
                         suppressed=len(suppressed), epsilon=rules.epsilon)
            if suppressed:
                audit.append("suppressed", job=spec.job_id, partner=peer,
                             groups=len(suppressed), min_group_size=rules.min_distinct)
        rules.on_release = on_release
        res = pjc.value_holder(ch, pjc.ValueRows(ks, vals, groups), spec.job_id,
                               he.HeParams(scheme, spec.degree), rules, pool, prog,
                               receive=i_receive,
                               extremes=[(f, c) for f, c in aggs if f in ("min", "max") and c],
                               with_distinct=any(f == "count_distinct" for f, _ in aggs))
        out = {"role": "value-holder", "released_groups": len(res.groups),
               "suppressed": res.suppressed, "scheme": res.scheme, "rows": res.value_rows}
        if i_receive:
            out.update({"receiver": True, "groups": _result_rows(spec, aggs, res, has, False),
                        "epsilon_left": res.epsilon_left})
        return out
    ks, _, groups = _read_keys_values(fs, table, key, [], group, {}, where)
    res = pjc.selector(ch, pjc.SelectRows(ks, groups), spec.job_id, pool, prog,
                       max_mult=min(bound) if bound else None, receive=i_receive)
    eps = [e for e in (terms.epsilon, peer_terms.get("epsilon")) if e]
    rows = _result_rows(spec, aggs, res, has, True) if i_receive else []
    audit.append("release", job=spec.job_id, partner=peer, groups=len(rows),
                 suppressed=res.suppressed, received=i_receive,
                 epsilon=min(eps) if terms.epsilon and eps else None)
    out = {"role": "selector", "suppressed": res.suppressed, "scheme": res.scheme,
           "peer_rows": res.value_rows, "own_keys": res.selector_keys}
    if i_receive:
        out.update({"receiver": True, "groups": rows, "epsilon_left": res.epsilon_left})
    return out


def _result_rows(spec: JobSpec, aggs: list[tuple[str, str | None]], res: pjc.JoinResult,
                 has: list[str], selector: bool) -> list[dict[str, Any]]:
    """The released groups as result rows: one column per group-by column (in the
    spec's order, from whichever party has it), then the aggregates."""
    cols = spec.group_columns()
    mine, theirs = [c for c in cols if c in has], [c for c in cols if c not in has]
    rows = []
    for g in res.groups:
        my_lab, their_lab = (g.s_group, g.v_group) if selector else (g.v_group, g.s_group)
        parts: dict[str, str] = {}
        for names, lab in ((mine, my_lab), (theirs, their_lab)):
            if names and lab is not None:
                parts.update(zip(names, lab.split(LABEL_SEP), strict=True))
        row: dict[str, Any] = {c: parts.get(c) for c in cols}
        for func, col in aggs:
            name = f"{func}({col or '*'})"
            if func == "count":
                row[name] = round(g.count, 6)
            elif func == "sum" and col:
                row[name] = g.sums[col]
            elif func == "mean" and col:
                row[name] = g.mean(col)
            elif func in ("min", "max") and col:
                row[name] = g.sums[f"{func}:{col}"]
            elif func == "count_distinct" and g.distinct is not None:
                row[f"count(distinct {col})"] = g.distinct
            else:
                raise QueryError(f"{name} is not available in a join; use count, sum, mean, "
                                 f"min, max or count(distinct KEY)")
        if g.noise:
            row["noise"] = g.noise
        rows.append(row)
    return sorted(rows, key=lambda r: [str(r[c]) for c in spec.group_columns()])


# -- launcher ---------------------------------------------------------------------------
@dataclass
class JobResult:
    """Both parties' results of a job run by `run_job`."""

    left: dict[str, Any]
    right: dict[str, Any]
    seconds: float

    @property
    def answer(self) -> dict[str, Any]:
        """The released result: the PSI receiver's, the join's receiving party's or the
        querier's."""
        for r in (self.left, self.right):
            if r.get("receiver") is True or r.get("role") in ("receiver", "querier"):
                return r
        return self.left


def run_job(spec: JobSpec, state: str | os.PathLike[str] | None = None,
            progress: Progress | None = None, env: dict[str, str] | None = None) -> JobResult:
    """Run both halves of `spec` as two processes over loopback; raises the first
    party's error (ProtocolError, PolicyError, ...) if the job fails, and then
    nothing was released."""
    spec.validate()
    root = state_dir(state)
    with Client(root) as fs:  # both entities need keys; each side pins the other's
        for who in (party_entity(spec, "left"), party_entity(spec, "right")):
            keys.identity(fs.state, who)
    procs: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hutong-job-") as tmp:
        try:
            out_l = Path(tmp) / "left.json"
            left = _spawn(spec, "left", root, None, out_l, env)
            procs.append((left, "left", out_l))
            assert left.stdout is not None
            line = left.stdout.readline().decode().strip()
            if line.startswith("LISTEN "):
                out_r = Path(tmp) / "right.json"
                right = _spawn(spec, "right", root, int(line.split()[1]), out_r, env)
                procs.append((right, "right", out_r))
            results: dict[str, dict[str, Any] | BaseException] = {}
            threads = [threading.Thread(target=_collect, args=(p, side, f, progress, results),
                                        daemon=True) for p, side, f in procs]
            for t in threads:
                t.start()
            deadline = time.monotonic() + spec.timeout + 60
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in threads):
                raise ProtocolError(f"job {spec.job_id} did not finish within "
                                    f"{spec.timeout:g} s; both parties were stopped and "
                                    f"nothing was released")
            errors = [r for r in results.values() if isinstance(r, BaseException)]
            if errors:  # the cause first: a refusal or bad input, then the party that broke
                raise min(errors, key=_cause_rank)
            if len(procs) < 2:
                raise ProtocolError("the left party did not start listening")
            ok = [results[s] for s in ("left", "right")]
            return JobResult(ok[0], ok[1], time.monotonic() - t0)  # type: ignore[arg-type]
        finally:
            for p, _, _ in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
                _reap(p)


def _cause_rank(e: BaseException) -> int:
    if isinstance(e, (PolicyError, QueryError, AuthError, errors.AuditError)):
        return 0
    return 2 if "aborted the job" in str(e) else 1


def party_entity(spec: JobSpec, side: str) -> str:
    """The entity of party `side` of `spec` (a query's right side is the asker)."""
    if spec.kind == "query" and side == "right":
        return spec.right
    return entity_of(spec.left if side == "left" else spec.right)


def _spawn(spec: JobSpec, side: str, root: Path, port: int | None, result: Path,
           env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "privacy.party", "--side", side, "--state", str(root),
            "--spec", json.dumps(asdict(spec)), "--result", str(result)]
    if port is not None:
        args += ["--connect", str(port)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def error_from(line: str, side: str) -> PrivacyError:
    """The error a party reported on its last `ERROR Kind message` line."""
    kind, _, msg = line[6:].partition(" ")
    if kind == "PolicyError":
        m = re.match(r"rule (\S+): (.*)", msg, re.S)
        return PolicyError(m.group(1), m.group(2)) if m else PolicyError("policy", msg)
    if kind == "QueryError":
        return QueryError(f"{side} party: {msg}")
    if kind == "AuthError":
        return AuthError(f"{side} party: {msg}")
    if kind == "AuditError":
        return errors.AuditError(f"{side} party: {msg}")
    return ProtocolError(f"{side} party: {msg}")


def _collect(p: subprocess.Popen[bytes], side: str, result: Path, progress: Progress | None,
             out: dict[str, dict[str, Any] | BaseException]) -> None:
    lines: list[str] = []

    def read() -> None:
        assert p.stderr is not None
        for raw in p.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("PROGRESS "):
                if progress is not None:
                    _, step, done, total = line.split(" ", 3)
                    progress(f"{side}:{step}", int(done), int(total))
            else:
                lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    p.wait()
    _reap(p)  # worker processes of a party that died must not outlive it
    reader.join(5)
    if p.returncode == 0 and result.exists():
        out[side] = json.loads(result.read_text())
        return
    errs = [ln for ln in lines if ln.startswith("ERROR ")]
    if errs:
        out[side] = error_from(errs[-1], side)
        return
    out[side] = ProtocolError(f"the {side} party died (exit {p.returncode}) before finishing; "
                              f"nothing was released" + (f": {lines[-1]}" if lines else ""))


def _reap(p: subprocess.Popen[bytes]) -> None:
    """End what is left of a party's process group (its own session), letting its
    resource tracker unlink the semaphores the party's workers leave."""
    end_group(p.pid)


# -- the same from Python ----------------------------------------------------------------
def join(left: str, right: str, on: str, agg: str = "count(*)", group_by: str | None = None,
         *, state: str | os.PathLike[str] | None = None, scheme: str = "auto",
         where: dict[str, str] | None = None, receiver: str = "auto",
         progress: Progress | None = None) -> dict[str, Any]:
    """`hutong join`: private join-and-aggregate with SQL inner-join semantics;
    returns the released result as the receiving party gets it ({"groups": [...],
    "suppressed": n, ...})."""
    spec = JobSpec("join", left, right, on, aggs=agg, group_by=group_by, scheme=scheme,
                   where=dict(where or {}), receiver=receiver)
    return run_job(spec, state, progress).answer


def intersect(left: str, right: str, on: str, output: str = "cardinality", *,
              state: str | os.PathLike[str] | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """`hutong psi`: the intersection size (and members, with output="intersection")
    as the left party learns it."""
    return run_job(JobSpec("psi", left, right, on, output=output), state, progress).answer


def query(table: str, as_entity: str, agg: str = "count(*)", group_by: str | None = None,
          where: dict[str, str] | None = None, *, state: str | os.PathLike[str] | None = None,
          ) -> dict[str, Any]:
    """`hutong query`: compute-to-data at the owner of `table` for `as_entity`."""
    spec = JobSpec("query", table, as_entity, "-", aggs=agg, group_by=group_by,
                   where=dict(where or {}))
    return run_job(spec, state).answer
