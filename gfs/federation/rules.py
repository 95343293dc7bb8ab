"""Replication rules (Rucio-like) and the reconciler that keeps them true.

A rule (pattern, copies, where, expires) lives at its entity's primary. `reconcile(site)`
evaluates every rule once: it picks `copies` up sites matching `where`, pushes the
chunks they lack (plain to the entity's own sites, through the mover when the target
has one; owner-encrypted with keyed ids to other entities' sites), pins them there, and
records the state `ok`, `replicating` or `stuck` with a reason (docs/format.md, "Rules").
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field

from gfs import delta, delta_transfer, mover
from gfs.codec import (
    decode_blob,
    encode_blob,
    encode_encrypted_blob,
    encode_sealed_delta,
    keyed_chunk_id,
    sealed_blob_len,
)
from gfs.errors import CorruptChunkError, HutongError, NotFoundError
from gfs.federation import expr
from gfs.federation.http import ApiError, BadRequestError
from gfs.federation.sealed_read import open_sealed
from gfs.federation.site_client import SiteClient
from gfs.federation.wire import glob_match, literal_prefix, manifest_digest, refs_to_wire
from gfs.meta import ChunkRef, Kind
from gfs.schema import Schema
from gfs.units import Duration

if TYPE_CHECKING:
    from gfs.federation.site_state import Site

log = logging.getLogger("gfs.federation.rules")
BATCH_IDS = 1024
PIN_BATCH = 4096
"""Keyed ids per pin request (the host's limit per request)."""
BATCH_BYTES = 16 << 20
#: Replicas read back per request by an audit.
AUDIT_BATCH = 256
DISTRUST = 24 * 3600.0
"""Seconds a site whose audit found copies missing is placed after every other."""


class RuleSpec(Schema):
    """A rule as a user asks for it (`hutong rule add`, `POST /v1/rules`): `copies` up
    sites matching `where` hold the files matching `pattern`, for `lifetime` seconds
    (or a duration such as "7d"; none: until removed)."""

    pattern: str
    copies: Annotated[int, Field(ge=1, le=16)]
    where: Annotated[str, AfterValidator(expr.checked)] = ""
    lifetime: Annotated[Duration, Field(gt=0, lt=1e10)] | None = None


def rule_files(site: Site, pattern: str) -> list[tuple[str, list[ChunkRef]]]:
    """The files of the site's store matching `pattern`, with their chunk refs."""
    out: list[tuple[str, list[ChunkRef]]] = []
    try:
        entries = list(site.client.walk(literal_prefix(pattern)))
    except (NotFoundError, HutongError):
        return out
    with site.client.engine.read() as txn:
        for st in entries:
            if st.kind == "file" and glob_match(pattern, st.path):
                node = txn.get_inode(st.ino)
                m = txn.get_manifest(st.ino) if node and node.kind == Kind.FILE else None
                out.append((st.path, list(m.chunks) if m else []))
    return out


def _peer(site: Site, rec: dict[str, Any]) -> SiteClient:
    return SiteClient(rec["endpoint"], keys=site.keys, timeout=30)


def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def push(site: Site, target: dict[str, Any], rule_id: str, refs: list[ChunkRef],
         files: list[tuple[str, list[ChunkRef]]] | None = None) -> int:
    """Place `refs` on site `target` and pin them for `rule_id`; returns chunks sent.
    A site of the same entity also keeps a mirror of the `files`' manifests, from
    which it serves reads while the primary is down."""
    if target["name"] == site.name:
        return 0
    peer = _peer(site, target)
    sent = 0
    try:
        if target["entity"] == site.entity:
            try:
                sent += _push_own(site, peer, rule_id, refs, files,
                                  mover_port=bool(target.get("mover")), compare=True)
            except ApiError as e:
                if e.code != "mirror_changed":
                    raise
                log.warning("rule %s: the mirror on %s changed meanwhile (%s); sending every "
                            "file", rule_id, target["name"], e)
                sent += _push_own(site, peer, rule_id, refs, files,
                                  mover_port=bool(target.get("mover")), compare=False)
        else:
            keyed = {keyed_chunk_id(r.id, site.keys.id_key): r.id for r in refs}
            kids = list(keyed)
            # pin first (in batches under the host's per-request limit): the host's gc
            # then never removes a blob sent below before its pin arrives
            parts = _batches([k.hex() for k in kids], PIN_BATCH) or [[]]
            round_ = secrets.token_hex(8)
            lacks: list[bytes] | None = []
            for i, part in enumerate(parts):
                ans = peer.pin_vault(site.entity, rule_id, {"ids": part, "round": round_,
                                                            "batch": i, "batches": len(parts)})
                lacks = None if lacks is None or ans.missing is None else lacks + ans.missing
            if lacks is None:  # a host that does not answer what it lacks
                lacks = [c for c, h in zip(kids, peer.has(kids, owner=site.entity),
                                           strict=True) if not h]
            missing = [keyed[c] for c in lacks if c in keyed]
            if missing:
                n, missing = _put_deltas(site, peer, missing, _file_ids(refs, files),
                                         sealed=True)
                sent += n
            level = site.client.config.zstd_level
            sent += _put_batches(peer, (encode_encrypted_blob(
                site.client.store.read_chunk(c), site.keys.enc_key, site.keys.id_key, level, c)
                for c in missing), owner=site.entity)
    finally:
        peer.close()
    return sent


def _push_own(site: Site, peer: SiteClient, rule_id: str, refs: list[ChunkRef],
              files: list[tuple[str, list[ChunkRef]]] | None, *, mover_port: bool,
              compare: bool) -> int:
    """Place `refs` on `peer`, a site of our own entity (through its mover if it has a
    `mover_port`), and pin them with the mirror of `files`. With `compare` (and files
    naming every chunk), only the files whose mirror there is absent or different are
    looked at, sent and mirrored; the pin names the others `same` (docs/format.md
    "Rules"). Returns chunks sent."""
    by_files = files is not None and (
        {r.id for _, fr in files for r in fr} == {r.id for r in refs})
    send = files
    same: list[list[str]] = []
    if files is not None and by_files and compare:
        digests = {p: manifest_digest(fr) for p, fr in files}
        changed = set(peer.mirror_changed(site.entity, rule_id, digests))
        send = [(p, fr) for p, fr in files if p in changed]
        same = [[p, d] for p, d in digests.items() if p not in changed]
    ids = (list(dict.fromkeys(r.id for _, fr in send for r in fr)) if send is not None
           and by_files else [r.id for r in refs])
    sent = 0
    missing = [c for c, h in zip(ids, peer.has(ids), strict=True) if not h]
    if missing:
        n, missing = _put_deltas(site, peer, missing, _file_ids(refs, send))
        sent += n
    if missing and mover_port:
        sess = peer.mover_session()
        stats = mover.send(site.client, (sess.host, sess.port), missing,
                           bytes.fromhex(sess.secret))
        sent += stats.chunks
    elif missing:
        sent += _put_plain(site, peer, missing)
    pin: dict[str, Any] = {} if by_files else {"chunks": refs_to_wire(refs)}
    if send is not None:  # by_files: the site pins the union of these and the `same`
        pin["files"] = [{"path": p, "chunks": refs_to_wire(fr)} for p, fr in send]
    if same:
        pin["same"] = same
    peer.pin(site.entity, rule_id, pin)
    return sent


def audit(site: Site, target: dict[str, Any], refs: list[ChunkRef]) -> tuple[int, int]:
    """Read back the replicas of `refs` on `target`, verify them here (the owner holds
    the keys), and replace every damaged one with a good copy; returns (repaired,
    missing). A missing copy is a failure of the target, whatever its `has` said. On
    another entity's site a sealed delta is rebuilt from its base there; a damaged or
    missing base is replaced whole too, and so is every delta read against it."""
    if target["name"] == site.name:
        return 0, 0
    own = target["entity"] == site.entity
    owner = None if own else site.entity
    peer = _peer(site, target)
    repaired = missing = 0
    try:
        for batch in _batches(refs, AUDIT_BATCH):
            ids = [r.id if own else keyed_chunk_id(r.id, site.keys.id_key) for r in batch]
            blobs = peer.get(ids, owner=owner)
            got = {r.id: b for r, b in zip(batch, blobs, strict=True) if b}
            missing += len(batch) - len(got)
            errors: dict[bytes, CorruptChunkError] = {}
            bad_bases: set[bytes] = set()
            if own:
                for cid, blob in got.items():
                    try:
                        decode_blob(blob, expect_id=cid)
                    except CorruptChunkError as e:
                        errors[cid] = e
            else:
                opened = open_sealed(got, lambda kids: peer.get(kids, owner=owner), site.keys)
                errors, bad_bases = opened.errors, opened.bad_bases
            for cid, err in errors.items():
                log.warning("rule audit: damaged copy of %s on %s: %s", cid.hex(),
                            target["name"], err)
            level = site.client.config.zstd_level
            bad: list[bytes] = []
            for cid in sorted(set(errors) | bad_bases):
                try:
                    raw = site.client.store.read_chunk(cid)  # our verified copy
                except HutongError:
                    if cid in errors:
                        raise
                    continue  # a base we no longer hold: its dependents go whole
                if own:
                    header, payload = encode_blob(raw, level, cid)
                    bad.append(header + bytes(payload))
                else:
                    bad.append(encode_encrypted_blob(raw, site.keys.enc_key, site.keys.id_key,
                                                     level, cid))
            if bad:
                repaired += peer.put(bad, owner=owner, replace=True).stored
    finally:
        peer.close()
    return repaired, missing


def _put_batches(peer: SiteClient, blobs: Iterable[bytes], owner: str | None = None) -> int:
    """`peer.put` of `blobs` (of `owner`: sealed) in batches of at most BATCH_IDS /
    BATCH_BYTES; blobs sent."""
    sent = 0
    batch: list[bytes] = []
    size = 0
    for blob in blobs:
        batch.append(blob)
        size += len(blob)
        if len(batch) >= BATCH_IDS or size >= BATCH_BYTES:
            peer.put(batch, owner=owner)
            sent += len(batch)
            batch, size = [], 0
    if batch:
        peer.put(batch, owner=owner)
        sent += len(batch)
    return sent


def _file_ids(refs: list[ChunkRef], files: list[tuple[str, list[ChunkRef]]] | None,
              ) -> list[list[bytes]]:
    """The chunk ids of each of `files` in order (without files: `refs` as one list)."""
    if files is None:
        return [[r.id for r in refs]]
    return [[r.id for r in fr] for _, fr in files]


def _put_plain(site: Site, peer: SiteClient, missing: list[bytes]) -> int:
    return _put_batches(peer, (b for b in map(site.blob, missing) if b is not None))


def _put_deltas(site: Site, peer: SiteClient, missing: list[bytes],
                files: list[list[bytes]], sealed: bool = False) -> tuple[int, list[bytes]]:
    """Send as deltas the chunks of `missing` (plain ids) that resemble one the peer
    holds and whose delta pays (docs/format.md "Delta transfer"), against two bases
    where a neighbour in `files` (chunk ids in file order) offers a second that pays
    more; `sealed`: to another entity's site, as sealed deltas against bases it keeps
    whole for us, paying against the sealed whole blob ("Sealed delta blobs"). Returns
    (sent, chunks still to send whole). A refused delta batch (a base gone meanwhile)
    leaves its chunks whole."""
    owner = site.entity if sealed else None
    holds: delta_transfer.Holds = peer.has
    wrap: delta_transfer.Wrap = delta_transfer.plain
    if sealed:
        keys = site.keys

        def holds(bases: list[bytes]) -> list[bool]:
            return peer.has([keyed_chunk_id(b, keys.id_key) for b in bases], owner=owner,
                            whole=True)

        def wrap(delta_blob: bytes, whole_blob_len: int) -> bytes | None:
            blob = encode_sealed_delta(delta_blob, keys.enc_key, keys.id_key)
            return blob if delta.pays(len(blob), sealed_blob_len(whole_blob_len)) else None

    deltas = delta_transfer.delta_blobs(site.client.store, missing, holds, wrap,
                                        delta_transfer.neighbours(files, missing))
    if not deltas:
        return 0, missing
    try:
        sent = _put_batches(peer, deltas.values(), owner=owner)
    except BadRequestError as e:
        log.warning("delta transfer to %s refused (%s); sending those chunks whole",
                    peer.base_url, e)
        return 0, missing
    return sent, [c for c in missing if c not in deltas]


def _order(site: Site, rule: dict[str, Any], up: list[dict[str, Any]],
           links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Targets by what the owner knows, not by what they declare: sites already holding
    the rule, this site, the entity's own sites, sites without a failed audit in the
    last DISTRUST seconds, then by the rtt this site measured to them (docs/trust.md).
    Declared capacity never attracts a replica."""
    held = rule.get("sites", [])
    failed = rule.get("failed", {})
    now = time.time()
    rtt = {lk["b"]: float(lk["rtt_ms"]) for lk in links if lk["a"] == site.name}

    def key(s: dict[str, Any]) -> tuple[int, int, int, int, float, str]:
        name = s["name"]
        return (0 if name in held else 1, 0 if name == site.name else 1,
                0 if s["entity"] == site.entity else 1,
                1 if now - failed.get(name, 0) < DISTRUST else 0,
                rtt.get(name, float("inf")), name)
    return sorted(up, key=key)


def reconcile_rule(site: Site, rule: dict[str, Any],
                   sites: dict[str, dict[str, Any]], *, verify: bool = False) -> dict[str, Any]:
    """Evaluate one rule now; returns (and stores) its new record. With `verify`, every
    replica is also read back, checked, and replaced if damaged (`audit`)."""
    matching = site.registry.call("GET", "/v1/sites", query={"where": rule["where"]})["sites"]
    up = [sites.get(s["name"], s) for s in matching if s["status"] == "up"]
    links = site.registry.call("GET", "/v1/links")["links"]
    targets = _order(site, rule, up, links)[:rule["copies"]]
    refs_by_id: dict[bytes, ChunkRef] = {}
    files = rule_files(site, rule["pattern"])
    for _, refs in files:
        for r in refs:
            refs_by_id.setdefault(r.id, r)
    refs = list(refs_by_id.values())
    rule["state"], rule["reason"] = "replicating", f"placing on {[t['name'] for t in targets]}"
    site.put_record("rule", rule)
    held: list[str] = []
    problems: list[str] = []
    sent = 0
    repaired = 0
    for t in targets:
        try:
            sent += push(site, t, rule["id"], refs, files)
            if verify:
                fixed, lost = audit(site, t, refs)
                repaired += fixed
                if lost:
                    rule.setdefault("failed", {})[t["name"]] = time.time()
                    log.warning("rule %s: audit of %s: %d of %d copies missing", rule["id"],
                                t["name"], lost, len(refs))
                    problems.append(f"{t['name']}: audit found {lost} of {len(refs)} copies "
                                    "missing")
                    continue
            held.append(t["name"])
        except HutongError as e:
            log.warning("rule %s: placing on %s failed: %s", rule["id"], t["name"], e)
            problems.append(f"{t['name']}: {e}")
    rule["sites"] = held
    if verify:
        rule["verified"], rule["repaired"] = time.time(), repaired
    rule["files"], rule["chunks"] = len(files), len(refs)
    rule["bytes"] = sum(r.length for r in refs)
    rule["updated"] = time.time()
    if len(held) >= rule["copies"]:
        rule["state"], rule["reason"] = "ok", ""
    elif len(up) < rule["copies"]:
        down = [s["name"] for s in matching if s["status"] != "up"]
        rule["state"] = "stuck"
        rule["reason"] = (f"only {len(up)} of {rule['copies']} sites matching "
                          f"{rule['where']!r} are up" + (f" (down: {', '.join(down)})"
                                                         if down else ""))
    else:
        rule["state"], rule["reason"] = "stuck", "; ".join(problems)[:500]
    site.put_record("rule", rule)
    return rule


def reconcile(site: Site, verify: bool = False) -> list[dict[str, Any]]:
    """Evaluate every rule of the site's entity once (expired rules are removed); with
    `verify`, also audit every replica and replace damaged ones."""
    sites = {s["name"]: s for s in site.registry.call("GET", "/v1/sites")["sites"]}
    out = []
    for rule in site.rules():
        if rule.get("expires") and time.time() > rule["expires"]:
            try:
                site.delete_record("rule", rule["id"])
            except HutongError:
                continue
            unpin_everywhere(site, rule, sites)
            continue
        out.append(reconcile_rule(site, rule, sites, verify=verify))
    push_grants(site, sites)
    return out


def push_grants(site: Site, sites: dict[str, dict[str, Any]]) -> list[str]:
    """Send the primary's grants, signed, to every other up site of its entity (so its
    mirrors serve grantees while it is down; gfs.federation.grant_mirror); returns the
    sites that took them. Best effort: a site missed gets them at the next reconcile."""
    if not site.config.primary:
        return []
    signed = site.signed_grants()
    done = []
    for name, rec in sorted(sites.items()):
        if name == site.name or rec.get("entity") != site.entity or rec.get("status") != "up":
            continue
        peer = _peer(site, rec)
        try:
            peer.mirror_grants(signed)
            done.append(name)
        except HutongError as e:
            log.warning("grants: pushing the signed set to %s failed: %s", name, e)
        finally:
            peer.close()
    return done


def unpin_everywhere(site: Site, rule: dict[str, Any],
                     sites: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Remove a rule's pins from every site holding them (best effort); returns the sites
    that confirmed."""
    if sites is None:
        sites = {s["name"]: s for s in site.registry.call("GET", "/v1/sites")["sites"]}
    done = []
    for name in rule.get("sites", []):
        rec = sites.get(name)
        if rec is None or name == site.name:
            continue
        peer = _peer(site, rec)
        try:
            peer.unpin(site.entity, rule["id"])
            done.append(name)
        except HutongError as e:
            log.warning("rule %s: unpinning at %s failed: %s", rule["id"], name, e)
        finally:
            peer.close()
    return done
