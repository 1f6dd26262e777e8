"""Online posterior updates (routing.online)."""

from __future__ import annotations

import numpy as np
import pytest

from routerapp.routing.online import OnlineParams, OnlineState


def test_an_outcome_moves_correlated_configurations_through_the_tag_covariance():
    # Configs 0 and 1 moved together across training tags, config 2 moved the other way.
    cov = np.array([[1.0, 0.9, -0.5], [0.9, 1.0, -0.5], [-0.5, -0.5, 1.0]])
    st = OnlineState(3, params=OnlineParams(sd_unknown=0.1, sd_tag_unknown=0.0), tag_cov=cov)
    for _ in range(5):
        st.update("new", False, 0, 0.0, 0.0, None, 1e-5)
    mu = st.offsets("new")
    assert mu[0] < -1.0
    assert mu[1] < -0.5  # never observed, moved with its sibling
    assert mu[2] > 0.2  # anti-correlated


def test_known_tags_start_from_the_training_posterior_and_move_little():
    var = np.array([0.01, 0.01])
    st = OnlineState(2, params=OnlineParams(sd_known=0.0, sd_tag=0.0), tag_var={"easy": var})
    st.update("easy", True, 0, 0.0, 0.0, None, 1e-5)
    small = st.offsets("easy")[0]
    st2 = OnlineState(2, tag_cov=np.eye(2))
    st2.update("new", False, 0, 0.0, 0.0, None, 1e-5)
    assert -0.01 < small < 0
    assert st2.offsets("new")[0] < 10 * small


def test_laplace_update_matches_the_closed_form():
    st = OnlineState(1, params=OnlineParams(sd_unknown=1.0, sd_tag_unknown=0.0))
    st.update("t", False, 0, 0.0, 1.0, None, 1.0)
    # p = 0.5, v = 0.25, P = 1: mu = 1 * 0.5 / 1.25 = 0.4, P = 1 - 0.25 / 1.25 = 0.8
    assert st.offsets("t")[0] == pytest.approx(0.4)
    assert st.tags["t"].cov[0, 0] == pytest.approx(0.8)


def test_cost_factor_is_shared_on_known_tags_and_per_config_on_new_ones():
    st = OnlineState(2, params=OnlineParams(cost_k0=0.0))
    for _ in range(10):
        st.update("k", True, 0, 0.0, 1.0, 2.0, 1.0)
        st.update("n", False, 0, 0.0, 1.0, 2.0, 1.0)
    assert list(st.cost_factor("k", True)) == pytest.approx([2.0, 2.0])
    f = st.cost_factor("n", False)
    assert f[0] == pytest.approx(2.0)


def test_exploration_rate_is_capped():
    st = OnlineState(3, params=OnlineParams(eps_max=0.1, eps0=100.0), seed=1)
    n = sum(st.exploring("k", True) for _ in range(2000))
    assert 120 < n < 280  # ~10%


def test_json_round_trip():
    st = OnlineState(2, tag_cov=np.eye(2), tag_var={"a": np.array([0.1, 0.2])})
    st.update("x", False, 1, 0.3, 1.0, 1e-5, 2e-5)
    again = OnlineState.from_json(st.to_json())
    assert np.allclose(again.offsets("x"), st.offsets("x"))
    assert np.allclose(again.tags["x"].cov, st.tags["x"].cov)
    assert np.allclose(again.tag_var["a"], [0.1, 0.2])


def test_a_soft_label_moves_the_posterior_by_its_weight_and_leaves_the_cost_ledger_alone():
    full = OnlineState(2, params=OnlineParams(sd_unknown=1.0, sd_tag_unknown=0.0))
    soft = OnlineState(2, params=OnlineParams(sd_unknown=1.0, sd_tag_unknown=0.0))
    full.update("t", False, 0, 0.0, 1.0, 1e-5, 1e-5)
    soft.update("t", False, 0, 0.0, 1.0, 1e-5, 1e-5, weight=0.3)
    assert 0 < soft.offsets("t")[0] < full.offsets("t")[0]
    # p = 0.5, v = 0.3 * 0.25, P = 1: mu = 0.3 * 0.5 / 1.075
    assert soft.offsets("t")[0] == pytest.approx(0.15 / 1.075)
    assert soft.tags["t"].n_obs.sum() == 0 and full.tags["t"].n_obs.sum() == 1


def test_the_probe_budget_of_a_new_tag_is_bounded():
    st = OnlineState(3, params=OnlineParams(explore_b0=2.0, explore_frac=0.1))
    probes = 0
    for _ in range(100):
        if st.probe_allowed("new"):
            st.count_probe("new")
            probes += 1
    assert probes == 12  # 2 + 10 % of 100 decisions, however unsettled the ranking
    assert st.tags["new"].n_dec == 100
    again = OnlineState.from_json(st.to_json())
    assert again.tags["new"].n_probe == 12
