"""Step search: params, the vLLM-pooling PRM scorer against a stand-in with vLLM's shapes,
and beam / particle / best-first search on the real CPU model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from tests.prm_standin import PRMHandler, serve_prm
from workers.engines.base import Prompt
from workers.strategies import get_strategy
from workers.strategies.step_search import PoolingPRM, continuation

MSG = [
    {
        "role": "user",
        "content": "Tom has 3 apples and buys 4 more. How many apples? Think step by step.",
    }
]
COMMON = {"max_steps": 2, "step_tokens": 12, "max_tokens": 36, "beam_width": 2, "expand": 2}


@pytest.fixture
def prm_url() -> Iterator[str]:
    with serve_prm() as url:
        yield url


def test_params_and_budgets():
    s = get_strategy("step_search")
    p = s.validate_params({**COMMON, "method": "beam"})
    assert s.planned_samples(p) == 2 * 2 * 2
    assert s.max_completion_tokens(p) == 8 * 12
    assert s.scorer_calls(p) == 0
    pp = s.validate_params({**COMMON, "method": "particle"})
    assert s.planned_samples(pp) == 2 * 2  # one step per particle per round
    prm = s.validate_params({**COMMON, "scorer": "prm", "prm_url": "http://prm:8000"})
    assert s.scorer_calls(prm) == 8 and s.max_prompt_billings(prm) == 16
    for bad in ({"scorer": "prm"}, {"scorer": "prm", "prm_url": "prm:8000"}, {"method": "mcts"},
                {"delimiter": ""}, {"beam_width": 0}):  # fmt: skip
        with pytest.raises(ValidationError):
            s.validate_params(bad)


def test_prm_request_has_vllms_step_tag_format():
    body = PoolingPRM("http://x/", "Qwen/Qwen2.5-Math-PRM-7B").request("Q?", ["a", "b"])
    assert body["model"] == "Qwen/Qwen2.5-Math-PRM-7B"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant"]
    assert body["messages"][-1]["content"] == "a<extra_0>b<extra_0>"


@pytest.mark.model
def test_continuation_renders_the_chat_template_then_the_partial(llama_engine):
    p = continuation(llama_engine, Prompt.of(messages=MSG), "Step 1.\n\n")
    rendered, _ = llama_engine.render(Prompt.of(messages=MSG))
    assert p.text == rendered + "Step 1.\n\n"


def check_search(r, params):  # type: ignore[no-untyped-def]
    led = r.ledger
    assert led.completion_tokens == sum(c.completion_tokens for c in r.candidates) + (
        led.scorer_completion_tokens
    )
    assert (
        led.prompt_tokens == sum(c.prompt_tokens for c in r.candidates) + led.scorer_prompt_tokens
    )
    assert all(c.phase == "step" for c in r.candidates)
    t = r.trace
    assert t["kind"] == "search" and t["expanded"] == len(r.candidates)
    assert len(r.candidates) <= get_strategy("step_search").planned_samples(
        get_strategy("step_search").validate_params(params)
    )
    assert t["best"] is not None and r.chosen_index == t["best"]["sample"]
    assert r.answer and r.answer.endswith(t["best"]["text"][-50:])
    for step in t["steps"]:
        assert len(step["kept"]) <= params["beam_width"]


@pytest.mark.model
@pytest.mark.parametrize("method", ["beam", "particle", "best_first"])
def test_search_on_the_cpu_model_with_its_own_confidence(llama_engine, method):
    params = {**COMMON, "method": method, "scorer": "logprob"}
    r = get_strategy("step_search").run(
        llama_engine, messages=MSG, params=params, answer_kind="math"
    )
    check_search(r, params)
    assert r.ledger.scorer_calls == 0  # the policy's log-probs come with the samples
    if method == "beam":
        # Each round: 2 kept x 2 children; the 2 best kept, the rest pruned.
        first = r.trace["steps"][0]
        assert len(first["kept"]) + len(first["pruned"]) == 2
        assert min(n["score"] for n in first["kept"]) >= max(
            (n["score"] for n in first["pruned"]), default=-1e9
        )


@pytest.mark.model
def test_prm_scorer_calls_are_billed_as_scorer_tokens(llama_engine, prm_url):
    params = {**COMMON, "method": "beam", "scorer": "prm", "prm_url": prm_url,
              "prm_model": "Qwen/Qwen2.5-Math-PRM-7B"}  # fmt: skip
    r = get_strategy("step_search").run(
        llama_engine, messages=MSG, params=params, answer_kind="math"
    )
    check_search(r, params)
    calls = PRMHandler.requests
    assert r.ledger.scorer_calls == len(calls) == len(r.candidates)
    expected = sum(
        sum(len(m["content"].split()) for m in b["messages"]) + 3 * len(b["messages"])
        for b in calls
    )
    assert r.ledger.scorer_prompt_tokens == expected > 0
    assert all(b["messages"][-1]["content"].endswith("<extra_0>") for b in calls)
    # Node scores are the PRM's p(good) of the last step.
    scores = {n["score"] for s in r.trace["steps"] for n in s["kept"] + s["pruned"]}
    assert scores <= {0.9, 0.2}
