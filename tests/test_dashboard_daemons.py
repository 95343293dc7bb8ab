"""The dashboard served by a running site daemon and by the registry (`/dashboard/`),
in real headless Chromium: it loads without console errors, shows the sites and the
rule state the test created, and updates by itself when a site is killed. From the
attacker's side: no token is 401, a data token without the metrics scope is 403, at
the site and at the registry, and neither changes anything; the registry answers
only its own metrics token, the same rule as its `/metrics`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs.errors import ConfigError
from gfs.federation import registry_metrics
from gfs.federation.auth import AuthError
from gfs.federation.testing import Federation
from gfs.gateway import daemon_dashboard
from tests.test_gateway_dashboard import _rows, chromium_page, pytestmark  # noqa: F401
from tests.test_gateway_dashboard_federation import (
    kill_and_see_stuck,
    three_sites,
    wait_site_down,
)
from tests.test_mount_helpers import wait_for

API = daemon_dashboard.PREFIX + "/api/state"


@pytest.fixture
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Federation, str]]:
    """A registry, bank-a's a1 (primary) and a2, telco-b's t1, a rule of bank-a placing
    two copies in its sites, reconciled; the daemons sample their dashboards twice a
    second."""
    monkeypatch.setenv(daemon_dashboard.INTERVAL_ENV, "0.5")
    f, _ = three_sites(tmp_path / "fed")
    try:
        yield f, f.keys("bank-a").mint_token("ops", "metrics", "/bank-a", 600)
    finally:
        f.close()


def _registry_token(f: Federation) -> str:
    return registry_metrics.mint(f.root / "registry", 600)


def _page_url(base: str, token: str) -> str:
    return f"{base}{daemon_dashboard.PREFIX}/#token={token}"


def test_site_and_registry_dashboards_in_chromium(fed: tuple[Federation, str]) -> None:
    f, token = fed
    problems: list[str] = []
    with chromium_page(_page_url(str(f.sites["a1"]["url"]), token), problems,
                       ignore_https_errors=True) as page:
        page.wait_for_selector("#sites tbody tr", timeout=30_000)
        sites = {r[0]: r for r in _rows(page, "sites", 0)}
        assert set(sites) == {"a1", "a2", "t1"}
        assert [sites[n][3] for n in ("a1", "a2", "t1")] == ["up", "up", "up"]
        assert "site a1 of bank-a" in page.inner_text("#store")
        rules = {r[1]: r for r in _rows(page, "rules", 0)}
        assert rules["/bank-a/data/**"][0] == "replicate"
        assert rules["/bank-a/data/**"][2:4] == ["2 copies where entity=bank-a", "ok"]
        assert "default" in page.inner_text("#pools")
        assert "USD" in page.inner_text("#tiers thead")
        for panel in ("transfers", "dataflow", "privacy"):  # the panels are there
            assert page.is_visible(f"#{panel}-section"), panel
        assert "chunks received" in page.inner_text("#transfers")
        page.wait_for_function(  # the plots draw the transfer rates once sampled twice
            "document.querySelector('figure[data-series=chunk_bytes_in_total] polyline')",
            timeout=30_000)

        kill_and_see_stuck(page, f, "a2")

    with chromium_page(_page_url(f.registry_url, _registry_token(f)), problems,
                       ignore_https_errors=True) as page:
        page.wait_for_selector("#sites tbody tr", timeout=30_000)
        sites = {r[0]: r for r in _rows(page, "sites", 0)}
        assert {n: sites[n][3] for n in sites} == {"a1": "up", "a2": "down", "t1": "up"}
        assert "a1/default" in page.inner_text("#pools")
        assert "2 of 3 sites up" in page.inner_text("#store")
        f.kill("t1")
        wait_site_down(page, "t1")
        page.wait_for_function(
            "document.querySelector('figure[data-series=sites_up] polyline')", timeout=30_000)
    assert problems == []


def _get(f: Federation, where: str, token: str | None, path: str = API) -> tuple[int, Any]:
    h = f.http(where, token=token) if where != "registry" else None
    if h is None:
        from gfs.federation.http import HttpClient

        h = HttpClient(f.registry_url, token=token, tls=f.trust, timeout=30)
    try:
        status, body, kind = h.request("GET", path)
    finally:
        h.close()
    return status, json.loads(body) if kind == "application/json" else body


@pytest.mark.parametrize("where", ["a1", "registry"])
def test_dashboard_api_refuses_without_a_metrics_token(fed: tuple[Federation, str],
                                                       where: str) -> None:
    f, token = fed
    if where == "registry":
        token = _registry_token(f)
    keys = f.keys("bank-a")
    status, body = _get(f, where, None)
    assert status == 401 and body["error"] in ("unauthenticated",), body
    assert _get(f, where, None, daemon_dashboard.PREFIX + "/api/series")[0] == 401
    for scope, prefix in (("read", "/bank-a/data"), ("write", "/bank-a/data"),
                          ("read", "/bank-a")):  # a data token, even entity-wide: 403
        status, body = _get(f, where, keys.mint_token("eve", scope, prefix, 600))
        assert status == 403 and "metrics" in body["message"], body
    other = f.keys("telco-b").mint_token("ops", "metrics", "/telco-b", 600)
    # another entity's metrics token does not read bank-a's site, and no entity's
    # metrics token reads the registry's
    assert _get(f, where, other)[0] == 403
    if where == "registry":
        assert _get(f, where, fed[1])[0] == 403
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert _get(f, where, forged)[0] == 401
    def sites() -> set[str]:  # the metrics token reads it (the view renews itself)
        status, body = _get(f, where, token)
        assert status == 200, body
        return {s["name"] for s in body["sites"]}
    wait_for(lambda: sites() == {"a1", "a2", "t1"}, "every site on the dashboard", 30)
    # the page itself holds no data: it is served to anyone
    status, html = _get(f, where, None, daemon_dashboard.PREFIX + "/")
    assert status == 200 and b"Hutong" in html
    # a metrics token still reads nothing else at a site
    if where == "a1":
        with pytest.raises(AuthError):
            f.http("a1", token=token).call("GET", "/v1/ns/list", query={"path": "/bank-a"})


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan"])
def test_a_bad_sampling_interval_is_refused(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(daemon_dashboard.INTERVAL_ENV, raw)
    with pytest.raises(ConfigError, match=daemon_dashboard.INTERVAL_ENV):
        daemon_dashboard.interval()


def test_the_sampling_interval_defaults_to_five_seconds(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.delenv(daemon_dashboard.INTERVAL_ENV, raising=False)
    assert daemon_dashboard.interval() == 5.0
