"""Every error of the OpenAI-compatible API in OpenAI's error JSON, over plain HTTP, with
nothing written when a request is refused."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from django.test import override_settings

from routerapp.models import BudgetPolicy, BudgetUsage, Query, Sample
from routerapp.services.apikeys import api_key_create
from tests.factories import BudgetPolicyFactory
from tests.routerapp.api.conftest import make_configuration

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
def setup(live_server, upstream_url, make_caller):  # type: ignore[no-untyped-def]
    make_configuration(upstream_url)
    caller = make_caller("alpha")
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        yield caller, http


def _written() -> tuple[int, int, str]:
    reserved = sum((u.reserved_usd for u in BudgetUsage.objects.all()), Decimal(0))
    return Query.objects.count(), Sample.objects.count(), str(reserved)


def assert_error(r: httpx.Response, status: int, code: str | None, fragment: str = "") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    assert fragment in error["message"], error
    return error


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b'{"model": "auto", "messages": [', None, "malformed JSON"),
        (b'{"model": "auto"}', "messages", "required"),
        (b'{"model": "auto", "messages": []}', "messages", ""),
        (
            b'{"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}',
            "messages[0].role",
            "role",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}',
            "messages[0].content",
            "string",
        ),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "n": 99}', "n", ""),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "colour": 1}',
            "colour",
            "unknown parameter",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": "maybe"}',
            "stream",
            "",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}',
            "tools[0].function",
            "Field required",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "min_accuracy": 2}',
            "min_accuracy",
            "",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_cost_usd": "-1"}',
            "max_cost_usd",
            "",
        ),
        (b"[1, 2]", None, ""),
    ],
)
def test_bad_bodies_are_400(setup, body: bytes, param: str | None, fragment: str) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    before = _written()
    r = http.post(CHAT, content=body, headers={**caller.auth, "Content-Type": "application/json"})
    error = assert_error(r, 400, None, fragment)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert _written() == before


def test_completions_rejects_batched_prompts(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    r = http.post(
        "/v1/completions", json={"model": "auto", "prompt": ["a", "b"]}, headers=caller.auth
    )
    assert_error(r, 400, "invalid_value", "one prompt per request")


def test_401_missing_invalid_revoked(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    body = {"model": "auto", "messages": QUESTION}
    assert_error(http.post(CHAT, json=body), 401, "invalid_api_key", "missing API key")
    assert_error(
        http.get("/v1/models", headers={"Authorization": "Bearer nope"}),
        401,
        "invalid_api_key",
        "invalid",
    )
    assert Query.objects.count() == 0


def test_402_names_the_budget_its_limit_and_what_is_left(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    BudgetPolicyFactory(team=caller.team, name="tiny-monthly", limit_usd=Decimal("0.00001"))
    before = _written()
    r = http.post(CHAT, json={"model": "auto", "messages": QUESTION}, headers=caller.auth)
    error = assert_error(r, 402, "budget_exceeded", "budget 'tiny-monthly'")
    assert error["type"] == "insufficient_quota"
    assert "limit $0.00001" in error["message"] and "$0.00001 left" in error["message"]
    assert _written() == before


def test_downgrading_budget_re_asks_the_router_with_what_is_left(  # type: ignore[no-untyped-def]
    setup, upstream_url
) -> None:
    caller, http = setup
    # A second, pricier configuration; the budget only covers the cheap one.
    pricey = make_configuration(upstream_url, name="pricey")
    pricey.endpoint.input_usd_per_mtok = Decimal("1000")
    pricey.endpoint.save()
    BudgetPolicyFactory(
        team=caller.team,
        name="down",
        limit_usd=Decimal("0.01"),
        mode=BudgetPolicy.Mode.HARD_DOWNGRADE,
    )
    r = http.post(
        CHAT,
        json={"model": "auto", "messages": QUESTION, "allowed_models": ["pricey", "fake"]},
        headers=caller.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["costpass"]["model"] == "fake"
    # Asked for the pricey one explicitly, the downgrade has nothing to fall back to: 402.
    r = http.post(CHAT, json={"model": "pricey", "messages": QUESTION}, headers=caller.auth)
    assert_error(r, 402, "budget_exceeded", "budget 'down'")


def test_403_without_the_query_scope(setup, make_caller) -> None:  # type: ignore[no-untyped-def]
    _, http = setup
    reader = make_caller("alpha", scopes=["usage"])
    r = http.post(CHAT, json={"model": "auto", "messages": QUESTION}, headers=reader.auth)
    error = assert_error(r, 403, "forbidden", "'query' scope")
    assert error["type"] == "permission_error"
    assert Query.objects.count() == 0


def test_404_unknown_model_and_unknown_routes(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    r = http.post(CHAT, json={"model": "gpt-17", "messages": QUESTION}, headers=caller.auth)
    assert_error(r, 404, "model_not_found", "gpt-17")
    assert_error(http.get("/v1/nothing-here", headers=caller.auth), 404, "not_found", "no route")
    assert_error(http.post("/api/v1/nope"), 404, "not_found")
    assert_error(
        http.get("/api/v1/queries/00000000-0000-0000-0000-000000000000", headers=caller.auth),
        404,
        "not_found",
        "no query",
    )
    assert_error(http.get(CHAT, headers=caller.auth), 405, "method_not_allowed")
    assert Query.objects.count() == 0


def test_409_cancel_a_finished_query(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    r = http.post(CHAT, json={"model": "auto", "messages": QUESTION}, headers=caller.auth)
    query_id = r.json()["costpass"]["query_id"]
    r = http.post(f"/api/v1/queries/{query_id}/cancel", headers=caller.auth)
    assert_error(r, 409, "conflict", "already finished")
    assert r.headers["x-should-retry"] == "false"
    assert Query.objects.get(pk=query_id).status == "done"


def test_413_body_and_prompt_too_large(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    before = _written()
    with override_settings(MAX_PROMPT_CHARS=50):
        r = http.post(
            CHAT,
            json={"model": "auto", "messages": [{"role": "user", "content": "x" * 51}]},
            headers=caller.auth,
        )
    assert_error(r, 413, "payload_too_large", "limit is 50")
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2048):
        r = http.post(
            CHAT,
            json={"model": "auto", "messages": [{"role": "user", "content": "y" * 5000}]},
            headers=caller.auth,
        )
    assert_error(r, 413, "payload_too_large", "too large")
    assert _written() == before


def test_422_when_no_configuration_fits(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    r = http.post(
        CHAT, json={"model": "auto", "messages": QUESTION, "max_cost_usd": "0"}, headers=caller.auth
    )
    assert_error(r, 422, "unprocessable", "max_cost_usd")
    assert Query.objects.count() == 0


def test_429_requests_per_minute_with_retry_after(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    _, raw = api_key_create(team=caller.team, name="limited", rate_limit_rpm=2)
    auth = {"Authorization": f"Bearer {raw}"}
    body = {"model": "auto", "messages": QUESTION}
    assert http.post(CHAT, json=body, headers=auth).status_code == 200
    assert http.post(CHAT, json=body, headers=auth).status_code == 200
    r = http.post(CHAT, json=body, headers=auth)
    error = assert_error(r, 429, "rate_limit_exceeded", "2 requests per minute")
    assert error["type"] == "rate_limit_error"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert Query.objects.count() == 2
    # Another key of the same team has its own window.
    assert http.post(CHAT, json=body, headers=caller.auth).status_code == 200


def test_429_tokens_per_minute(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    _, raw = api_key_create(team=caller.team, name="tpm", rate_limit_tpm=20)
    auth = {"Authorization": f"Bearer {raw}"}
    body = {"model": "auto", "messages": QUESTION}
    first = http.post(CHAT, json=body, headers=auth)
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] >= 14  # charged when it finished
    r = http.post(CHAT, json=body, headers=auth)
    assert_error(r, 429, "rate_limit_exceeded", "tokens per minute")
    assert int(r.headers["Retry-After"]) >= 1
    r = http.post(
        CHAT,
        json={"model": "auto", "messages": [{"role": "user", "content": "z" * 400}]},
        headers=auth,
    )
    assert_error(r, 429, "rate_limit_exceeded", "limit is 20 tokens per minute")


def test_jobs_api_is_rate_limited_too(setup) -> None:  # type: ignore[no-untyped-def]
    caller, http = setup
    _, raw = api_key_create(team=caller.team, name="jobs-limited", rate_limit_rpm=1)
    auth = {"Authorization": f"Bearer {raw}"}
    assert http.post("/api/v1/queries", json={"prompt": "2+2?"}, headers=auth).status_code == 202
    r = http.post("/api/v1/queries", json={"prompt": "2+2?"}, headers=auth)
    assert_error(r, 429, "rate_limit_exceeded", "1 requests per minute")
    assert "Retry-After" in r.headers
