"""Every strategy through the OpenAI-compatible server (llama-cpp-python, CPU model)."""

import pytest

from workers.strategies import STRATEGIES, get_strategy

pytestmark = pytest.mark.model

MSG = [{"role": "user", "content": "What is 5 + 4? Reply with just the number."}]

PARAMS = {
    "single": {"max_tokens": 8},
    "best_of_n": {"n": 2, "max_tokens": 8},
    "majority_vote": {"n": 2, "max_tokens": 8},
    "weighted_vote": {"n": 2, "max_tokens": 8},
    "short_m_at_k": {"k": 2, "m": 1, "max_tokens": 8},
    "first_finish": {"k": 2, "max_tokens": 8},
    "confidence_early_stop": {"k": 3, "warmup": 1, "window": 2, "max_tokens": 8},
    "adaptive_consistency": {"k": 4, "window": 2, "max_tokens": 8},
    "cascade": {
        "stages": [
            {"strategy": "single", "params": {"max_tokens": 8}},
            {"strategy": "majority_vote", "params": {"n": 2, "max_tokens": 8}},
        ],
        "escalate_on": "confidence",
        "threshold": 0.9999,
    },
    "difficulty_adaptive": {
        "probe_tokens": 8,
        "normal": {"strategy": "majority_vote", "params": {"n": 2, "max_tokens": 8}},
        "hard": {"strategy": "first_finish", "params": {"k": 2, "max_tokens": 8}},
    },
    "step_search": {"max_steps": 2, "step_tokens": 6, "max_tokens": 12, "expand": 2},
}
# Strategies that decide as they go may draw fewer samples than planned (never more).
ADAPTIVE = {"adaptive_consistency", "cascade", "difficulty_adaptive", "step_search"}


@pytest.mark.parametrize("slug", sorted(STRATEGIES))
def test_every_strategy_through_the_server(server_engine, slug):
    strategy = get_strategy(slug)
    p = strategy.validate_params(PARAMS[slug])
    r = strategy.run(server_engine, messages=MSG, params=p, answer_kind="math")
    led = r.ledger
    if slug in ADAPTIVE:
        assert 1 <= len(r.candidates) <= strategy.planned_samples(p)
    else:
        assert len(r.candidates) == strategy.planned_samples(p)
    assert (
        led.completion_tokens
        == sum(c.completion_tokens for c in r.candidates) + led.scorer_completion_tokens
    )
    assert (
        led.prompt_tokens == sum(c.prompt_tokens for c in r.candidates) + led.scorer_prompt_tokens
    )
    # One HTTP request per sample, each billing its prompt (unless aborted before it was sent).
    sent = [c for c in r.candidates if c.prompt_tokens > 0]
    assert led.engine_requests == len(sent) + led.scorer_calls
    assert r.chosen_index is not None
    assert led.token_count_method in (
        "usage",
        "logprobs",
        "chunks",
        "tokenize",
        "estimate",
        "bound",
    )
