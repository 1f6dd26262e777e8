"""Benchmark runs: pick a labelled set (built-in generated problems or an uploaded CSV / JSONL)
and configurations, run it in the background with a progress bar, read the per-configuration
results. The graded queries it leaves are outcome data for the router and the dashboards."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from routerapp.errors import NotFound, ServiceError
from routerapp.models import BenchmarkRun, Configuration
from routerapp.selectors.benchmarks import (
    benchmark_run_get_for_team,
    benchmark_run_table,
    benchmark_runs_for_team,
)
from routerapp.views.common import add_service_error, is_htmx, team_view
from routerapp.views.forms import BenchmarkForm

FIELD_OF_PARAM = {
    "file": "file",
    "items": "file",
    "name": "name",
    "configurations": "configurations",
    "n": "n",
    "difficulty": "n",
    "labelled_set": "labelled_set",
    "dataset": "dataset",
}
ACTIVE = (BenchmarkRun.Status.QUEUED, BenchmarkRun.Status.RUNNING)


@require_http_methods(["GET", "POST"])
@team_view
def benchmarks(request: HttpRequest) -> HttpResponse:
    team = request.team  # type: ignore[attr-defined]
    form = BenchmarkForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            run = _create(request, form.cleaned_data)
        except ServiceError as exc:
            add_service_error(form, exc, FIELD_OF_PARAM)
        else:
            return redirect("ui-benchmark", run_id=run.pk)
    runs = list(benchmark_runs_for_team(team=team)[:30])
    return render(
        request,
        "ui/benchmarks.html",
        {"form": form, "runs": runs, "nav": "benchmarks"},
        status=400 if request.method == "POST" else 200,
    )


def _create(request: HttpRequest, data: dict[str, Any]) -> BenchmarkRun:
    from routerapp.services.benchmarks import benchmark_run_create, parse_labelled_file

    slugs = data["configurations"]
    configurations = list(
        Configuration.objects.filter(slug__in=slugs).select_related("endpoint", "strategy")
    )
    kwargs: dict[str, Any] = {}
    if data["labelled_set"] == "upload":
        kwargs["items"] = parse_labelled_file(data["file"])
    elif data["labelled_set"] == "shared":
        kwargs["shared"] = {
            "dataset": data["dataset"],
            "n": data["n"],
            "seed": data.get("seed") or 0,
        }
    else:
        kwargs["generated"] = {"n": data["n"], "seed": data.get("seed") or 0}
    return benchmark_run_create(
        team=request.team,  # type: ignore[attr-defined]
        user=request.user,
        name=data["name"],
        configurations=configurations,
        **kwargs,
    )


def _get(request: HttpRequest, run_id: int) -> BenchmarkRun:
    try:
        return benchmark_run_get_for_team(team=request.team, run_id=run_id)  # type: ignore[attr-defined]
    except NotFound:
        raise Http404("no such benchmark run in your team") from None


def _live_context(run: BenchmarkRun) -> dict[str, Any]:
    # While it runs the table is computed from the queries finished so far; once done, the
    # stored results are what the router and the team see.
    if run.status == BenchmarkRun.Status.DONE and run.results:
        table = [run.results[k] for k in sorted(run.results)]
    else:
        table = benchmark_run_table(run)
    return {
        "run": run,
        "table": table,
        "active": run.status in ACTIVE,
        "percent": round(100 * run.progress, 1),
    }


@team_view
def benchmark_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _get(request, run_id)
    context = _live_context(run)
    context.update(
        {
            "configurations": list(run.configurations.order_by("slug")),
            "nav": "benchmarks",
            "items_preview": run.items[:5],
        }
    )
    return render(request, "ui/benchmark_detail.html", context)


@team_view
def benchmark_live(request: HttpRequest, run_id: int) -> HttpResponse:
    return render(request, "ui/_benchmark_live.html", _live_context(_get(request, run_id)))


@require_POST
@team_view
def benchmark_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    from routerapp.services.benchmarks import benchmark_run_cancel

    run = _get(request, run_id)
    error = None
    try:
        benchmark_run_cancel(run=run)
    except ServiceError as exc:
        error = exc.message
    if is_htmx(request):
        context = _live_context(_get(request, run_id))
        context["action_error"] = error
        return render(request, "ui/_benchmark_live.html", context)
    return redirect("ui-benchmark", run_id=run_id)
