"""Home: where the team stands: the last 30 days in figures, the active router, what runs now."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from routerapp.models import BenchmarkRun, Configuration, RouterVersion
from routerapp.selectors.dashboards import DashboardFilters, dashboard_summary
from routerapp.selectors.queries import queries_in_flight, queries_recent
from routerapp.services.breakers import endpoints_health
from routerapp.views.common import team_view


@team_view
def home(request: HttpRequest) -> HttpResponse:
    team = request.team  # type: ignore[attr-defined]
    filters = DashboardFilters.last_days(30)
    health = endpoints_health()
    context = {
        "health": health,
        "unhealthy": [h for h in health if h["state"] != "closed"],
        "summary": dashboard_summary(team=team, filters=filters),
        "filters": filters,
        "recent": queries_recent(team=team, limit=8),
        "running": queries_in_flight(team=team),
        "active_router": RouterVersion.objects.filter(is_active=True).defer("artifact").first(),
        "training": RouterVersion.objects.filter(status=RouterVersion.Status.TRAINING)
        .defer("artifact")
        .first(),
        "runs": list(BenchmarkRun.objects.filter(team=team).defer("items", "results")[:3]),
        "configurations": Configuration.objects.filter(enabled=True).count(),
        "nav": "home",
    }
    return render(request, "ui/home.html", context)
