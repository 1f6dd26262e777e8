"""Endpoint health in the UI: each endpoint's breaker on the home page, a warning while one is
open, and the attempts (retries, fallbacks) on a query's page."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from routerapp.models import Deployment, Query
from routerapp.services import breakers
from tests.factories import ConfigurationFactory, MembershipFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def member(settings):  # type: ignore[no-untyped-def]
    settings.HEALTH_CACHE_S = 0.0
    settings.BREAKER_FAILURES = 1
    settings.REDIS_URL = ""  # the database store: nothing shared with other tests
    breakers.health_cache_clear()
    m = MembershipFactory(team=TeamFactory(name="ui-team"), user=UserFactory(username="alice"))
    client = Client()
    client.force_login(m.user)
    yield m, client
    breakers.health_cache_clear()


def test_home_shows_each_deployments_breaker_and_warns_while_open(member) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    configuration = ConfigurationFactory()
    endpoint = configuration.endpoint
    Deployment.objects.create(endpoint=endpoint, name="east")
    Deployment.objects.create(endpoint=endpoint, name="west")
    page = client.get("/").content.decode()
    assert f"{endpoint.name}/east" in page and f"{endpoint.name}/west" in page
    assert "circuit breaker open" not in page
    [east, _] = breakers.endpoint_targets(endpoint)
    breakers.breaker_record(target=east, ok=False, error="HTTP 503: overloaded", now=time.time())
    page = client.get("/").content.decode()
    assert f"Endpoint <strong>{endpoint.name}/east</strong>: circuit breaker open" in page
    assert "HTTP 503: overloaded" in page


def test_query_page_lists_its_attempts(member) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    configuration = ConfigurationFactory()
    query = Query.objects.create(
        team=m.team,
        configuration=configuration,
        status=Query.Status.DONE,
        attempts=[
            {
                "configuration": "cheap/single",
                "target": "cheap",
                "outcome": "failed",
                "error": "UpstreamError: upstream answered HTTP 502",
                "retries": [{"status": 502, "wait_s": 0.3}],
                "ms": 812,
            },
            {
                "configuration": configuration.slug,
                "target": "dear",
                "outcome": "ok",
                "retries": [],
                "ms": 40,
            },
        ],
    )
    page = client.get(f"/queries/{query.pk}/").content.decode()
    assert "Attempts: retries before the first token" in page
    assert "upstream answered HTTP 502" in page and "cheap/single" in page
