"""Reads of queries, always scoped to the caller's team."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.db.models import QuerySet

from routerapp.errors import NotFound
from routerapp.models import Query, Sample, StrategyConfig, Team

#: Most recent graded queries read per strategy configuration by the log refits.
GRADED_RUNS_MAX = 20_000


def query_get_for_team(*, team: Team, query_id: str | uuid.UUID) -> Query:
    """Return the team's query; raise NotFound for an unknown id or another team's query."""
    try:
        parsed = uuid.UUID(str(query_id))
    except ValueError:
        raise NotFound(f"no query {query_id!r}", param="id") from None
    query = (
        Query.objects.select_related("configuration__endpoint", "configuration__strategy")
        .filter(team=team, pk=parsed)
        .first()
    )
    if query is None:
        raise NotFound(f"no query {query_id!r}", param="id")
    return query


def query_samples(*, query: Query) -> QuerySet[Sample]:
    return Sample.objects.filter(query=query).order_by("index")


# Columns the query lists show; the heavy JSON and text columns stay in the database.
_LIST_COLUMNS = (
    "id",
    "prompt",
    "status",
    "created_at",
    "cost_usd",
    "source",
    "configuration__slug",
    "graded_correct",
)


def queries_recent(
    *, team: Team, limit: int, user: Any = None, source: str | None = None
) -> list[Query]:
    """Return the team's latest queries, newest first; with `user` / `source`, only theirs
    (the per-user index keeps that quick however big the team's log is)."""
    qs = Query.objects.filter(team=team)
    if user is not None:
        qs = qs.filter(user_id=user.pk)
    if source is not None:
        qs = qs.filter(source=source)
    return list(
        qs.select_related("configuration").only(*_LIST_COLUMNS).order_by("-created_at")[:limit]
    )


def queries_in_flight(*, team: Team) -> int:
    """Return how many of the team's queries are queued or running."""
    return Query.objects.filter(
        team=team, status__in=[Query.Status.QUEUED, Query.Status.RUNNING]
    ).count()


def query_log_page(
    *, team: Team, before: dt.datetime | None, size: int = 50
) -> tuple[list[Query], dt.datetime | None]:
    """Return one page of the team's log, newest first, and the cursor of the next page
    (keyset paging on created_at, so a deep page costs what the first one does)."""
    qs = (
        Query.objects.filter(team=team)
        .select_related("configuration", "api_key")
        .defer("messages", "decision", "answer", "votes", "constraints", "gold", "error")
        .order_by("-created_at")
    )
    if before is not None:
        qs = qs.filter(created_at__lt=before)
    page = list(qs[: size + 1])
    more = len(page) > size
    page = page[:size]
    return page, (page[-1].created_at if more else None)


def graded_runs(
    *, strategy_config: StrategyConfig, fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Return ``fields`` of the most recent (at most GRADED_RUNS_MAX) finished, graded queries
    run by a strategy configuration, newest first: what the log refits of a strategy's own
    parameters (difficulty classifier, cascade threshold) learn from."""
    return list(
        Query.objects.filter(
            configuration__strategy=strategy_config,
            status=Query.Status.DONE,
            graded_correct__isnull=False,
        )
        .order_by("-created_at")
        .values(*fields)[:GRADED_RUNS_MAX]
    )
