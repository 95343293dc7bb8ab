"""The site and the registry conform to their OpenAPI documents (schemathesis, bounded
examples) while running as real processes; no input makes them fail with a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from gfs.federation.testing import Federation, SiteDef, populate, started

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openapi"
# (the notice stream never ends on its own: tests/test_federation_leases.py reads it)
site_schema = schemathesis.openapi.from_path(DOCS / "site.yaml").exclude(
    path="/v1/ns/notices")
registry_schema = schemathesis.openapi.from_path(DOCS / "registry.yaml")
# The schemas are as strict as the servers: input they forbid is refused (and 405 names
# the methods in Allow). positive_data_acceptance stays out: chunk frames (binary) and
# identifier check characters cannot be written in a schema.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, unsupported_method,
          allow_header_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, str]]:
    sites = [SiteDef("o1", "bank-o", "cn-west", True)]
    with started(tmp_path_factory.mktemp("openapi"), sites, heartbeat=1.0) as f:
        populate(f, "bank-o", {"/bank-o/a.txt": b"hello"})
        yield f, f.keys("bank-o").mint_token("fuzz", "write", "/bank-o", ttl=3600)


@site_schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_site_conforms(case: schemathesis.Case, fed: tuple[Federation, str]) -> None:
    f, token = fed
    case.call_and_validate(base_url=f.sites["o1"]["url"], checks=CHECKS,
                           headers={"Authorization": f"Bearer {token}"}, timeout=30,
                           verify=str(f.sites["o1"]["state"] / "federation" / "tls" /
                                      "ca.pem"))


@registry_schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_registry_conforms(case: schemathesis.Case, fed: tuple[Federation, str]) -> None:
    f, _ = fed
    case.call_and_validate(base_url=f.registry_url, checks=CHECKS, timeout=30,
                           verify=str(f.registry_ca_file))
