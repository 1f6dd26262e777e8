"""Metric definitions (routing.metrics) on small hand-computed tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from routerapp.routing import metrics as M

# Three prompts x two configs. cost / correct:
#   p0: A 1.0 / 1   B 4.0 / 1
#   p1: A 1.0 / 0   B 4.0 / 1
#   p2: A 1.0 / 0   B 4.0 / 0
COST = np.array([[1.0, 4.0], [1.0, 4.0], [1.0, 4.0]])
CORR = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])


def test_cost_of_pass_is_total_cost_over_correct():
    assert M.cost_of_pass(6.0, 3.0) == 2.0
    assert M.cost_of_pass(6.0, 0.0) == math.inf


def test_policy_figures_hand_computed():
    f = M.policy_figures(COST, CORR, np.array([0, 1, 0]))
    # cost 1 + 4 + 1 = 6, correct 1 + 1 + 0 = 2
    assert f.total_cost == 6.0
    assert f.n_correct == 2.0
    assert f.cop == 3.0
    assert f.accuracy == pytest.approx(2 / 3)
    assert f.mean_cost == 2.0


def test_min_cop_oracle_hand_computed():
    # All A: 3 / 1 = 3. {A, B, A}: 6 / 2 = 3. {A, A, A} ties; {A,B,B}: 9/2; the optimum is 3 and
    # the oracle gives up on p2 (cheapest config) and may or may not buy p1 (both reach 3).
    choice, cop = M.min_cop_oracle(COST, CORR)
    assert cop == pytest.approx(3.0)
    assert choice[0] == 0 and choice[2] == 0


def test_min_cop_oracle_buys_a_pass_when_it_lowers_the_total():
    cost = np.array([[1.0, 2.0], [1.0, 2.0]])
    corr = np.array([[1.0, 1.0], [0.0, 1.0]])
    # All A: 2 / 1 = 2; {A, B}: 3 / 2 = 1.5 (best); all B: 4 / 2 = 2.
    choice, cop = M.min_cop_oracle(cost, corr)
    assert cop == pytest.approx(1.5)
    assert list(choice) == [0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_min_cop_oracle_is_exact_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, a = 6, 3
    cost = rng.uniform(0.1, 3.0, size=(n, a))
    corr = (rng.random((n, a)) < 0.5).astype(float)
    corr[0, 0] = 1.0  # something solvable
    best = math.inf
    for combo in itertools.product(range(a), repeat=n):
        c = sum(cost[i, j] for i, j in enumerate(combo))
        r = sum(corr[i, j] for i, j in enumerate(combo))
        best = min(best, M.cost_of_pass(c, r))
    _, cop = M.min_cop_oracle(cost, corr)
    assert cop == pytest.approx(best, rel=1e-12)


def test_min_cop_oracle_fractional_correctness():
    cost = np.array([[1.0, 3.0]])
    corr = np.array([[0.2, 0.9]])
    # A: 1 / 0.2 = 5, B: 3 / 0.9 = 3.33
    _, cop = M.min_cop_oracle(cost, corr)
    assert cop == pytest.approx(3 / 0.9)


def test_best_single_by_cop_and_by_accuracy():
    # A: 3 / 1 = 3, accuracy 1/3; B: 12 / 2 = 6, accuracy 2/3.
    assert M.best_single(COST, CORR, "cop") == 0
    assert M.best_single(COST, CORR, "accuracy") == 1


def test_best_single_ties_on_accuracy_go_to_the_cheaper():
    cost = np.array([[2.0, 1.0]])
    corr = np.array([[1.0, 1.0]])
    assert M.best_single(cost, corr, "accuracy") == 1


def test_gap_closed_definition():
    # best single 10, oracle 6, router 8 -> half the gap.
    assert M.gap_closed(8.0, 10.0, 6.0) == pytest.approx(0.5)
    assert M.gap_closed(12.0, 10.0, 6.0) == pytest.approx(-0.5)
    assert M.gap_closed(6.0, 10.0, 6.0) == pytest.approx(1.0)
    assert math.isnan(M.gap_closed(5.0, 6.0, 6.0))  # no gap to close
    assert M.gap_closed(math.inf, 10.0, 6.0) == -math.inf


def test_upper_hull_drops_dominated_and_non_concave_points():
    pts = [(1.0, 0.5), (2.0, 0.55), (3.0, 0.9), (4.0, 0.8)]
    hull = M.upper_hull(pts)
    # (2, 0.55) lies under the chord (1, 0.5)-(3, 0.9); (4, 0.8) is dominated by (3, 0.9).
    assert hull == [(0.0, 0.0), (1.0, 0.5), (3.0, 0.9)]
    assert M.hull_value(hull, 2.0) == pytest.approx(0.7)
    assert M.hull_value(hull, 10.0) == pytest.approx(0.9)  # flat after the most accurate point


def test_aiq_hand_computed():
    # Hull (0,0)-(1,0.5)-(3,0.9); over [1, 3]: trapezoid (0.5 + 0.9) / 2 * 2 = 1.4, / 2 = 0.7.
    assert M.aiq([(1.0, 0.5), (3.0, 0.9)], 1.0, 3.0) == pytest.approx(0.7)
    # A router whose cheapest point costs 2 is mixed with "answer nothing" below it:
    # hull (0,0)-(2,0.8); value at 1 is 0.4, at 2 is 0.8, flat to 3: area 0.6 + 0.8 = 1.4 -> 0.7.
    assert M.aiq([(2.0, 0.8)], 1.0, 3.0) == pytest.approx(0.7)


def test_ece_hand_computed():
    p = np.array([0.15, 0.15, 0.85, 0.85])
    y = np.array([0.0, 1.0, 1.0, 1.0])
    # bin 1: mean p 0.15, mean y 0.5 -> 0.35; bin 8: 0.85 vs 1.0 -> 0.15; each half the mass.
    assert M.ece(p, y) == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)
    assert M.ece(np.array([0.3, 0.3]), np.array([0.3, 0.3])) == pytest.approx(0.0)


def test_fill_missing_uses_column_means():
    cost = np.array([[1.0, np.nan], [3.0, 4.0]])
    corr = np.array([[np.nan, 1.0], [0.0, 0.0]])
    c, r = M.fill_missing(cost, corr)
    assert c[0, 1] == 4.0
    assert r[0, 0] == 0.0
    assert not np.isnan(c).any() and not np.isnan(r).any()


def test_expected_figures_of_uniform_random():
    f = M.expected_figures(COST, CORR, np.full(COST.shape, 0.5))
    # expected cost 3 * 2.5 = 7.5, expected correct 0.5 * 3 = 1.5
    assert f.total_cost == pytest.approx(7.5)
    assert f.cop == pytest.approx(5.0)
