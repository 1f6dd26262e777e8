"""Routers: the stored router versions with their evaluation against baselines (and the
cost-accuracy plot), training a new version from the query log with live progress, activating
one, and running one in shadow (it decides on every query but does not serve, so it can be
compared with the active one on the same queries).

Router versions are global to the installation (one router serves every team); training reads
every team's graded queries. Any signed-in member can see them; changing which version serves
(train, activate, shadow) needs a team admin or a staff user.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from routerapp import charts
from routerapp.errors import NotFound, ServiceError
from routerapp.models import BenchmarkRun, RouterVersion, TeamMembership
from routerapp.views.common import add_service_error, is_htmx, team_view
from routerapp.views.forms import RouterSeedForm, RouterTrainForm

# Evaluation policies shown in the table, in this order, with a reader's name.
POLICY_LABELS = [
    ("router", "Router"),
    ("router_online", "Router, replayed online"),
    ("best_single_cop", "Best single configuration (by cost-of-pass)"),
    ("best_single_acc", "Best single configuration (by accuracy)"),
    ("knn", "kNN router (RouterBench)"),
    ("random", "Random configuration"),
    ("oracle_min_cop", "Oracle: minimum cost-of-pass"),
    ("oracle_cheapest_correct", "Oracle: cheapest correct"),
]


def can_manage(request: HttpRequest) -> bool:
    """Team admins and staff may train, activate and shadow router versions."""
    user = request.user
    if getattr(user, "is_staff", False):
        return True
    return TeamMembership.objects.filter(
        user_id=int(user.pk or 0),
        team=getattr(request, "team", None),
        role=TeamMembership.Role.ADMIN,
    ).exists()


def evaluation_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the evaluation's policies as table rows (known ones first, in a fixed order)."""
    policies = evaluation.get("policies") if isinstance(evaluation, dict) else None
    if not isinstance(policies, dict):
        return []
    known = dict(POLICY_LABELS)
    order = [k for k, _ in POLICY_LABELS if k in policies] + sorted(
        k for k in policies if k not in known
    )
    rows = []
    for key in order:
        p = policies[key]
        if not isinstance(p, dict):
            continue
        label = known.get(key, key)
        if p.get("config_id"):
            label = f"{label}: {p['config_id']}"
        rows.append({"key": key, "label": label, **p})
    return rows


def _serving(versions: list[RouterVersion]) -> dict[str, Any]:
    """What serves 'auto' requests now and, when no router does, why not (the newest ready
    version's floor check) and which single configuration serves instead."""
    from routerapp.models import Configuration
    from routerapp.selectors.routers import best_single_fallback
    from routerapp.services.routers import floor_refusal

    active = next((v for v in versions if v.is_active), None)
    if active is not None:
        return {"active": active}
    ready = [v for v in versions if v.status == RouterVersion.Status.READY]
    latest = max(ready, key=lambda v: (v.trained_at or v.created_at, v.pk), default=None)
    allowed = set(
        Configuration.objects.filter(enabled=True, endpoint__enabled=True).values_list(
            "slug", flat=True
        )
    )
    return {
        "active": None,
        "fallback": best_single_fallback(allowed=allowed) if len(allowed) > 1 else None,
        "latest": latest,
        "why": floor_refusal(latest) if latest is not None else None,
    }


def _versions() -> list[RouterVersion]:
    from routerapp.selectors.routers import router_versions_list

    return list(router_versions_list())


def _calibration() -> BenchmarkRun | None:
    return (
        BenchmarkRun.objects.filter(purpose="calibration")
        .defer("items", "results")
        .order_by("-created_at")
        .first()
    )


def _live_context() -> dict[str, Any]:
    versions = _versions()
    calibration = _calibration()
    busy = any(v.status == RouterVersion.Status.TRAINING for v in versions) or (
        calibration is not None
        and calibration.status in (BenchmarkRun.Status.QUEUED, BenchmarkRun.Status.RUNNING)
    )
    return {
        "versions": versions,
        "calibration": calibration,
        "busy": busy,
        "serving": _serving(versions),
    }


@team_view
def routers(request: HttpRequest) -> HttpResponse:
    context = _live_context()
    active = next((v for v in context["versions"] if v.is_active), None)
    context.update(
        {
            "form": RouterTrainForm(),
            "can_manage": can_manage(request),
            "active": active,
            "active_rows": evaluation_rows(active.evaluation) if active else [],
            "active_figure": charts.evaluation_figure(active.evaluation) if active else None,
            **_curve_context(active or context["serving"].get("latest")),
            "nav": "routers",
        }
    )
    return render(request, "ui/routers.html", context)


def _curve_context(version: RouterVersion | None) -> dict[str, Any]:
    """The adaptation curve of `version` (the active one, else the newest ready one)."""
    if version is None:
        return {"curve_version": None, "curve_figure": None, "curve": None, "curve_rows": []}
    evaluation = version.evaluation or {}
    curve = evaluation.get("online_curve") or {}
    columns = ("gap_closed", "accuracy", "cop")
    rows = [
        {"k": k, **{c: (curve.get(c) or [None] * (i + 1))[i] for c in columns}}
        for i, k in enumerate(curve.get("points") or [])
    ]
    return {
        "curve_version": version,
        "curve_figure": charts.online_curve_figure(evaluation),
        "curve": curve,
        "curve_rows": rows,
    }


@team_view
def routers_live(request: HttpRequest) -> HttpResponse:
    context = _live_context()
    context["can_manage"] = can_manage(request)
    return render(request, "ui/_routers_live.html", context)


@require_POST
@team_view
def router_train(request: HttpRequest) -> HttpResponse:
    from routerapp.services.routers import router_version_train, suites_dir

    form = RouterTrainForm(request.POST)
    if not can_manage(request):
        form.add_error(None, "Only a team admin can train router versions.")
    elif form.is_valid():
        try:
            source = form.cleaned_data.get("source") or "log"
            suite = source.removeprefix("suite:") if source.startswith("suite:") else None
            version = router_version_train(
                source="suite" if suite else "log",
                suite_dir=str(suites_dir() / suite) if suite else None,
                name=form.cleaned_data.get("name") or None,
                created_by=request.user,
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            return redirect("ui-router", version_id=version.pk)
    context = _live_context()
    context.update({"form": form, "can_manage": can_manage(request), "nav": "routers"})
    active = next((v for v in context["versions"] if v.is_active), None)
    context.update(
        {
            "active": active,
            "active_rows": evaluation_rows(active.evaluation) if active else [],
            "active_figure": charts.evaluation_figure(active.evaluation) if active else None,
            **_curve_context(active or context["serving"].get("latest")),
        }
    )
    return render(request, "ui/routers.html", context, status=400)


def _get(version_id: int) -> RouterVersion:
    from routerapp.selectors.routers import router_version_get

    try:
        return router_version_get(version_id=version_id)
    except NotFound:
        raise Http404("no such router version") from None


def _detail_context(request: HttpRequest, version: RouterVersion) -> dict[str, Any]:
    from routerapp.selectors.routers import shadow_comparison

    comparison = None
    if version.is_shadow:
        try:
            comparison = shadow_comparison(version=version)
        except ServiceError:
            comparison = None
    from routerapp.services.routers import floor_refusal

    return {
        "version": version,
        "floor": version.significance or {},
        "refusal": floor_refusal(version) if version.status == RouterVersion.Status.READY else None,
        "rows": evaluation_rows(version.evaluation),
        "figure": charts.evaluation_figure(version.evaluation),
        **_curve_context(version),
        "evaluation": version.evaluation or {},
        "trained_on": version.trained_on or {},
        "comparison": comparison,
        "can_manage": can_manage(request),
        "training": version.status == RouterVersion.Status.TRAINING,
        "nav": "routers",
    }


@team_view
def router_detail(request: HttpRequest, version_id: int) -> HttpResponse:
    version = _get(version_id)
    if is_htmx(request) and request.GET.get("part") == "status":
        if version.status != RouterVersion.Status.TRAINING:
            # Training ended: reload the whole page, which now has the evaluation.
            response = HttpResponse(status=204)
            response["HX-Refresh"] = "true"
            return response
        return render(request, "ui/_router_status.html", _detail_context(request, version))
    return render(request, "ui/router_detail.html", _detail_context(request, version))


def _action(request: HttpRequest, version_id: int, action: str) -> HttpResponse:
    from routerapp.services.routers import router_version_activate, router_version_set_shadow

    version = _get(version_id)
    error = None
    if not can_manage(request):
        error = "Only a team admin can change which router version serves."
    else:
        try:
            if action == "activate":
                router_version_activate(version=version, actor=request.user)
            else:
                router_version_set_shadow(
                    version=version, shadow=request.POST.get("shadow") == "on", actor=request.user
                )
        except ServiceError as exc:
            error = exc.message
    if error is None:
        return redirect("ui-router", version_id=version_id)
    context = _detail_context(request, _get(version_id))
    context["action_error"] = error
    return render(request, "ui/router_detail.html", context, status=400)


@require_POST
@team_view
def router_activate(request: HttpRequest, version_id: int) -> HttpResponse:
    return _action(request, version_id, "activate")


@require_POST
@team_view
def router_shadow(request: HttpRequest, version_id: int) -> HttpResponse:
    return _action(request, version_id, "shadow")


def _seed_form(source: str, data: Any = None) -> RouterSeedForm:
    """The seeding form with the proposal for `source` ('' or an unknown source: none)."""
    from routerapp.models import ModelEndpoint
    from routerapp.services.coldstart import outcome_sources, propose_mapping, source_models

    proposals, models = [], []
    if source in outcome_sources():
        models = source_models(source)
        endpoints = list(ModelEndpoint.objects.filter(enabled=True).order_by("name"))
        proposals = propose_mapping(source=source, endpoints=endpoints)
    return RouterSeedForm(data, initial={"source": source}, proposals=proposals, models=models)


@team_view
def router_seed(request: HttpRequest) -> HttpResponse:
    """GET ?source=...: the proposed endpoint -> model mapping, for confirmation. POST: seed a
    version with the confirmed mapping (fitted in the background), then its page."""
    from routerapp.services.coldstart import outcome_sources, router_version_seed

    source = (request.POST if request.method == "POST" else request.GET).get("source", "")
    status = 200
    if request.method == "POST":
        form = _seed_form(source, request.POST)
        if not can_manage(request):
            form.add_error(None, "Only a team admin can seed router versions.")
        elif form.is_valid():
            try:
                version = router_version_seed(
                    source=form.cleaned_data["source"],
                    mapping=form.mapping(),
                    name=form.cleaned_data.get("name") or None,
                    created_by=request.user,
                    activate=bool(form.cleaned_data.get("activate")),
                )
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                return redirect("ui-router", version_id=version.pk)
        status = 400
    source_error = None
    if request.method != "POST":
        form = _seed_form(source)
        if source and source not in outcome_sources():
            source_error = f"unknown outcome source {source!r}"
            status = 400
    context = {
        "form": form,
        "source_error": source_error,
        "source": source if source in outcome_sources() else "",
        "can_manage": can_manage(request),
        "nav": "routers",
    }
    return render(request, "ui/router_seed.html", context, status=status)
