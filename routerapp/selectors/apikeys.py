"""Reads of API keys, always scoped to the caller's team (the hash never leaves the database)."""

from __future__ import annotations

from django.db.models import QuerySet

from routerapp.errors import NotFound
from routerapp.models import ApiKey, Team


def api_keys_for_team(*, team: Team) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(team=team).order_by("-created_at", "-id")


def api_key_get_for_team(*, team: Team, key_id: str) -> ApiKey:
    """Return the team's key by id or prefix; raise NotFound for another team's or none."""
    qs = ApiKey.objects.filter(team=team)
    pk = _as_id(key_id)
    key = qs.filter(pk=pk).first() if pk else None
    if key is None:
        key = qs.filter(prefix=str(key_id)[:16]).first()
    if key is None:
        raise NotFound(f"no API key {key_id!r}", param="id")
    return key


def _as_id(value: object) -> int | None:
    """Return a database id from a path segment, or None (not a number, or out of range)."""
    text = str(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text) or None
