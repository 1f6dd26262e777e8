"""The floor check: a paired bootstrap interval on CoP(router) - CoP(best single)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from routerapp.routing import Candidate, TableError, fit_router
from routerapp.routing.significance import (
    PairedOutcomes,
    best_single_config,
    compare,
    cross_validated_pairs,
    held_out_pairs,
    prompts_needed,
)


def _pairs(rc, rk, sc, sk):  # type: ignore[no-untyped-def]
    return PairedOutcomes(
        np.asarray(rc, float), np.asarray(rk, float), np.asarray(sc, float),
        np.asarray(sk, float), "single", {"r": len(rc)},
    )  # fmt: skip


def test_identical_choices_tie_and_pass() -> None:
    rng = np.random.default_rng(0)
    cost, corr = rng.uniform(1, 2, 30), rng.integers(0, 2, 30)
    c = compare(_pairs(cost, corr, cost, corr))
    assert (c.verdict, c.passes, c.ci_low, c.ci_high) == ("tie", True, 0.0, 0.0)


def test_a_clearly_cheaper_router_is_better_and_a_dearer_one_worse() -> None:
    rng = np.random.default_rng(1)
    corr = rng.integers(0, 2, 200).astype(float)
    cost = rng.uniform(1e-5, 2e-5, 200)
    better = compare(_pairs(cost * 0.7, corr, cost, corr))
    assert better.verdict == "better" and better.passes
    assert better.ci_low <= better.diff <= better.ci_high < 0
    assert better.diff == pytest.approx((0.7 - 1) * cost.sum() / corr.sum())
    worse = compare(_pairs(cost * 2.1, corr, cost, corr))
    assert worse.verdict == "worse" and not worse.passes and worse.ci_low > 0
    assert prompts_needed(worse) == 200  # decided: no more prompts needed
    # A non-inferiority margin of 150% lets the 2.1x one pass; no margin never does.
    assert compare(_pairs(cost * 2.1, corr, cost, corr), margin=1.5).passes


def test_few_noisy_prompts_are_undecided_and_say_how_many_would_tell() -> None:
    rng = np.random.default_rng(2)
    n = 12
    rk, sk = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    rk[:3], sk[:3] = 1.0, 0.0  # the router is right a bit more often, at the same cost
    cost = np.full(n, 1e-5)
    c = compare(_pairs(cost, rk, cost, sk))
    assert c.verdict == "undecided" and not c.passes and c.ci_low < 0 < c.ci_high
    assert prompts_needed(c) > n
    # The same per-prompt pattern repeated 20 times is decided.
    big = compare(_pairs(np.tile(cost, 20), np.tile(rk, 20), np.tile(cost, 20), np.tile(sk, 20)))
    assert big.verdict == "better" and big.passes


def test_nothing_correct_anywhere_is_not_a_pass_by_accident() -> None:
    z = np.zeros(10)
    c = compare(_pairs(np.ones(10), z, np.ones(10), np.r_[1.0, z[1:]]))
    assert c.router_cop == float("inf") and not c.passes
    assert c.as_dict()["router_cop"] is None


def test_bad_arguments() -> None:
    p = _pairs([1.0], [1.0], [1.0], [1.0])
    for kwargs in ({"confidence": 1.0}, {"margin": -0.1}, {"n_bootstrap": 10}):
        with pytest.raises(ValueError):
            compare(p, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        _pairs([1.0, 2.0], [1.0], [1.0], [1.0])


def _tables(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[Candidate]]:
    """Two families: on 'easy' the cheap config is right, on 'hard' only the vote is."""
    rng = np.random.default_rng(seed)
    rows, prompts = [], []
    for i in range(n):
        tag = "easy" if i % 2 else "hard"
        uid = f"{tag}-{i}"
        prompts.append({"prompt_uid": uid, "dataset": tag, "prompt": f"{tag} problem {i}"})
        for cid, cost, p_easy, p_hard in (("cheap", 1e-5, 0.95, 0.03), ("vote", 2e-5, 0.95, 0.95)):
            ok = rng.random() < (p_easy if tag == "easy" else p_hard)
            rows.append({"prompt_uid": uid, "dataset": tag, "config_id": cid,
                         "correct": float(ok), "cost_usd": cost})  # fmt: skip
    cands = [
        Candidate(config_id="cheap", model="m", strategy="single"),
        Candidate(config_id="vote", model="m", strategy="majority_vote@5"),
    ]
    return pd.DataFrame(rows), pd.DataFrame(prompts), cands


def test_cross_validated_pairs_score_every_complete_prompt() -> None:
    outcomes, prompts, cands = _tables(40)
    # A prompt with only one configuration's outcome (live traffic) trains but is not scored.
    extra = pd.DataFrame([{"prompt_uid": "live", "dataset": "easy", "config_id": "cheap",
                           "correct": 1.0, "cost_usd": 1e-5}])  # fmt: skip
    pairs = cross_validated_pairs(pd.concat([outcomes, extra]), prompts, cands, folds=4)
    assert len(pairs.router_cost) == 40
    c = compare(pairs)
    assert c.verdict == "better" and c.passes, c.as_dict()
    assert set(c.router_choices) == {"cheap", "vote"}
    assert best_single_config(outcomes, ["cheap", "vote"]) == "cheap"
    with pytest.raises(TableError, match="at least 5"):
        cross_validated_pairs(outcomes[outcomes["prompt_uid"].isin(["easy-1", "hard-2"])],
                              prompts, cands)  # fmt: skip


def test_held_out_pairs_use_the_best_single_of_the_training_table() -> None:
    train, prompts, cands = _tables(40, seed=1)
    test, test_prompts, _ = _tables(30, seed=2)
    router = fit_router(train, prompts, cands, seed=0)
    pairs = held_out_pairs(router, test, test_prompts, train)
    assert pairs.single_config == "cheap" and len(pairs.router_cost) == 30
    assert compare(pairs).passes
