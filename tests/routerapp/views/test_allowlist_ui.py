"""The playground offers only the configurations and models the team's allowlist permits, and
refuses a forbidden one posted anyway with a form error (no query written)."""

from __future__ import annotations

import pytest
from django.test import Client

from routerapp.models import Query
from tests.factories import (
    ConfigurationFactory,
    EndpointFactory,
    MembershipFactory,
    TeamFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def test_playground_lists_only_what_the_team_may_use() -> None:
    ConfigurationFactory()  # smollm2-135m/greedy-short
    ConfigurationFactory(endpoint=EndpointFactory(name="other-model"))
    team = TeamFactory(name="ui-allow", allowed_models=["other-model"])
    member = MembershipFactory(team=team, user=UserFactory(username="allow-alice"))
    client = Client()
    client.force_login(member.user)
    page = client.get("/playground/").content.decode()
    assert 'value="other-model/greedy-short"' in page
    assert 'value="smollm2-135m/greedy-short"' not in page
    assert 'value="smollm2-135m"' not in page
    r = client.post(
        "/playground/", {"prompt": "2+2?", "configuration": "smollm2-135m/greedy-short"}
    )
    assert r.status_code == 400 and not Query.objects.exists()
