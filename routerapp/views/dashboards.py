"""Dashboards: spend against budgets, cost-of-pass with intervals, the cost-accuracy frontier,
latency percentiles, tokens per query and the router's decision mix, all filtered by period,
model, strategy, configuration, task, API key and traffic.

The page renders the filters and a summary; each chart is its own request
(/dashboards/panel/<slug>), loaded by htmx, so the page paints at once and each panel can be
timed, linked and downloaded as CSV (?format=csv) on its own. Every chart has a table view.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from routerapp import charts
from routerapp.models import Team
from routerapp.selectors import dashboards as D
from routerapp.selectors.budgets import budgets_for_team, end_user_budgets_left
from routerapp.templatetags.ui import ms, num, pct, usd
from routerapp.views.common import team_view
from routerapp.views.forms import FilterForm


@dataclass
class Panel:
    """What one dashboard panel shows: figures, a table (the same data) and an empty state."""

    figures: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    empty: str = ""
    note: str = ""


NO_QUERIES = (
    "No finished queries match these filters. Run a prompt in the Playground, send one through "
    'the API (POST /v1/chat/completions with model "auto"), or widen the period and filters.'
)
NO_GRADED = (
    "No graded queries match these filters yet. Start a benchmark run (its answers are graded "
    "against gold answers), or mark Playground answers correct or incorrect."
)


def _spend(team: Team, f: D.DashboardFilters) -> Panel:
    data = D.spend_over_time(team=team, filters=f)
    per_user = [p.name for p in budgets_for_team(team=team) if p.per_end_user and p.enabled]
    if not data["total"] and not data["budgets"] and not per_user:
        return Panel(empty=NO_QUERIES)
    columns = ["day", "spend (filtered)"] + [
        f"{b['name']}: spent this {b['period']} (limit {usd(b['limit_usd'])})"
        for b in data["budgets"]
    ]
    rows = [
        [d.isoformat(), usd(s)] + [usd(b["spent"][i]) for b in data["budgets"]]
        for i, (d, s) in enumerate(zip(data["days"], data["spend"], strict=True))
    ]
    note = f"Total {usd(data['total'])} in the period."
    if not data["budgets"] and not per_user:
        note += " No budget is set for this team: an admin can add one under Budget policies in the admin."
    elif data["budgets"]:
        note += " Budget lines count everything their scope spent (the team, or one key), whatever the filters."
    if per_user:
        note += (
            " Per-end-user budgets (" + ", ".join(per_user) + ") are shown per user under "
            "Spend by end user."
        )
    alerts = [
        f"{b['name']} reached {a['threshold_percent']}% on {a['raised_at'][:10]}"
        for b in data["budgets"]
        for a in b.get("alerts", [])
    ]
    if alerts:
        note += " Alerts this period: " + "; ".join(alerts) + "."
    return Panel(figures=[charts.spend_figure(data)], columns=columns, rows=rows, note=note)


def _ci(r: dict[str, Any]) -> str:
    if r["ci_low"] is None:
        return "— (needs 2+ graded)"
    high = "∞" if r["ci_unbounded"] else usd(r["ci_high"])
    return f"{usd(r['ci_low'])} – {high}"


def _cop(team: Team, f: D.DashboardFilters) -> Panel:
    data = D.cost_of_pass_by_configuration(team=team, filters=f)
    if not data["configurations"]:
        return Panel(empty=NO_GRADED)
    columns = [
        "configuration",
        "task",
        "graded",
        "correct",
        "accuracy",
        "total USD",
        "cost-of-pass",
        "95% interval",
    ]
    rows = []
    for r in data["configurations"]:
        rows.append(
            [
                r["configuration"],
                "all",
                num(r["graded"]),
                num(r["correct"]),
                pct(r["accuracy"]),
                usd(r["total_cost_usd"]),
                usd(r["cost_of_pass"]),
                _ci(r),
            ]
        )
    for r in data["cells"]:
        rows.append(
            [
                r["configuration"],
                r["task"],
                num(r["graded"]),
                num(r["correct"]),
                pct(r["accuracy"]),
                usd(r["total_cost_usd"]),
                usd(r["cost_of_pass"]),
                _ci(r),
            ]
        )
    if not any(r["cost_of_pass"] is not None for r in data["configurations"]):
        return Panel(
            columns=columns,
            rows=rows,
            note="None of these graded queries was correct, so cost-of-pass is infinite for "
            "every configuration shown (the table has the counts). Widen the filters, or grade "
            "more queries.",
        )
    figures = [charts.cost_of_pass_figure(data)]
    heat = charts.cost_of_pass_heatmap(data)
    if heat:
        figures.append(heat)
    return Panel(
        figures=figures,
        columns=columns,
        rows=rows,
        note="Cost-of-pass = total USD / number correct (∞ when none was correct); 95% Fieller "
        "interval of that ratio, hatched bars are unbounded above.",
    )


def _frontier(team: Team, f: D.DashboardFilters) -> Panel:
    data = D.accuracy_vs_cost(team=team, filters=f)
    if not data["points"]:
        return Panel(empty=NO_GRADED)
    columns = [
        "point",
        "graded",
        "accuracy",
        "mean USD per query",
        "cost-of-pass",
        "on the Pareto frontier",
    ]
    rows = [
        [
            p["configuration"],
            num(p["graded"]),
            pct(p["accuracy"]),
            usd(p["mean_cost_usd"]),
            usd(p["cost_of_pass"]),
            "yes" if p["configuration"] in data["frontier"] else "no",
        ]
        for p in data["points"]
    ]
    live = data["router_live"]
    if live:
        rows.append(
            [
                "router (live traffic it decided)",
                num(live["graded"]),
                pct(live["accuracy"]),
                usd(live["mean_cost_usd"]),
                usd(live["cost_of_pass"]),
                "—",
            ]
        )
    evaluation = data["evaluation"]
    if evaluation:
        for p in evaluation["points"].values():
            rows.append(
                [
                    f"{p['label']} (evaluation of {evaluation['version']})",
                    "—",
                    pct(p["accuracy"]),
                    usd(p["mean_cost_usd"]),
                    usd(p["cost_of_pass"]),
                    "—",
                ]
            )
    note = "One point per configuration from graded queries; the dotted line joins the non-dominated ones."
    if not live:
        note += (
            " The router's live point appears once graded queries were decided by a router version."
        )
    return Panel(figures=[charts.frontier_figure(data)], columns=columns, rows=rows, note=note)


def _latency(team: Team, f: D.DashboardFilters) -> Panel:
    rows = D.latency_by_configuration(team=team, filters=f)
    if not rows:
        return Panel(empty=NO_QUERIES)
    return Panel(
        figures=[charts.latency_figure(rows)],
        columns=["configuration", "queries", "p50", "p95", "p99", "mean"],
        rows=[
            [
                r["configuration"],
                num(r["n"]),
                ms(r["p50_ms"]),
                ms(r["p95_ms"]),
                ms(r["p99_ms"]),
                ms(r["mean_ms"]),
            ]
            for r in rows
        ],
        note="Created to finished, queueing included. Percentiles come from per-day histograms "
        "(within 4.4% of the exact value).",
    )


def _tokens(team: Team, f: D.DashboardFilters) -> Panel:
    rows = D.tokens_by_configuration(team=team, filters=f)
    if not rows:
        return Panel(empty=NO_QUERIES)
    return Panel(
        figures=[charts.tokens_figure(rows)],
        columns=[
            "configuration",
            "queries",
            "prompt tokens / query",
            "completion tokens / query",
            "samples / query",
            "USD / query",
        ],
        rows=[
            [
                r["configuration"],
                num(r["queries"]),
                num(r["mean_prompt_tokens"]),
                num(r["mean_completion_tokens"]),
                num(r["mean_samples"], 2),
                usd(r["mean_cost_usd"]),
            ]
            for r in rows
        ],
        note="Every sample counts, aborted and discarded ones and scorer calls included.",
    )


def _decisions(team: Team, f: D.DashboardFilters) -> Panel:
    data = D.decision_mix(team=team, filters=f)
    if not data["total"]:
        return Panel(
            empty="No live queries in this period (benchmark runs are not routed). Queries from "
            "the Playground and the API appear here with the configuration that served them."
        )
    names = list(data["series"])
    rows = [
        [d.isoformat()] + [str(data["series"][n][i]) for n in names] + [str(data["routed"][i])]
        for i, d in enumerate(data["days"])
    ]
    share = data["routed_total"] / data["total"]
    return Panel(
        figures=[charts.decision_mix_figure(data)],
        columns=["day", *names, "decided by a router version"],
        rows=rows,
        note=f"{num(data['total'])} live queries; {pct(share)} decided by a router version, the "
        "rest named a configuration or ran before any version was active.",
    )


def _by(dimension: str, label: str, empty_key: str) -> Callable[[Team, D.DashboardFilters], Panel]:
    def build(team: Team, f: D.DashboardFilters) -> Panel:
        rows = D.spend_by_end_user_or_tag(team=team, filters=f, dimension=dimension)
        if not rows:
            return Panel(empty=NO_QUERIES)
        columns = [label, "queries", "USD", "USD / query", "tokens", "graded", "accuracy"]
        note = (
            f"The {D.TOP_GROUPS} dearest, from the query log. The usage API "
            f"(GET /api/v1/usage?group_by={dimension}) filters and exports them as CSV too."
        )
        budgets: dict[str, Any] = {"budgets": [], "left": {}}
        if dimension == "user":
            budgets = end_user_budgets_left(team=team, end_users=[r["key"] for r in rows])
        if budgets["budgets"]:
            columns.append("budget left this period")
            note += (
                " Budget left: under the tightest per-end-user budget ("
                + ", ".join(budgets["budgets"])
                + "); requests that name no user share one window."
            )
        return Panel(
            figures=[charts.spend_by_group_figure(rows, label, empty_key)],
            columns=columns,
            rows=[
                [
                    r["key"] or empty_key,
                    num(r["queries"]),
                    usd(r["cost_usd"]),
                    usd(r["cost_usd"] / r["queries"]),
                    num(r["prompt_tokens"] + r["completion_tokens"]),
                    num(r["graded"]),
                    pct(r["correct"] / r["graded"]) if r["graded"] else "—",
                ]
                + ([usd(budgets["left"][r["key"]])] if budgets["budgets"] else [])
                for r in rows
            ],
            note=note,
        )

    return build


PANELS: dict[str, tuple[str, Callable[[Team, D.DashboardFilters], Panel]]] = {
    "spend": ("Spend against budgets", _spend),
    "cost-of-pass": ("Cost-of-pass by configuration and task", _cop),
    "frontier": ("Accuracy vs cost per query", _frontier),
    "latency": ("Latency p50 / p95 / p99", _latency),
    "tokens": ("Tokens per query", _tokens),
    "decisions": ("Router decision mix", _decisions),
    "end-users": ("Spend by end user", _by("user", "end user", "(none named)")),
    "tags": (
        "Spend by tag (x-costpass-tags; a query counts under each of its tags)",
        _by("tag", "tag", "(untagged)"),
    ),
}


def _filter_form(request: HttpRequest, team: Team | None) -> FilterForm:
    """The filters form; with a team, its menus list what exists (the page), else lenient."""
    options = D.dashboard_filter_options(team=team) if team is not None else None
    return FilterForm(request.GET or None, options=options)


def _query_string(request: HttpRequest) -> str:
    return urlencode([(k, v) for k, v in request.GET.items() if k != "format" and v])


@team_view
def dashboards(request: HttpRequest) -> HttpResponse:
    team = request.team  # type: ignore[attr-defined]
    form = _filter_form(request, team)
    f = form.filters()
    context = {
        "form": form,
        "filters": f,
        "summary": D.dashboard_summary(team=team, filters=f),
        "data_range": D.dashboard_data_range(team=team),
        "panels": [(slug, title) for slug, (title, _) in PANELS.items()],
        "qs": _query_string(request),
        "nav": "dashboards",
    }
    return render(
        request,
        "ui/dashboards.html",
        context,
        status=200 if form.is_bound is False or form.is_valid() else 400,
    )


@team_view
def dashboard_panel(request: HttpRequest, slug: str) -> HttpResponse:
    if slug not in PANELS:
        raise Http404("unknown dashboard panel")
    team = request.team  # type: ignore[attr-defined]
    title, build = PANELS[slug]
    f = _filter_form(request, None).filters()
    panel = build(team, f)
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="costpass-{slug}-{f.start}-{f.end}.csv"'
        )
        writer = csv.writer(response)
        writer.writerow(panel.columns)
        writer.writerows(panel.rows)
        return response
    figures = [(f"fig-{slug}-{i}", fig) for i, fig in enumerate(panel.figures)]
    return render(
        request,
        "ui/dashboards/_panel.html",
        {
            "slug": slug,
            "title": title,
            "panel": panel,
            "figures": figures,
            "qs": _query_string(request),
        },
    )
