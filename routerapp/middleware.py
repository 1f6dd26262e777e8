"""Counts and times every HTTP answer for Prometheus (see routerapp.metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class MetricsMiddleware:
    """Label each answer with its route (not its path: ids would explode the label space), the
    caller's team and the configuration that served it (the x-costpass-configuration header)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        from routerapp import metrics

        self.get_response = get_response
        self.metrics = metrics

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        if match is not None and match.url_name == "static":
            return response
        endpoint = match.route if match is not None else "unmatched"
        team = getattr(request, "team", None) or getattr(
            getattr(request, "user", None), "team", None
        )
        self.metrics.record_request(
            endpoint=endpoint,
            method=request.method or "",
            status=response.status_code,
            team=getattr(team, "name", "") or "",
            configuration=response.get("x-costpass-configuration", ""),
            seconds=time.perf_counter() - started,
        )
        return response
