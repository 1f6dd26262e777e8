"""The evaluation harness (routing.evaluation) on the synthetic world."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import COST, P, make_world

from routerapp.routing import Candidate, evaluate, fit_router


@pytest.fixture(scope="module")
def report(fitted):
    test_o, test_p, _ = make_world(n_per_task=80, seed=5, uid_prefix="t-")
    train_o, train_p, _ = make_world()
    return evaluate(fitted, test_o, test_p, train_o, train_p)


def test_reference_policies_follow_their_definitions(report):
    pol = report["policies"]
    assert pol["oracle_min_cop"]["gap_closed"] == pytest.approx(1.0)
    assert pol["best_single_cop"]["gap_closed"] == pytest.approx(0.0)
    # Best single by CoP on train: tiny (2.2e-5) beats mid (2.3e-5); by accuracy: big.
    assert pol["best_single_cop"]["config_id"] == "tiny|single"
    assert pol["best_single_acc"]["config_id"] == "big|single"
    # Random = exact expectation of a uniform choice: mean cost of the three configurations.
    assert pol["random"]["mean_cost"] == pytest.approx(np.mean(list(COST.values())), rel=0.05)
    assert pol["random"]["accuracy"] == pytest.approx(
        np.mean([np.mean(list(P[t].values())) for t in ("easy", "hard")]), abs=0.05
    )
    assert pol["oracle_cheapest_correct"]["accuracy"] >= pol["oracle_min_cop"]["accuracy"]


def test_router_beats_best_single_and_knn_here(report):
    pol = report["policies"]
    assert pol["router"]["cop"] < pol["best_single_cop"]["cop"]
    assert pol["router"]["cop"] <= pol["knn"]["cop"] * 1.02
    assert pol["router"]["gap_closed"] > 0.5
    assert pol["router_online"]["gap_closed"] > 0.5
    assert pol["router"]["aiq"] >= report["zero_router_aiq"] - 1e-9
    assert 0.0 <= pol["router"]["ece_all"] < 0.1


def test_candidates_without_test_outcomes_are_never_chosen(world):
    out, pr, cands = world
    extra = Candidate(
        "new|single", "new-model", "single", input_usd_per_mtok=0.01, output_usd_per_mtok=0.01
    )
    cl = [Candidate(r.config_id, r.model, r.strategy) for r in cands.itertuples()] + [extra]
    router = fit_router(out, pr, cl, params={"folds": 0})
    res = evaluate(router, out, pr, out, pr, online=True)
    for name in ("router", "router_online", "knn"):
        assert res["policies"][name]["cop"] is not None and res["policies"][name]["n_correct"] > 0
