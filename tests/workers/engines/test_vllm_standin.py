"""The vllm engine's billing logic against a stand-in with vLLM's exact call and output
shapes (tests/workers/engines/vllm_standin: vLLM needs a CUDA GPU). What is checked is what
the bill depends on: the prompt passed as token ids (one BOS, counted as billed), billed
once per request on every path, every sample reported exactly once with the tokens it
received, and finish reasons that are not answers never counted as ``stop``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.engines import Prompt, SampleDone, SamplingConfig, TokenEvent
from workers.strategies import SampleFinished, get_strategy

STANDIN = Path(__file__).parent / "vllm_standin"
Q = Prompt.of(messages=[{"role": "user", "content": "What is 2 + 2 ?"}])


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator:  # type: ignore[type-arg]
    monkeypatch.syspath_prepend(str(STANDIN))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    from workers.engines.vllm_engine import VllmEngine, VllmParams

    eng = VllmEngine(VllmParams(model="stand-in"))
    llm = eng._llm
    llm.SCRIPT = {}
    yield eng
    eng.close()
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def _events(stream, on_event=None):  # type: ignore[no-untyped-def]
    done: list = []
    error = None
    try:
        for ev in stream:
            if on_event is not None:
                on_event(stream, ev)
            if isinstance(ev, SampleDone):
                done.append(ev.sample)
    except RuntimeError as exc:
        error = exc
    return done, error


def test_the_prompt_goes_in_as_token_ids_with_one_bos(engine) -> None:
    res = engine.generate(Q, SamplingConfig(max_tokens=4))
    [given] = engine._llm.prompts
    assert isinstance(given, dict) and "prompt_token_ids" in given  # a TokensPrompt
    ids = engine._llm.prompt_ids[next(iter(engine._llm.prompt_ids))]
    assert ids.count(engine._tokenizer.bos_token_id) == 1
    # What is counted before the run (budget, length check) is what vLLM prefilled.
    assert engine.count_prompt(Q) == len(ids) == res.prompt_tokens
    assert res.samples[0].completion_tokens == 4 and res.samples[0].finish_reason == "length"


def test_the_prompt_is_billed_once_per_request_on_every_path(engine) -> None:
    n_prompt = engine.count_prompt(Q)
    stream = engine.stream(Q, SamplingConfig(n=3, max_tokens=32, temperature=0.7))

    def abort_at_first_token(stream, ev):  # type: ignore[no-untyped-def]
        if isinstance(ev, TokenEvent):
            stream.abort_all()

    done, error = _events(stream, abort_at_first_token)
    assert error is None and sorted(s.index for s in done) == [0, 1, 2]
    # What each SampleDone carries is what the worker writes: the prompt once in total.
    assert sum(s.prompt_tokens for s in done) == n_prompt == stream.result().prompt_tokens
    assert all(s.finish_reason == "abort" for s in done)


def test_an_aborted_sample_is_reported_once_with_its_tokens(engine) -> None:
    stream = engine.stream(Q, SamplingConfig(n=2, max_tokens=32, temperature=0.7))
    seen = {0: 0, 1: 0}

    def abort_zero_after_three(stream, ev):  # type: ignore[no-untyped-def]
        if isinstance(ev, TokenEvent):
            seen[ev.index] += 1
            if ev.index == 0 and seen[0] == 3:
                stream.abort(0)

    done, error = _events(stream, abort_zero_after_three)
    assert error is None
    assert sorted(s.index for s in done) == [0, 1]  # each exactly once
    first = next(s for s in done if s.index == 0)
    assert first.finish_reason == "abort"
    assert first.completion_tokens >= 3 and first.completion_tokens == len(first.token_ids)
    request_ids = list(engine._llm.prompt_ids)
    # Billed at least what vLLM generated for it before the abort reached it.
    assert engine._llm.generated[request_ids[0]] >= first.completion_tokens >= 3


@pytest.mark.parametrize("reason", ["repetition", "error", "abort", "something_new"])
def test_finish_reasons_that_are_not_answers_never_become_stop(engine, reason) -> None:
    engine._llm.SCRIPT = {0: {"finish_reason": reason, "after": 2}}
    res = engine.generate(Q, SamplingConfig(max_tokens=32, seed=0))
    assert res.samples[0].finish_reason == ("abort" if reason == "abort" else "error")
    assert res.samples[0].aborted


def test_first_finish_is_not_won_by_a_repetition_cut(engine) -> None:
    # Sample 0 is cut by vLLM's repetition guard after 2 tokens; sample 1 ends by itself.
    engine._llm.SCRIPT = {0: {"finish_reason": "repetition", "after": 2}}
    result = get_strategy("first_finish").run(
        engine, messages=list(Q.messages or ()), params={"k": 2, "max_tokens": 32, "seed": 0}
    )
    assert result.chosen_index == 1


def test_a_failing_request_reports_its_partial_sample_then_raises(engine) -> None:
    engine._llm.SCRIPT = {1: {"raise_after": 3}}
    stream = engine.stream(Q, SamplingConfig(n=2, max_tokens=32, seed=0))
    done, error = _events(stream)
    assert error is not None and "scripted engine failure" in str(error)
    broken = next(s for s in done if s.index == 1)
    assert broken.finish_reason == "error" and broken.completion_tokens == 3
    assert sorted(s.index for s in done) == [0, 1]
    assert sum(s.prompt_tokens for s in done) == engine.count_prompt(Q)


def test_a_failure_in_the_consumer_still_bills_the_running_samples(engine) -> None:
    finished: list = []
    raised = False

    def on_event(ev):  # type: ignore[no-untyped-def]
        nonlocal raised
        if isinstance(ev, SampleFinished):
            finished.append(ev.candidate)
        elif not raised and getattr(ev, "text", ""):
            raised = True
            raise TimeoutError("time limit")

    with pytest.raises(TimeoutError):
        get_strategy("majority_vote").run(
            engine, messages=list(Q.messages or ()), params={"n": 3, "max_tokens": 32},
            on_event=on_event,
        )  # fmt: skip
    assert sorted(c.index for c in finished) == [0, 1, 2]
    assert sum(c.prompt_tokens for c in finished) == engine.count_prompt(Q)
    assert sum(c.completion_tokens for c in finished) >= 1
