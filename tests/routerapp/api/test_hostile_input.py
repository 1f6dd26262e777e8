"""Hostile bodies (bench/hostile_inputs.py: deep nesting, lone surrogates, NUL, invalid UTF-8,
huge numbers, NaN, duplicate keys, wrong content types) on both request endpoints: each answers
a 4xx in OpenAI's error shape, never a 500, and writes nothing. bench/api_fuzz.py sends the
same cases to the production server after schemathesis."""

from __future__ import annotations

import pytest
from django.test import Client

from bench.hostile_inputs import CASES, JOBS
from routerapp.models import BudgetUsage, Query, Sample
from routerapp.services.apikeys import api_key_create
from tests.factories import ConfigurationFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def caller() -> tuple[Client, dict[str, str]]:
    ConfigurationFactory()
    _, raw = api_key_create(team=TeamFactory(name="hostile"), name="k")
    return Client(raise_request_exception=False), {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


@pytest.mark.parametrize(
    ("name", "path", "body", "ctype", "status"), CASES, ids=[c[0] for c in CASES]
)
def test_hostile_body_is_a_4xx_in_openai_shape_and_writes_nothing(
    caller: tuple[Client, dict[str, str]],
    name: str,
    path: str,
    body: bytes,
    ctype: str,
    status: int,
) -> None:
    client, auth = caller
    content_type = "application/json" if ctype == "json" else ctype
    response = client.generic("POST", path, body, content_type=content_type, **auth)
    assert response.status_code == status, (name, response.status_code, response.content[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert (Query.objects.count(), Sample.objects.count(), BudgetUsage.objects.count()) == (0, 0, 0)


def test_a_valid_body_still_passes_the_parser(caller: tuple[Client, dict[str, str]]) -> None:
    """The refusals above must not catch ordinary input: non-ASCII text, emoji (a valid
    surrogate pair in JSON escapes), nesting within the limit."""
    client, auth = caller
    body = '{"prompt": "Combien font 2+2 ? \\ud83d\\ude00 caf\u00e9", "task": "arith"}'.encode()
    response = client.generic("POST", JOBS, body, content_type="application/json", **auth)
    assert response.status_code in (200, 202), response.content[:300]
    query = Query.objects.get()
    assert query.prompt == "Combien font 2+2 ? \U0001f600 caf\u00e9"
