"""Every strategy on the real CPU model, in-process (SmolLM2-135M, 1 thread)."""

import pytest

from workers.strategies import (
    STRATEGIES,
    SampleFinished,
    SampleStarted,
    TokenDelta,
    get_strategy,
)

pytestmark = pytest.mark.model

MSG = [{"role": "user", "content": "What is 5 + 4? Reply with just the number."}]
STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]

PARAMS = {
    "single": {"max_tokens": 16},
    "best_of_n": {"n": 3, "max_tokens": 16},
    "majority_vote": {"n": 3, "max_tokens": 16},
    "weighted_vote": {"n": 3, "max_tokens": 16},
    "short_m_at_k": {"k": 3, "m": 1, "max_tokens": 16},
    "first_finish": {"k": 3, "max_tokens": 16},
    "confidence_early_stop": {"k": 4, "warmup": 2, "window": 4, "max_tokens": 16},
    "adaptive_consistency": {"k": 4, "window": 2, "max_tokens": 16},
    "cascade": {
        "stages": [
            {"strategy": "single", "params": {"max_tokens": 16}},
            {"strategy": "majority_vote", "params": {"n": 2, "max_tokens": 16}},
        ],
        "escalate_on": "confidence",
        "threshold": 0.9,
    },
    "step_search": {"max_steps": 2, "step_tokens": 8, "max_tokens": 16, "expand": 2},
    "difficulty_adaptive": {
        "probe_tokens": 16,
        "normal": {"strategy": "majority_vote", "params": {"n": 2, "max_tokens": 16}},
        "hard": {"strategy": "first_finish", "params": {"k": 2, "max_tokens": 16}},
    },
}
# Strategies that decide as they go may draw fewer samples than planned (never more).
ADAPTIVE = {"adaptive_consistency", "cascade", "step_search", "difficulty_adaptive"}


def check_ledger(result):
    led = result.ledger
    cands = result.candidates
    assert (
        led.completion_tokens
        == sum(c.completion_tokens for c in cands) + led.scorer_completion_tokens
    )
    assert led.prompt_tokens == sum(c.prompt_tokens for c in cands) + led.scorer_prompt_tokens
    assert led.aborted_completion_tokens == sum(c.completion_tokens for c in cands if c.aborted)
    assert led.wall_s >= led.engine_wall_s > 0
    assert [c.index for c in cands] == list(range(len(cands)))
    chosen = [c for c in cands if c.chosen]
    if result.chosen_index is None:
        assert not chosen
    else:
        assert [c.index for c in chosen] == [result.chosen_index]
        if result.trace.get("kind") == "search":  # the answer joins the best path's steps
            assert result.answer.endswith(chosen[0].text.strip("\n"))
        else:
            assert result.answer == chosen[0].text
            assert result.extracted_answer == chosen[0].extracted_answer


@pytest.mark.parametrize("slug", sorted(STRATEGIES))
def test_every_strategy_runs_with_a_consistent_ledger(llama_engine, slug):
    strategy = get_strategy(slug)
    p = strategy.validate_params(PARAMS[slug])
    events = []
    result = strategy.run(
        llama_engine, messages=MSG, params=p, answer_kind="math", on_event=events.append
    )
    assert result.strategy == slug
    if slug in ADAPTIVE:
        assert 1 <= len(result.candidates) <= strategy.planned_samples(p)
    else:
        assert len(result.candidates) == strategy.planned_samples(p)
    check_ledger(result)
    assert result.ledger.completion_tokens <= strategy.max_completion_tokens(p)
    started = [e.index for e in events if isinstance(e, SampleStarted)]
    finished = [e.candidate.index for e in events if isinstance(e, SampleFinished)]
    assert sorted(started) == sorted(finished) == list(range(len(result.candidates)))
    streamed = {}
    for e in events:
        if isinstance(e, TokenDelta):
            streamed[e.index] = streamed.get(e.index, "") + e.text
    for c in result.candidates:
        assert streamed.get(c.index, "") == c.text
    assert result.chosen_index is not None
    # Same seed, same result.
    again = strategy.run(llama_engine, messages=MSG, params=p, answer_kind="math")
    assert [c.text for c in again.candidates] == [c.text for c in result.candidates]
    assert again.chosen_index == result.chosen_index


def test_majority_vote_counts_extracted_answers(llama_engine):
    r = get_strategy("majority_vote").run(
        llama_engine, messages=MSG, params={"n": 4, "max_tokens": 16, "seed": 3}, answer_kind="math"
    )
    keys = [c.answer_key for c in r.candidates if c.answer_key]
    assert r.votes == {k: float(keys.count(k)) for k in dict.fromkeys(keys)}
    winner = max(r.votes.values())
    assert r.votes[r.chosen.answer_key] == winner


def test_short_m_at_k_aborts_and_saves_tokens(llama_engine):
    common = {"max_tokens": 48, "seed": 1, "temperature": 0.8}
    maj = get_strategy("majority_vote").run(llama_engine, messages=STORY, params={**common, "n": 4})
    short = get_strategy("short_m_at_k").run(
        llama_engine, messages=STORY, params={**common, "k": 4, "m": 1}
    )
    check_ledger(short)
    # Same seeds: the same 4 samples, but stopped when the first one finished.
    stopped = [c for c in short.candidates if c.finish_reason == "stop"]
    if stopped:
        cutoff = min(c.completion_tokens for c in stopped)
        assert all(c.aborted for c in short.candidates if c.finish_reason not in ("stop",))
        assert all(c.completion_tokens <= cutoff for c in short.candidates)
        assert short.ledger.completion_tokens < maj.ledger.completion_tokens
    else:  # nobody stopped before max_tokens: nothing to abort
        assert short.ledger.completion_tokens == maj.ledger.completion_tokens


def test_cancel_aborts_everything_and_keeps_tokens(llama_engine):
    seen = {"tokens": 0}

    def on_event(e):
        if isinstance(e, TokenDelta):
            seen["tokens"] += 1

    r = get_strategy("majority_vote").run(
        llama_engine,
        messages=STORY,
        params={"n": 3, "max_tokens": 64},
        on_event=on_event,
        should_cancel=lambda: seen["tokens"] >= 9,
    )
    assert r.cancelled
    assert all(c.aborted for c in r.candidates)
    assert 0 < r.ledger.completion_tokens < 3 * 64
    check_ledger(r)


def test_best_of_n_verifier_bills_scorer_calls(llama_engine):
    r = get_strategy("best_of_n").run(
        llama_engine, messages=MSG, params={"n": 2, "max_tokens": 12, "scorer": "verifier"}
    )
    led = r.ledger
    assert led.scorer_calls == 2
    assert led.scorer_completion_tokens == 2 and led.scorer_prompt_tokens > 0
    assert all(0.0 <= c.score <= 1.0 for c in r.candidates)
    assert r.chosen.score == max(c.score for c in r.candidates)
    check_ledger(r)


def test_confidence_early_stop_aborts_low_confidence_traces(llama_engine):
    r = get_strategy("confidence_early_stop").run(
        llama_engine,
        messages=STORY,
        params={"k": 6, "warmup": 2, "window": 4, "keep_top_percent": 10, "max_tokens": 32},
    )
    check_ledger(r)
    warm = [c for c in r.candidates if c.phase == "warmup"]
    assert len(warm) == 2 and not any(c.aborted for c in warm)
    # keep_top_percent=10 puts the bar at the 90th percentile of the warm-up traces: most
    # later traces fall below it at some window and are aborted.
    assert any(c.aborted for c in r.candidates if c.phase == "main")
