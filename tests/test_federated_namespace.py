"""The federated namespace on real sites: what a caller sees (entity roots, grants, from
the attacker's side), close-to-open across clients, and the primary's failure (mirror
reads go on, writes are EROFS and leave nothing half-visible)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs.codec import decode_blob
from gfs.errors import (
    ConfigError,
    CrossEntityError,
    FileTooLargeError,
    InvalidPathError,
    NotFoundError,
    NotPermittedError,
    PermissionDeniedError,
    ReadOnlyError,
    UnavailableSiteError,
)
from gfs.federation.auth import AuthError
from gfs.federation.certs import CA_CERT, create_ca
from gfs.federation.namespace import WAN_READ_AHEAD, FederatedNamespace, read_ahead_for
from gfs.federation.site_client import SiteClient
from gfs.federation.testing import Federation
from gfs.federation.tls import Trust
from gfs.federation.views import Visibility
from tests.test_mount_helpers import wait_for


# -- the view, as pure logic -------------------------------------------------------------
def test_read_ahead_covers_the_link_over_a_disk_tier() -> None:
    """Over a disk tier a reader keeps WAN_READ_AHEAD in flight (32 MiB: a 40 ms link
    needs several requests always queued) whatever the memory tier's size; without
    one, the read-ahead stays within a 32nd of the memory tier."""
    assert read_ahead_for(256 << 20, disk=True) == WAN_READ_AHEAD == 32 << 20
    assert read_ahead_for(256 << 20, disk=False) == 8 << 20
    assert read_ahead_for(1 << 20, disk=False) == 1 << 20


def test_visibility_places_paths() -> None:
    v = Visibility.of("telco", {"bank": ["/bank/shared/q1", "/bank/shared", "/elsewhere"],
                                "telco": ["/telco"], "none": []})
    assert v.names() == ["telco", "bank"]  # own first, entities showing nothing left out
    assert v.prefixes("bank") == ("/bank/shared",)  # folded, foreign prefix dropped
    assert v.place("/") == "root"
    assert v.place("/bank") == "synthetic"
    assert v.place("/bank/shared") == v.place("/bank/shared/x/y") == "real"
    assert v.place("/bank/sharedX") == v.place("/bank/secret") == "hidden"
    assert v.place("/none") == v.place("/nobody/x") == "hidden"
    assert v.place("/telco/any/thing") == "real"
    assert v.children("/") == ["telco", "bank"]
    assert v.children("/bank") == ["shared"]
    deep = Visibility.of(None, {"b": ["/b/x/y/z", "/b/x/w"]})
    assert deep.children("/b") == ["x"] and deep.children("/b/x") == ["w", "y"]
    assert deep.place("/b/x/y") == "synthetic"


# -- one entity, and a second that grants -------------------------------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with Federation(tmp_path_factory.mktemp("fed"), ttl=1.5, heartbeat=0.2) as f:
        f.registry()
        f.site("bank-1", "bank", "cn-west", primary=True)
        f.site("telco-1", "telco", "cn-east", primary=True)
        with f.client("bank") as fc:
            fc.mkdir("/bank/shared/q1", parents=True)
            fc.mkdir("/bank/secret", parents=True)
            fc.write_bytes("/bank/shared/q1/data.csv", b"a,b\n1,2\n")
            fc.write_bytes("/bank/secret/keys.txt", b"do not read")
            fc.write_bytes("/bank/top.txt", b"top level")
            fc.grant("/bank/shared/**", "telco", "read")
            fc.mkdir("/bank/inbox")
            fc.grant("/bank/inbox/**", "telco", "write")
        yield f


def _ns(fed: Federation, entity: str | None = None, token: str | None = None,
        **kw: object) -> FederatedNamespace:
    return FederatedNamespace(fed.registry_url, keys=fed.keys(entity) if entity else None,
                              token=token, registry_ca=None if entity else fed.registry_ca,
                              **kw)  # type: ignore[arg-type]


def test_the_root_lists_the_callers_entity_first(fed: Federation) -> None:
    with _ns(fed, "telco") as ns:
        own, granted = ns.ls("/")
        assert [own.path, granted.path] == ["/telco", "/bank"]
        assert own == ns.stat("/telco") and own.ino != 0  # its real, writable root
        assert granted == ns.stat("/bank") and granted.ino == 0  # synthesised, read-only
        assert granted.kind == own.kind == "dir" and granted.mode & 0o222 == 0
        assert ns.stat("/").kind == "dir"
    with _ns(fed, "bank") as ns:
        assert [s.path for s in ns.ls("/")] == ["/bank"]  # telco granted bank nothing
        assert [s.name for s in ns.ls("/bank")] == ["inbox", "secret", "shared", "top.txt"]


def test_a_grantee_sees_exactly_the_granted_part(fed: Federation) -> None:
    with _ns(fed, "telco") as ns:
        assert [s.name for s in ns.ls("/bank")] == ["inbox", "shared"]
        assert ns.stat("/bank").kind == "dir"
        walked = [s.path for s in ns.walk("/bank/shared")]  # other tests add files
        assert walked[0] == "/bank/shared"
        assert {"/bank/shared/q1", "/bank/shared/q1/data.csv"} <= set(walked)
        assert all(p.startswith("/bank/shared/") for p in walked[1:])
        assert {s.path for s in ns.walk("/bank")} == {"/bank", "/bank/inbox",
                                                      *(s.path for s in ns.walk("/bank/inbox")),
                                                      *walked}
        assert ns.read_bytes("/bank/shared/q1/data.csv") == b"a,b\n1,2\n"
        with ns.open("/bank/shared/q1/data.csv") as f:
            f.seek(4)
            assert f.read() == b"1,2\n"


@pytest.mark.parametrize("path", ["/bank/secret", "/bank/secret/keys.txt", "/bank/top.txt",
                                  "/bank/sharedX", "/bank/guess/what", "/nobody",
                                  "/nobody/x"])
def test_outside_the_grant_nothing_exists(fed: Federation, path: str) -> None:
    """The attacker's side: listing, stat, reading and writing outside the grant, and
    guessed paths, all say 'no such file', never 'permission denied' (which would
    confirm that the path exists)."""
    with _ns(fed, "telco") as ns:
        for probe in (ns.stat, ns.ls, ns.read_bytes, ns.xattrs, ns.readlink):
            with pytest.raises(NotFoundError):
                probe(path)
        assert not ns.exists(path)
        with pytest.raises(NotFoundError):
            ns.open(path)
    with _ns(fed, "bank") as owner:
        before = [s.path for s in owner.walk("/bank")]
    with _ns(fed, "telco") as ns:
        with pytest.raises((NotFoundError, PermissionDeniedError)):
            ns.write_bytes(f"{path}/new", b"x")
        with pytest.raises((NotFoundError, PermissionDeniedError)):
            ns.rm(path, recursive=True)
    with _ns(fed, "bank") as owner:
        assert [s.path for s in owner.walk("/bank")] == before


def test_a_grantee_cannot_change_the_granted_or_synthesised_part(fed: Federation) -> None:
    with _ns(fed, "telco") as ns:
        with pytest.raises(PermissionDeniedError):
            ns.write_bytes("/bank/shared/q1/data.csv", b"overwritten")
        with pytest.raises(PermissionDeniedError):
            ns.write_bytes("/bank/new.txt", b"next to the grant")
        with pytest.raises(NotPermittedError):
            ns.rm("/bank")
        with pytest.raises(InvalidPathError):
            ns.stat("/bank/shared/../secret")
    with _ns(fed, "bank") as owner:
        assert owner.read_bytes("/bank/shared/q1/data.csv") == b"a,b\n1,2\n"
        assert not owner.exists("/bank/new.txt")


def test_a_prefix_token_sees_its_prefix_only(fed: Federation) -> None:
    token = fed.keys("bank").mint_token("ann", "write", "/bank/shared", ttl=600)
    with _ns(fed, token=token) as ns:
        assert [s.path for s in ns.ls("/")] == ["/bank"]
        assert [s.name for s in ns.ls("/bank")] == ["shared"]
        ns.write_bytes("/bank/shared/by-token.txt", b"t")
        assert ns.read_bytes("/bank/shared/by-token.txt") == b"t"
        with pytest.raises(NotFoundError):
            ns.read_bytes("/bank/secret/keys.txt")
        with pytest.raises(NotFoundError):
            ns.ls("/telco")
        with pytest.raises(PermissionDeniedError):
            ns.write_bytes("/bank/escape.txt", b"x")


def test_rename_across_entities_is_exdev_and_changes_nothing(fed: Federation) -> None:
    with _ns(fed, "bank") as ns:
        ns.write_bytes("/bank/move-me", b"m")
        with pytest.raises(CrossEntityError) as e:
            ns.mv("/bank/move-me", "/telco/moved")
        assert e.value.errno == errno.EXDEV
        assert ns.read_bytes("/bank/move-me") == b"m"


def test_a_write_is_invisible_to_another_client_until_close(fed: Federation) -> None:
    with _ns(fed, "bank") as a, _ns(fed, "bank") as b:
        a.write_bytes("/bank/cto.bin", b"version one")
        big = os.urandom(3 << 20)
        w = a.open("/bank/cto.bin", "wb")
        try:
            for i in range(0, len(big), 1 << 20):
                w.write(big[i:i + (1 << 20)])
                assert b.read_bytes("/bank/cto.bin") == b"version one"
                assert b.stat("/bank/cto.bin").size == len(b"version one")
        finally:
            w.close()
        assert b.read_bytes("/bank/cto.bin") == big


def test_a_manifest_kept_from_an_open_is_revalidated_not_sent_again(
        fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second open of an unchanged file gets `unchanged` from the primary instead of
    the manifest again; a rewrite by another client (same size) is read new and whole
    at the next open; a file made anew is never read through the old manifest."""
    answers: list[bool] = []
    real = SiteClient.manifest

    def spy(self: SiteClient, path: str, **kw: Any) -> Any:
        m = real(self, path, **kw)
        answers.append(m.unchanged)
        return m
    monkeypatch.setattr(SiteClient, "manifest", spy)
    one, two = os.urandom(1 << 20), os.urandom(1 << 20)
    with _ns(fed, "bank") as a, _ns(fed, "bank") as b:
        b.leases.close()  # without open leases (tests/test_federation_leases.py has them)
        a.write_bytes("/bank/kept.bin", one)
        assert b.read_bytes("/bank/kept.bin") == one
        assert b.read_bytes("/bank/kept.bin") == one
        assert answers == [False, True]
        a.write_bytes("/bank/kept.bin", two)
        assert b.read_bytes("/bank/kept.bin") == two
        assert answers[2:] == [False]
        a.rm("/bank/kept.bin")
        a.write_bytes("/bank/kept.bin", one)  # version numbers may start again
        assert b.read_bytes("/bank/kept.bin") == one


# -- the primary fails ----------------------------------------------------------------------
@pytest.fixture
def mirrored(tmp_path: Path) -> Iterator[Federation]:
    """Entity lab: primary lab-1, and lab-2 holding a mirror of /lab/d by a rule."""
    with Federation(tmp_path / "fed", ttl=1.5, heartbeat=0.2) as f:
        f.registry()
        f.site("lab-1", "lab", "cn-west", primary=True)
        f.site("lab-2", "lab", "cn-east")
        yield f


def _replicate(fed: Federation, files: dict[str, bytes]) -> None:
    with fed.client("lab") as fc:
        fc.mkdir("/lab/d", parents=True, exist_ok=True)
        for p, data in files.items():
            fc.write_bytes(p, data)
        fc.rule_add("/lab/d/**", 2, "region=cn-west | region=cn-east")
        [rule] = fc.reconcile("lab")
        assert rule["state"] == "ok"


def test_kill_9_of_the_primary_during_a_read_reads_on_from_the_mirror(
        mirrored: Federation) -> None:
    data = os.urandom(8 << 20)
    _replicate(mirrored, {"/lab/d/big.bin": data})
    with _ns(mirrored, "lab", near="lab-1", memory_bytes=1 << 20) as ns:
        f = ns.open("/lab/d/big.bin")
        head = f.read(1 << 20)
        assert ns.fc.chunks_from.get("lab-1", 0) > 0 and not ns.fc.chunks_from.get("lab-2")
        mirrored.kill("lab-1")  # kill -9, mid-read
        rest = f.read()
        f.close()
        assert head + rest == data
        assert ns.fc.chunks_from.get("lab-2", 0) > 0  # the rest came from the mirror
        mirrored.wait_status("lab-1", "down")
        assert ns.read_bytes("/lab/d/big.bin", 5, 10) == data[5:10]  # new opens too


def test_primary_down_writes_are_erofs_and_reads_need_a_holder(mirrored: Federation) -> None:
    _replicate(mirrored, {"/lab/d/f.txt": b"committed"})
    with _ns(mirrored, "lab") as ns:
        ns.write_bytes("/lab/alone.txt", b"only at the primary")
        w = ns.open("/lab/d/f.txt", "wb")
        w.write(b"never visible")
        mirrored.kill("lab-1")
        with pytest.raises(ReadOnlyError) as e:
            w.close()
        assert e.value.errno == errno.EROFS and "lab" in str(e.value)
        mirrored.wait_status("lab-1", "down")
        t0 = time.monotonic()
        for change in (lambda: ns.write_bytes("/lab/d/g.txt", b"x"),
                       lambda: ns.mkdir("/lab/d/sub"), lambda: ns.rm("/lab/d/f.txt"),
                       lambda: ns.mv("/lab/d/f.txt", "/lab/d/h.txt")):
            with pytest.raises(ReadOnlyError):
                change()
        assert time.monotonic() - t0 < 5  # refused at once, no hang
        assert ns.read_bytes("/lab/d/f.txt") == b"committed"  # from the mirror
        st = ns.stat("/lab/d/f.txt")  # so is a file's stat
        assert (st.path, st.kind, st.size) == ("/lab/d/f.txt", "file", len(b"committed"))
        with pytest.raises(UnavailableSiteError):
            ns.read_bytes("/lab/alone.txt")
        with pytest.raises(UnavailableSiteError):
            ns.stat("/lab/alone.txt")
        # listings come from the mirror too: what the rule replicates there
        assert [(e.name, e.size) for e in ns.ls("/lab/d")] == [("f.txt", len(b"committed"))]
        assert [e.name for e in ns.ls("/lab")] == ["d"]
        assert ns.stat("/lab/d").kind == "dir" and ns.stat("/lab").kind == "dir"
        with pytest.raises(UnavailableSiteError):
            ns.stat("/lab/alone.txt")  # not mirrored: unknown, not "does not exist"
        # mirrors answer signed requests only (the owner's, and grantees' as far as the
        # signed grants the primary pushed go: tests/test_federated_namespace_grants.py)
        token = mirrored.keys("lab").mint_token("ann", "read", "/lab", ttl=600)
        with SiteClient(mirrored.sites["lab-2"]["url"], token=token, tls=mirrored.trust,
                        site="lab-2") as sc:
            with pytest.raises((AuthError, PermissionDeniedError)):
                sc.list_dir("/lab/d", mirror=True)
            # nor chunks by path to a token (rule 13)
            cids = [r[0] for r in ns.fc.manifest("/lab/d/f.txt").chunks]
            with pytest.raises(AuthError, match="signed requests only") as refused:
                sc.get(cids, path="/lab/d/f.txt")
            assert not isinstance(refused.value, ConnectionError)
    mirrored.start("lab-1")
    mirrored.wait_status("lab-1", "up")
    with _ns(mirrored, "lab") as ns:
        assert ns.read_bytes("/lab/d/f.txt") == b"committed"
        assert not ns.exists("/lab/d/g.txt")



def kill_primary_during_commit(fed: Federation, site: str, w: Any) -> list[BaseException]:
    """Close writer `w` on a thread, kill -9 `site` once it has stored the first chunks
    of that commit (its /metrics), and return what the close raised."""
    failure: list[BaseException] = []

    def close() -> None:
        try:
            w.close()
        except BaseException as e:  # handed to the test thread
            failure.append(e)
    t = threading.Thread(target=close)
    t.start()
    probe = fed.http(site, keys=fed.keys(str(fed.sites[site]["entity"])), timeout=5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the primary stored the first chunks
        if b"chunks_stored_total" in probe.call("GET", "/metrics"):
            break
    probe.close()
    assert t.is_alive(), "the commit ended before the kill: nothing tested"
    fed.kill(site)
    t.join(60)
    assert not t.is_alive()
    return failure

def test_kill_9_of_the_primary_during_an_upload_leaves_nothing(mirrored: Federation) -> None:
    data = os.urandom(64 << 20)
    with _ns(mirrored, "lab") as ns:
        ns.write_bytes("/lab/up.bin", b"old")
        w = ns.open("/lab/up.bin", "wb")
        w.write(data)
        failure = kill_primary_during_commit(mirrored, "lab-1", w)
        assert failure and isinstance(failure[0], ReadOnlyError), failure  # mid-upload
    mirrored.start("lab-1")
    mirrored.wait_status("lab-1", "up")
    with _ns(mirrored, "lab") as ns:
        assert ns.read_bytes("/lab/up.bin") == b"old"


def test_a_listing_is_revalidated_by_the_directory_version(fed: Federation) -> None:
    with _ns(fed, "bank") as ns:
        ns.mkdir("/bank/reval")
        ns.write_bytes("/bank/reval/a", b"1")
        top, entries = ns.ls_if_changed("/bank/reval", None)
        assert top.kind == "dir" and [s.name for s in entries or []] == ["a"]
        assert ns.ls_if_changed("/bank/reval", top.version) == (top, None)
        ns.write_bytes("/bank/reval/b", b"2")
        top2, entries2 = ns.ls_if_changed("/bank/reval", top.version)
        assert top2.version != top.version and [s.name for s in entries2 or []] == ["a", "b"]


def test_a_read_whose_only_holder_dies_is_unavailable_not_lost(mirrored: Federation) -> None:
    """Chunks no holder can be asked for are EHOSTUNREACH (retry later), not EIO's
    'chunk missing' (which would say the data is gone)."""
    data = os.urandom(8 << 20)
    with _ns(mirrored, "lab", memory_bytes=1 << 20) as ns:
        ns.write_bytes("/lab/alone.bin", data)  # no rule: only the primary holds it
        with ns.open("/lab/alone.bin") as f:
            assert f.read(1 << 20) == data[:1 << 20]
            mirrored.kill("lab-1")
            with pytest.raises(UnavailableSiteError) as e:
                f.read()
        assert e.value.errno == errno.EHOSTUNREACH


def test_a_grantee_reads_chunk_by_chunk_through_the_read_stack(fed: Federation,
                                                                tmp_path: Path) -> None:
    """Larger than one request may carry (64 MiB), through the memory and disk tiers."""
    with _ns(fed, "bank") as owner:
        owner.write_bytes("/bank/shared/huge.bin", bytes(65 << 20))  # zeros: one chunk
        tail = os.urandom(3 << 20)
        owner.write_bytes("/bank/shared/tail.bin", tail)
    with _ns(fed, "telco", cache_dir=tmp_path / "cache") as ns:
        with ns.open("/bank/shared/huge.bin") as f:
            f.seek((65 << 20) - 10)
            assert f.read() == bytes(10)
        assert ns.read_bytes("/bank/shared/tail.bin") == tail
        def admitted() -> int:
            disk = ns.chunks.stats().disk
            assert disk is not None
            return int(disk["admitted"])

        # the disk tier's writer thread (gfs.disk_writer) admits the fetched chunks soon
        wait_for(lambda: admitted() > 0, "disk admissions", timeout=30)
        assert set(ns.fc.chunks_from) == {"bank-1"}


def test_chunks_by_path_serve_only_that_files_chunks(fed: Federation) -> None:
    """The attacker's side of chunk reads by path: a grantee gets the chunks of a file it
    may read, and nothing else — not another file's chunks named with a granted path,
    not a path outside its grants, not chunks without a path."""
    with _ns(fed, "bank") as owner:
        secret = owner.fc.manifest("/bank/secret/keys.txt").refs()[0].id
        shared = owner.fc.manifest("/bank/shared/q1/data.csv").refs()[0].id
    url = fed.sites["bank-1"]["url"]
    with SiteClient(url, keys=fed.keys("telco"), site="bank-1") as sc:
        [blob] = sc.get([shared], path="/bank/shared/q1/data.csv")
        assert blob is not None and decode_blob(blob, expect_id=shared) == b"a,b\n1,2\n"
        for ids, path in (([secret], "/bank/shared/q1/data.csv"),
                          ([shared, secret], "/bank/shared/q1/data.csv"),
                          ([secret], "/bank/secret/keys.txt"),
                          ([shared], None)):
            with pytest.raises(PermissionError):
                sc.get(ids, path=path)
        with pytest.raises(ValueError, match="owner"):
            sc.get([shared], owner="telco", path="/bank/shared/q1/data.csv")
    token = fed.keys("bank").mint_token("ann", "read", "/bank/shared", ttl=600)
    with SiteClient(url, token=token, tls=fed.trust, site="bank-1") as sc:
        assert sc.get([shared], path="/bank/shared/q1/data.csv")[0] is not None
        with pytest.raises(PermissionError):
            sc.get([secret], path="/bank/secret/keys.txt")


def test_one_namespace_serves_many_threads(fed: Federation) -> None:
    """A mount or gfs:// calls one namespace from many threads at once."""
    blobs = {f"/bank/threads/f{i}": os.urandom(300_000 + i) for i in range(8)}
    with _ns(fed, "bank", memory_bytes=2 << 20) as ns:
        ns.mkdir("/bank/threads")
        errors: list[BaseException] = []

        def work(path: str, data: bytes) -> None:
            try:
                for _ in range(3):
                    ns.write_bytes(path, data)
                    assert ns.read_bytes(path) == data
                    assert ns.stat(path).size == len(data)
            except BaseException as e:  # handed to the test thread
                errors.append(e)
        threads = [threading.Thread(target=work, args=kv) for kv in blobs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and not any(t.is_alive() for t in threads), errors
        assert {s.path: s.size for s in ns.ls("/bank/threads")} == {
            p: len(d) for p, d in blobs.items()}


def test_a_grantee_writes_where_it_may(fed: Federation) -> None:
    with _ns(fed, "telco") as ns:
        assert [s.name for s in ns.ls("/bank")] == ["inbox", "shared"]
        ns.write_bytes("/bank/inbox/report.csv", b"x,y\n")
        with ns.open("/bank/inbox/report.csv") as f:
            assert f.read() == b"x,y\n"
        with pytest.raises(FileTooLargeError, match="whole") as e:
            ns.write_bytes("/bank/inbox/huge.bin", bytes(65 << 20))
        assert e.value.errno == errno.EFBIG
    with _ns(fed, "bank") as owner:
        assert owner.read_bytes("/bank/inbox/report.csv") == b"x,y\n"
        assert not owner.exists("/bank/inbox/huge.bin")


def test_credentials_of_another_entity_are_refused_at_once(fed: Federation) -> None:
    with pytest.raises(PermissionDeniedError, match="credentials are 'bank'"):
        FederatedNamespace(fed.registry_url, keys=fed.keys("bank"), entity="telco")


# -- the registry's CA ---------------------------------------------------------------------
def test_a_token_needs_the_registry_ca_and_takes_it_as_file_or_pem(fed: Federation) -> None:
    token = fed.keys("bank").mint_token("ann", "read", "/bank/shared", ttl=600)
    with pytest.raises(ConfigError, match="no CA to check registry"):
        FederatedNamespace(fed.registry_url, token=token)
    for ca in (fed.registry_ca_file, str(fed.registry_ca_file), fed.registry_ca,
               fed.registry_ca.decode()):
        with FederatedNamespace(fed.registry_url, token=token, registry_ca=ca) as ns:
            assert ns.read_bytes("/bank/shared/q1/data.csv") == b"a,b\n1,2\n"
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        FederatedNamespace(fed.registry_url, token=token, registry_ca=b"-----BEGIN junk")


def test_a_registry_not_certified_by_the_given_ca_is_refused(fed: Federation,
                                                             tmp_path: Path) -> None:
    """A CA the attacker controls (or a wrong file) does not vouch for the registry: the
    first call fails on the TLS check, and nothing is read."""
    create_ca(tmp_path / "rogue", "registry", "rogue CA")
    token = fed.keys("bank").mint_token("ann", "read", "/bank/shared", ttl=600)
    with FederatedNamespace(fed.registry_url, token=token,
                            registry_ca=tmp_path / "rogue" / CA_CERT) as ns, \
            pytest.raises(AuthError) as e:
        ns.read_bytes("/bank/shared/q1/data.csv")
    assert e.value.code == "tls"


def test_site_keys_with_a_registry_ca_still_present_the_sites_certificate(
        fed: Federation) -> None:
    """Keys of a site directory and an explicit registry CA: signed requests still come
    with the entity's client certificate (mutual TLS), so the owner reads its own tree."""
    with FederatedNamespace(fed.registry_url, keys=fed.keys("bank"),
                            registry_ca=fed.registry_ca_file) as ns:
        assert ns.fc.tls is not None and ns.fc.tls.directory is not None
        assert ns.read_bytes("/bank/shared/q1/data.csv") == b"a,b\n1,2\n"


# -- the registry fails ----------------------------------------------------------------------
def test_registry_down_serves_the_last_answer_with_a_warning(
        mirrored: Federation, caplog: pytest.LogCaptureFixture) -> None:
    """While the registry is down, a client that has seen it goes on with its last
    answer (entities, sites) and says so once; one that never saw it gets a clear
    EHOSTUNREACH naming the registry."""
    _replicate(mirrored, {"/lab/d/f.txt": b"committed"})
    with _ns(mirrored, "lab") as ns:
        ns.fc.view.ttl = 0.0  # every call asks the registry again
        assert [s.name for s in ns.ls("/lab/d")] == ["f.txt"]
        mirrored.registry_proc.stop(signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="hutong.federation"):
            assert [s.name for s in ns.ls("/lab/d")] == ["f.txt"]
            assert ns.read_bytes("/lab/d/f.txt") == b"committed"
            ns.write_bytes("/lab/d/g.txt", b"written with the registry down")
        assert ns.fc.view.stale_served >= 3
        warned = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warned) == 1 and mirrored.registry_url in warned[0].getMessage()
        assert ns.read_bytes("/lab/d/g.txt") == b"written with the registry down"
    # the registry view is kept per trust (one per key directory in a process): a client
    # that never saw the registry is one with a trust of its own
    trust = Trust.load(Path(str(mirrored.keys("lab").directory)) / "tls")
    with _ns(mirrored, "lab", tls=trust) as fresh, pytest.raises(UnavailableSiteError) as e:
        fresh.ls("/lab/d")
    assert e.value.errno == errno.EHOSTUNREACH and "registry" in str(e.value)
