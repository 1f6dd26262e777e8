"""Every dashboard aggregate, read from the daily rollup (QueryDailyRollup), never the raw log.

Definitions are DESIGN.md's "Metrics": accuracy = correct / graded, mean cost = USD per graded
query, cost-of-pass = total USD / number correct (None = infinite when nothing was correct).
Only finished queries are counted; a query belongs to the UTC day it was created on, which is
also the day its budget window is charged.

Each selector returns plain data (lists / dicts with Decimal money); routerapp.charts turns it
into plotly figures and the templates into tables.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Max, Min, Q, QuerySet, Sum

from routerapp.models import (
    ApiKey,
    BudgetPolicy,
    Configuration,
    ModelEndpoint,
    QueryDailyConfigRollup,
    QueryDailyRollup,
    RollupFigures,
    RouterVersion,
    StrategyConfig,
    Team,
)
from routerapp.services.rollups import latency_quantile, merge_histograms

ZERO = Decimal(0)
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
NO_TASK = "-"  # the task filter value that selects queries without a task tag


class Traffic:
    ALL = "all"
    LIVE = "live"  # playground and API queries
    BENCHMARK = "benchmark"
    CHOICES = [(ALL, "All queries"), (LIVE, "Live traffic"), (BENCHMARK, "Benchmark runs")]


@dataclass(frozen=True)
class DashboardFilters:
    """What a dashboard shows: days start..end (inclusive, UTC) and optional dimension filters.

    model is an endpoint name, strategy a strategy slug (e.g. majority_vote), configuration a
    configuration slug, task a task tag (NO_TASK for untagged), api_key an ApiKey id.
    """

    start: dt.date
    end: dt.date
    model: str = ""
    strategy: str = ""
    configuration: str = ""
    task: str = ""
    api_key: int | None = None
    traffic: str = Traffic.ALL

    @property
    def days(self) -> list[dt.date]:
        n = (self.end - self.start).days + 1
        return [self.start + dt.timedelta(days=i) for i in range(max(n, 0))]

    @classmethod
    def last_days(cls, days: int, *, today: dt.date | None = None, **kw: Any) -> DashboardFilters:
        today = today or dt.datetime.now(dt.UTC).date()
        return cls(start=today - dt.timedelta(days=days - 1), end=today, **kw)


def _rows(
    team: Team, f: DashboardFilters, *, dims: bool = True, fine: bool = False
) -> QuerySet[Any]:
    """The team's rollup rows in the period, with the dimension filters when `dims`.

    Without a task or key filter (or `fine`) the coarse per-configuration rollup serves: about
    ten times fewer rows than the per-task-and-key one, with the same sums.
    """
    model: type[QueryDailyRollup] | type[QueryDailyConfigRollup] = QueryDailyConfigRollup
    if fine or (dims and (f.task or f.api_key is not None)):
        model = QueryDailyRollup
    qs: QuerySet[Any] = model._default_manager.filter(team=team, day__gte=f.start, day__lte=f.end)
    if not dims:
        return qs
    return _filtered(qs, f, benchmark=Q(kind=RollupFigures.Kind.BENCHMARK))


def _filtered(qs: QuerySet[Any], f: DashboardFilters, *, benchmark: Q) -> QuerySet[Any]:
    """`qs` narrowed by the filters' dimensions (rollup rows and queries name them alike);
    `benchmark` tells the model's benchmark rows apart for the traffic filter."""
    if f.configuration:
        qs = qs.filter(configuration__slug=f.configuration)
    if f.model:
        qs = qs.filter(configuration__endpoint__name=f.model)
    if f.strategy:
        qs = qs.filter(configuration__strategy__strategy=f.strategy)
    if f.task:
        qs = qs.filter(task="" if f.task == NO_TASK else f.task)
    if f.api_key is not None:
        qs = qs.filter(api_key_id=f.api_key)
    if f.traffic == Traffic.LIVE:
        qs = qs.exclude(benchmark)
    elif f.traffic == Traffic.BENCHMARK:
        qs = qs.filter(benchmark)
    return qs


def _config_slugs(ids: set[int | None]) -> dict[int | None, str]:
    names: dict[int | None, str] = dict(
        Configuration.objects.filter(pk__in=[i for i in ids if i is not None]).values_list(
            "pk", "slug"
        )
    )
    names[None] = "(none)"
    return {i: names.get(i, f"#{i}") for i in ids}


def cost_of_pass(total_usd: Decimal, correct: int) -> Decimal | None:
    """Return total USD / number correct; None stands for infinite (nothing correct)."""
    return total_usd / correct if correct else None


def ratio_ci(
    *, n: int, sum_c: float, sum_c2: float, sum_y: float, sum_cy: float, z: float = Z95
) -> tuple[float, float] | None:
    """Return Fieller's confidence interval of R = sum_c / sum_y from per-query sums.

    Each query i has cost c_i and correctness y_i in {0, 1}; the sums are sum c, sum c^2,
    sum y (= sum y^2) and sum c*y. The interval is {R : (C - R Y)^2 <= z^2 n s^2(c - R y)},
    a quadratic in R. Its upper end is inf when accuracy is not significantly above zero.
    None when n < 2 (no variance estimate).
    """
    if n < 2:
        return None
    cbar, ybar = sum_c / n, sum_y / n
    s_cc = max(0.0, (sum_c2 - n * cbar * cbar) / (n - 1))
    s_yy = max(0.0, (sum_y - n * ybar * ybar) / (n - 1))
    s_cy = (sum_cy - n * cbar * ybar) / (n - 1)
    k = z * z * n
    a = sum_y * sum_y - k * s_yy
    b = sum_c * sum_y - k * s_cy
    c = sum_c * sum_c - k * s_cc
    if a <= 0:
        # Y is not significantly above zero: the set is unbounded above.
        if a == 0 or b * b - a * c < 0:
            return (0.0, math.inf)
        # The estimate lies in the upper of the two unbounded pieces, [larger root, inf);
        # with a < 0 the larger root is (b - sqrt) / a.
        lo = (b - math.sqrt(b * b - a * c)) / a
        return (max(0.0, lo), math.inf)
    disc = b * b - a * c
    if disc < 0:
        point = sum_c / sum_y if sum_y else math.inf
        return (point, point)
    root = math.sqrt(disc)
    return (max(0.0, (b - root) / a), (b + root) / a)


def _graded_figures(g: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, mean cost, cost-of-pass and its CI from summed rollup fields."""
    graded, correct = g["graded"] or 0, g["correct"] or 0
    total = g["graded_cost_usd"] or ZERO
    ci = ratio_ci(
        n=graded,
        sum_c=float(total),
        sum_c2=float(g["graded_cost_sq"] or 0.0),
        sum_y=float(correct),
        sum_cy=float(g["correct_cost_usd"] or ZERO),
    )
    return {
        "graded": graded,
        "correct": correct,
        "accuracy": correct / graded if graded else None,
        "total_cost_usd": total,
        "mean_cost_usd": total / graded if graded else None,
        "cost_of_pass": cost_of_pass(total, correct),
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None or not math.isfinite(ci[1]) else ci[1],
        "ci_unbounded": ci is not None and not math.isfinite(ci[1]),
    }


_GRADED_SUMS = {
    "graded": Sum("graded"),
    "correct": Sum("correct"),
    "graded_cost_usd": Sum("graded_cost_usd"),
    "correct_cost_usd": Sum("correct_cost_usd"),
    "graded_cost_sq": Sum("graded_cost_sq"),
}


# --- summary and filter options -------------------------------------------------------------


def dashboard_summary(*, team: Team, filters: DashboardFilters) -> dict[str, Any]:
    """Return totals for the period: queries, spend, tokens, graded figures."""
    s = _rows(team, filters).aggregate(
        queries=Sum("queries"),
        failed=Sum("failed"),
        cancelled=Sum("cancelled"),
        cost_usd=Sum("cost_usd"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        **_GRADED_SUMS,
    )
    out = {
        "queries": s["queries"] or 0,
        "failed": s["failed"] or 0,
        "cancelled": s["cancelled"] or 0,
        "cost_usd": s["cost_usd"] or ZERO,
        "tokens": (s["prompt_tokens"] or 0) + (s["completion_tokens"] or 0),
    }
    out.update(_graded_figures(s))
    return out


def dashboard_filter_options(*, team: Team) -> dict[str, list[tuple[str, str]]]:
    """Return (value, label) choices for each filter: what exists for this team."""
    tasks = [t for t in team_tasks(team=team) if t]
    return {
        "model": [(n, n) for n in ModelEndpoint.objects.values_list("name", flat=True)],
        "strategy": [
            (s, s)
            for s in StrategyConfig.objects.order_by("strategy")
            .values_list("strategy", flat=True)
            .distinct()
        ],
        "configuration": [(s, s) for s in Configuration.objects.values_list("slug", flat=True)],
        "task": [(NO_TASK, "(no task tag)")] + [(t, t) for t in tasks],
        "api_key": [
            (str(k.pk), f"{k.name} ({k.prefix}…)") for k in ApiKey.objects.filter(team=team)
        ],
    }


def team_tasks(*, team: Team) -> list[str]:
    """Return the team's distinct task tags in order, by a skip scan of the (team, task) index:
    one index probe per tag instead of reading every rollup row of the team."""
    table = QueryDailyRollup._meta.db_table
    sql = f"""
        WITH RECURSIVE tags(task) AS (
            SELECT MIN(task) FROM {table} WHERE team_id = %s
            UNION ALL
            SELECT (SELECT MIN(task) FROM {table} WHERE team_id = %s AND task > tags.task)
            FROM tags WHERE tags.task IS NOT NULL
        )
        SELECT task FROM tags WHERE task IS NOT NULL
    """  # noqa: S608 (the table name is ours; values are parameters)
    with connection.cursor() as cursor:
        cursor.execute(sql, [team.pk, team.pk])
        return [row[0] for row in cursor.fetchall()]


def dashboard_data_range(*, team: Team) -> tuple[dt.date, dt.date] | None:
    r = QueryDailyConfigRollup.objects.filter(team=team).aggregate(lo=Min("day"), hi=Max("day"))
    return None if r["lo"] is None else (r["lo"], r["hi"])


# --- spend against budgets ------------------------------------------------------------------


def _window_start(period: str, day: dt.date) -> dt.date:
    return day if period == BudgetPolicy.Period.DAY else day.replace(day=1)


def spend_over_time(*, team: Team, filters: DashboardFilters) -> dict[str, Any]:
    """Return daily spend (with the filters) and, per enabled budget, its period-to-date spend
    on each day (over the budget's own scope: the team, or its API key) against its limit.

    {"days": [date], "spend": [Decimal], "total": Decimal,
     "budgets": [{"name", "period", "mode", "limit_usd", "scope", "spent": [Decimal]}]}
    """
    days = filters.days
    per_day = dict(
        _rows(team, filters).values_list("day").annotate(s=Sum("cost_usd")).values_list("day", "s")
    )
    spend = [per_day.get(d, ZERO) for d in days]
    # A per-end-user budget has a window per user: the "Spend by end user" panel shows them.
    policies = BudgetPolicy.objects.filter(
        team=team, enabled=True, per_end_user=False
    ).select_related("api_key")
    if filters.api_key is not None:
        policies = policies.filter(Q(api_key__isnull=True) | Q(api_key_id=filters.api_key))
    budgets = []
    for policy in policies.order_by("name"):
        # Windows that overlap the period start before it: read from the first window's start.
        scope_filters = replace(filters, start=_window_start(policy.period, filters.start))
        rows = _rows(team, scope_filters, dims=False, fine=policy.api_key_id is not None)
        if policy.api_key_id is not None:
            rows = rows.filter(api_key_id=policy.api_key_id)
        daily = dict(rows.values_list("day").annotate(s=Sum("cost_usd")).values_list("day", "s"))
        running, window, spent = ZERO, None, []
        d = scope_filters.start
        while d <= filters.end:
            w = _window_start(policy.period, d)
            if w != window:
                window, running = w, ZERO
            running += daily.get(d, ZERO)
            if d >= filters.start:
                spent.append(running)
            d += dt.timedelta(days=1)
        budgets.append(
            {
                "name": policy.name,
                "period": policy.period,
                "mode": policy.get_mode_display(),
                "limit_usd": policy.limit_usd,
                "scope": f"key {policy.api_key.name}" if policy.api_key else "whole team",
                "spent": spent,
                # Alerts raised in the period shown (each threshold once per budget window).
                "alerts": [
                    {"threshold_percent": a.threshold, "raised_at": a.created_at.isoformat()}
                    for a in policy.alerts.filter(
                        created_at__date__gte=filters.start, created_at__date__lte=filters.end
                    ).order_by("created_at")
                ],
            }
        )
    return {"days": days, "spend": spend, "total": sum(spend, ZERO), "budgets": budgets}


# --- cost-of-pass, accuracy and the frontier -----------------------------------------------


def _graded_by_configuration(team: Team, f: DashboardFilters) -> list[dict[str, Any]]:
    rows = list(
        _rows(team, f).filter(graded__gt=0).values("configuration_id").annotate(**_GRADED_SUMS)
    )
    slugs = _config_slugs({r["configuration_id"] for r in rows})
    out = [{"configuration": slugs[r["configuration_id"]], **_graded_figures(r)} for r in rows]
    return sorted(out, key=lambda r: r["configuration"])


def cost_of_pass_by_configuration(*, team: Team, filters: DashboardFilters) -> dict[str, Any]:
    """Return graded figures per configuration (all tasks) and per (configuration, task).

    {"configurations": [row], "cells": [row with "task"]}; a row has configuration, graded,
    correct, accuracy, total_cost_usd, mean_cost_usd, cost_of_pass, ci_low, ci_high
    (95 % Fieller interval; ci_high None with ci_unbounded True when it is infinite).
    """
    cells = list(
        _rows(team, filters, fine=True)
        .filter(graded__gt=0)
        .values("configuration_id", "task")
        .annotate(**_GRADED_SUMS)
    )
    slugs = _config_slugs({c["configuration_id"] for c in cells})
    out_cells = [
        {
            "configuration": slugs[c["configuration_id"]],
            "task": c["task"] or "(none)",
            **_graded_figures(c),
        }
        for c in cells
    ]
    out_cells.sort(key=lambda r: (r["configuration"], r["task"]))
    return {"configurations": _graded_by_configuration(team, filters), "cells": out_cells}


def pareto_frontier(points: list[tuple[str, float, float]]) -> list[str]:
    """Return the names of the (name, mean cost, accuracy) points no other point dominates
    (at most the cost and at least the accuracy, one of them strictly), sorted by cost."""
    front = []
    for name, cost, acc in points:
        dominated = any(
            (c2 <= cost and a2 >= acc) and (c2 < cost or a2 > acc) for _, c2, a2 in points
        )
        if not dominated:
            front.append((cost, -acc, name))
    return [name for _, _, name in sorted(front)]


def _evaluation_points(version: RouterVersion) -> dict[str, Any] | None:
    """Read the router's and the oracle's (mean cost, accuracy) from a version's evaluation
    (routerapp.routing.evaluation.evaluate's "policies"), when present."""
    evaluation = version.evaluation or {}
    policies = evaluation.get("policies") or (evaluation.get("test") or {}).get("policies")
    if not isinstance(policies, dict):
        return None
    points = {}
    for key, label in (
        ("router", "router"),
        ("oracle_min_cop", "min-CoP oracle"),
        ("best_single_cop", "best single"),
    ):
        p = policies.get(key)
        if isinstance(p, dict) and p.get("mean_cost") is not None and p.get("accuracy") is not None:
            points[key] = {
                "label": label,
                "mean_cost_usd": float(p["mean_cost"]),
                "accuracy": float(p["accuracy"]),
                "cost_of_pass": p.get("cop"),
            }
    if not points:
        return None
    return {"version": version.name, "version_id": version.pk, "points": points}


def accuracy_vs_cost(*, team: Team, filters: DashboardFilters) -> dict[str, Any]:
    """Return one (mean cost, accuracy) point per configuration from graded queries, the
    Pareto frontier among them, the router's live point (queries a router version decided) and
    the active version's evaluated router and oracle points when it has an evaluation."""
    points = [r for r in _graded_by_configuration(team, filters) if r["graded"]]
    frontier = pareto_frontier(
        [(r["configuration"], float(r["mean_cost_usd"]), r["accuracy"]) for r in points]
    )
    routed = (
        _rows(team, filters)
        .filter(kind=RollupFigures.Kind.ROUTED, graded__gt=0)
        .aggregate(**_GRADED_SUMS)
    )
    router_live = _graded_figures(routed) if routed["graded"] else None
    version = (
        RouterVersion.objects.filter(is_active=True, status=RouterVersion.Status.READY)
        .defer("artifact")
        .first()
    )
    evaluation = _evaluation_points(version) if version is not None else None
    return {
        "points": points,
        "frontier": frontier,
        "router_live": router_live,
        "evaluation": evaluation,
    }


# --- latency, tokens, decision mix ----------------------------------------------------------


def _merged_histograms(rows: QuerySet[Any]) -> dict[Any, dict[int, int]]:
    """Return {configuration_id: histogram} summed over `rows`.

    On Postgres the buckets are summed in SQL (jsonb_each_text), which spares decoding every
    row's JSON in Python; elsewhere in Python. Same result either way.
    """
    merged: dict[Any, dict[int, int]] = defaultdict(dict)
    if connection.vendor == "postgresql":
        inner, params = rows.values("configuration_id", "latency_hist").query.sql_with_params()
        sql = (
            "SELECT r.configuration_id, e.key::int, SUM(e.value::bigint) "
            f"FROM ({inner}) r CROSS JOIN LATERAL jsonb_each_text(r.latency_hist) e "
            "GROUP BY 1, 2"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            for cid, bucket, count in cursor.fetchall():
                merged[cid][bucket] = int(count)
        return merged
    hists: dict[Any, list[dict[str, int]]] = defaultdict(list)
    for cid, hist in rows.values_list("configuration_id", "latency_hist").iterator(chunk_size=5000):
        hists[cid].append(hist)
    return {cid: merge_histograms(hs) for cid, hs in hists.items()}


def latency_by_configuration(*, team: Team, filters: DashboardFilters) -> list[dict[str, Any]]:
    """Return p50 / p95 / p99 / mean latency (ms, created to finished) per configuration and
    for all of them ("all" last), from the rollup's histograms (within ~4.4 % of exact)."""
    rows = _rows(team, filters).filter(latency_n__gt=0)
    sums = {
        r["configuration_id"]: (r["n"], r["total"])
        for r in rows.values("configuration_id").annotate(
            n=Sum("latency_n"), total=Sum("latency_sum_ms")
        )
    }
    hists = _merged_histograms(rows)
    slugs = _config_slugs(set(sums))
    out = []
    merged_all: dict[int, int] = {}
    for cid in sorted(sums, key=lambda c: slugs[c]):
        for k, v in hists.get(cid, {}).items():
            merged_all[k] = merged_all.get(k, 0) + v
        out.append(_latency_row(slugs[cid], hists.get(cid, {}), *sums[cid]))
    if len(out) > 1:
        n = sum(v[0] for v in sums.values())
        total = sum(v[1] for v in sums.values())
        out.append(_latency_row("all", merged_all, n, total))
    return out


def _latency_row(name: str, hist: dict[int, int], n: int, total: int) -> dict[str, Any]:
    return {
        "configuration": name,
        "n": n,
        "p50_ms": latency_quantile(hist, 0.50),
        "p95_ms": latency_quantile(hist, 0.95),
        "p99_ms": latency_quantile(hist, 0.99),
        "mean_ms": total / n if n else None,
    }


def tokens_by_configuration(*, team: Team, filters: DashboardFilters) -> list[dict[str, Any]]:
    """Return mean prompt / completion tokens and samples per finished query, per configuration."""
    rows = list(
        _rows(team, filters)
        .values("configuration_id")
        .annotate(
            q=Sum("queries"),
            p=Sum("prompt_tokens"),
            c=Sum("completion_tokens"),
            s=Sum("samples"),
            cost=Sum("cost_usd"),
        )
    )
    slugs = _config_slugs({r["configuration_id"] for r in rows})
    out = [
        {
            "configuration": slugs[r["configuration_id"]],
            "queries": r["q"],
            "mean_prompt_tokens": r["p"] / r["q"],
            "mean_completion_tokens": r["c"] / r["q"],
            "mean_samples": r["s"] / r["q"],
            "mean_cost_usd": r["cost"] / r["q"],
        }
        for r in rows
        if r["q"]
    ]
    return sorted(out, key=lambda r: r["configuration"])


def decision_mix(*, team: Team, filters: DashboardFilters) -> dict[str, Any]:
    """Return, per day, how many live queries (playground and API) went to each configuration,
    and how many of them a router version decided (the rest were explicit choices or had no
    router version). Benchmark queries are left out: they do not ask the router.

    {"days": [date], "series": {configuration: [count per day]}, "routed": [count per day],
     "total": int, "routed_total": int}
    """
    f = replace(filters, traffic=Traffic.LIVE) if filters.traffic != Traffic.LIVE else filters
    if filters.traffic == Traffic.BENCHMARK:
        return {"days": filters.days, "series": {}, "routed": [], "total": 0, "routed_total": 0}
    rows = list(
        _rows(team, f)
        .values("day", "configuration_id", "kind")
        .annotate(n=Sum("queries"))
        .values_list("day", "configuration_id", "kind", "n")
    )
    slugs = _config_slugs({r[1] for r in rows})
    index = {d: i for i, d in enumerate(filters.days)}
    series: dict[str, list[int]] = {}
    routed = [0] * len(index)
    for day, cid, kind, n in rows:
        i = index[day]
        counts = series.setdefault(slugs[cid], [0] * len(index))
        counts[i] += n
        if kind == RollupFigures.Kind.ROUTED:
            routed[i] += n
    return {
        "days": filters.days,
        "series": dict(sorted(series.items())),
        "routed": routed,
        "total": sum(sum(v) for v in series.values()),
        "routed_total": sum(routed),
    }


# End users and tags are not rollup dimensions: these two panels aggregate the log itself,
# over the period and with the same dimension filters, at most TOP_GROUPS groups by spend.
TOP_GROUPS = 50


def spend_by_end_user_or_tag(
    *, team: Team, filters: DashboardFilters, dimension: str
) -> list[dict[str, Any]]:
    """Return [{key, queries, cost_usd, prompt_tokens, completion_tokens, graded, correct}]
    per end user (``dimension="user"``) or tag (``"tag"``), dearest first."""
    from django.db.models import Count, Q, Sum

    from routerapp.models import Query

    field = {"user": "end_user", "tag": "tag_rows__tag"}[dimension]
    start = dt.datetime.combine(filters.start, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(filters.end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    qs = _filtered(
        Query.objects.filter(
            team=team, created_at__gte=start, created_at__lt=end, status__in=Query.FINISHED
        ),
        filters,
        benchmark=Q(source=Query.Source.BENCHMARK),
    )
    rows = (
        qs.values(field)
        .annotate(
            queries=Count("id"),
            cost_usd=Sum("cost_usd"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            graded=Count("id", filter=Q(graded_correct__isnull=False)),
            correct=Count("id", filter=Q(graded_correct=True)),
        )
        .order_by("-cost_usd", field)[:TOP_GROUPS]
    )
    return [{"key": r.pop(field) or "", **r} for r in rows]
