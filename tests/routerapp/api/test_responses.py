"""The Responses API with the official client, unchanged: text in, text out, sync and streamed,
a follow-up turn by previous_response_id, retrieval, and a 400 naming each field it cannot
honour (here: an endpoint without tools or JSON mode). Tools, text.format and log-probs where
an endpoint has them: test_responses_tools.py. The upstream is a real OpenAI-compatible HTTP server (served inline)."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from routerapp.models import BudgetUsage, Query, Sample
from tests.factories import BudgetPolicyFactory
from tests.routerapp.api.conftest import FAKE_REPLY, make_configuration

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(live_server, upstream_url, make_caller):  # type: ignore[no-untyped-def]
    make_configuration(upstream_url)
    caller = make_caller("alpha")
    BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0) as c:
        yield c


def test_text_response_with_usage_and_cost(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="auto", input="What is 2+2?", instructions="Answer briefly.", metadata={"a": "b"}
    )
    assert response.output_text == FAKE_REPLY
    assert response.status == "completed" and response.object == "response"
    assert response.id.startswith("resp_") and response.model == "fake/single-fake"
    assert response.metadata == {"a": "b"} and response.instructions == "Answer briefly."
    ext = response.model_extra["costpass"]
    query = Query.objects.get(pk=ext["query_id"])
    assert query.messages == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    samples = list(Sample.objects.filter(query=query))
    assert response.usage.input_tokens == query.prompt_tokens == samples[0].prompt_tokens > 0
    assert response.usage.output_tokens == query.completion_tokens == 4
    assert response.usage.total_tokens == query.prompt_tokens + 4
    assert Decimal(ext["cost_usd"]) == query.cost_usd > 0
    assert BudgetUsage.objects.get(policy__name="monthly").spent_usd == query.cost_usd
    # Retrieval gives the same response.
    again = client.responses.retrieve(response.id)
    assert (
        again.output_text == FAKE_REPLY and again.usage.total_tokens == response.usage.total_tokens
    )


def test_follow_up_turn_by_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(model="auto", input="What is 2+2?", instructions="Be brief.")
    second = client.responses.create(
        model="auto",
        previous_response_id=first.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "And 3+3?"}]}],
    )
    assert second.output_text == FAKE_REPLY
    query = Query.objects.get(pk=second.model_extra["costpass"]["query_id"])
    # The earlier turn and its answer; the earlier instructions are not carried over.
    assert query.messages == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": FAKE_REPLY},
        {"role": "user", "content": "And 3+3?"},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="auto", input="x", previous_response_id="resp_" + "0" * 32)
    assert err.value.body["param"] == "previous_response_id"


def test_streamed_response_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="auto", input="What is 2+2?", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == FAKE_REPLY
    done = events[-1].response
    assert done.status == "completed" and done.output_text == FAKE_REPLY
    query = Query.objects.get(pk=done.model_extra["costpass"]["query_id"])
    assert done.usage.output_tokens == query.completion_tokens == 4
    assert Decimal(done.model_extra["costpass"]["cost_usd"]) == query.cost_usd > 0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"background": True}, "background"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_fields_it_cannot_honour_are_refused_by_name(
    client: openai.OpenAI, fields: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="auto", input="What is 2+2?", extra_body=fields)
    assert err.value.body["param"] == param
    assert Query.objects.count() == 0


def test_image_input_is_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model="auto",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "https://example.com/a.png"},
                    ],
                }
            ],
        )
    assert err.value.body["param"] == "input[0].content[1]"
