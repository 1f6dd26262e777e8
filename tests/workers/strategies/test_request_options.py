"""The pure part of honouring OpenAI request fields: which configurations can, and the
parameters a query then runs (and is reserved) with."""

from __future__ import annotations

import pytest

from workers.grading.extract import canonical_json, canonical_tool_calls
from workers.strategies import get_strategy
from workers.strategies.request_options import Capabilities, RequestOptions, apply, unmet

SINGLE = get_strategy("single")
VOTE = get_strategy("majority_vote")
REMOTE = Capabilities(engine="openai_compat", json_mode=True, tools=True)
LOCAL = Capabilities(engine="llama_cpp", json_mode=True, tools=True)  # no tools in its engine
GPU = Capabilities(engine="vllm", json_mode=True)  # flags its engine lacks


def test_one_sample_configurations_take_the_requests_sampling() -> None:
    params = SINGLE.validate_params({"temperature": 0.0, "max_tokens": 256, "stop": ["x"]})
    options = RequestOptions(temperature=0.9, top_p=0.5, seed=7, max_tokens=5, stop=["\n"], n=3)
    out = apply(options, SINGLE, params)
    assert (out.temperature, out.top_p, out.seed, out.max_tokens, out.stop) == (
        0.9,
        0.5,
        7,
        5,
        ["\n"],
    )
    assert SINGLE.planned_samples(out) == 3  # OpenAI's n: n samples, all returned


def test_multi_sample_configurations_are_bounded_not_replaced() -> None:
    params = VOTE.validate_params({"n": 5, "temperature": 0.7, "max_tokens": 100, "stop": ["a"]})
    out = apply(RequestOptions(temperature=1.5, max_tokens=20, stop=["b"], seed=3), VOTE, params)
    assert out.temperature == 0.7 and out.max_tokens == 20 and out.stop == ["a", "b"]
    assert out.seed == 3 and VOTE.planned_samples(out) == 5
    assert VOTE.max_completion_tokens(out) == 100 < VOTE.max_completion_tokens(params)
    out = apply(RequestOptions(temperature=0.2, max_tokens=500), VOTE, params)
    assert out.temperature == 0.2 and out.max_tokens == 100


def test_unmet_names_each_field_a_configuration_cannot_honour() -> None:
    single = SINGLE.validate_params({})
    vote = VOTE.validate_params({"n": 3})
    json_mode = RequestOptions(response_format={"type": "json_object"})
    assert unmet(json_mode, REMOTE, SINGLE, single) == []
    assert unmet(json_mode, LOCAL, SINGLE, single) == []  # llama.cpp: a JSON grammar
    assert [p for p, _ in unmet(json_mode, GPU, SINGLE, single)] == ["response_format"]
    schema = RequestOptions(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert [p for p, _ in unmet(schema, REMOTE, SINGLE, single)] == ["response_format"]
    tools = RequestOptions(tools=[{"type": "function", "function": {"name": "f"}}])
    assert unmet(tools, REMOTE, VOTE, vote) == []
    assert [p for p, _ in unmet(tools, LOCAL, SINGLE, single)] == ["tools"]
    assert [p for p, _ in unmet(RequestOptions(n=2), REMOTE, VOTE, vote)] == ["n"]
    assert [p for p, _ in unmet(RequestOptions(images=True), REMOTE, SINGLE, single)] == [
        "messages"
    ]
    penalty = RequestOptions(passthrough={"frequency_penalty": 0.5})
    assert unmet(penalty, REMOTE, SINGLE, single) == []
    assert [p for p, _ in unmet(penalty, LOCAL, SINGLE, single)] == ["frequency_penalty"]
    logprobs = RequestOptions(logprobs=True)
    assert unmet(logprobs, LOCAL, SINGLE, single) == []
    assert [p for p, _ in unmet(logprobs, Capabilities(engine="vllm"), SINGLE, single)] == [
        "logprobs"
    ]


@pytest.mark.parametrize(
    ("a", "b"),
    [('{"x": 1, "y": [1, 2]}', '{\n  "y": [1,2],\n  "x": 1\n}'), ("[1,2]", " [1, 2] ")],
)
def test_equal_json_has_one_canonical_form(a: str, b: str) -> None:
    assert canonical_json(a) == canonical_json(b) is not None
    assert canonical_json("not json") is None


def test_tool_calls_vote_by_name_and_arguments_not_id() -> None:
    def call(i: str, args: str) -> dict:
        return {"id": i, "type": "function", "function": {"name": "add", "arguments": args}}

    assert canonical_tool_calls([call("a", '{"a": 1, "b": 2}')]) == canonical_tool_calls(
        [call("b", '{"b":2,"a":1}')]
    )
    assert canonical_tool_calls([call("a", '{"a": 1}')]) != canonical_tool_calls(
        [call("a", '{"a": 2}')]
    )


def test_a_cascade_applies_the_fields_to_each_stage() -> None:
    cascade = get_strategy("cascade")
    params = cascade.validate_params(
        {
            "stages": [
                {"strategy": "single", "params": {"max_tokens": 64}},
                {"endpoint": "big", "strategy": "majority_vote", "params": {"n": 3}},
            ]
        }
    )
    out = apply(RequestOptions(max_tokens=8, temperature=0.3), cascade, params)
    first, second = (p for _, _, p in cascade.stages(out))
    assert (first.max_tokens, first.temperature) == (8, 0.3)  # one sample: replaced
    assert second.max_tokens == 8 and second.temperature == 0.3  # several: bounded
    assert cascade.max_completion_tokens(out) == 8 + 3 * 8
    assert [p for p, _ in unmet(RequestOptions(n=2), REMOTE, cascade, params)] == ["n"]
