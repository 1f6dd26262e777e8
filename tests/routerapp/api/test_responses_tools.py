"""The Responses API's function tools, structured output and log-probs, with the official
client against the live server and the scripted upstream (bench/fake_upstream.py, which really
calls the tool it is given, formats JSON replies and returns token log-probs): through the same
field-capability routing as chat completions (`plain` has none of these, `capable` has all), a
function_call item out, a function_call_output item back for the next turn, the Responses event
sequence when streamed, every token billed, and a 400 naming what cannot be honoured."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pytest

from routerapp.models import Query, Sample
from tests.routerapp.api.conftest import make_configuration

pytestmark = [pytest.mark.django_db(transaction=True)]

CAPABLE = {
    "supports_json_mode": True,
    "supports_json_schema": True,
    "supports_tools": True,
    "supports_logprobs": True,
}
ADD_TOOL = {
    "type": "function",
    "name": "add",
    "description": "Add two integers",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"result": {"type": "integer"}, "even": {"type": "boolean"}},
    "required": ["result", "even"],
}

#: The Responses stream of one function call the upstream sends in two pieces.
FUNCTION_CALL_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def client(live_server, scripted_upstream_url, make_caller) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    make_configuration(
        scripted_upstream_url,
        name="plain",
        strategy_name="single-plain",
        params={"max_tokens": 64},
        supports_logprobs=False,
        input_usd_per_mtok=Decimal("0.1"),
        output_usd_per_mtok=Decimal("0.2"),
    )
    make_configuration(
        scripted_upstream_url,
        name="capable",
        strategy_name="single-capable",
        params={"max_tokens": 64},
        **CAPABLE,
    )
    caller = make_caller("alpha")
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)


def _billed(response: Any) -> Query:
    """Assert every token the query generated is in its samples, the response's usage and
    its cost at the serving endpoint's prices."""
    ext = response.model_extra["costpass"]
    query = Query.objects.select_related("configuration__endpoint").get(pk=ext["query_id"])
    samples = list(Sample.objects.filter(query=query))
    assert query.completion_tokens == sum(s.completion_tokens for s in samples) > 0
    assert query.prompt_tokens == sum(s.prompt_tokens for s in samples) > 0
    endpoint = query.configuration.endpoint  # type: ignore[union-attr]
    expected = (
        Decimal(query.prompt_tokens) * endpoint.input_usd_per_mtok
        + Decimal(query.completion_tokens) * endpoint.output_usd_per_mtok
    ) / Decimal(1_000_000)
    assert query.cost_usd == expected == sum(s.cost_usd for s in samples) > 0
    assert Decimal(ext["cost_usd"]) == query.cost_usd
    assert response.usage.output_tokens == query.completion_tokens
    assert response.usage.input_tokens == query.prompt_tokens
    return query


def _refused(call: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        call()
    assert raised.value.body["param"] == param, raised.value.body


def test_function_call_out_and_its_output_back(client: openai.OpenAI) -> None:
    r = client.responses.create(model="auto", input="What is 2+2?", tools=[ADD_TOOL])
    assert r.model == "capable/single-capable"  # routed around `plain`
    assert [item.type for item in r.output] == ["function_call"]
    call = r.output[0]
    assert call.name == "add" and json.loads(call.arguments) == {"a": 4, "b": 4}
    assert call.call_id.startswith("call_") and call.status == "completed"
    assert r.status == "completed" and r.output_text == ""
    assert r.tools[0].name == "add"  # the request's tools, echoed in OpenAI's shape
    query = _billed(r)
    assert query.request_options["tools"][0]["function"]["name"] == "add"
    # The next turn by previous_response_id: the tool's result answers the call.
    follow = client.responses.create(
        model="auto",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "4"}],
        tools=[ADD_TOOL],
        tool_choice="none",
    )
    assert follow.output_text == "The answer is 4."
    assert [item.type for item in follow.output] == ["message"]
    stored = Query.objects.get(pk=follow.model_extra["costpass"]["query_id"]).messages
    assert stored == [
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "add", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "4"},
    ]
    _billed(follow)
    # The same turn without stored state (store=false clients): the call item sent back.
    history: list[Any] = [
        {"role": "user", "content": "What is 2+2?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "4"},
    ]
    again = client.responses.create(model="auto", input=history)
    assert again.model == "capable/single-capable"  # tool history needs a tools endpoint
    assert again.output_text == "The answer is 4."
    _refused(lambda: client.responses.create(model="plain", input=history), "input")
    _refused(
        lambda: client.responses.create(model="plain", input="2+2?", tools=[ADD_TOOL]), "tools"
    )
    # A tool result that answers no call is OpenAI's 400, before anything runs.
    orphan = [{"type": "function_call_output", "call_id": "call_nope", "output": "4"}]
    _refused(lambda: client.responses.create(model="auto", input=orphan), "input")
    # So is a call left unanswered while the conversation goes on.
    _refused(
        lambda: client.responses.create(model="auto", previous_response_id=r.id, input="Hi"),
        "input",
    )


def test_a_call_cut_by_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    """Arguments cut by the token limit may not parse: OpenAI says so (chat: finish_reason
    length; Responses: status incomplete), never a completed call."""
    r = client.responses.create(
        model="auto", input="What is 2+2?", tools=[ADD_TOOL], max_output_tokens=2
    )
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "function_call" and r.output[0].status == "incomplete"
    assert _billed(r).completion_tokens == 2
    chat = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        tools=[
            {"type": "function", "function": {k: v for k, v in ADD_TOOL.items() if k != "type"}}
        ],
        max_tokens=2,
    )
    assert chat.choices[0].finish_reason == "length" and chat.choices[0].message.tool_calls


def test_tool_choice_names_a_function(client: openai.OpenAI) -> None:
    mul = {**ADD_TOOL, "name": "mul", "description": "Multiply"}
    r = client.responses.create(
        model="auto",
        input="What is 2+2?",
        tools=[ADD_TOOL, mul],
        tool_choice={"type": "function", "name": "mul"},
        parallel_tool_calls=False,
    )
    assert [o.name for o in r.output if o.type == "function_call"] == ["mul"]
    options = Query.objects.get(pk=r.model_extra["costpass"]["query_id"]).request_options
    assert options["tool_choice"] == {"type": "function", "function": {"name": "mul"}}
    assert options["passthrough"] == {"parallel_tool_calls": False}
    _refused(
        lambda: client.responses.create(
            model="auto",
            input="2+2?",
            tools=[ADD_TOOL],
            tool_choice={"type": "function", "name": "div"},
        ),
        "tool_choice",
    )


def test_streamed_function_call_events(client: openai.OpenAI) -> None:
    with client.responses.stream(model="auto", input="What is 2+2?", tools=[ADD_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    # The upstream streams the call in two pieces: each is a delta as it comes.
    assert kinds == FUNCTION_CALL_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = events[2]
    assert added.item.type == "function_call" and added.item.status == "in_progress"
    assert added.item.name == "add" and added.item.call_id.startswith("call_")
    done = events[5]
    assert done.item_id == added.item.id and json.loads(done.arguments) == {"a": 4, "b": 4}
    assert "".join(e.delta for e in events[3:5]) == done.arguments
    call = final.output[0]
    assert call.type == "function_call" and call.arguments == done.arguments
    _billed(final)


def test_text_format_json_object_and_schema(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="auto", input="What is 2+2?", text={"format": {"type": "json_object"}}
    )
    assert r.model == "capable/single-capable"
    assert json.loads(r.output_text) == {"answer": 4, "text": "The answer is 4."}
    assert r.text.format.type == "json_object"
    _billed(r)
    fmt = {"type": "json_schema", "name": "sum", "schema": SCHEMA, "strict": True}
    r = client.responses.create(model="auto", input="What is 2+2?", text={"format": fmt})
    assert json.loads(r.output_text) == {"result": 4, "even": True}
    options = Query.objects.get(pk=r.model_extra["costpass"]["query_id"]).request_options
    assert options["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sum", "schema": SCHEMA, "strict": True},
    }
    # Streamed: the JSON arrives as text deltas.
    events = list(
        client.responses.create(
            model="auto", input="What is 2+2?", text={"format": fmt}, stream=True
        )
    )
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert json.loads(deltas) == {"result": 4, "even": True}
    assert events[-1].type == "response.completed"
    _billed(events[-1].response)
    _refused(
        lambda: client.responses.create(
            model="plain", input="2+2?", text={"format": {"type": "json_object"}}
        ),
        "text.format",
    )


def test_logprobs_by_include(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="auto",
        input="What is 2+2?",
        include=["message.output_text.logprobs"],
        top_logprobs=2,
    )
    assert r.model == "capable/single-capable"  # `plain` returns no log-probs
    part = r.output[0].content[0]
    assert "".join(t.token for t in part.logprobs) == part.text == "The answer is 4."
    assert all(t.logprob < 0 and len(t.top_logprobs) == 2 for t in part.logprobs)
    _billed(r)
    _refused(
        lambda: client.responses.create(
            model="plain", input="2+2?", include=["message.output_text.logprobs"]
        ),
        "include",
    )


def test_store_false_and_what_a_retrieval_repeats(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model="auto",
        input="What is 2+2?",
        tools=[ADD_TOOL],
        metadata={"run": "7"},
        instructions="Use the tool.",
    )
    assert r.store is True and r.parallel_tool_calls is True  # OpenAI's defaults, not given
    again = client.responses.retrieve(r.id)
    assert again.tools[0].name == "add" and again.metadata == {"run": "7"}
    assert again.instructions == "Use the tool." and again.output[0].type == "function_call"
    # store: false is honoured: billed, but neither retrievable nor a previous response.
    hidden = client.responses.create(model="auto", input="What is 2+2?", store=False)
    assert hidden.output_text == "The answer is 4." and hidden.store is False
    _billed(hidden)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(hidden.id)
    _refused(
        lambda: client.responses.create(
            model="auto", input="And 3+3?", previous_response_id=hidden.id
        ),
        "previous_response_id",
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{**ADD_TOOL, "defer_loading": True}]}, "tools[0].defer_loading"),
        ({"tools": [ADD_TOOL], "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"max_tool_calls": 2}, "max_tool_calls"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
        ({"stream_options": {"colour": 1}}, "stream_options.colour"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    client: openai.OpenAI, fields: dict, param: str
) -> None:
    body = {"model": "auto", "input": "What is 2+2?", **fields}
    _refused(lambda: client.post("/responses", body=body, cast_to=object), param)
    assert Query.objects.count() == 0
