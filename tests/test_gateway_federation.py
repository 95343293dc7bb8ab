"""The S3 gateway on the federation (`hutong gateway s3 --profile NAME`), against a real
two-site federation on loopback, with boto3 as the client and federation tokens as
credentials: every bucket is an entity, writes go through the federated namespace, a
token reaches only its prefix, and an entity's gateway serves the grants it received."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gfs.federation.auth import AuthError
from gfs.federation.http import BadRequestError
from gfs.federation.namespace import FederatedNamespace
from gfs.federation.testing import TWO_ENTITIES, Federation, Proc, populate, started
from gfs.gateway.access import token_credentials
from gfs.profiles import add_profile
from tests.gateway_servers import cli, code

SHARED = b"shared with telco-b\n"
SECRET = random.Random(5).randbytes(300_000)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with started(tmp_path_factory.mktemp("s3fed"), TWO_ENTITIES, ttl=3.0, heartbeat=0.3) as f:
        populate(f, "bank-a", {"/bank-a/shared/s.txt": SHARED,
                               "/bank-a/data/secret.bin": SECRET}, dirs=["/bank-a/team"],
                 grants=[("/bank-a/shared/**", "telco-b", "read")])
        yield f


def _gateway(fed: Federation, tmp: Path, name: str, entity: str, site: str,
             kind: str = "s3") -> Proc:
    """`hutong gateway KIND --profile NAME` with the keys of `entity`, in its own
    profiles file."""
    profiles = tmp / f"{name}-{kind}-profiles.toml"
    add_profile(name, registry=fed.registry_url, entity=entity,
                keys=fed.sites[site]["state"] / "federation", path=profiles)
    return Proc(cli("gateway", kind, "--profile", name, "--listen", "127.0.0.1:0"),
                tmp / f"{name}-{kind}.log", env={"HUTONG_PROFILES": str(profiles)})


@pytest.fixture(scope="module")
def gateways(fed: Federation, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, str]]:
    """The URLs of bank-a's gateway ("bank") and telco-b's ("telco")."""
    tmp = tmp_path_factory.mktemp("gw")
    procs = [_gateway(fed, tmp, "bank", "bank-a", "a1"),
             _gateway(fed, tmp, "telco", "telco-b", "t1"),
             _gateway(fed, tmp, "bank", "bank-a", "a1", "webdav")]
    try:
        yield {"bank": procs[0].url, "telco": procs[1].url, "webdav": procs[2].url}
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def bank_gw(gateways: dict[str, str]) -> str:
    return gateways["bank"]


@pytest.fixture
def telco_gw(gateways: dict[str, str]) -> str:
    return gateways["telco"]


def s3(url: str, token: str, *, access_key: str | None = None,
       secret: str | None = None, session: str | None = "") -> Any:
    """A boto3 client signing with `token` (parts of the credentials replaceable)."""
    c = token_credentials(token)
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=access_key or c["access_key"],
        aws_secret_access_key=secret or c["secret_key"],
        aws_session_token=c["session_token"] if session == "" else session,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}))


def body(resp: dict[str, Any]) -> bytes:
    data: bytes = resp["Body"].read()
    return data


def test_objects_through_the_federation(fed: Federation, bank_gw: str) -> None:
    """put/get/range/list/copy/multipart/delete with an entity-wide write token; what the
    gateway wrote is in the federated namespace, and what the namespace holds is served."""
    c = s3(bank_gw, fed.keys("bank-a").mint_token("ops", "write", "/bank-a", 600))
    assert "bank-a" in [b["Name"] for b in c.list_buckets()["Buckets"]]
    data = random.Random(1).randbytes(2_500_000)
    put = c.put_object(Bucket="bank-a", Key="s3/x.bin", Body=data,
                       Metadata={"owner": "ops"}, ContentType="application/x-test")
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = c.get_object(Bucket="bank-a", Key="s3/x.bin")
    assert body(got) == data and got["Metadata"] == {"owner": "ops"}
    assert got["ContentType"] == "application/x-test" and got["ETag"] == put["ETag"]
    assert body(c.get_object(Bucket="bank-a", Key="s3/x.bin", Range="bytes=100-199")) \
        == data[100:200]
    assert body(c.get_object(Bucket="bank-a", Key="data/secret.bin")) == SECRET
    with FederatedNamespace(fed.registry_url, keys=fed.keys("bank-a")) as ns:
        assert ns.read_bytes("/bank-a/s3/x.bin") == data

    c.copy_object(Bucket="bank-a", Key="s3/copy.bin", CopySource="bank-a/s3/x.bin")
    assert body(c.get_object(Bucket="bank-a", Key="s3/copy.bin")) == data
    page = c.list_objects_v2(Bucket="bank-a", Prefix="s3/")
    assert [o["Key"] for o in page["Contents"]] == ["s3/copy.bin", "s3/x.bin"]
    top = c.list_objects_v2(Bucket="bank-a", Delimiter="/")
    assert {p["Prefix"] for p in top["CommonPrefixes"]} >= {"data/", "s3/", "shared/"}
    two = c.list_objects_v2(Bucket="bank-a", Prefix="s3/", MaxKeys=1)
    assert two["IsTruncated"] and len(two["Contents"]) == 1
    rest = c.list_objects_v2(Bucket="bank-a", Prefix="s3/",
                             ContinuationToken=two["NextContinuationToken"])
    assert [o["Key"] for o in rest["Contents"]] == ["s3/x.bin"]

    parts = [random.Random(10 + i).randbytes(n) for i, n in enumerate((5 << 20, 5 << 20, 9))]
    up = c.create_multipart_upload(Bucket="bank-a", Key="s3/big.bin")["UploadId"]
    etags = [c.upload_part(Bucket="bank-a", Key="s3/big.bin", UploadId=up, PartNumber=i + 1,
                           Body=p)["ETag"] for i, p in enumerate(parts)]
    assert [p["PartNumber"] for p in c.list_parts(Bucket="bank-a", Key="s3/big.bin",
                                                  UploadId=up)["Parts"]] == [1, 2, 3]
    assert [u["UploadId"] for u in c.list_multipart_uploads(Bucket="bank-a")
            .get("Uploads", [])] == [up]
    assert "s3/.s3-uploads/" not in [p["Prefix"] for p in c.list_objects_v2(
        Bucket="bank-a", Prefix="s3/", Delimiter="/").get("CommonPrefixes", [])]
    done = c.complete_multipart_upload(
        Bucket="bank-a", Key="s3/big.bin", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e}
                                   for i, e in enumerate(etags)]})
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    assert done["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-3"'
    assert body(c.get_object(Bucket="bank-a", Key="s3/big.bin")) == b"".join(parts)
    assert c.head_object(Bucket="bank-a", Key="s3/big.bin")["ETag"] == done["ETag"]
    with FederatedNamespace(fed.registry_url, keys=fed.keys("bank-a")) as ns:
        assert [s.name for s in ns.ls("/bank-a/s3")] == ["big.bin", "copy.bin", "x.bin"]

    up2 = c.create_multipart_upload(Bucket="bank-a", Key="s3/gone.bin")["UploadId"]
    c.upload_part(Bucket="bank-a", Key="s3/gone.bin", UploadId=up2, PartNumber=1, Body=b"x")
    c.abort_multipart_upload(Bucket="bank-a", Key="s3/gone.bin", UploadId=up2)
    assert c.list_multipart_uploads(Bucket="bank-a").get("Uploads", []) == []
    for k in ("s3/x.bin", "s3/copy.bin", "s3/big.bin"):
        c.delete_object(Bucket="bank-a", Key=k)
    assert c.list_objects_v2(Bucket="bank-a", Prefix="s3/").get("Contents", []) == []
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="bank-a", Key="s3/x.bin")
    assert code(e) == "NoSuchKey"


def test_a_prefix_token_reaches_only_its_prefix(fed: Federation, bank_gw: str) -> None:
    """The attacker holds a write token for /bank-a/team and tries everything else."""
    keys = fed.keys("bank-a")
    c = s3(bank_gw, keys.mint_token("eve", "write", "/bank-a/team", 600))
    c.put_object(Bucket="bank-a", Key="team/a.txt", Body=b"mine")
    assert body(c.get_object(Bucket="bank-a", Key="team/a.txt")) == b"mine"
    parts = [random.Random(20).randbytes(5 << 20), b"tail"]
    up = c.create_multipart_upload(Bucket="bank-a", Key="team/m.bin")["UploadId"]
    etags = [c.upload_part(Bucket="bank-a", Key="team/m.bin", UploadId=up, PartNumber=i + 1,
                           Body=p)["ETag"] for i, p in enumerate(parts)]
    c.complete_multipart_upload(Bucket="bank-a", Key="team/m.bin", UploadId=up,
                                MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e}
                                                           for i, e in enumerate(etags)]})
    assert body(c.get_object(Bucket="bank-a", Key="team/m.bin")) == b"".join(parts)

    for key in ("data/secret.bin", "shared/s.txt"):
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket="bank-a", Key=key)
        assert code(e) in ("NoSuchKey", "AccessDenied")
    for key in ("data/evil.bin", "shared/s.txt", "evil.bin"):
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket="bank-a", Key=key, Body=b"evil")
        assert code(e) == "AccessDenied"
    c.delete_object(Bucket="bank-a", Key="data/secret.bin")  # absent to it: 204, as S3
    with pytest.raises(ClientError) as e:
        c.copy_object(Bucket="bank-a", Key="team/stolen.bin", CopySource="bank-a/data/secret.bin")
    assert code(e) in ("NoSuchKey", "AccessDenied")
    with pytest.raises(ClientError) as e:
        c.create_multipart_upload(Bucket="bank-a", Key="data/evil.bin")
    assert code(e) == "AccessDenied"
    keys_seen = [o["Key"] for o in c.list_objects_v2(Bucket="bank-a").get("Contents", [])]
    assert keys_seen == ["team/a.txt", "team/m.bin"]
    assert [b["Name"] for b in c.list_buckets()["Buckets"]] == ["bank-a"]
    with pytest.raises(ClientError) as e:
        c.list_objects_v2(Bucket="telco-b")
    assert code(e) == "NoSuchBucket"
    with FederatedNamespace(fed.registry_url, keys=keys) as ns:
        assert ns.read_bytes("/bank-a/data/secret.bin") == SECRET
        assert ns.read_bytes("/bank-a/shared/s.txt") == SHARED
        assert not ns.exists("/bank-a/data/evil.bin") and not ns.exists("/bank-a/evil.bin")
        assert not ns.exists("/bank-a/team/stolen.bin")


def _forged(token: str, **changes: Any) -> str:
    head, _, sig = token.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    claims.update(changes)
    raw = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + sig


def test_bad_credentials_are_refused(fed: Federation, bank_gw: str) -> None:
    keys = fed.keys("bank-a")
    eve = keys.mint_token("eve", "read", "/bank-a/team", 600)
    other = keys.mint_token("bob", "read", "/bank-a/team", 600)
    cases = {
        "forged prefix": (s3(bank_gw, _forged(eve, prefix="/bank-a")), "InvalidToken"),
        "expired": (s3(bank_gw, keys.mint_token("old", "read", "/bank-a", 0)), "ExpiredToken"),
        "no session token": (s3(bank_gw, eve, session=None), "InvalidAccessKeyId"),
        "another token's id": (s3(bank_gw, eve, access_key=token_credentials(other)
                                  ["access_key"]), "InvalidAccessKeyId"),
        "wrong secret": (s3(bank_gw, eve, secret=token_credentials(other)["secret_key"]),
                         "SignatureDoesNotMatch"),
    }
    for what, (client, want) in cases.items():
        with pytest.raises(ClientError) as e:
            client.get_object(Bucket="bank-a", Key="data/secret.bin")
        assert code(e) == want, what
    revoked = keys.mint_token("gone", "read", "/bank-a", 600)
    assert body(s3(bank_gw, revoked).get_object(Bucket="bank-a", Key="data/secret.bin")) \
        == SECRET
    with FederatedNamespace(fed.registry_url, keys=keys) as ns:
        ns.fc.revoke_token(revoked)
    with pytest.raises(ClientError) as e:  # the gateway keeps records for a few seconds
        _refused_within(s3(bank_gw, revoked), 15.0)
    assert code(e) == "InvalidToken"


def _refused_within(client: Any, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.get_object(Bucket="bank-a", Key="data/secret.bin")
        time.sleep(0.2)  # polling a cache's expiry, not synchronisation


def test_an_entity_gateway_serves_the_grants_it_received(fed: Federation, telco_gw: str
                                                         ) -> None:
    """telco-b's gateway with a read token of telco-b: bank-a's grant is readable, the
    rest of bank-a is not, and a read token writes nothing."""
    c = s3(telco_gw, fed.keys("telco-b").mint_token("ana", "read", "/telco-b", 600))
    assert {"bank-a", "telco-b"} <= {b["Name"] for b in c.list_buckets()["Buckets"]}
    assert body(c.get_object(Bucket="bank-a", Key="shared/s.txt")) == SHARED
    assert [o["Key"] for o in c.list_objects_v2(Bucket="bank-a")["Contents"]] \
        == ["shared/s.txt"]
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="bank-a", Key="data/secret.bin")
    assert code(e) in ("NoSuchKey", "AccessDenied")
    for bucket, key in (("telco-b", "x.txt"), ("bank-a", "shared/x.txt")):
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=bucket, Key=key, Body=b"x")
        assert code(e) == "AccessDenied"
    w = s3(telco_gw, fed.keys("telco-b").mint_token("ana", "write", "/telco-b", 600))
    w.put_object(Bucket="telco-b", Key="in/x.txt", Body=b"telco data")
    assert body(c.get_object(Bucket="telco-b", Key="in/x.txt")) == b"telco data"
    with pytest.raises(ClientError) as e:  # a write token writes no grant it only reads
        w.put_object(Bucket="bank-a", Key="shared/x.txt", Body=b"x")
    assert code(e) == "AccessDenied"
    bank = s3(telco_gw, fed.keys("bank-a").mint_token("ops", "read", "/bank-a", 600))
    assert body(bank.get_object(Bucket="bank-a", Key="data/secret.bin")) == SECRET


def test_webdav_with_a_prefix_token(fed: Federation, gateways: dict[str, str]) -> None:
    """`hutong gateway webdav --profile`: user = token id, password = token; the token's
    prefix bounds what WebDAV shows and changes."""
    from webdav4.client import Client as DavClient
    from webdav4.client import HTTPError

    keys = fed.keys("bank-a")
    token = keys.mint_token("eve", "write", "/bank-a/team", 600)
    c = DavClient(gateways["webdav"], auth=(token_credentials(token)["access_key"], token))
    data = random.Random(30).randbytes(2 << 20)
    c.upload_fileobj(io.BytesIO(data), "bank-a/team/dav.bin")
    out = io.BytesIO()
    c.download_fileobj("bank-a/team/dav.bin", out)
    assert out.getvalue() == data
    assert [e["name"] for e in c.ls("bank-a")] == ["bank-a/team"]
    assert not c.exists("bank-a/data/secret.bin")
    with pytest.raises(HTTPError):
        c.upload_fileobj(io.BytesIO(b"evil"), "bank-a/data/evil.bin")
    with FederatedNamespace(fed.registry_url, keys=keys) as ns:
        assert ns.read_bytes("/bank-a/team/dav.bin") == data
        assert not ns.exists("/bank-a/data/evil.bin")
    other = keys.mint_token("bob", "write", "/bank-a/team", 600)
    for user, password in ((token_credentials(other)["access_key"], token),
                           (token_credentials(token)["access_key"], _forged(token,
                                                                            prefix="/bank-a"))):
        with pytest.raises(HTTPError) as e:
            DavClient(gateways["webdav"], auth=(user, password)).ls("bank-a")
        assert e.value.status_code == 401  # type: ignore[attr-defined]


def test_a_prefix_token_uploads_an_object_over_64_mib(fed: Federation, bank_gw: str) -> None:
    """Multipart with a token limited to a prefix: the parts are joined at the primary in
    one manifest commit (POST /v1/ns/concat), so the object may exceed the 64 MiB a
    single write may carry; the parts' directory goes in the same commit."""
    c = s3(bank_gw, fed.keys("bank-a").mint_token("eve", "write", "/bank-a/team", 600))
    rnd = random.Random(64)
    parts = [rnd.randbytes(24 << 20), rnd.randbytes(24 << 20), rnd.randbytes(20 << 20)]
    assert sum(map(len, parts)) > 64 << 20
    up = c.create_multipart_upload(Bucket="bank-a", Key="team/big.bin",
                                   Metadata={"team": "blue"})["UploadId"]
    etags = [c.upload_part(Bucket="bank-a", Key="team/big.bin", UploadId=up,
                           PartNumber=i + 1, Body=p)["ETag"] for i, p in enumerate(parts)]
    commits = fed.metric("a1", "commits_total")
    attr_sets = _attr_sets(fed)
    c.complete_multipart_upload(Bucket="bank-a", Key="team/big.bin", UploadId=up,
                                MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e}
                                                           for i, e in enumerate(etags)]})
    assert fed.metric("a1", "commits_total") == commits + 1  # the join, one commit ...
    assert _attr_sets(fed) == attr_sets  # ... with the object's attributes in it
    head = c.head_object(Bucket="bank-a", Key="team/big.bin")
    assert head["ContentLength"] == sum(map(len, parts))
    assert head["ETag"].endswith('-3"') and head["Metadata"] == {"team": "blue"}
    attr_sets = _attr_sets(fed)  # a copy too: data, ETag and metadata in one commit
    c.copy_object(Bucket="bank-a", Key="team/copy.bin", CopySource="bank-a/team/big.bin")
    assert _attr_sets(fed) == attr_sets
    copied = c.head_object(Bucket="bank-a", Key="team/copy.bin")
    assert (copied["ETag"], copied["Metadata"]) == (head["ETag"], {"team": "blue"})
    got = c.get_object(Bucket="bank-a", Key="team/big.bin", Range="bytes=25165820-25165830")
    joined = b"".join(parts)
    assert body(got) == joined[25165820:25165831]
    got_all = c.get_object(Bucket="bank-a", Key="team/big.bin")["Body"]
    digest = hashlib.sha256()
    for block in iter(lambda: got_all.read(8 << 20), b""):
        digest.update(block)
    assert digest.hexdigest() == hashlib.sha256(joined).hexdigest()
    assert c.list_multipart_uploads(Bucket="bank-a").get("Uploads", []) == []


def test_put_object_sets_its_attributes_in_its_own_commit(fed: Federation,
                                                          bank_gw: str) -> None:
    """PutObject through the federation writes data, ETag and metadata in one commit at
    the primary: a small object in one `POST /v1/ns/write` (a prefix token), a larger
    one as chunks and a manifest commit (an entity-wide token); no separate request
    sets attributes, so no reader ever sees the new version without its metadata."""
    keys = fed.keys("bank-a")
    for token, key, size in ((keys.mint_token("eve", "write", "/bank-a/team", 600),
                              "team/small.txt", 3_000),
                             (keys.mint_token("ops", "write", "/bank-a", 600),
                              "s3/large.bin", 2_500_000)):
        c = s3(bank_gw, token)
        data = random.Random(size).randbytes(size)
        before = _attr_sets(fed)
        put = c.put_object(Bucket="bank-a", Key=key, Body=data, Metadata={"k": key},
                           ContentType="text/x-mine")
        assert _attr_sets(fed) == before, key
        head = c.head_object(Bucket="bank-a", Key=key)
        assert (head["ETag"], head["Metadata"], head["ContentType"]) == \
            (put["ETag"], {"k": key}, "text/x-mine")
        with FederatedNamespace(fed.registry_url, keys=keys) as ns:
            version = ns.stat(f"/bank-a/{key}").version
            attrs = ns.xattrs(f"/bank-a/{key}")
        etags = [v for k, v in attrs.items() if v.startswith(f"{version} ".encode())]
        assert etags, attrs  # the ETag is keyed by the version the commit made


def test_a_write_with_malformed_attributes_changes_nothing(fed: Federation) -> None:
    """`POST /v1/ns/write?attrs=...` and `/v1/ns/commit` with malformed attributes are
    400 with a message naming the field, and the file is not written."""
    keys = fed.keys("bank-a")
    eve = fed.http("a1", token=keys.mint_token("eve", "write", "/bank-a/team", 600))
    try:
        for attrs in ("{", "[]", '{"xattrs": {"user.a": "not base64!"}}',
                      '{"other": {}}', '{"keyed": ["user.a"]}', "x" * 7000):
            with pytest.raises(BadRequestError) as e:
                eve.call("POST", "/v1/ns/write", body=b"data",
                         query={"path": "/bank-a/team/bad", "attrs": attrs},
                         content_type="application/octet-stream")
            assert any(w in str(e.value) for w in ("attrs", "xattr", "keyed")), attrs
    finally:
        eve.close()
    owner = fed.http("a1", keys=keys)
    try:
        with pytest.raises(BadRequestError) as e:
            owner.call("POST", "/v1/ns/commit", {"path": "/bank-a/team/bad", "chunks": [],
                                                 "xattrs": {"user.a": "%%%"}})
        assert "xattr" in str(e.value)
    finally:
        owner.close()
    with FederatedNamespace(fed.registry_url, keys=keys) as ns:
        assert not ns.exists("/bank-a/team/bad")


def _attr_sets(fed: Federation) -> float:
    """Requests site a1 answered that set attributes on their own."""
    return fed.metric("a1", 'http_requests_total{method="POST",route="/v1/ns/xattrs"')


def test_concat_checks_every_path_against_the_token(fed: Federation) -> None:
    """The attacker holds a write token for /bank-a/team and asks the site to join a
    file outside it into its prefix, to join into a target outside it, or to remove
    something outside it along the way: each is refused and nothing changes."""
    keys = fed.keys("bank-a")
    with FederatedNamespace(fed.registry_url, keys=keys) as ns:
        ns.write_bytes("/bank-a/team/part1", b"mine")
    eve = fed.http("a1", token=keys.mint_token("eve", "write", "/bank-a/team", 600))
    reader = fed.http("a1", token=keys.mint_token("rob", "read", "/bank-a", 600))
    tries = [
        (eve, {"path": "/bank-a/team/stolen", "sources": ["/bank-a/team/part1",
                                                          "/bank-a/data/secret.bin"]}),
        (eve, {"path": "/bank-a/data/evil", "sources": ["/bank-a/team/part1"]}),
        (eve, {"path": "/bank-a/team/x", "sources": ["/bank-a/team/part1"],
               "remove": ["/bank-a/data/secret.bin"]}),
        (eve, {"path": "/bank-a/team/x", "sources": ["/bank-a/team/part1"],
               "remove": ["/bank-a"]}),
        (eve, {"path": "/bank-a/team/x", "sources": ["/telco-b/t"]}),
        (reader, {"path": "/bank-a/team/x", "sources": ["/bank-a/team/part1"]}),
    ]
    try:
        for who, req in tries:
            with pytest.raises(AuthError) as e:
                who.call("POST", "/v1/ns/concat", req)
            assert e.value.status == 403, req
        for bad in ({"path": "/bank-a/team/x", "sources": []},
                    {"path": "/bank-a/team/x", "sources": "/bank-a/team/part1"},
                    {"path": "/bank-a/team/x", "sources": [3]},
                    {"path": "/bank-a/team/x", "sources": ["/bank-a/team/part1"],
                     "xattrs": {"user.a": "not base64!"}},
                    {"path": "/bank-a/team/x", "sources": ["/bank-a/team/part1"],
                     "keyed": ["user.a"]}):
            with pytest.raises(BadRequestError):
                eve.call("POST", "/v1/ns/concat", bad)
    finally:
        eve.close()
        reader.close()
    with FederatedNamespace(fed.registry_url, keys=keys) as ns:
        assert ns.read_bytes("/bank-a/data/secret.bin") == SECRET
        assert ns.read_bytes("/bank-a/team/part1") == b"mine"
        for p in ("/bank-a/team/stolen", "/bank-a/data/evil", "/bank-a/team/x"):
            assert not ns.exists(p), p


def _ns_requests(fed: Federation, route: str) -> float:
    """GET requests site a1 answered on `route` so far."""
    return fed.metric("a1", f'http_requests_total{{method="GET",route="{route}"')


def test_a_federated_listing_costs_one_request_per_directory(fed: Federation,
                                                             bank_gw: str) -> None:
    """ListObjectsV2 asks the primary once per directory it walks (the listing carries
    each entry's stat and attributes), not once more per object for its ETag."""
    c = s3(bank_gw, fed.keys("bank-a").mint_token("ops", "write", "/bank-a", 600))
    etags = {}
    for d in ("d1", "d2", "d3"):
        for i in range(5):
            key = f"lst/{d}/o{i}.txt"
            etags[key] = c.put_object(Bucket="bank-a", Key=key, Body=key.encode())["ETag"]
    routes = ("/v1/ns/list", "/v1/ns/xattrs", "/v1/ns/stat")
    before = {r: _ns_requests(fed, r) for r in routes}
    got = c.list_objects_v2(Bucket="bank-a", Prefix="lst/")["Contents"]
    spent = {r: _ns_requests(fed, r) - before[r] for r in routes}
    assert {o["Key"]: o["ETag"] for o in got} == etags  # the ETags came with the listing
    assert spent["/v1/ns/xattrs"] == 0, spent
    assert spent["/v1/ns/list"] == 4, spent  # lst and its three directories
    assert spent["/v1/ns/stat"] <= 2, spent  # the bucket and the top: per listing

    before = {r: _ns_requests(fed, r) for r in routes}
    top = c.list_objects_v2(Bucket="bank-a", Prefix="lst/d2/", Delimiter="/")["Contents"]
    assert [o["Key"] for o in top] == [f"lst/d2/o{i}.txt" for i in range(5)]
    assert [o["ETag"] for o in top] == [etags[o["Key"]] for o in top]
    spent = {r: _ns_requests(fed, r) - before[r] for r in routes}
    assert spent["/v1/ns/xattrs"] == 0 and spent["/v1/ns/list"] == 1, spent
