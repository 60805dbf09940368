"""Prometheus metrics: request latency per route, plus gauges read from the running service at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "internvl_search_request_seconds",
    "HTTP request latency by route template",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

GaugeSource = Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]  # (name, help, labels, value)


class _ServiceGauges(Collector):
    def __init__(self, sources: list[GaugeSource]) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for source in self._sources:
            for name, help_text, labels, value in source():
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(name, help_text, labels=sorted(labels))
                family.add_metric([labels[k] for k in sorted(labels)], value)
        return list(families.values())


def render_metrics(app: FastAPI) -> bytes:
    """Process-wide metrics followed by this app's gauges (queue depths, index sizes, job counts)."""
    registry = CollectorRegistry()
    registry.register(_ServiceGauges(app.state.gauge_sources))
    return generate_latest(REGISTRY) + generate_latest(registry)


class RequestTimer:
    """ASGI middleware observing each HTTP request's latency by method, route template and status. Plain ASGI rather
    than `@app.middleware("http")`, whose call_next runs the rest of the app in a task of its own and streams the
    response through a memory channel, costing every request a fraction of a millisecond."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), []

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, observed_send)
        if status:  # an exception escaped instead (the server's error handler answers it; as before, not timed)
            # The route template (/v1/images/{image_id}), not the raw path, keeps the label set bounded.
            template = getattr(scope.get("route"), "path", "<unmatched>")
            REQUEST_SECONDS.labels(scope["method"], template, str(status[0])).observe(time.perf_counter() - start)


def install_metrics(app: FastAPI) -> None:
    app.state.gauge_sources = []
    app.add_middleware(RequestTimer)
