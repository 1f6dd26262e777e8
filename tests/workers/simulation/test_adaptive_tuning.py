"""The stopping rule is tuned on the fit prompts only, within the allowed accuracy drop."""

import pandas as pd
import pytest

from workers.simulation import SimConfig
from workers.simulation.adaptive import default_grid, tune_stopping_rule

AGGRESSIVE = SimConfig("adaptive_consistency", 6, rule="beta", threshold=0.6, window=1)
CAUTIOUS = SimConfig("adaptive_consistency", 6, rule="beta", threshold=0.95, window=1)


def table():  # type: ignore[no-untyped-def]
    # Every prompt: "a" (right) x4, "b" (wrong) x2. Majority@6 is always right; the aggressive
    # rule stops at the first two-vote lead, which is sometimes b's.
    rows = []
    for j in range(8):
        for i, pred in enumerate("aaaabb"):
            rows.append({"prompt_id": f"p{j}", "sample_idx": i, "pred": pred,
                         "correct": int(pred == "a"), "output_tokens": 10})  # fmt: skip
    # Held-out prompts where every answer is wrong: must not influence the choice.
    for i in range(6):
        rows.append({"prompt_id": "held", "sample_idx": i, "pred": "z", "correct": 0,
                     "output_tokens": 10})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_fewest_samples_within_the_allowed_drop_on_the_fit_prompts():
    fit = [f"p{j}" for j in range(8)]
    strict = tune_stopping_rule(table(), 6, fit_prompts=fit, grid=[AGGRESSIVE, CAUTIOUS],
                                max_accuracy_drop=0.0, n_draws=40)  # fmt: skip
    assert len(strict) == 1 and strict[0].config == CAUTIOUS
    assert strict[0].fit_accuracy == pytest.approx(1.0) == strict[0].fit_majority_accuracy
    assert strict[0].fit_samples < 6 and strict[0].fit_prompts == 8
    loose = tune_stopping_rule(table(), 6, fit_prompts=fit, grid=[AGGRESSIVE, CAUTIOUS],
                               max_accuracy_drop=1.0, n_draws=40)  # fmt: skip
    assert loose[0].config == AGGRESSIVE and loose[0].fit_accuracy < 0.99
    assert loose[0].fit_samples < strict[0].fit_samples


def test_no_fit_prompt_is_an_error_and_the_default_grid_is_valid():
    with pytest.raises(ValueError, match="fit_prompts"):
        tune_stopping_rule(table(), 6, fit_prompts=["nope"])
    grid = default_grid(4)
    assert all(c.strategy == "adaptive_consistency" and c.k == 4 for c in grid)
    assert {c.rule for c in grid} == {"beta", "dirichlet", "esc"}
    assert all(c.window <= 4 for c in grid)
