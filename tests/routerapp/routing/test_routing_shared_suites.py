"""Checks on the real suites in ../shared (skipped when they are absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from routerapp.routing import evaluate, fit_router
from routerapp.routing import metrics as M
from routerapp.routing.evaluation import outcome_matrices
from routerapp.routing.tables import load_suite

SUITES = Path(os.environ.get("COSTPASS_SHARED", SHARED)) / "suites"
pytestmark = pytest.mark.skipif(not SUITES.is_dir(), reason="../shared/suites not available")

# Reference min-CoP oracle figures from ../shared/data/README.md.
ORACLE = {"routerbench-dev": 1.13e-4, "mmlu-pro-dev": 3.14e-5, "game24-strategies": 6.40e-2}
BEST_SINGLE = {"routerbench-dev": 1.36e-4, "mmlu-pro-dev": 5.23e-5, "game24-strategies": 6.91e-2}


@pytest.mark.parametrize("name", sorted(ORACLE))
def test_oracle_and_best_single_match_the_reference_figures(name):
    suite = load_suite(SUITES / name, need_test=True)
    ids = [c.config_id for c in suite.candidates]
    _, cost, corr = outcome_matrices(suite.test_outcomes, ids)
    cost, corr = M.fill_missing(cost, corr)
    _, tr_cost, tr_corr = outcome_matrices(suite.train_outcomes, ids)
    tr_cost, tr_corr = M.fill_missing(tr_cost, tr_corr)
    _, oracle = M.min_cop_oracle(cost, corr)
    best = M.policy_figures(cost, corr, np.full(len(cost), M.best_single(tr_cost, tr_corr))).cop
    assert oracle == pytest.approx(ORACLE[name], rel=0.01)
    assert best == pytest.approx(BEST_SINGLE[name], rel=0.01)


def test_router_on_game24_is_no_worse_than_best_single():
    suite = load_suite(SUITES / "game24-strategies", need_test=True)
    router = fit_router(suite.train_outcomes, suite.train_prompts, suite.candidates)
    res = evaluate(
        router, suite.test_outcomes, suite.test_prompts, suite.train_outcomes, suite.train_prompts
    )
    pol = res["policies"]
    assert pol["router"]["cop"] <= pol["best_single_cop"]["cop"] * (1 + 1e-9)
    assert pol["router"]["aiq"] >= res["zero_router_aiq"] - 1e-9
