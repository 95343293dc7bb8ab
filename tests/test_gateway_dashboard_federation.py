"""The dashboard of the federation (`hutong dashboard --profile NAME`) in real headless
Chromium: it shows the sites and the rule the test created, and updates by itself when
a site is killed (the site turns down, the rule stuck with the reason)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs.federation.namespace import FederatedNamespace
from gfs.federation.testing import Federation, Proc, SiteDef, started
from gfs.profiles import add_profile
from tests.gateway_servers import cli
from tests.test_gateway_dashboard import _rows, chromium_page, pytestmark  # noqa: F401


def three_sites(root: Path) -> tuple[Federation, str]:
    """Three sites (bank-a's a1 primary and a2, telco-b's t1) and a rule of bank-a
    placing two copies in its sites, reconciled (ok); returns the rule's id. The caller
    closes the federation."""
    f = started(root, [SiteDef("a1", "bank-a", "cn-west", True),
                       SiteDef("a2", "bank-a", "cn-east"),
                       SiteDef("t1", "telco-b", "cn-east", True)], ttl=2.0, heartbeat=0.3)
    try:
        with FederatedNamespace(f.registry_url, keys=f.keys("bank-a")) as ns:
            ns.mkdir("/bank-a/data", parents=True)
            ns.write_bytes("/bank-a/data/x.bin", b"rows " * 100_000)
            rule = ns.fc.rule_add("/bank-a/data/**", 2, "entity=bank-a")
            [state] = [r for r in ns.fc.reconcile("bank-a") if r["id"] == rule["id"]]
            assert state["state"] == "ok", state
    except BaseException:
        f.close()
        raise
    return f, str(rule["id"])


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[tuple[Federation, Proc, str]]:
    """`three_sites`; the dashboard as bank-a."""
    f, rule = three_sites(tmp_path / "fed")
    dash: Proc | None = None
    try:
        profiles = tmp_path / "profiles.toml"
        add_profile("bank", registry=f.registry_url, entity="bank-a",
                    keys=f.sites["a1"]["state"] / "federation", path=profiles)
        dash = Proc(cli("dashboard", "--profile", "bank", "--listen", "127.0.0.1:0",
                        "--interval", "0.5"), tmp_path / "dash.log",
                    env={"HUTONG_PROFILES": str(profiles)})
        yield f, dash, rule
    finally:
        if dash is not None:
            dash.stop()
        f.close()


def _site_status(page: Any, name: str) -> str:
    return next((r[3] for r in _rows(page, "sites", 0) if r[0] == name), "")


def wait_site_down(page: Any, name: str) -> None:
    """Wait until the page shows site `name` down (it updates by itself)."""
    page.wait_for_function(
        "n => [...document.querySelectorAll('#sites tbody tr')].some(r => "
        "r.cells[0].innerText === n && r.cells[3].innerText === 'down')",
        arg=name, timeout=30_000)


def kill_and_see_stuck(page: Any, fed: Federation, name: str) -> None:
    """Kill site `name` of bank-a: the page shows it down, the other sites up, and,
    once bank-a reconciles, its rule stuck with a reason naming the site."""
    fed.kill(name)
    wait_site_down(page, name)
    assert all(_site_status(page, n) == "up" for n in fed.procs)
    with FederatedNamespace(fed.registry_url, keys=fed.keys("bank-a")) as ns:
        ns.fc.reconcile("bank-a")
    page.wait_for_function(
        "n => [...document.querySelectorAll('#rules tbody tr')].some(r => "
        "r.cells[3].innerText === 'stuck' && r.cells[4].innerText.includes(n))",
        arg=name, timeout=30_000)


def test_federation_dashboard_in_chromium(scene: tuple[Federation, Proc, str]) -> None:
    fed, dash, _ = scene
    problems: list[str] = []
    with chromium_page(dash.url, problems) as page:
        page.wait_for_selector("#sites tbody tr", timeout=30_000)
        sites = {r[0]: r for r in _rows(page, "sites", 0)}
        assert set(sites) == {"a1", "a2", "t1"}
        assert [sites[n][3] for n in ("a1", "a2", "t1")] == ["up", "up", "up"]
        assert sites["a1"][1:3] == ["bank-a", "cn-west"] and sites["a1"][4] == "primary"
        rules = {r[0]: r for r in _rows(page, "rules", 1)}
        assert rules["/bank-a/data/**"][1] == "2 copies where entity=bank-a"
        assert rules["/bank-a/data/**"][2] == "ok"
        assert "a1/" in page.inner_text("#pools") and "t1/" in page.inner_text("#pools")

        kill_and_see_stuck(page, fed, "a2")
    assert problems == []
    with urllib.request.urlopen(dash.url + "/api/state") as r:
        state = json.load(r)
    assert {s["name"]: s["status"] for s in state["sites"]} == {"a1": "up", "a2": "down",
                                                                "t1": "up"}
