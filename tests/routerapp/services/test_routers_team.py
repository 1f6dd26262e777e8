"""Router versions scoped to a team: trained on that team's log only, activated for that team
while every other team keeps the installation's version (and each scope has one active)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from routerapp.errors import InvalidInput
from routerapp.models import Query, RouterVersion, Team
from routerapp.services import routers as svc
from routerapp.services.apikeys import api_key_create
from routerapp.services.routing import active_router_version
from tests.routerapp.services.test_routers import _log, installed  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db


def _fit(team: Team | None = None) -> RouterVersion:
    version = svc.router_version_train(source="log", enqueue=False, team=team)
    version = svc.router_version_fit(version_id=version.pk)
    assert version.status == RouterVersion.Status.READY, version.error
    return version


def _routed_by(team: Team) -> int | None:
    _, raw = api_key_create(team=team, name="k")
    client = APIClient()
    r = client.post(
        "/api/v1/queries",
        {"prompt": "easy problem 99: what is 3 + 3?", "task": "easy"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert r.status_code == 202, r.content
    return Query.objects.get(pk=r.json()["id"]).router_version_id


def test_team_version_serves_its_team_only(installed) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _log()
    demo = Team.objects.get(name="demo")
    other = Team.objects.create(name="other")
    default = _fit()
    svc.router_version_activate(version=default)
    scoped = _fit(team=demo)
    # Trained on the team's own log only.
    assert scoped.trained_on["prompts"] == default.trained_on["prompts"]
    svc.router_version_activate(version=scoped)
    default.refresh_from_db()
    assert default.is_active and scoped.is_active  # one active per scope
    assert active_router_version(demo).pk == scoped.pk
    assert active_router_version(other).pk == default.pk
    assert _routed_by(demo) == scoped.pk
    assert _routed_by(other) == default.pk
    # A second team version replaces the first for that team only.
    again = _fit(team=demo)
    svc.router_version_activate(version=again)
    scoped.refresh_from_db()
    default.refresh_from_db()
    assert not scoped.is_active and default.is_active
    assert _routed_by(demo) == again.pk


def test_team_version_is_trained_on_that_teams_log(installed) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _log()
    quiet = Team.objects.create(name="quiet")
    version = svc.router_version_fit(
        version_id=svc.router_version_train(source="log", enqueue=False, team=quiet).pk
    )
    assert version.status == RouterVersion.Status.FAILED
    assert "graded prompts" in version.error
    with pytest.raises(InvalidInput, match="trained on its log"):
        svc.router_version_train(source="suite", suite_dir="/nowhere", team=quiet)
    call_command("router_train", "--from-log", "--team", "demo")
    assert RouterVersion.objects.filter(team__name="demo", status="ready").exists()
