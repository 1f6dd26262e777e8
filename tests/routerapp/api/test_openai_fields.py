"""Every field of the official `openai` types for chat/completions, completions and responses
is sorted (honoured, passed through, recorded or refused by name): a field a new `openai`
release adds fails here until someone decides how to honour it, and meanwhile the API refuses
it by name rather than dropping it."""

from __future__ import annotations

import typing

import pytest
from openai.types import completion_create_params as text_params
from openai.types.chat import completion_create_params as chat_params

from routerapp.api import openai_request, responses_format
from routerapp.api.openai_request import CHAT, parse_request
from routerapp.api.views_responses import ResponseCreateInput
from routerapp.errors import InvalidInput

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def _fields(params: typing.Any) -> set[str]:
    return set(typing.get_type_hints(params.CompletionCreateParamsBase))


def test_every_chat_and_completions_field_is_sorted() -> None:
    unsorted = (_fields(chat_params) | _fields(text_params)) - openai_request.CLASSIFIED
    assert not unsorted, f"fields of the openai types nobody honours or refuses: {unsorted}"


def test_every_responses_field_is_handled_or_listed_as_refused() -> None:
    handled = set(ResponseCreateInput().fields) | set(responses_format.UNSUPPORTED)
    unsorted = responses_format.known_fields() - handled
    assert not unsorted, f"Responses fields nobody honours or refuses: {unsorted}"


def test_a_field_nobody_sorted_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a new openai release brings: known to the types, honoured nowhere -> a 400."""
    monkeypatch.setattr(
        openai_request, "CLASSIFIED", openai_request.CLASSIFIED - {"prompt_cache_key"}
    )
    with pytest.raises(InvalidInput) as raised:
        parse_request({"messages": QUESTION, "prompt_cache_key": "k"}, CHAT)
    assert raised.value.param == "prompt_cache_key"


def test_parallel_tool_calls_false_is_passed_on_not_dropped() -> None:
    tool = {"type": "function", "function": {"name": "add"}}
    body = parse_request(
        {"messages": QUESTION, "tools": [tool], "parallel_tool_calls": False}, CHAT
    )
    assert body.options.passthrough == {"parallel_tool_calls": False}
    # true is OpenAI's default, and without tools there is nothing to limit.
    for extra in ({"tools": [tool], "parallel_tool_calls": True}, {"parallel_tool_calls": False}):
        assert parse_request({"messages": QUESTION, **extra}, CHAT).options.passthrough == {}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"messages": QUESTION, "stream": True, "stream_options": {"include_obfuscation": True}},
            "stream_options.include_obfuscation",
        ),
        (
            {"messages": [*QUESTION, {"role": "assistant", "audio": {"id": "a1"}}]},
            "messages[1].audio",
        ),
        (
            {
                "messages": [
                    *QUESTION,
                    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                ]
            },
            "messages[1].function_call",
        ),
        (
            {"messages": [*QUESTION, {"role": "assistant", "content": "x", "refusal": "no"}]},
            "messages[1].refusal",
        ),
    ],
)
def test_message_and_stream_fields_it_cannot_honour_are_refused(
    body: dict[str, typing.Any], param: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_request(body, CHAT)
    assert raised.value.param == param


def test_an_assistant_refusal_is_kept_as_what_it_said() -> None:
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "refusal": "I cannot help with that."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "Still no."}]},
        {"role": "user", "content": "Please?"},
    ]
    body = parse_request({"messages": history}, CHAT)
    assert [m["content"] for m in body.messages or []] == [
        "What is 2+2?",
        "I cannot help with that.",
        "Still no.",
        "Please?",
    ]


def test_custom_tools_are_refused_not_mangled_into_function_calls() -> None:
    custom = {"type": "custom", "custom": {"name": "grep"}}
    with pytest.raises(InvalidInput) as raised:
        parse_request({"messages": QUESTION, "tools": [custom]}, CHAT)
    assert raised.value.param == "tools[0].type"
    tool = {"type": "function", "function": {"name": "add"}}
    with pytest.raises(InvalidInput) as raised:
        parse_request(
            {
                "messages": QUESTION,
                "tools": [tool],
                "tool_choice": {"type": "custom", "custom": {"name": "grep"}},
            },
            CHAT,
        )
    assert raised.value.param == "tool_choice"


def test_tool_turns_must_pair_calls_with_results() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    asked = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]}]
    answered = [*asked, {"role": "tool", "tool_call_id": "c1", "content": "4"}]
    assert parse_request({"messages": answered}, CHAT).options.tool_history
    for messages in (
        [*asked, {"role": "user", "content": "and?"}],  # the call never answered
        [*QUESTION, {"role": "tool", "tool_call_id": "c9", "content": "4"}],  # no such call
        [*answered, {"role": "tool", "tool_call_id": "c1", "content": "4"}],  # answered twice
    ):
        with pytest.raises(InvalidInput) as raised:
            parse_request({"messages": messages}, CHAT)
        assert raised.value.param == "messages"
