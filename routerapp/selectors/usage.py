"""Spend and usage of a team over a period, grouped by model, strategy, key, task or
configuration or end user (the usage endpoint). Every figure is aggregated from the query log."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from routerapp.errors import InvalidInput
from routerapp.models import Query, QueryTag, Team

PERIODS = ("day", "week", "month", "all")
GROUP_BY = {
    "model": ("configuration__endpoint__name",),
    "strategy": ("configuration__strategy__strategy",),
    "configuration": ("configuration__slug",),
    "key": ("api_key__prefix", "api_key__name"),
    "task": ("task",),
    # OpenAI's `user` field: the caller's own end user ("" when the request named none).
    "user": ("end_user",),
    # The x-costpass-tags header: a query with several tags counts in each of their groups.
    "tag": ("tag_rows__tag",),
}
ZERO = Decimal("0")


def usage_window(period: str, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime]:
    """Return [start, end) of a named period in UTC: the current day, ISO week (from Monday),
    calendar month (the budget windows), or everything (start None)."""
    now = now.astimezone(dt.UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return midnight, now
    if period == "week":
        return midnight - dt.timedelta(days=midnight.weekday()), now
    if period == "month":
        return midnight.replace(day=1), now
    if period == "all":
        return None, now
    raise InvalidInput(f"period must be one of {list(PERIODS)}", param="period")


def _totals(qs: QuerySet[Query]) -> dict[str, Any]:
    return qs.aggregate(**_annotations())


def _shape(aggregates: dict[str, Any]) -> dict[str, Any]:
    row = {k.removeprefix("agg_"): v for k, v in aggregates.items() if k.startswith("agg_")}
    prompt = int(row.get("prompt_tokens") or 0)
    completion = int(row.get("completion_tokens") or 0)
    graded, correct = int(row.get("graded") or 0), int(row.get("correct") or 0)
    graded_cost = row.get("graded_cost_usd") or ZERO
    return {
        "queries": int(row.get("queries") or 0),
        "done": int(row.get("done") or 0),
        "failed": int(row.get("failed") or 0),
        "cancelled": int(row.get("cancelled") or 0),
        "running": int(row.get("running") or 0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": str(row.get("cost_usd") or ZERO),
        "reserved_usd": str(row.get("reserved_usd") or ZERO),
        "graded": graded,
        "correct": correct,
        "accuracy": (correct / graded) if graded else None,
        # Cost-of-pass realised on the graded queries: their USD over the number correct.
        "cost_of_pass_usd": str(graded_cost / correct) if correct else None,
    }


def usage_for_team(
    *,
    team: Team,
    period: str = "month",
    group_by: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    now: dt.datetime | None = None,
    user: str | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """Return the team's usage over ``period`` (or [start, end)), in total and per group,
    optionally only of one end user (``user``) and / or one tag (``tag``).

    Only the team's own queries are counted. Raise InvalidInput for an unknown period or
    group_by, or start after end."""
    now = now or timezone.now()
    window_start, window_end = usage_window(period, now)
    if start is not None:
        window_start = start
    if end is not None:
        window_end = end
    if window_start is not None and window_start > window_end:
        raise InvalidInput("start must be before end", param="start")
    if group_by is not None and group_by not in GROUP_BY:
        raise InvalidInput(f"group_by must be one of {sorted(GROUP_BY)}", param="group_by")
    qs = Query.objects.filter(team=team, created_at__lt=window_end)
    if window_start is not None:
        qs = qs.filter(created_at__gte=window_start)
    if user is not None:
        qs = qs.filter(end_user=user)
    if tag is not None:
        qs = qs.filter(pk__in=QueryTag.objects.filter(team=team, tag=tag).values("query_id"))
    body: dict[str, Any] = {
        "object": "usage",
        "team": team.name,
        "period": period,
        "start": window_start.isoformat() if window_start else None,
        "end": window_end.isoformat(),
        "group_by": group_by,
        "filters": {"user": user, "tag": tag},
        "totals": _shape(_totals(qs)),
        "groups": [],
    }
    if group_by is not None:
        fields = GROUP_BY[group_by]
        rows = qs.values(*fields).order_by(*fields)
        groups = []
        for row in rows.annotate(**_annotations()):
            key = row[fields[0]]
            entry = {
                "key": key
                if key is not None
                else ("" if group_by in ("task", "user", "tag") else None)
            }
            if group_by == "key":
                entry["name"] = row["api_key__name"]
            entry.update(_shape(row))
            groups.append(entry)
        groups.sort(key=lambda g: Decimal(str(g["cost_usd"])), reverse=True)
        body["groups"] = groups
    return body


def _annotations() -> dict[str, Any]:
    """Aggregates of a set of queries, named apart from the model's own fields."""
    live = Q(status__in=[Query.Status.QUEUED, Query.Status.RUNNING])
    graded = Q(graded_correct__isnull=False)
    return {
        "agg_queries": Count("id"),
        "agg_done": Count("id", filter=Q(status=Query.Status.DONE)),
        "agg_failed": Count("id", filter=Q(status=Query.Status.FAILED)),
        "agg_cancelled": Count("id", filter=Q(status=Query.Status.CANCELLED)),
        "agg_running": Count("id", filter=live),
        "agg_prompt_tokens": Sum("prompt_tokens"),
        "agg_completion_tokens": Sum("completion_tokens"),
        "agg_cost_usd": Sum("cost_usd"),
        "agg_reserved_usd": Sum("reserved_usd", filter=live),
        "agg_graded": Count("id", filter=graded),
        "agg_correct": Count("id", filter=Q(graded_correct=True)),
        "agg_graded_cost_usd": Sum("cost_usd", filter=graded),
    }
