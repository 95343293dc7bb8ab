"""The live dashboard of an embedded store or of the federation (gfs.gateway.fed_dashboard,
`--profile`): one static page over a JSON API.

`GET /` is the page (gfs/gateway/dashboard.html, plain JS, no build chain);
`GET /api/state` is the current picture (pools, tiers with usage and cost, rules
with state, recent jobs, gateway request metrics); `GET /api/series` the
samples taken every `interval` seconds, for the plots; `GET /metrics` this
process's Prometheus metrics. Gateway metrics are scraped from the
`/-/metrics` of the gateways given with --gateway.
"""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gfs.client import Client
from gfs.env import TIERS
from gfs.gateway import metrics
from gfs.tiering.tierer import last_report, survey, tier_capacity, tier_usage

T = TypeVar("T")
#: Samples kept for the plots (at the default 5 s interval: one hour).
SERIES_LEN = 720
#: Seconds the dashboard goes on sampling after its API was last asked: while nobody
#: watches, nothing is sampled (a site's picture walks its whole namespace: with
#: 20,000 files and a 1 GiB file, 1.4-1.6 s of the site's CPU during a 13 s cold read
#: of that file, which its readers waited for).
WATCHED_S = 120.0


def gateway_metrics(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """Request counts, latency and bytes of the gateway at `url` (its /-/metrics)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + metrics.METRICS_PATH,
                                    timeout=timeout) as r:
            text = r.read().decode()
    except OSError as e:
        return {"url": url, "up": False, "error": str(e), "operations": [], "bytes": {}}
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    moved: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if fam.name == "hutong_gateway_request_seconds":
                k = (s.labels.get("gateway", ""), s.labels.get("operation", ""))
                op = ops.setdefault(k, {"gateway": k[0], "operation": k[1], "count": 0,
                                        "sum": 0.0, "errors": 0, "buckets": {}})
                if s.name.endswith("_count"):
                    op["count"] += s.value
                    if s.labels.get("status", "200")[0] in "45":
                        op["errors"] += s.value
                elif s.name.endswith("_sum"):
                    op["sum"] += s.value
                elif s.name.endswith("_bucket"):
                    le = s.labels["le"]
                    op["buckets"][le] = op["buckets"].get(le, 0) + s.value
            elif fam.name == "hutong_gateway_bytes" and s.name.endswith("_total"):
                moved[s.labels["direction"]] = moved.get(s.labels["direction"], 0) + s.value
    out = []
    for op in ops.values():
        count = op["count"]
        bounds = sorted(((float(le), n) for le, n in op.pop("buckets").items()),
                        key=lambda x: x[0])
        p95 = next((le for le, n in bounds if count and n >= 0.95 * count), None)
        out.append({**op, "mean_ms": 1000 * op["sum"] / count if count else 0.0,
                    "p95_ms": None if p95 is None or p95 == float("inf") else 1000 * p95})
    out.sort(key=lambda o: (o["gateway"], o["operation"]))
    return {"url": url, "up": True, "operations": out, "bytes": moved}


def rule_states(fs: Client) -> list[dict[str, Any]]:
    """Each tiering pin (path -> tier) with its state: met, or pending and why."""
    policy = fs.policy()
    if not policy.pins:
        return []
    states, _ = survey(fs.store, policy)
    where = {s.id: s.tier for s in states}
    out = []
    for prefix, tier in sorted(policy.pins.items()):
        total = off = 0
        if fs.exists(prefix):
            for st in fs.walk(prefix):
                if st.kind != "file":
                    continue
                for ref in fs.manifest(st.path).chunks:
                    total += 1
                    off += where.get(ref.id, tier) != tier
        if not fs.exists(prefix):
            state, reason = "waiting", f"{prefix} does not exist yet"
        elif off:
            state, reason = "pending", (f"{off} of {total} chunks are not in {tier} yet; "
                                        "the next `hutong tier run` moves them")
        else:
            state, reason = "met", f"all {total} chunks are in {tier}"
        out.append({"kind": "pin", "path": prefix, "tier": tier, "state": state,
                    "reason": reason, "chunks": total})
    return out


def store_state(fs: Client) -> dict[str, Any]:
    """Pools, tiers with usage and monthly cost, rules and recent jobs of the store."""
    policy = fs.policy()
    usage = tier_usage(fs.store)
    caps = tier_capacity(fs.store)
    pools = [{"name": rec.name, "tier": rec.tier, "url": rec.url, "used_bytes": used,
              "capacity": rec.capacity} for rec, used in fs.pools()]
    tiers = [{"tier": t, "live_bytes": usage.get(t, 0), "capacity": caps.get(t),
              "price_gb_month": policy.prices.get(t, 0.0),
              "monthly_cost_usd": round(usage.get(t, 0) / 1e9 * policy.prices.get(t, 0.0), 6)}
             for t in TIERS if t in caps or usage.get(t)]
    du = fs.du("/")
    last = last_report(fs.store)
    jobs = [] if last is None else [{"kind": "tier run", **asdict(last)}]
    return {"store": str(fs.state), "pools": pools, "tiers": tiers,
            "usage": du.to_dict(), "rules": rule_states(fs), "jobs": jobs}


class Dashboard:
    """The state the page shows (`picture()`), refreshed every `interval` seconds."""

    def __init__(self, picture: Callable[[], dict[str, Any]], gateways: list[str],
                 interval: float = 5.0, *, watched_s: float = WATCHED_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Samples are taken every `interval` seconds while the API was asked within
        `watched_s` seconds (`clock`: injectable for tests)."""
        self.picture = picture
        self.gateways = gateways
        self.interval = interval
        self.watched_s = watched_s
        self.clock = clock
        self._asked = -watched_s
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="hutong-dashboard")
        self.state: dict[str, Any] = {}
        self.series: collections.deque[dict[str, Any]] = collections.deque(maxlen=SERIES_LEN)
        self._sampling: asyncio.Future[None] | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def sample(self) -> None:
        """Take one sample of the store and the gateways; a caller arriving while one
        is being taken waits for that one (one walk of the store at a time, however
        many requests find the state stale together)."""
        if self._sampling is None or self._sampling.done():
            self._sampling = asyncio.ensure_future(self._sample())
        await asyncio.shield(self._sampling)

    async def _sample(self) -> None:
        state = await self.run(self.picture)
        state["gateways"] = [await self.run(gateway_metrics, g) for g in self.gateways]
        state["sampled_at"] = time.time()
        self.state = state
        point: dict[str, Any] = {"t": state["sampled_at"],
                                 "stored_bytes": state["usage"].get("stored_bytes", 0),
                                 "logical_bytes": state["usage"].get("logical_bytes", 0)}
        for t in state["tiers"]:
            point[f"tier_{t['tier']}"] = t["live_bytes"]
        for name, value in state.get("counters", {}).items():
            point[name] = value
        point["requests"] = sum(o["count"] for g in state["gateways"] for o in g["operations"])
        point["bytes_in"] = sum(g["bytes"].get("in", 0) for g in state["gateways"])
        point["bytes_out"] = sum(g["bytes"].get("out", 0) for g in state["gateways"])
        self.series.append(point)

    def asked(self) -> None:
        """Note a request of the API: samples are taken for `watched_s` seconds more."""
        self._asked = self.clock()

    def watched(self) -> bool:
        """Whether the API was asked within the last `watched_s` seconds."""
        return self.clock() - self._asked < self.watched_s

    def stale(self) -> bool:
        """Whether the state is missing or older than two intervals (not sampled while
        nobody watched)."""
        return time.time() - float(self.state.get("sampled_at", 0.0)) > 2 * self.interval

    async def tick(self) -> None:
        """One turn of the sampling loop: a sample, if the dashboard is watched."""
        if not self.watched():
            return
        try:
            await self.sample()
        except Exception as e:  # a failed sample is shown, the loop goes on
            self.state = {**self.state, "error": f"sampling failed: {e}"}

    async def loop(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval)


Guard = Callable[[web.Request], Awaitable[None]]
"""Checks a request to the dashboard's JSON API; raises (an AuthError) to refuse it."""


async def _open(request: web.Request) -> None:
    """No check: the dashboard of an embedded store, bound to the operator's address."""


def add_routes(app: web.Application, dash: Dashboard, prefix: str = "",
               guard: Guard = _open) -> None:
    """Serve `dash` in `app` under `prefix`: the page at `PREFIX/` (static, it holds no
    data) and the JSON API at `PREFIX/api/state` and `PREFIX/api/series`, each request
    passed through `guard` first; the sampling loop runs while `app` serves, sampling
    while the API is being asked (`Dashboard.watched`)."""

    async def page(request: web.Request) -> web.Response:
        html = resources.files("gfs.gateway").joinpath("dashboard.html").read_text()
        return web.Response(text=html, content_type="text/html")

    async def state(request: web.Request) -> web.Response:
        await guard(request)
        dash.asked()
        if not dash.state:
            await dash.sample()
        elif dash.stale():  # nobody watched meanwhile: sampled now (a failure is shown)
            await dash.tick()
        return web.json_response(dash.state)

    async def series(request: web.Request) -> web.Response:
        await guard(request)
        dash.asked()
        return web.json_response({"interval": dash.interval, "points": list(dash.series)})

    app.router.add_get(prefix + "/", page)
    app.router.add_get(prefix + "/api/state", state)
    app.router.add_get(prefix + "/api/series", series)

    async def start(app: web.Application) -> Any:
        task = asyncio.create_task(dash.loop())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        dash.pool.shutdown(wait=True)
    app.cleanup_ctx.append(start)


def make_app(picture: Callable[[], dict[str, Any]], gateways: list[str],
             interval: float = 5.0) -> web.Application:
    """The dashboard application showing `picture()` (`store_state` of a store, or
    `federation_state` of a federated namespace) and the gateways at `gateways`."""
    app = web.Application(middlewares=[metrics.middleware("dashboard")])
    add_routes(app, Dashboard(picture, gateways, interval))
    app.router.add_get("/metrics", metrics.serve_metrics)
    return app
