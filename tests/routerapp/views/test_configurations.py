"""Creating configurations of the adaptive strategies in the UI: validated params, form errors
(never a 500, never a half-written row), staff only."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from routerapp.models import AuditLog, Configuration, StrategyConfig
from tests.factories import EndpointFactory, MembershipFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():  # type: ignore[no-untyped-def]
    m = MembershipFactory(team=TeamFactory(name="cfg"), user=UserFactory(username="sam"))
    m.user.is_staff = True
    m.user.save()
    client = Client()
    client.force_login(m.user)
    return client


def post(client, strategy, params, name="ada"):  # type: ignore[no-untyped-def]
    endpoint = EndpointFactory()
    return client.post(
        "/configurations/",
        {"name": name, "endpoint": endpoint.pk, "strategy": strategy,
         "params": params if isinstance(params, str) else json.dumps(params)},
    )  # fmt: skip


def test_page_lists_strategies_and_defaults(staff) -> None:  # type: ignore[no-untyped-def]
    html = staff.get("/configurations/").content.decode()
    for slug in ("adaptive_consistency", "cascade", "difficulty_adaptive", "step_search"):
        assert f'<option value="{slug}"' in html
    assert "&quot;rule&quot;: &quot;beta&quot;" in html  # adaptive consistency's defaults


def test_creates_an_adaptive_configuration(staff) -> None:  # type: ignore[no-untyped-def]
    r = post(staff, "adaptive_consistency", {"k": 12, "rule": "esc", "window": 3})
    assert r.status_code == 302 and r["Location"].endswith("created=smollm2-135m/ada")
    config = Configuration.objects.get(slug="smollm2-135m/ada")
    assert config.strategy.params["k"] == 12 and config.strategy.params["threshold"] == 0.95
    assert AuditLog.objects.filter(action="create").count() == 2
    html = staff.get(r["Location"]).content.decode()
    assert 'id="created"' in html and 'data-slug="smollm2-135m/ada"' in html


@pytest.mark.parametrize(
    ("strategy", "params", "error"),
    [
        ("adaptive_consistency", {"k": 4, "window": 8}, "window must be &lt;= k"),
        ("adaptive_consistency", "{k: 4", "not valid JSON"),
        ("adaptive_consistency", "[1, 2]", "params must be a JSON object"),
        ("step_search", {"scorer": "prm"}, "scorer &#x27;prm&#x27; needs prm_url"),
        ("cascade", {"stages": [{"strategy": "single"}, {"endpoint": "ghost", "strategy": "single"}]},
         "unknown or disabled model endpoint(s): ghost"),
        ("difficulty_adaptive", {"temperature": 0.2}, "temperature belongs in each class"),
    ],
)  # fmt: skip
def test_bad_params_are_form_errors_and_write_nothing(staff, strategy, params, error) -> None:  # type: ignore[no-untyped-def]
    r = post(staff, strategy, params)
    assert r.status_code == 400
    assert error in r.content.decode()
    assert not StrategyConfig.objects.exists() and not Configuration.objects.exists()


def test_members_who_are_not_staff_cannot_create() -> None:
    m = MembershipFactory(team=TeamFactory(name="cfg2"), user=UserFactory(username="max"))
    client = Client()
    client.force_login(m.user)
    r = post(client, "adaptive_consistency", {})
    assert r.status_code == 403 and "Only staff can create configurations" in r.content.decode()
    assert not Configuration.objects.exists()
