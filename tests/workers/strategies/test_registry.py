import pytest
from pydantic import ValidationError

from workers.strategies import STRATEGIES, UnknownStrategyError, get_strategy

SLUGS = {
    "single", "best_of_n", "majority_vote", "weighted_vote",
    "short_m_at_k", "first_finish", "confidence_early_stop", "adaptive_consistency",
    "cascade", "step_search", "difficulty_adaptive",
}  # fmt: skip


def test_all_slugs_registered():
    assert set(STRATEGIES) == SLUGS


def test_unknown_slug_lists_known_ones():
    with pytest.raises(
        UnknownStrategyError, match="known strategies: adaptive_consistency, best_of_n"
    ):
        get_strategy("no_such_strategy")


def test_params_validation_and_budgets():
    s = get_strategy("short_m_at_k")
    p = s.validate_params({"k": 6, "m": 2, "max_tokens": 100})
    assert s.planned_samples(p) == 6
    assert s.max_completion_tokens(p) == 600
    with pytest.raises(ValidationError):
        s.validate_params({"k": 2, "m": 3})
    with pytest.raises(ValidationError):
        s.validate_params({"k": 2, "bogus": 1})
    b = get_strategy("best_of_n")
    pb = b.validate_params({"n": 3, "scorer": "verifier", "max_tokens": 10})
    assert b.planned_samples(pb) == 3
    assert b.max_completion_tokens(pb) == 3 * 10 + 3  # one token per verifier call
    assert b.max_prompt_billings(pb) == 6
    single = get_strategy("single")
    assert single.validate_params({}).temperature == 0.0
    assert single.planned_samples(single.validate_params(None)) == 1
    c = get_strategy("confidence_early_stop")
    with pytest.raises(ValidationError):
        c.validate_params({"k": 4, "warmup": 4})
