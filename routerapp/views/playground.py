"""Playground: run a prompt through the router and watch it: the decision with the
alternatives weighed, each sample as it finishes (htmx polling that stops when the query ends),
the vote, the final answer and the ledger; cancel while running, grade it afterwards."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_http_methods, require_POST
from pydantic import ValidationError

from routerapp.errors import NotFound, ServiceError
from routerapp.models import Query
from routerapp.selectors.queries import (
    queries_recent,
    query_get_for_team,
    query_log_page,
    query_samples,
)
from routerapp.views.common import add_service_error, is_htmx, team_view
from routerapp.views.forms import PlaygroundForm

RECENT = 10
# Service parameter names -> form fields, so a refusal lands next to the input at fault.
FIELD_OF_PARAM = {
    "prompt": "prompt",
    "messages": "prompt",
    "task": "task",
    "max_cost_usd": "max_cost_usd",
    "min_accuracy": "min_accuracy",
    "max_latency_s": "max_latency_s",
    "strategy": "configuration",
}


@require_http_methods(["GET", "POST"])
@team_view
def playground(request: HttpRequest) -> HttpResponse:
    team = request.team  # type: ignore[attr-defined]
    form = PlaygroundForm(request.POST or None, team=team)
    if request.method == "POST" and form.is_valid():
        try:
            query = _create(request, form.cleaned_data)
        except ServiceError as exc:
            add_service_error(form, exc, FIELD_OF_PARAM)
        except (
            ValidationError
        ) as exc:  # a configuration stored with parameters that no longer validate
            form.add_error(
                None, f"the chosen configuration is misconfigured: {exc.errors()[0]['msg']}"
            )
        else:
            return redirect("ui-query", query_id=query.pk)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "ui/playground.html",
        {
            "form": form,
            "recent": queries_recent(
                team=team, user=request.user, source=Query.Source.UI, limit=RECENT
            ),
            "nav": "playground",
        },
        status=status,
    )


def _create(request: HttpRequest, data: dict[str, Any]) -> Query:
    from routerapp.services.queries import query_create
    from routerapp.services.routing import RequestConstraints

    constraints = RequestConstraints(
        configuration=data.get("configuration") or None,
        model=data.get("model") or None,
        max_cost_usd=data.get("max_cost_usd"),
        min_accuracy=data.get("min_accuracy"),
        max_latency_s=data.get("max_latency_s"),
    )
    return query_create(
        team=request.team,  # type: ignore[attr-defined]
        user=request.user,
        source=Query.Source.UI,
        prompt=data["prompt"],
        task=data.get("task") or "",
        answer_kind=data.get("answer_kind") or "",
        constraints=constraints,
    )


def _get(request: HttpRequest, query_id: str) -> Query:
    try:
        return query_get_for_team(team=request.team, query_id=query_id)  # type: ignore[attr-defined]
    except NotFound:
        raise Http404("no such query in your team") from None


def _alternatives(query: Query) -> list[dict[str, Any]]:
    """The decision's alternatives, best cost-of-pass first, the chosen one marked."""
    alts = [
        dict(a) for a in (query.decision or {}).get("alternatives") or [] if isinstance(a, dict)
    ]
    chosen = (query.decision or {}).get("configuration")
    for a in alts:
        a["chosen"] = a.get("configuration") == chosen

    def key(a: dict[str, Any]) -> tuple[float, str]:
        v = a.get("cost_of_pass")
        if v is None:
            v = a.get("worst_case_usd")
        try:
            return (float(v if v is not None else "inf"), a.get("configuration", ""))
        except (TypeError, ValueError):
            return (float("inf"), a.get("configuration", ""))

    return sorted(alts, key=key)


def _live_context(query: Query) -> dict[str, Any]:
    samples = list(query_samples(query=query))
    votes = query.votes if isinstance(query.votes, dict) else {}
    vote_rows = sorted(((str(k), float(v)) for k, v in votes.items()), key=lambda kv: -kv[1])
    planned = max(query.samples_planned, len(samples))
    return {
        "query": query,
        "samples": samples,
        "votes": vote_rows,
        "vote_total": sum(v for _, v in vote_rows),
        "planned": planned,
        "progress": (len(samples) / planned) if planned else (1.0 if query.is_finished else 0.0),
        "aborted": sum(1 for s in samples if s.aborted),
        "trace": _trace_context(query.trace if isinstance(query.trace, dict) else {}),
    }


#: Why an adaptive strategy stopped sampling, in words (see workers.strategies).
STOP_REASONS = {
    "posterior": "the posterior that the leading answer stays ahead reached the threshold",
    "decided": "the leader's margin exceeded the samples left: no later sample could change it",
    "window_unanimous": "every sample of the last window gave the same answer (ESC)",
    "cap": "the cap of k samples was reached",
    "cancelled": "the query was cancelled",
}


def _trace_context(trace: dict[str, Any]) -> dict[str, Any] | None:
    """What the strategy decided as it ran, ready for ui/_strategy_trace.html."""
    if not trace.get("kind"):
        return None
    out = dict(trace)
    if trace["kind"] == "stopping":
        out["reason_text"] = STOP_REASONS.get(str(trace.get("reason")), str(trace.get("reason")))
        out["rows"] = [
            {
                **d,
                # Most votes first (a JSON column does not keep the order answers were seen in).
                "counts_text": ", ".join(
                    f"{a}: {n}"
                    for a, n in sorted((d.get("counts") or {}).items(), key=lambda an: -an[1])
                ),
            }
            for d in trace.get("decisions") or []
        ]
    return out


@team_view
def query_detail(request: HttpRequest, query_id: str) -> HttpResponse:
    query = _get(request, query_id)
    context = {
        **_live_context(query),
        "alternatives": _alternatives(query),
        "decision": query.decision or {},
        "shadow": (query.decision or {}).get("shadow"),
        "nav": "playground",
    }
    return render(request, "ui/query_detail.html", context)


@team_view
def query_live(request: HttpRequest, query_id: str) -> HttpResponse:
    """The part of the query page that changes while it runs (polled by htmx until it ends)."""
    query = _get(request, query_id)
    return render(request, "ui/_query_live.html", _live_context(query))


def _after_action(request: HttpRequest, query: Query, error: str | None = None) -> HttpResponse:
    if is_htmx(request):
        context = _live_context(query)
        context["action_error"] = error
        return render(request, "ui/_query_live.html", context)
    return redirect("ui-query", query_id=query.pk)


@require_POST
@team_view
def query_cancel_view(request: HttpRequest, query_id: str) -> HttpResponse:
    from routerapp.services.queries import query_cancel

    query = _get(request, query_id)
    error = None
    try:
        query_cancel(query=query)
    except ServiceError as exc:
        error = exc.message
    return _after_action(request, _get(request, query_id), error)


@require_POST
@team_view
def query_feedback_view(request: HttpRequest, query_id: str) -> HttpResponse:
    from routerapp.services.queries import query_feedback

    query = _get(request, query_id)
    verdict = request.POST.get("correct")
    error = None
    if verdict not in ("true", "false"):
        error = "choose correct or incorrect"
    else:
        try:
            query_feedback(query=query, correct=verdict == "true")
        except ServiceError as exc:
            error = exc.message
    return _after_action(request, _get(request, query_id), error)


@team_view
def query_log(request: HttpRequest) -> HttpResponse:
    """The team's latest queries from every source, newest first, 50 a page (keyset paging)."""
    team = request.team  # type: ignore[attr-defined]
    try:
        before = parse_datetime(request.GET.get("before") or "")
    except ValueError:  # well-formed but impossible (month 13): show the first page
        before = None
    page, next_before = query_log_page(team=team, before=before)
    return render(
        request,
        "ui/query_log.html",
        {
            "queries": page,
            "next_before": next_before.isoformat() if next_before else None,
            "nav": "log",
        },
    )
