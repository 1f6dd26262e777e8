"""Adaptive consistency: the stopping rules (pure) and the strategy on the real CPU model."""

import pytest
from pydantic import ValidationError

from workers.strategies import get_strategy
from workers.strategies.adaptive_consistency import (
    beta_posterior,
    dirichlet_posterior,
    stop_decision,
)


def test_beta_posterior_matches_the_closed_form():
    # Integer Beta(a, b): P(X > 1/2) = P(Binomial(a + b - 1, 1/2) < a).
    assert beta_posterior({"a": 3}) == pytest.approx(1 - 0.5**4)
    assert beta_posterior({"a": 4}) == pytest.approx(1 - 0.5**5)
    assert beta_posterior({"a": 3, "b": 1}) == pytest.approx(26 / 32)
    assert beta_posterior({"a": 2, "b": 2}) == pytest.approx(0.5)
    # Only the two largest counts matter, in either order of first appearance.
    assert beta_posterior({"c": 1, "b": 1, "a": 3}) == pytest.approx(26 / 32)
    assert beta_posterior({"a": 3}, prior=5.0) < beta_posterior({"a": 3}, prior=1.0)


def test_dirichlet_posterior_is_deterministic_and_grows_with_the_lead():
    assert dirichlet_posterior({"a": 5, "b": 1}) == dirichlet_posterior({"a": 5, "b": 1})
    assert dirichlet_posterior({"a": 2, "b": 2}) == pytest.approx(0.5, abs=0.03)
    assert dirichlet_posterior({"a": 8, "b": 1}) > dirichlet_posterior({"a": 4, "b": 1}) > 0.8
    # A lone answer is weighed against the answers not seen yet.
    assert dirichlet_posterior({"a": 1}) < 0.9
    assert dirichlet_posterior({}) == 0.0


def test_stop_decision_reasons():
    beta = {"rule": "beta", "threshold": 0.95}
    assert stop_decision(["a", "a"], k=16, **beta).reason == "continue"
    d = stop_decision(["a"] * 4, k=16, **beta)
    assert (d.stop, d.reason, d.leader) == (True, "posterior", "a")
    assert d.posterior == pytest.approx(1 - 0.5**5)
    assert d.counts == {"a": 4}
    # Not before min_samples, even when the posterior is there.
    assert not stop_decision(["a"] * 4, k=16, min_samples=6, **beta).stop
    # Split votes never reach the bar; the cap ends them.
    assert stop_decision(["a", "b"] * 3, k=16, **beta).reason == "continue"
    assert stop_decision(["a", "b"] * 8, k=16, **beta).reason == "cap"
    # The lead cannot be overturned by the samples left: exact stop whatever the posterior.
    d = stop_decision(["a", "a", "a", "b"], k=5, rule="beta", threshold=0.999)
    assert (d.stop, d.reason) == (True, "decided")
    # No answer yet: keep sampling; unanswered samples do not vote.
    assert stop_decision([None, None, None, None], k=16, **beta).reason == "continue"
    assert stop_decision([None, "a", None, "a", "a", "a"], k=16, **beta).counts == {"a": 4}
    # ESC: the last window unanimous.
    esc = {"rule": "esc", "threshold": 0.95, "window": 3}
    assert stop_decision(["b", "a", "a", "a"], k=16, **esc).reason == "window_unanimous"
    assert stop_decision(["a", "a", "b"], k=16, **esc).reason == "continue"
    assert stop_decision(["a", None, "a"], k=16, **esc).reason == "continue"
    with pytest.raises(ValueError, match="unknown stopping rule"):
        stop_decision(["a"], k=4, rule="vibes", threshold=0.9)


def test_params_are_validated():
    s = get_strategy("adaptive_consistency")
    p = s.validate_params({"k": 12, "window": 3, "max_tokens": 10})
    assert s.planned_samples(p) == 12
    assert s.max_completion_tokens(p) == 120
    for bad in (
        {"k": 4, "window": 5},
        {"k": 4, "min_samples": 5},
        {"threshold": 0.4},
        {"threshold": 1.0},
        {"rule": "esc", "window": 1},
        {"rule": "nope"},
        {"prior": 0},
    ):
        with pytest.raises(ValidationError):
            s.validate_params(bad)


# -- on the real CPU model -----------------------------------------------------------

MSG = [{"role": "user", "content": "What is 5 + 4? Reply with just the number."}]


@pytest.mark.model
def test_stops_early_on_a_settled_vote_with_the_samples_of_majority_vote(llama_engine):
    from tests.workers.strategies.test_strategies_llama import check_ledger

    common = {"max_tokens": 8, "seed": 11, "temperature": 0.1}
    ada = get_strategy("adaptive_consistency").run(
        llama_engine,
        messages=MSG,
        params={**common, "k": 8, "window": 2, "threshold": 0.9},
        answer_kind="math",
    )
    check_ledger(ada)
    trace = ada.trace
    assert trace["kind"] == "stopping" and trace["rule"] == "beta"
    assert trace["samples"] == len(ada.candidates)
    # A near-greedy temperature agrees with itself: settled before the cap of 8.
    assert len(ada.candidates) < 8, trace
    assert trace["reason"] in ("posterior", "decided")
    assert trace["posterior"] >= 0.9 or trace["reason"] == "decided"
    # Windows are separate engine requests of 2 samples.
    assert ada.ledger.engine_requests == len(trace["decisions"]) == len(ada.candidates) // 2
    # The samples are the first ones majority_vote@8 draws with the same seed.
    maj = get_strategy("majority_vote").run(
        llama_engine, messages=MSG, params={**common, "n": 8}, answer_kind="math"
    )
    assert [c.text for c in ada.candidates] == [
        c.text for c in maj.candidates[: len(ada.candidates)]
    ]
    assert ada.extracted_answer == maj.extracted_answer
    assert ada.ledger.completion_tokens < maj.ledger.completion_tokens


@pytest.mark.model
def test_cap_when_the_vote_stays_split(llama_engine):
    # A hot temperature on an open question: answers rarely agree, so all k are drawn.
    r = get_strategy("adaptive_consistency").run(
        llama_engine,
        messages=[{"role": "user", "content": "Name any number between 1 and 1000."}],
        params={"k": 4, "window": 2, "threshold": 0.99, "max_tokens": 6, "temperature": 1.5},
        answer_kind="math",
    )
    assert len(r.candidates) == 4
    assert r.trace["reason"] in ("cap", "decided")
    assert [d["samples"] for d in r.trace["decisions"]] == [2, 4][: len(r.trace["decisions"])]
