"""What every page needs: the user's team, service errors as form errors, htmx helpers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from routerapp.errors import ServiceError
from routerapp.models import Team, TeamMembership

SESSION_TEAM = "costpass_team_id"


def user_teams(user: Any) -> list[Team]:
    """Return the teams the user is a member of, by name."""
    return [
        m.team
        for m in TeamMembership.objects.filter(user=user)
        .select_related("team")
        .order_by("team__name")
    ]


def current_team(request: HttpRequest) -> Team | None:
    """Return the team chosen in this session (or the user's first one); None without any."""
    teams = user_teams(request.user)
    chosen = request.session.get(SESSION_TEAM)
    for team in teams:
        if team.pk == chosen:
            return team
    return teams[0] if teams else None


def team_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Require a login and a team membership; set request.team (403 page without a team)."""

    @login_required
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        team = current_team(request)
        if team is None:
            return render(request, "ui/no_team.html", status=403)
        request.team = team  # type: ignore[attr-defined]
        return view(request, *args, **kwargs)

    return wrapper


def add_service_error(
    form: forms.Form, exc: ServiceError, fields: dict[str, str] | None = None
) -> None:
    """Show a service's refusal on the form: on the field it names when the form has it,
    else above the form. `fields` maps service param names to form field names."""
    name = (fields or {}).get(exc.param or "", exc.param or "")
    if name and name in form.fields:
        form.add_error(name, exc.message)
    else:
        form.add_error(None, exc.message)


def is_htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))
