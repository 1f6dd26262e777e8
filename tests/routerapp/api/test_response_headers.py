"""What each OpenAI-compatible answer carries, as the README says: every answer about a
query has its id, its configuration and the worst case reserved for it; a finished one also
has its real cost; a stream (whose headers go before the run) carries the real cost in its
last chunk; a 504 (the synchronous wait ran out) carries no cost (it is not known yet)."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from django.test import override_settings

from routerapp.models import Query
from tests.routerapp.api.conftest import make_configuration

pytestmark = [pytest.mark.django_db(transaction=True)]

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def test_finished_streamed_and_pending_answers_carry_what_the_readme_says(  # type: ignore[no-untyped-def]
    live_server, upstream_url, make_caller
) -> None:
    config = make_configuration(upstream_url)
    caller = make_caller("alpha")
    with httpx.Client(base_url=live_server.url, headers=caller.auth, timeout=30) as http:
        r = http.post("/v1/chat/completions", json={"model": "auto", "messages": QUESTION})
        assert r.status_code == 200, r.text
        query = Query.objects.get(pk=r.headers["x-costpass-query-id"])
        assert r.headers["x-costpass-configuration"] == config.slug
        assert Decimal(r.headers["x-costpass-reserved-usd"]) == query.reserved_usd > 0
        assert Decimal(r.headers["x-costpass-cost-usd"]) == query.cost_usd > 0

        body = {"model": "auto", "messages": QUESTION, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as s:
            headers = s.headers
            events = [
                json.loads(line[5:])
                for line in s.iter_lines()
                if line.startswith("data:") and line[5:].strip() != "[DONE]"
            ]
        query = Query.objects.get(pk=headers["x-costpass-query-id"])
        assert headers["x-costpass-configuration"] == config.slug
        assert Decimal(headers["x-costpass-reserved-usd"]) == query.reserved_usd > 0
        assert "x-costpass-cost-usd" not in headers  # sent before the run: not known yet
        assert Decimal(events[-1]["costpass"]["cost_usd"]) == query.cost_usd > 0

    config.endpoint.queue = "test.parked"  # no worker reads it: the query stays queued
    config.endpoint.save()
    with (
        override_settings(SYNC_WAIT_S=0.5),
        httpx.Client(base_url=live_server.url, headers=caller.auth, timeout=30) as http,
    ):
        r = http.post("/v1/chat/completions", json={"model": "auto", "messages": QUESTION})
    assert r.status_code == 504, r.text
    query = Query.objects.get(pk=r.headers["x-costpass-query-id"])
    assert Decimal(r.headers["x-costpass-reserved-usd"]) == query.reserved_usd > 0
    assert r.headers["x-costpass-configuration"] == config.slug
    assert "x-costpass-cost-usd" not in r.headers
    httpx.post(
        f"{live_server.url}/api/v1/queries/{query.pk}/cancel", headers=caller.auth, timeout=10
    )
