"""Difficulty that extrapolates to a task family never seen (issue 14, ``routing.irt``).

World: two configurations. ``tiny`` is cheap and right on short questions, hopeless on long ones;
``big`` costs 1.5x and is right on both. Each family has its own vocabulary (no word is shared
with the unseen family ``delta``); what they share is that long questions are the hard ones. The
training families mix short and long questions in different shares, so over them ``big`` is the
best single configuration. On ``delta`` the best per-prompt choice is ``tiny`` on short questions
and ``big`` on long ones: only a model that reads difficulty from the prompt across families can
make it; the family-mean p (the rule before) serves one configuration to every prompt.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import single_row

from routerapp.routing import evaluate, fit_router
from routerapp.routing.router import Router

COST = {"tiny": 1.0e-5, "big": 1.5e-5}
P = {"tiny": (0.95, 0.02), "big": (0.97, 0.92)}  # (short, long)
HARD_SHARE = {"alpha": 0.3, "beta": 0.5, "gamma": 0.7, "delta": 0.5}


def _text(rng: np.random.Generator, fam: str, hard: bool) -> str:
    vocab = [f"{fam}{k}" for k in range(12)]
    n = int(rng.integers(30, 40)) if hard else int(rng.integers(3, 6))
    return " ".join(rng.choice(vocab, size=n)) + "?"


def world(
    families: tuple[str, ...], n: int, seed: int, prefix: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, prompts = [], []
    for fam in families:
        for i in range(n):
            hard = bool(rng.random() < HARD_SHARE[fam])
            uid = f"{prefix}{fam}-{i}"
            prompts.append({"prompt_uid": uid, "dataset": fam, "prompt": _text(rng, fam, hard)})
            for c, (p_easy, p_hard) in P.items():
                hit = rng.random() < (p_hard if hard else p_easy)
                rows.append(
                    single_row(uid, fam, c, hit, COST[c] * (1 + 0.02 * rng.standard_normal()))
                )
    cands = pd.DataFrame(
        [{"config_id": f"{c}|single", "model": f"{c}-model", "strategy": "single"} for c in COST]
    )
    return pd.DataFrame(rows), pd.DataFrame(prompts), cands


@pytest.fixture(scope="module")
def train():
    return world(("alpha", "beta", "gamma"), 200, 0, "tr-")


@pytest.fixture(scope="module")
def test_side():
    out, pr, _ = world(("delta",), 200, 5, "te-")
    return out, pr


@pytest.fixture(scope="module")
def router(train):
    out, pr, cands = train
    return fit_router(out, pr, cands, seed=0)


def test_the_anchor_is_the_strong_configuration(router):
    assert router.anchor_config_id == "big|single"
    assert router.irt is not None
    assert router.fit_info["irt_seconds"] < 30


def test_on_an_unseen_family_hard_looking_prompts_go_to_the_strong_configuration(router):
    rng = np.random.default_rng(11)
    for _ in range(5):
        assert router.decide(_text(rng, "delta", True), "delta").config_id == "big|single"
        assert router.decide(_text(rng, "delta", False), "delta").config_id == "tiny|single"
    short = router.decide(_text(rng, "delta", False), "delta")
    long = router.decide(_text(rng, "delta", True), "delta")
    p_tiny = {a.config_id: a.p_correct for a in short.alternatives}["tiny|single"]
    p_tiny_long = {a.config_id: a.p_correct for a in long.alternatives}["tiny|single"]
    assert p_tiny > 0.8 > 0.2 > p_tiny_long


def test_per_prompt_difficulty_beats_the_family_mean_rule(router, train, test_side):
    out, pr, cands = train
    to, tp = test_side
    res = evaluate(router, to, tp, out, pr, online=False, knn=False)
    pol = res["policies"]
    assert pol["best_single_cop"]["config_id"] == "big|single"
    assert pol["router"]["gap_closed"] >= 0.4
    assert pol["router"]["n_distinct_choices"] == 2
    # The rule before (every prompt of an unseen family gets the family-mean p): one choice.
    old = fit_router(out, pr, cands, seed=0, params={"unseen_p": "family-mean"})
    assert old.irt is None
    r_old = evaluate(old, to, tp, out, pr, online=False, knn=False)["policies"]["router"]
    assert r_old["n_distinct_choices"] == 1
    assert abs(r_old["gap_closed"]) < 0.05
    assert pol["router"]["gap_closed"] > r_old["gap_closed"] + 0.3


def test_the_difficulty_model_is_saved_with_the_router(router):
    back = Router.from_bytes(router.to_bytes())
    assert back.irt is not None
    rng = np.random.default_rng(3)
    texts = [_text(rng, "delta", bool(i % 2)) for i in range(6)]
    p1, _, _ = router.score(texts, ["delta"] * 6)
    p2, _, _ = back.score(texts, ["delta"] * 6)
    np.testing.assert_allclose(p1, p2)


def test_two_training_families_are_too_few_to_learn_difficulty(train):
    out, pr, cands = train
    keep = out["dataset"].isin(["alpha", "beta"])
    r = fit_router(out[keep], pr[pr["dataset"].isin(["alpha", "beta"])], cands, seed=0)
    assert r.irt is None
    assert r.fit_info["n_families"] == 2


def test_the_rank_is_a_router_parameter_and_survives_saving(train):
    out, pr, cands = train
    r2 = fit_router(out, pr, cands, seed=0, params={"irt_rank": 2})
    assert r2.irt is not None
    assert r2.irt.b.shape[0] == 2 and r2.irt.s.shape == (2, 2)
    back = Router.from_bytes(r2.to_bytes())
    assert back.params.irt_rank == 2
    np.testing.assert_allclose(back.irt.b, r2.irt.b)
    rng = np.random.default_rng(4)
    long_q = _text(rng, "delta", True)
    assert back.decide(long_q, "delta").config_id == "big|single"
