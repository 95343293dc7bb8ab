"""Prometheus metrics of the gateways: request latency histograms and bytes moved."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: The registry of this process's gateway metrics (served at /-/metrics).
REGISTRY = CollectorRegistry()
LATENCY = Histogram(
    "hutong_gateway_request_seconds", "Time to answer a gateway request",
    ["gateway", "operation", "status"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BYTES = Counter("hutong_gateway_bytes", "Object bytes moved by the gateways",
                ["gateway", "direction"], registry=REGISTRY)
#: Request key under which handlers name their operation (e.g. "PutObject").
OPERATION = "hutong.operation"
METRICS_PATH = "/-/metrics"


def middleware(gateway: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware timing every request of `gateway` ("s3", "webdav")."""
    @web.middleware
    async def timed(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            if request.path != METRICS_PATH:
                LATENCY.labels(gateway, request.get(OPERATION, request.method),
                               str(status)).observe(time.perf_counter() - started)
    return timed


async def serve_metrics(request: web.Request) -> web.Response:
    """The Prometheus text exposition of REGISTRY."""
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
