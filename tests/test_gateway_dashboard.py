"""The dashboard in real headless Chromium (Playwright): it loads without console errors,
shows the pools, tiers, rules, jobs and gateway requests the test created, and updates
live while the gateway serves more requests."""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gfs.client import Client
from gfs.federation.testing import Proc
from gfs.tiering.tierer import run as tier_run
from tests.gateway_servers import S3Server, cli, start_s3

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                reason="Debian's chromium is not installed (make setup)")


def _set_pins(fs: Client, pins: dict[str, str]) -> None:
    policy = fs.policy().with_changes(pins=pins)
    with fs.engine.write() as txn:
        policy.save(txn)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[tuple[S3Server, Proc]]:
    """A store with three pools, rules in each state, a tier run, a gateway, a dashboard."""
    s3 = start_s3(tmp_path)
    dash: Proc | None = None
    try:
        with Client(s3.state) as fs:
            fs.add_pool("fastpool", str(tmp_path / "fast"), tier="hot")
            fs.add_pool("archivepool", str(tmp_path / "archive"), tier="cold")
            fs.mkdir("/lab/archive", parents=True)
            fs.mkdir("/lab/data")
            fs.write_bytes("/lab/archive/old.bin", b"cold data " * 50_000)
            fs.write_bytes("/lab/data/new.bin", b"fresh rows " * 50_000)
            _set_pins(fs, {"/lab/archive": "cold"})
            tier_run(fs.store)
            _set_pins(fs, {"/lab/archive": "cold", "/lab/data": "hot",
                           "/lab/later": "warm"})
        client = s3.client()
        client.create_bucket(Bucket="bkt")
        client.put_object(Bucket="bkt", Key="k", Body=b"x" * 1000)
        dash = Proc(cli("--state", str(s3.state), "dashboard", "--listen", "127.0.0.1:0",
                        "--gateway", s3.url, "--interval", "0.5"), tmp_path / "dash.log")
        yield s3, dash
    finally:
        if dash is not None:
            dash.stop()
        s3.proc.stop()


@contextlib.contextmanager
def chromium_page(url: str, problems: list[str], *, ignore_https_errors: bool = False
                  ) -> Iterator[Any]:
    """A page of headless Chromium open at `url`; console errors and page errors are
    appended to `problems`. `ignore_https_errors`: for daemons whose certificate a
    federation CA issued (the browser does not know it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(ignore_https_errors=ignore_https_errors)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_dashboard_in_chromium(scene: tuple[S3Server, Proc]) -> None:
    s3, dash = scene
    problems: list[str] = []
    with chromium_page(dash.url, problems) as page:
        page.wait_for_selector("#pools tbody tr", timeout=30_000)
        pools = page.inner_text("#pools")
        assert "fastpool" in pools and "archivepool" in pools and "default" in pools
        tiers = page.inner_text("#tiers")
        assert "cold" in tiers and "USD" in page.inner_text("#tiers thead")
        rules = {r[0]: r for r in _rows(page, "rules", 1)}
        assert rules["/lab/archive"][2] == "met"
        assert rules["/lab/data"][2] == "pending" and "tier run" in rules["/lab/data"][3]
        assert rules["/lab/later"][2] == "waiting"
        assert "tier run" in page.inner_text("#jobs")
        page.wait_for_function(
            "document.querySelector('#gateways').innerText.includes('PutObject')",
            timeout=30_000)
        before = _count(page, "PutObject")
        client = s3.client()
        for i in range(5):
            client.put_object(Bucket="bkt", Key=f"more{i}", Body=b"y" * 10_000)
        page.wait_for_function(  # the page updates by itself
            "n => [...document.querySelectorAll('#gateways tbody tr')].some(r => "
            "r.cells[1].innerText === 'PutObject' && Number(r.cells[2].innerText) >= n)",
            arg=before + 5, timeout=30_000)
        page.wait_for_function(  # the plots have lines once two samples are in
            "document.querySelectorAll('#plots polyline').length >= 8", timeout=30_000)
        assert page.inner_text("figure[data-series=stored_bytes] figcaption") \
            .startswith("stored bytes")
        s3.proc.stop()  # a gateway that goes away is shown as down
        page.wait_for_function(
            "document.querySelector('#gateways').innerText.includes('down')",
            timeout=30_000)
    assert problems == []
    with urllib.request.urlopen(dash.url + "/api/state") as r:
        state = json.load(r)
    assert {p["name"] for p in state["pools"]} == {"default", "fastpool", "archivepool"}


def _rows(page: Any, table: str, key_col: int) -> list[list[str]]:
    rows = page.eval_on_selector_all(
        f"#{table} tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.innerText))")
    return [r[key_col:] for r in rows]


def _count(page: Any, operation: str) -> int:
    for r in _rows(page, "gateways", 0):
        if r[1] == operation:
            return int(float(r[2]))
    raise AssertionError(f"no {operation} row")
