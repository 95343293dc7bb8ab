"""The site's namespace endpoints through the typed SiteClient, against real site
processes: listings with full stats and version revalidation, symlink, setattr,
xattrs, du, visible — and the same endpoints from the attacker's side (a grantee
outside its grant, a third entity, a token bound to a prefix)."""

from __future__ import annotations

import errno
import gzip
import http.client
import json
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.errors import ExistsError, NotEmptyError, NotFoundError, UnavailableSiteError
from gfs.federation.auth import AuthError, EntityKeys
from gfs.federation.http import MAX_DECODED, ApiError, BadRequestError, _decoded
from gfs.federation.site_client import SiteClient
from gfs.federation.testing import Federation, SiteDef, populate, started
from gfs.federation.tls import trust_for


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("fed")
    sites = [SiteDef("a1", "bank-a", "cn-west", True, "FIN"),
             SiteDef("t1", "telco-b", "cn-east", True, "TEL"),
             SiteDef("c1", "lab-c", "cn-north", True)]  # an entity with no grants
    with started(root, sites, ttl=2.0, heartbeat=0.3) as f:
        populate(f, "bank-a", {"/bank-a/data/secret.txt": b"not for telco-b",
                               "/bank-a/shared/s.csv": b"a,b\n1,2\n",
                               "/bank-a/shared/note.txt": b"internal note",
                               "/bank-a/shared/sub/deep.csv": b"x\n"},
                 dirs=["/bank-a/rw", "/bank-a/lists"],
                 grants=[("/bank-a/shared/*.csv", "telco-b", "read"),
                         ("/bank-a/rw/**", "telco-b", "write")])
        yield f


def _site(fed: Federation, entity: str | None = None, *, token: str | None = None,
          keys: EntityKeys | None = None) -> SiteClient:
    keys = keys or (fed.keys(entity) if entity else None)
    return SiteClient(fed.sites["a1"]["url"], keys=keys, token=token,
                      tls=trust_for(keys) if keys else fed.trust, site="a1")


def test_list_has_full_stats_and_revalidates_by_version(fed: Federation) -> None:
    with _site(fed, "bank-a") as sc:
        sc.write("/bank-a/lists/one", b"1")
        first = sc.list_dir("/bank-a/lists")
        assert first.dir.is_dir and first.dir.path == "/bank-a/lists"
        assert first.entries == [sc.stat("/bank-a/lists/one")]   # every field, not a summary
        assert sc.list_dir("/bank-a/lists", if_version=first.dir.version).unchanged
        seen = {first.dir.version}
        changes = [lambda: sc.write("/bank-a/lists/two", b"2"),          # added
                   lambda: sc.write("/bank-a/lists/two", b"two"),        # content replaced
                   lambda: sc.rename("/bank-a/lists/two", "/bank-a/lists/three"),
                   lambda: sc.setattr("/bank-a/lists/one", mode=0o600),  # attributes
                   lambda: sc.symlink("/bank-a/lists/ln", "one"),
                   lambda: sc.remove("/bank-a/lists/three")]
        for change in changes:
            before = sc.list_dir("/bank-a/lists").dir.version
            change()
            after = sc.list_dir("/bank-a/lists", if_version=before)
            assert not after.unchanged and after.dir.version not in seen
            seen.add(after.dir.version)
            assert after.entries == sc.list_dir("/bank-a/lists").entries
        assert [e.name for e in sc.ls("/bank-a/lists")] == ["ln", "one"]
        with pytest.raises(BadRequestError, match="if_version"):
            sc.call("GET", "/v1/ns/list", query={"path": "/bank-a/lists", "if_version": "x"})


def test_symlink_setattr_xattrs_du(fed: Federation) -> None:
    with _site(fed, "bank-a") as sc:
        sc.write("/bank-a/data/f", b"hello")
        st = sc.symlink("/bank-a/data/f.link", "f")
        assert st.kind == "symlink" and st.target == "f"
        st = sc.setattr("/bank-a/data/f", mode=0o640, mtime_ns=1_000_000_000,
                        atime_ns=2_000_000_000)
        assert (st.mode & 0o7777, st.mtime_ns, st.atime_ns) == (0o640, 10**9, 2 * 10**9)
        sc.set_xattrs("/bank-a/data/f", {"user.a": b"\x00\xff", "user.b": b"b"})
        assert sc.xattrs("/bank-a/data/f") == {"user.a": b"\x00\xff", "user.b": b"b"}
        sc.set_xattrs("/bank-a/data/f", {"user.c": b"c"}, replace_all=True)
        assert sc.xattrs("/bank-a/data/f") == {"user.c": b"c"}
        du = sc.du("/bank-a/data")
        assert du.files >= 2 and du.symlinks == 1 and du.logical_bytes >= 5
        # bad input: a clear 400 and nothing changed
        with pytest.raises(BadRequestError, match="base64"):
            sc.call("POST", "/v1/ns/xattrs", {"path": "/bank-a/data/f",
                                              "set": {"user.c": "!!"}, "replace_all": True})
        with pytest.raises(BadRequestError, match="mode"):
            sc.call("POST", "/v1/ns/setattr", {"path": "/bank-a/data/f", "mode": 0o17777})
        assert sc.xattrs("/bank-a/data/f") == {"user.c": b"c"}
        assert sc.stat("/bank-a/data/f").mode & 0o7777 == 0o640
        with pytest.raises(NotFoundError):
            sc.stat("/bank-a/data/ghost")


def test_ranged_reads_of_one_version(fed: Federation) -> None:
    data = bytes(range(256)) * 4000
    with _site(fed, "bank-a") as owner, _site(fed, "telco-b") as sc:
        owner.write("/bank-a/rw/big", data)
        st = sc.stat("/bank-a/rw/big")
        assert sc.read("/bank-a/rw/big", 1000, 300_000, version=st.version) == \
            data[1000:300_000]
        assert sc.read("/bank-a/rw/big", 1_020_000) == data[1_020_000:]
        assert sc.read("/bank-a/rw/big", 2_000_000, 3_000_000) == b""
        owner.write("/bank-a/rw/big", b"new")
        with pytest.raises(ApiError) as e:
            sc.read("/bank-a/rw/big", 0, 10, version=st.version)
        assert e.value.status == 409 and e.value.code == "version_changed"
        with pytest.raises(BadRequestError, match="start"):
            sc.call("GET", "/v1/ns/read", query={"path": "/bank-a/rw/big", "start": "-1"})
        with pytest.raises(AuthError):  # a range does not widen the grant
            sc.read("/bank-a/data/secret.txt", 0, 4)


def test_visible_and_filtered_listing_for_a_grantee(fed: Federation) -> None:
    with _site(fed, "telco-b") as sc:
        assert sc.visible().prefixes == ["/bank-a/rw", "/bank-a/shared"]
        # the literal prefix of a grant lists only what the grant matches
        assert [e.name for e in sc.ls("/bank-a/shared")] == ["s.csv"]
        assert sc.stat("/bank-a/shared/s.csv").size == 8
        assert sc.read("/bank-a/shared/s.csv") == b"a,b\n1,2\n"
        for path in ("/bank-a", "/bank-a/data", "/bank-a/shared/sub",
                     "/bank-a/shared/note.txt"):
            with pytest.raises(AuthError):
                sc.list_dir(path)
            with pytest.raises(AuthError):
                sc.stat(path)
        for path in ("/bank-a/shared", "/bank-a/shared/note.txt", "/bank-a"):
            with pytest.raises(AuthError):
                sc.du(path)
            with pytest.raises(AuthError):
                sc.xattrs(path)


def test_grantee_cannot_change_outside_its_write_grant(fed: Federation) -> None:
    with _site(fed, "telco-b") as sc, _site(fed, "bank-a") as owner:
        before = owner.list_dir("/bank-a/shared")
        attempts = [lambda: sc.symlink("/bank-a/shared/l", "s.csv"),        # read grant only
                    lambda: sc.symlink("/bank-a/data/l", "secret.txt"),
                    lambda: sc.setattr("/bank-a/shared/s.csv", mode=0o777),
                    lambda: sc.setattr("/bank-a/data/secret.txt", mtime_ns=1),
                    lambda: sc.set_xattrs("/bank-a/shared/s.csv", {"user.x": b"1"}),
                    lambda: sc.set_xattrs("/bank-a/data/secret.txt", {"user.x": b"1"}),
                    lambda: sc.mknod("/bank-a/shared/p", "fifo", 0o644),
                    lambda: sc.mknod("/bank-a/data/p", "fifo", 0o644)]
        for attempt in attempts:
            with pytest.raises(AuthError):
                attempt()
        assert owner.list_dir("/bank-a/shared", if_version=before.dir.version).unchanged
        assert owner.xattrs("/bank-a/shared/s.csv") == {}
        # inside its write grant it may
        sc.write("/bank-a/rw/mine", b"m")
        assert sc.symlink("/bank-a/rw/l", "mine").target == "mine"
        assert sc.setattr("/bank-a/rw/mine", mode=0o600).mode & 0o7777 == 0o600
        sc.set_xattrs("/bank-a/rw/mine", {"user.k": b"v"})
        assert sc.xattrs("/bank-a/rw/mine") == {"user.k": b"v"}
        assert sc.mknod("/bank-a/rw/pipe", "fifo", 0o600).kind == "fifo"
        # no device nodes, from anyone: a request that asks for one changes nothing
        for who in (sc, owner):
            for kind in ("chardev", "blockdev", "file", "dir"):
                with pytest.raises(BadRequestError, match="no device nodes"):
                    who.mknod(f"/bank-a/rw/{kind}", kind, 0o600)
        assert {e.name for e in owner.ls("/bank-a/rw")} >= {"mine", "l", "pipe"}
        assert not {"chardev", "blockdev", "file", "dir"} & {e.name for e in owner.ls(
            "/bank-a/rw")}


def test_an_entity_without_grants_sees_nothing(fed: Federation, tmp_path: Path) -> None:
    lab = fed.keys("lab-c")
    with _site(fed, keys=lab) as sc:
        assert sc.visible().prefixes == []
        for call in (lambda: sc.list_dir("/bank-a/shared"), lambda: sc.stat("/bank-a/shared"),
                     lambda: sc.du("/bank-a"), lambda: sc.symlink("/bank-a/rw/x", "y")):
            with pytest.raises(AuthError):
                call()


def test_a_token_bound_to_a_prefix_cannot_list_outside_it(fed: Federation) -> None:
    keys = fed.keys("bank-a")
    ro = keys.mint_token("alice", "read", "/bank-a/shared", ttl=600)
    with _site(fed, token=ro) as sc:
        assert sc.visible().prefixes == ["/bank-a/shared"]
        assert {e.name for e in sc.ls("/bank-a/shared")} >= {"s.csv", "note.txt", "sub"}
        for path in ("/bank-a", "/bank-a/data", "/bank-a/rw"):
            with pytest.raises(AuthError):
                sc.list_dir(path)
        with pytest.raises(AuthError):
            sc.setattr("/bank-a/shared/s.csv", mode=0o600)          # read scope
        with pytest.raises(AuthError):
            sc.symlink("/bank-a/shared/l", "s.csv")
    # a grantee's token sees its grants only as far as the token's prefix reaches
    tb = fed.keys("telco-b")
    for prefix, expect in (("/", ["/bank-a/rw", "/bank-a/shared"]), ("/telco-b", []),
                           ("/bank-a/rw/x", ["/bank-a/rw/x"])):
        with _site(fed, token=tb.mint_token("bob", "read", prefix, ttl=600)) as sc:
            assert sc.visible().prefixes == expect
    with _site(fed, token=tb.mint_token("bob", "read", "/telco-b", ttl=600)) as sc, \
            pytest.raises(AuthError):
        sc.list_dir("/bank-a/shared")


def test_unreachable_site_is_unavailable_site_error(fed: Federation) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with SiteClient(f"https://127.0.0.1:{port}", keys=fed.keys("bank-a"), site="a1",
                    entity="bank-a") as sc, \
            pytest.raises(UnavailableSiteError) as e:
        sc.health()
    assert e.value.errno == errno.EHOSTUNREACH and isinstance(e.value, ConnectionError)


def test_errors_come_back_as_gfs_errors(fed: Federation) -> None:
    with _site(fed, "bank-a") as sc:
        sc.mkdir("/bank-a/errs/sub", parents=True)
        with pytest.raises(ExistsError):
            sc.mkdir("/bank-a/errs/sub")
        with pytest.raises(NotEmptyError):
            sc.remove("/bank-a/errs")
        with pytest.raises(NotFoundError):
            sc.list_dir("/bank-a/errs/none")
        with pytest.raises(AuthError) as e:
            sc.stat("/telco-b/x")                  # not this site's entity
        assert isinstance(e.value, PermissionError) and e.value.code == "path_outside_root"
        assert sc.ls("/bank-a/errs/sub") == []
        sc.write("/bank-a/errs/f", b"f")
        assert [e.path for e in sc.ls("/bank-a/errs/f")] == ["/bank-a/errs/f"]  # a file: itself


def test_a_big_listing_comes_gzip_compressed(fed: Federation) -> None:
    """A listing is sent gzip-compressed to a client that accepts it (a tenth of the
    bytes: round trips of slow start saved on a long link), and decoded to the same
    entries."""
    with fed.client("bank-a") as fc:
        fc.mkdir("/bank-a/big", parents=True, exist_ok=True)
        for i in range(200):
            fc.write_bytes(f"/bank-a/big/f{i:04d}", b"")
    keys = fed.keys("bank-a")
    hc = fed.http("a1", keys=keys)
    target = "/v1/ns/list?path=%2Fbank-a%2Fbig"
    conn = hc.connection()
    try:
        conn.request("GET", target, headers={"Accept-Encoding": "gzip",
                                             **keys.sign("GET", target, b"", hc.audience)})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip"
    finally:
        conn.close()
    plain = gzip.decompress(raw)
    assert len(raw) * 5 < len(plain)
    with _site(fed, "bank-a") as sc:
        entries = sc.ls("/bank-a/big")
    assert [e["path"] for e in json.loads(plain)["entries"]] == [e.path for e in entries]
    assert len(entries) == 200


def test_a_hostile_servers_compressed_answer_is_refused() -> None:
    """A gzip bomb, a corrupt or truncated body and an encoding not asked for are errors
    of the response, not memory exhausted or garbage returned."""
    assert _decoded(gzip.compress(b"ok"), "gzip") == b"ok"
    assert _decoded(b"plain", "") == b"plain"
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    data = b"".join(bomb.compress(bytes(1 << 20)) for _ in range(MAX_DECODED // (1 << 20) + 1))
    data += bomb.flush()
    with pytest.raises(http.client.HTTPException, match="beyond"):
        _decoded(data, "gzip")
    with pytest.raises(http.client.HTTPException, match="does not decompress"):
        _decoded(b"not gzip at all", "gzip")
    with pytest.raises(http.client.HTTPException, match="truncated"):
        _decoded(gzip.compress(bytes(1000))[:-12], "gzip")
    with pytest.raises(http.client.HTTPException, match="br"):
        _decoded(b"x", "br")
