"""Bad input to the jobs API: the right status, an OpenAI-shaped message, nothing written."""

from __future__ import annotations

import httpx
import pytest
from django.test import override_settings

from routerapp.models import AuditLog, BudgetUsage, Query, Sample
from routerapp.services.apikeys import api_key_create, api_key_revoke
from tests.factories import ConfigurationFactory, TeamFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def setup(live_server):  # type: ignore[no-untyped-def]
    ConfigurationFactory()
    team = TeamFactory(name="alpha")
    _, raw = api_key_create(team=team, name="test")
    client = httpx.Client(base_url=live_server.url, timeout=30)
    yield team, raw, client
    client.close()


def _written() -> tuple[int, int, int]:
    return Query.objects.count(), Sample.objects.count(), BudgetUsage.objects.count()


def _assert_openai_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert fragment in body["error"]["message"]


def test_missing_key_is_401(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, client = setup
    before = _written()
    r = client.post("/api/v1/queries", json={"prompt": "2+2?"})
    _assert_openai_error(r, 401, "missing API key")
    assert r.json()["error"]["type"] == "authentication_error"
    assert _written() == before


def test_invalid_and_revoked_keys_are_401(setup) -> None:  # type: ignore[no-untyped-def]
    team, raw, client = setup
    r = client.post(
        "/api/v1/queries", json={"prompt": "hi"}, headers={"Authorization": "Bearer cp_nope_nope"}
    )
    _assert_openai_error(r, 401, "invalid")
    key, raw2 = api_key_create(team=team, name="to-revoke")
    api_key_revoke(key=key)
    r = client.post(
        "/api/v1/queries", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {raw2}"}
    )
    _assert_openai_error(r, 401, "revoked")
    r = client.post(
        "/api/v1/queries", json={"prompt": "hi"}, headers={"Authorization": f"Token {raw}"}
    )
    _assert_openai_error(r, 401, "malformed Authorization header")
    assert Query.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"prompt": "unterminated', 400, "malformed JSON"),
        (b"{}", 400, "prompt"),
        (b'{"prompt": ""}', 400, "prompt"),
        (b'{"prompt": "   "}', 400, "blank"),
        (b'{"prompt": 12}', 400, "prompt"),
        (b'{"prompt": "hi", "min_accuracy": 3}', 400, "min_accuracy"),
        (b'{"prompt": "hi", "max_cost_usd": -1}', 400, "max_cost_usd"),
        (b'{"prompt": "hi", "model": "no-such-model"}', 400, "no-such-model"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
        (b"[1, 2]", 400, ""),
    ],
)
def test_bad_bodies_are_400_and_write_nothing(setup, body, status, fragment) -> None:  # type: ignore[no-untyped-def]
    _, raw, client = setup
    before = _written()
    r = client.post(
        "/api/v1/queries",
        content=body,
        headers={"Authorization": f"Bearer {raw}", "Content-Type": "application/json"},
    )
    _assert_openai_error(r, status, fragment)
    assert _written() == before


def test_prompt_over_the_limit_is_413(setup) -> None:  # type: ignore[no-untyped-def]
    _, raw, client = setup
    with override_settings(MAX_PROMPT_CHARS=100):
        r = client.post(
            "/api/v1/queries",
            json={"prompt": "x" * 101},
            headers={"Authorization": f"Bearer {raw}"},
        )
    _assert_openai_error(r, 413, "limit is 100")
    assert Query.objects.count() == 0


def test_another_teams_query_is_404(setup) -> None:  # type: ignore[no-untyped-def]
    _, raw, client = setup
    other = TeamFactory(name="beta")
    theirs = Query.objects.create(team=other, prompt="secret")
    auth = {"Authorization": f"Bearer {raw}"}
    for method, path in [
        ("GET", f"/api/v1/queries/{theirs.pk}"),
        ("POST", f"/api/v1/queries/{theirs.pk}/cancel"),
        ("POST", f"/api/v1/queries/{theirs.pk}/feedback"),
        ("GET", "/api/v1/queries/not-a-uuid"),
    ]:
        r = client.request(method, path, headers=auth, json={"correct": True})
        _assert_openai_error(r, 404, "no query")
    theirs.refresh_from_db()
    assert theirs.cancel_requested is False and theirs.feedback_correct is None
    assert AuditLog.objects.count() == 1  # only the key creation


def test_valid_query_is_accepted_with_202(setup) -> None:  # type: ignore[no-untyped-def]
    team, raw, client = setup
    r = client.post(
        "/api/v1/queries",
        json={"prompt": "What is 2+2?", "task": "arith"},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    query = Query.objects.get(pk=body["id"])
    assert body["status"] == "queued"
    # A worker started by another test may already have picked it up.
    assert query.team == team and query.task == "arith"
    assert query.status in ("queued", "running", "done")
    assert r.headers["Location"] == f"/api/v1/queries/{query.pk}"
    assert body["configuration"] == "smollm2-135m/greedy-short"
    assert body["progress"] == {"samples_done": 0, "samples_planned": 1}


def test_an_unknown_field_is_400_naming_it_and_nothing_is_written(setup) -> None:  # type: ignore[no-untyped-def]
    _, raw, client = setup
    auth = {"Authorization": f"Bearer {raw}"}
    before = _written()
    r = client.post("/api/v1/queries", json={"prompt": "2+2?", "temperature": 0.2}, headers=auth)
    _assert_openai_error(r, 400, "unknown field 'temperature'")
    assert r.json()["error"]["param"] == "temperature"
    assert _written() == before
    query = client.post("/api/v1/queries", json={"prompt": "2+2?"}, headers=auth).json()
    r = client.post(
        f"/api/v1/queries/{query['id']}/feedback", json={"correct": True, "note": "x"}, headers=auth
    )
    _assert_openai_error(r, 400, "unknown field 'note'")
    assert Query.objects.get(pk=query["id"]).feedback_correct is None
