"""The anchored rule's guard on an unseen tag (issue 14, the floor): ``router.unseen_guard``.

The anchor is the best single configuration of the *pooled* training prompts; the unseen-tag p
weighs the training *families* equally. Where the two views disagree and the families disagree
too, the rule keeps the anchor; where the families agree, the challenger may win; a near-tie
(two configurations within noise of each other on training) never leaves the anchor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import _WORDS, single_row

from routerapp.routing import fit_router
from routerapp.routing.data import TrainData
from routerapp.routing.router import Router, unseen_guard
from routerapp.routing.types import Candidate

CANDS = pd.DataFrame(
    [
        {"config_id": "cheap|single", "model": "cheap-model", "strategy": "single"},
        {"config_id": "strong|single", "model": "strong-model", "strategy": "single"},
    ]
)


def _world(fams: dict[str, tuple[str, int, dict[str, tuple[float, float]]]], seed: int):
    """Outcomes with p(correct) exactly as given (shuffled 0/1 counts) and near-constant cost."""
    rng = np.random.default_rng(seed)
    rows, prompts = [], []
    for fam, (words, n, cfg) in fams.items():
        hits = {c: rng.permutation(np.arange(n) < round(p * n)) for c, (p, _) in cfg.items()}
        for i in range(n):
            uid = f"{fam}-{i}"
            text = f"Question {i}: " + " ".join(rng.choice(_WORDS[words], size=8)) + "?"
            prompts.append({"prompt_uid": uid, "dataset": fam, "prompt": text})
            for c, (_, cost) in cfg.items():
                noisy = cost * (1 + 0.01 * rng.standard_normal())
                rows.append(single_row(uid, fam, c, hits[c][i], noisy))
    return pd.DataFrame(rows), pd.DataFrame(prompts)


# GSM8K-like (400 prompts): cheap wins; MATH-like (100): strong wins by far. Pooled: cheap is
# the anchor; the family mean of the logits: strong looks better on a new family.
DISAGREE = {
    "gsm": ("easy", 400, {"cheap": (0.80, 1e-5), "strong": (0.90, 2e-5)}),
    "math": ("hard", 100, {"cheap": (0.05, 1e-5), "strong": (0.50, 2e-5)}),
}
NEW_PROMPT = "Question 3: train speed hours distance average miles?"


@pytest.fixture(scope="module")
def disagree():
    return _world(DISAGREE, 0)


def test_families_that_disagree_keep_the_anchor(disagree):
    out, pr = disagree
    r = fit_router(out, pr, CANDS, seed=0)
    assert r.anchor_config_id == "cheap|single"
    strong = r.index["strong|single"]
    offset, _ = r.guard
    # The family-mean p alone prefers strong on a new family ...
    p = r._fam_p
    assert 2e-5 / p[strong] < 1e-5 / p[r.anchor]
    # ... but the two families disagree (one for each), so the pooled ranking stands.
    assert offset[strong] > 0.3
    assert r.decide(NEW_PROMPT, "never-seen").config_id == "cheap|single"


def test_without_the_guard_the_same_fit_leaves_the_anchor(disagree):
    """The regression guarded against (ZeroEval CRUXEval with MATH in training: -0.66)."""
    out, pr = disagree
    r = fit_router(out, pr, CANDS, seed=0, params={"unseen_family_se": 0.0, "unseen_cop_se": 0.0})
    assert r.guard[0][r.index["strong|single"]] == pytest.approx(0.0)
    assert r.decide(NEW_PROMPT, "never-seen").config_id == "strong|single"


def test_the_guard_fades_as_the_new_tag_is_graded(disagree):
    out, pr = disagree
    r = fit_router(out, pr, CANDS, seed=0)
    strong = r.index["strong|single"]
    before = r.unseen_penalty("new")[strong]
    for i in range(40):
        r.observe(f"Question {i}: train speed?", "new", "strong|single", i % 10 < 9, 2e-5)
        r.observe(f"Question {i}: train speed?", "new", "cheap|single", i % 10 < 2, 1e-5)
    assert r.unseen_penalty("new")[strong] < 0.5 * before
    assert r.decide(NEW_PROMPT, "new").config_id == "strong|single"


def _train_data(p: np.ndarray, cost: np.ndarray, fam: np.ndarray) -> TrainData:
    """(P, A) outcome and cost matrices of prompts in families ``fam`` as a TrainData."""
    n, a = p.shape
    datasets = sorted(set(fam))
    return TrainData(
        prompt_uids=[str(i) for i in range(n)],
        tags=list(fam),
        texts=[""] * n,
        feats=np.zeros((n, 1)),
        y=p,
        w=np.ones((n, a)),
        cost=cost,
        in_tok=np.ones((n, a)),
        out_tok=np.ones((n, a)),
        latency=np.full((n, a), np.nan),
        candidates=[Candidate(f"c{j}|single", f"c{j}", "single") for j in range(a)],
        datasets=datasets,
        d_idx=np.array([datasets.index(f) for f in fam]),
    )


def test_a_challenger_that_wins_on_every_family_is_not_pulled_back():
    """Three families, the challenger (column 1) 25-35 % cheaper per correct answer on each:
    no offset, a small standard error, and a predicted advantage beats the handicap."""
    rng = np.random.default_rng(1)
    fam = np.repeat(["a", "b", "c"], 300)
    acc = {"a": (0.6, 0.75), "b": (0.5, 0.62), "c": (0.3, 0.40)}
    y = np.array([[float(rng.random() < q) for q in acc[f]] for f in fam])
    cost = np.tile([1.0, 0.95], (len(fam), 1))
    data = _train_data(y, cost, fam)
    # The unseen-tag model predicts the same advantage as the pooled data shows.
    p_hat = np.tile(y.mean(0), (len(fam), 1))
    offset, se = unseen_guard(data, 0, p_hat, cost, kappa_family=1.0)
    assert offset[1] == pytest.approx(0.0)
    assert 0 < se[1] < 0.05
    # The challenger's predicted log CoP advantage (about -0.28) exceeds offset + 0.5 se.
    adv = np.log(0.95 / p_hat[0, 1]) - np.log(1.0 / p_hat[0, 0])
    assert adv + offset[1] + 0.5 * se[1] < 0


def test_a_near_tie_stays_with_the_anchor():
    """Two configurations within noise of each other on training (CREPE's greedy vs sampled
    CoT): a predicted edge of a few tenths of a percent is below the guard."""
    rng = np.random.default_rng(2)
    fam = np.repeat(["a", "b", "c", "d"], 250)
    base = (rng.random(len(fam)) < 0.9).astype(float)
    flip = rng.random(len(fam)) < 0.03  # the two disagree on 3 % of the prompts
    y = np.stack([base, np.where(flip, 1 - base, base)], 1)
    cost = np.tile([1.0, 1.0], (len(fam), 1))
    data = _train_data(y, cost, fam)
    offset, se = unseen_guard(data, 0, np.full_like(y, 0.9), cost, kappa_family=1.0)
    assert se[1] > 0.003
    # A predicted 0.3 % CoP edge does not clear offset + 0.5 se.
    assert -0.003 + offset[1] + 0.5 * se[1] > 0


def test_the_guard_is_saved_with_the_router(disagree):
    out, pr = disagree
    r = fit_router(out, pr, CANDS, seed=0)
    back = Router.from_bytes(r.to_bytes())
    np.testing.assert_array_equal(back.guard[0], r.guard[0])
    np.testing.assert_array_equal(back.guard[1], r.guard[1])
    assert back.decide(NEW_PROMPT, "never-seen").config_id == "cheap|single"
