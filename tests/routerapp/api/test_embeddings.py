"""POST /v1/embeddings through the official client: passed through to an endpoint that serves
embeddings (a real HTTP upstream), billed per input token through the budget, refused with a
4xx naming the field when it cannot be served, and failed over between deployments."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest

from routerapp.models import BudgetUsage, Deployment, ModelEndpoint, Query, Sample
from tests.conftest import REPO
from tests.factories import BudgetPolicyFactory
from tests.routerapp.api.conftest import free_port, make_configuration
from tests.routerapp.api.test_resilience import Faulty, _clear_breakers

sys.path.insert(0, str(REPO / "bench"))
from faulty_upstream import embedding_of, embedding_tokens  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)

PRICE_IN = Decimal("0.02")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    up = Faulty(tmp_path_factory.mktemp("embed"))
    yield up
    up.stop()


@pytest.fixture
def setup(live_server, upstream, make_caller, settings):  # type: ignore[no-untyped-def]
    settings.HEALTH_CACHE_S = 0.0
    upstream.fault()
    _clear_breakers()
    endpoint = ModelEndpoint.objects.create(
        name="embedder",
        engine=ModelEndpoint.Engine.OPENAI_COMPAT,
        engine_params={"base_url": upstream.url, "model": "fake-embed", "tokenize": "none"},
        input_usd_per_mtok=PRICE_IN,
        output_usd_per_mtok=Decimal("0"),
        serves_embeddings=True,
    )
    make_configuration(upstream.url)  # a chat model, which does not serve embeddings
    caller = make_caller("alpha")
    BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("1"))
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)
    yield client, upstream, endpoint, caller


def test_embeddings_pass_through_and_are_billed_per_token(setup) -> None:  # type: ignore[no-untyped-def]
    client, upstream, _, _ = setup
    texts = ["What is 2+2?", "The answer is 4."]
    raw = client.embeddings.with_raw_response.create(
        model="embedder", input=texts, encoding_format="float"
    )
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding_of(t) for t in texts]
    tokens = sum(embedding_tokens(t) for t in texts)
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens
    assert result.model == "embedder"
    ext = result.model_extra["costpass"]
    query = Query.objects.get(pk=ext["query_id"])
    assert query.source == Query.Source.EMBEDDINGS and query.status == Query.Status.DONE
    cost = Decimal(tokens) * PRICE_IN / Decimal(1_000_000)
    assert (
        query.cost_usd
        == cost
        == Decimal(ext["cost_usd"])
        == Decimal(raw.headers["x-costpass-cost-usd"])
    )
    [sample] = Sample.objects.filter(query=query)
    assert sample.prompt_tokens == tokens and sample.cost_usd == cost
    assert Decimal(ext["reserved_usd"]) >= cost
    usage = BudgetUsage.objects.get(policy__name="monthly")
    assert usage.reserved_usd == 0 and usage.spent_usd == cost
    assert upstream.stats()["embeddings"] == 1


def test_embeddings_refusals(setup) -> None:  # type: ignore[no-untyped-def]
    client, upstream, _, _ = setup
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="fake", input="x")  # a chat model
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="embedder", input="x", extra_body={"truncate": "END"})
    assert err.value.body["param"] == "truncate"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="embedder", input=[])
    assert err.value.body["param"] == "input"
    assert upstream.stats()["embeddings"] == 0 and Query.objects.count() == 0


def test_embeddings_retry_and_fail_over_between_deployments(setup) -> None:  # type: ignore[no-untyped-def]
    client, upstream, endpoint, _ = setup
    upstream.fault(mode="429", retry_after=0.2, count=1)
    result = client.embeddings.create(model="embedder", input="hello", encoding_format="float")
    [attempt] = result.model_extra["costpass"]["attempts"]
    assert [r["status"] for r in attempt["retries"]] == [429]
    assert upstream.stats() == {"completions": 0, "embeddings": 2, "faults": 1}
    Deployment.objects.create(
        endpoint=endpoint,
        name="down",
        engine_params={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},
        weight=1000,
    )
    Deployment.objects.create(endpoint=endpoint, name="up", weight=1)
    result = client.embeddings.create(model="embedder", input="hello", encoding_format="float")
    targets = [(a["target"], a["outcome"]) for a in result.model_extra["costpass"]["attempts"]]
    assert targets[-1] == ("embedder/up", "ok")
    assert result.data[0].embedding == embedding_of("hello")


def test_an_upstream_failure_is_a_502_billing_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    client, upstream, endpoint, caller = setup
    upstream.fault(mode="error", status=500)
    r = httpx.post(
        f"{client.base_url}embeddings",
        json={"model": "embedder", "input": "hello"},
        headers={"Authorization": f"Bearer {caller.raw}"},
        timeout=30,
    )
    assert r.status_code == 502 and r.headers["x-should-retry"] == "false"
    query = Query.objects.get(pk=r.headers["x-costpass-query-id"])
    assert query.status == Query.Status.FAILED and query.cost_usd == 0
    assert len(query.attempts) == 1 and len(query.attempts[0]["retries"]) == 2
    usage = BudgetUsage.objects.get(policy__name="monthly")
    assert usage.reserved_usd == 0 and usage.spent_usd == 0
