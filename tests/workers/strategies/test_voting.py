import pytest

from workers.strategies.base import Candidate, lowest_group_confidence, token_confidence
from workers.strategies.voting import majority, majority_shortest, tally


def cand(index, key, tokens=10, aborted=False):
    return Candidate(
        index=index, text=str(key), extracted_answer=key, score=None, prompt_tokens=0,
        completion_tokens=tokens, finish_reason="abort" if aborted else "stop",
        aborted=aborted, seed=index, latency_s=0.0, answer_key=key,
    )  # fmt: skip


def test_majority_counts_and_first_seen_tie_rule():
    cs = [cand(0, "5"), cand(1, "7"), cand(2, "7"), cand(3, None), cand(4, "5")]
    chosen, votes = majority(cs)
    assert votes == {"5": 2.0, "7": 2.0}
    assert chosen == 0  # tie: the answer seen first wins, its first candidate is chosen
    chosen, votes = majority([cand(0, "5"), cand(1, "7"), cand(2, "7")])
    assert (chosen, votes) == (1, {"5": 1.0, "7": 2.0})


def test_weighted_majority():
    cs = [cand(0, "a"), cand(1, "b"), cand(2, "b")]
    w = {0: 0.9, 1: 0.3, 2: 0.3}
    chosen, votes = majority(cs, lambda c: w[c.index])
    assert chosen == 0 and votes == {"a": 0.9, "b": 0.6}


def test_no_answers():
    assert majority([cand(0, None)]) == (None, {})
    assert tally([]) == {}


def test_short_m_ties_go_to_the_shortest_chain():
    cs = [
        cand(0, "x", tokens=30),
        cand(1, "y", tokens=12),
        cand(2, "x", tokens=40),
        cand(3, "y", tokens=50),
    ]
    chosen, votes = majority_shortest(cs)
    assert votes == {"x": 2.0, "y": 2.0}
    assert chosen == 1  # "y" has the shortest chain (12 tokens)
    chosen, _ = majority_shortest([cand(0, "x", 30), cand(1, "y", 5), cand(2, "x", 20)])
    assert chosen == 2  # majority "x", its shortest chain


def test_confidence_helpers():
    assert token_confidence([-1.0, -3.0]) == 2.0
    # Peaked top-k (one sure token, the rest unlikely) is high confidence; flat is low.
    peaked, flat = (-0.01, -6.01), (-0.7, -0.7)
    assert token_confidence(peaked) > token_confidence(flat)
    tops = [peaked, peaked, flat, flat, peaked]
    assert lowest_group_confidence(tops, 2) == pytest.approx(0.7)
    assert lowest_group_confidence(tops[:1], 8) == pytest.approx(3.01)
    assert lowest_group_confidence([], 4) is None
