"""Difficulty-adaptive: entropy, the classifier and its fit (pure), and both ends of the
classification on the real CPU model."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from workers.strategies import get_strategy
from workers.strategies.difficulty import DifficultyClassifier, fit_classifier, topk_entropy


def test_topk_entropy():
    assert topk_entropy([0.0]) == 0.0
    assert topk_entropy([math.log(0.5), math.log(0.5)]) == pytest.approx(math.log(2))
    assert topk_entropy([-0.01, -5.0, -6.0]) < topk_entropy([-1.0, -1.2, -1.4])
    assert topk_entropy([]) == 0.0


def test_classifier_thresholds():
    c = DifficultyClassifier(intercept=0.0, w_entropy=-2.0, w_length=0.0)
    assert c.p_right(0.0, 10) == pytest.approx(0.5)
    assert c.classify(c.p_right(-2.0, 10)) == "easy"  # p = sigmoid(4)
    assert c.classify(c.p_right(2.0, 10)) == "hard"
    assert c.classify(0.5) == "normal"
    assert DifficultyClassifier(w_task={"math": 3.0}).p_right(1.0, 5, "math") > (
        DifficultyClassifier().p_right(1.0, 5, "math")
    )
    with pytest.raises(ValidationError):
        DifficultyClassifier(easy_above=0.3, hard_below=0.6)


def test_fit_learns_that_high_entropy_probes_are_wrong():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(300):
        h = float(rng.uniform(0, 2))
        rows.append({"entropy": h, "length": int(rng.integers(5, 60)), "task": "gsm",
                     "probe_correct": bool(rng.random() < 1 / (1 + math.exp(3 * (h - 1))))})  # fmt: skip
    c = fit_classifier(rows)
    assert c.fitted_on == 300 and c.w_entropy < -1.5 and "gsm" in c.w_task
    assert c.classify(c.p_right(0.1, 20, "gsm")) == "easy"
    assert c.classify(c.p_right(1.9, 20, "gsm")) == "hard"
    with pytest.raises(ValueError, match="at least 20"):
        fit_classifier(rows[:5])
    with pytest.raises(ValueError, match="same outcome"):
        fit_classifier([{**r, "probe_correct": True} for r in rows])


def test_params():
    s = get_strategy("difficulty_adaptive")
    p = s.validate_params({"probe_tokens": 16})
    # probe + the largest class (short-1@8 by default)
    assert s.planned_samples(p) == 1 + 8
    assert s.max_completion_tokens(p) == 16 + 8 * 128
    for bad in (
        {"easy": {"strategy": "probe", "params": {"n": 2}}},
        {"hard": {"strategy": "cascade", "params": {}}},
        {"normal": {"strategy": "majority_vote", "params": {"n": 0}}},
        {"temperature": 0.3},
        {"classifier": {"easy_above": 0.2, "hard_below": 0.5}},
    ):
        with pytest.raises(ValidationError):
            s.validate_params(bad)


MSG = [{"role": "user", "content": "What is 5 + 4? Reply with just the number."}]
CLASSES = {
    "normal": {"strategy": "majority_vote", "params": {"n": 2, "max_tokens": 8}},
    "hard": {"strategy": "short_m_at_k", "params": {"k": 3, "m": 1, "max_tokens": 8}},
}


@pytest.mark.model
def test_easy_answers_with_the_probe_and_hard_spends_more(llama_engine):
    from tests.workers.strategies.test_strategies_llama import check_ledger

    s = get_strategy("difficulty_adaptive")
    easy = s.run(llama_engine, messages=MSG, answer_kind="math", task="arith",
                 params={"probe_tokens": 8, **CLASSES, "classifier": {"intercept": 20}})  # fmt: skip
    check_ledger(easy)
    assert easy.trace["class"] == "easy" and easy.trace["ran"] == "probe"
    assert len(easy.candidates) == 1 and easy.candidates[0].phase == "probe"
    assert easy.trace["features"]["task"] == "arith" and easy.trace["features"]["length"] > 0
    hard = s.run(llama_engine, messages=MSG, answer_kind="math",
                 params={"probe_tokens": 8, **CLASSES, "classifier": {"intercept": -20}})  # fmt: skip
    check_ledger(hard)
    assert hard.trace["class"] == "hard" and hard.trace["ran"] == "short_m_at_k"
    assert [c.phase for c in hard.candidates] == ["probe", "main", "main", "main"]
    assert hard.chosen_index in (1, 2, 3)
    # The same probe (greedy) in both runs: only the class decides the rest.
    assert hard.candidates[0].text == easy.candidates[0].text
    assert hard.ledger.completion_tokens > easy.ledger.completion_tokens
