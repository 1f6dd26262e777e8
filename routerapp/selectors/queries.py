"""Reads of queries, always scoped to the caller's team."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from routerapp.errors import NotFound
from routerapp.models import Query, Sample, Team


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
