"""Data retention through HTTP and the beat task: texts of finished queries past the cutoff are
deleted (prompt, messages, answer, samples), the ledger, grades and usage stay the same, and the
router's training data from the log gives the same features and prompt ids as before."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import httpx
import numpy as np
import pytest

from routerapp.models import Query, Sample
from routerapp.routing.features import PromptFeaturizer
from routerapp.services.routers import log_outcome_tables
from tests.routerapp.api.conftest import make_configuration
from workers.tasks import texts_retention

pytestmark = pytest.mark.django_db(transaction=True)

LEDGER = ("prompt_tokens", "completion_tokens", "cost_usd", "graded_correct", "status", "tags")


@pytest.fixture
def http(live_server, upstream_url, make_caller):  # type: ignore[no-untyped-def]
    make_configuration(upstream_url)
    caller = make_caller("keeper", scopes=["query", "usage", "feedback"])
    with httpx.Client(base_url=live_server.url, timeout=60, headers=caller.auth) as client:
        yield client


def _ask(http: httpx.Client, content: str) -> str:
    r = http.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": content}], "user": "u1"},
        headers={"x-costpass-tags": "kept-tag"},
    )
    assert r.status_code == 200, r.text
    query_id = r.json()["costpass"]["query_id"]
    assert http.post(f"/api/v1/queries/{query_id}/feedback", json={"correct": True}).is_success
    return query_id


def test_texts_past_the_retention_window_go_and_the_rest_stays(http, settings) -> None:  # type: ignore[no-untyped-def]
    settings.TEXT_RETENTION_DAYS = 7
    old_ids = [_ask(http, f"Old question {i}: what is {i} + {i}?") for i in range(3)]
    new_id = _ask(http, "A recent question: what is 2+2?")
    Query.objects.filter(pk__in=old_ids).update(
        created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
    )
    before = {q.pk: {f: getattr(q, f) for f in LEDGER} for q in Query.objects.all()}
    usage_before = http.get("/api/v1/usage", params={"period": "all", "group_by": "user"}).json()
    outcomes_before, prompts_before = log_outcome_tables()

    assert texts_retention.apply().get() == 3
    for query in Query.objects.filter(pk__in=old_ids):
        assert query.prompt == "" and query.messages is None and query.answer == ""
        assert query.text_deleted_at is not None and query.router_sketch.startswith('{"t":')
        assert not Sample.objects.filter(query=query).exclude(text="").exists()
        assert {f: getattr(query, f) for f in LEDGER} == before[query.pk]
    recent = Query.objects.get(pk=new_id)
    assert recent.messages and recent.answer and recent.text_deleted_at is None
    assert Sample.objects.filter(query=recent).exclude(text="").exists()
    # The API shows the query without its texts; usage is unchanged.
    detail = http.get(f"/api/v1/queries/{old_ids[0]}").json()
    assert detail["prompt"] == "" and detail["answer"] == "" and detail["cost_usd"]
    assert detail["samples"][0]["text"] == "" and detail["samples"][0]["completion_tokens"] > 0
    usage_after = http.get("/api/v1/usage", params={"period": "all", "group_by": "user"}).json()
    assert usage_after["totals"] == usage_before["totals"]
    assert usage_after["groups"] == usage_before["groups"]
    # The router's training data: same outcomes and prompt ids, the same features.
    outcomes_after, prompts_after = log_outcome_tables()
    assert (
        outcomes_after.sort_values("prompt_uid")
        .reset_index(drop=True)
        .equals(outcomes_before.sort_values("prompt_uid").reset_index(drop=True))
    )
    before_p = prompts_before.set_index("prompt_uid").sort_index()
    after_p = prompts_after.set_index("prompt_uid").sort_index()
    assert list(before_p.index) == list(after_p.index)
    assert any(t.startswith("\x00") for t in after_p["prompt"])  # sketches stand in
    featurizer = PromptFeaturizer(dim=4).fit(list(before_p["prompt"]))
    refit = PromptFeaturizer(dim=4).fit(list(after_p["prompt"]))
    assert np.allclose(
        featurizer.transform(list(before_p["prompt"])), refit.transform(list(after_p["prompt"]))
    )
    # Running again changes nothing.
    assert texts_retention.apply().get() == 0


def test_store_no_text_mode_keeps_tokens_costs_and_grades(http, settings) -> None:  # type: ignore[no-untyped-def]
    settings.STORE_TEXT = False
    settings.TEXT_READ_GRACE_S = 0
    r = http.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]},
    )
    assert r.json()["choices"][0]["message"]["content"]  # the caller got the answer
    query = Query.objects.get(pk=r.json()["costpass"]["query_id"])
    cost = query.cost_usd
    assert cost > Decimal(0)
    assert texts_retention.apply().get() == 1
    query.refresh_from_db()
    assert query.messages is None and query.answer == "" and query.cost_usd == cost
    assert query.prompt_tokens > 0 and query.completion_tokens > 0
    settings.STORE_TEXT = True
    settings.TEXT_RETENTION_DAYS = 0
    assert texts_retention.apply().get() == 0  # texts kept for ever: nothing to do
