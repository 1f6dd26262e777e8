"""Policy rules and request constraints (routing.policy and Router.decide)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routerapp.routing import Constraints, NoAllowedCandidateError
from routerapp.routing import policy as pol
from routerapp.routing.types import Candidate

CANDS = [
    Candidate("a", "m-small"),
    Candidate("b", "m-mid"),
    Candidate("c", "m-big"),
]
P = np.array([0.5, 0.8, 0.95])
COST = np.array([1.0, 2.0, 10.0])
NO_LAT = np.full(3, np.nan)


def test_ratio_rule_picks_min_cost_over_p():
    # 1/0.5 = 2, 2/0.8 = 2.5, 10/0.95 = 10.5
    assert pol.choose(P, COST, np.ones(3, bool), None) == 0


def test_lambda_rule_moves_along_the_frontier():
    mask = np.ones(3, bool)
    # p - cost/lam. lam = 1: -0.5, -1.2, -9.05 -> a. lam = 10: 0.4, 0.6, -0.05 -> b.
    assert pol.choose(P, COST, mask, 1.0) == 0
    assert pol.choose(P, COST, mask, 10.0) == 1
    assert pol.choose(P, COST, mask, 1000.0) == 2
    assert pol.choose(P, COST, mask, math.inf) == 2


def test_batch_rows_with_nothing_allowed_fall_back_to_cheapest():
    p = np.tile(P, (2, 1))
    cost = np.tile(COST, (2, 1))
    mask = np.array([[False, True, True], [False, False, False]])
    out = pol.choose(p, cost, mask, None)
    assert list(out) == [1, 0]


def test_allowed_ids_and_models():
    cons = Constraints(allowed_config_ids=frozenset({"b", "c"}))
    m = pol.allowed(CANDS, P, COST, NO_LAT, cons)
    assert list(m) == [False, True, True]
    cons = Constraints(allowed_models=frozenset({"m-big"}))
    assert list(pol.allowed(CANDS, P, COST, NO_LAT, cons)) == [False, False, True]


def test_budget_and_min_accuracy():
    assert list(pol.allowed(CANDS, P, COST, NO_LAT, Constraints(max_cost_usd=2.0))) == [
        True,
        True,
        False,
    ]
    assert list(pol.allowed(CANDS, P, COST, NO_LAT, Constraints(min_accuracy=0.8))) == [
        False,
        True,
        True,
    ]


def test_latency_limit_only_excludes_known_latencies():
    lat = np.array([0.5, np.nan, 3.0])
    assert list(pol.allowed(CANDS, P, COST, lat, Constraints(max_latency_s=1.0))) == [
        True,
        True,
        False,
    ]


def test_nothing_allowed_raises_with_a_reason():
    with pytest.raises(NoAllowedCandidateError, match="max_cost_usd"):
        pol.allowed(CANDS, P, COST, NO_LAT, Constraints(max_cost_usd=0.5))
    with pytest.raises(NoAllowedCandidateError, match="allowed_config_ids"):
        pol.allowed(CANDS, P, COST, NO_LAT, Constraints(allowed_config_ids=frozenset({"zzz"})))


def test_constraints_validate_their_values():
    with pytest.raises(ValueError):
        Constraints(max_cost_usd=-1)
    with pytest.raises(ValueError):
        Constraints(min_accuracy=1.5)


def test_lcb_penalises_uncertain_estimates_only():
    p = np.array([0.6, 0.6])
    se = np.array([0.0, 1.0])
    out = pol.lcb(p, se, 1.0)
    assert out[0] == pytest.approx(0.6)
    assert out[1] < 0.4


def test_router_decide_honours_constraints(fitted):
    easy = "Question 1: apples plus basket count total friends add oranges 3 and 4?"
    d = fitted.decide(easy, "easy")
    assert d.config_id == "tiny|single"
    d = fitted.decide(easy, "easy", Constraints(allowed_models=frozenset({"mid-8b", "big-70b"})))
    assert d.config_id == "mid|single"
    ps = {a.config_id: a.p_correct for a in fitted.decide(easy, "easy").alternatives}
    assert ps["tiny|single"] < ps["mid|single"]
    bar = (ps["tiny|single"] + ps["mid|single"]) / 2
    d = fitted.decide(easy, "easy", Constraints(min_accuracy=bar))
    assert d.config_id == "mid|single"  # the cheapest one above the bar
    assert d.p_correct >= bar
    assert all(a.p_correct >= bar for a in d.alternatives)
    d = fitted.decide(easy, "easy", Constraints(max_cost_usd=1.5e-5))
    assert d.config_id == "tiny|single"
    with pytest.raises(NoAllowedCandidateError):
        fitted.decide(easy, "easy", Constraints(max_cost_usd=1e-9))
    # Alternatives only list allowed candidates, best first, as (id, p, cost, cop) tuples.
    d = fitted.decide(
        easy, "easy", Constraints(allowed_config_ids=frozenset({"mid|single", "big|single"}))
    )
    ids = [a.config_id for a in d.alternatives]
    assert set(ids) == {"mid|single", "big|single"} and ids[0] == d.config_id
    cid, p, cost, cop = d.alternatives[0]
    assert cop == pytest.approx(cost / p)


def test_router_lambda_sweep_trades_cost_for_accuracy(fitted):
    hard = "Question 2: \\int \\frac x^{2} dx evaluate integral \\sqrt limit 5 and 6?"
    cheap = fitted.decide(hard, "hard", lam=1e-7)
    rich = fitted.decide(hard, "hard", lam=math.inf)
    assert cheap.config_id == "tiny|single"
    assert rich.config_id == "big|single"
