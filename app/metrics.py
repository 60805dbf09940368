"""Prometheus metrics: request latency per route, plus gauges read from the running service at scrape time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


def install_metrics(app: FastAPI) -> None:
    app.state.gauge_sources = []

    @app.middleware("http")
    async def time_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        # The route template (/v1/images/{image_id}), not the raw path, keeps the label set bounded.
        route = request.scope.get("route")
        template = getattr(route, "path", "<unmatched>")
        REQUEST_SECONDS.labels(request.method, template, str(response.status_code)).observe(time.perf_counter() - start)
        return response
