"""Liveness and readiness: is the database reachable, is the broker reachable."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # report, never raise: this is what a load balancer polls
        checks["database"] = f"error: {exc}"
    try:
        from workers.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of every process's metrics (see routerapp.metrics).

    Answers a request bearing ``Authorization: Bearer <COSTPASS_METRICS_TOKEN>`` or one from
    COSTPASS_METRICS_ALLOWED_NETWORKS (loopback by default); 403 otherwise, 404 when metrics are
    off.
    """
    import hmac
    import ipaddress

    from django.conf import settings

    if not settings.METRICS_ENABLED:
        return HttpResponse("metrics are off (COSTPASS_METRICS=false)\n", status=404)
    allowed = False
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        allowed = hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)
    if not allowed:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            address = None
        allowed = address is not None and any(
            address in ipaddress.ip_network(net, strict=False)
            for net in settings.METRICS_ALLOWED_NETWORKS
        )
    if not allowed:
        return HttpResponse(
            "forbidden: send the metrics token or scrape from an allowed network\n", status=403
        )
    from prometheus_client import CONTENT_TYPE_LATEST

    from routerapp.metrics import render_latest

    return HttpResponse(render_latest(), content_type=CONTENT_TYPE_LATEST)
