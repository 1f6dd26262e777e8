"""Offline cascades over repeated samples: escalation by vote agreement, both stages billed."""

import pandas as pd
import pytest

from workers.simulation import CascadeSim, simulate_cascades


def table():  # type: ignore[no-untyped-def]
    rows = []
    # p1: the cheap group agrees (all "a", right): never escalates.
    # p2: the cheap group splits (a, b, c), the strong group says "x" (right) every time.
    for pid, cheap, strong in (
        ("p1", ["a"] * 4, ["a"] * 4),
        ("p2", ["a", "b", "c", "d"], ["x"] * 4),
    ):
        for grp, preds, ok in (("cheap", cheap, pid == "p1"), ("strong", strong, True)):
            for i, p in enumerate(preds):
                toks = 10 if grp == "cheap" else 100
                rows.append({"strategy": grp, "prompt_id": pid, "sample_idx": i, "pred": p,
                             "correct": int(ok), "output_tokens": toks,
                             "cost_usd": 1e-6 * (50 + 2 * toks)})  # fmt: skip
    return pd.DataFrame(rows)


def test_escalates_only_when_the_first_vote_is_split():
    c = CascadeSim("cheap", 3, "strong", 2, threshold=0.6)
    out = simulate_cascades(table(), [c], output_usd_per_mtok=2).set_index("prompt_id")
    assert out.loc["p1", "escalated"] == 0 and out.loc["p1", "samples"] == 3
    assert out.loc["p1", "correct"] == 1
    assert out.loc["p1", "cost_usd"] == pytest.approx(3 * 50e-6 + 30 * 2e-6)
    # p2: 3 distinct answers (agreement 1/3 < 0.6): the strong stage answers, both billed.
    assert out.loc["p2", "escalated"] == 1 and out.loc["p2", "samples"] == 5
    assert out.loc["p2", "correct"] == 1
    assert out.loc["p2", "output_tokens"] == 3 * 10 + 2 * 100
    assert out.loc["p2", "cost_usd"] == pytest.approx(5 * 50e-6 + 230 * 2e-6)


def test_a_bar_of_zero_never_escalates_and_a_missing_price_is_an_error():
    out = simulate_cascades(
        table(), [CascadeSim("cheap", 3, "strong", 2, 0.0)], output_usd_per_mtok=2
    )
    assert out["escalated"].sum() == 0 and out.set_index("prompt_id").loc["p2", "correct"] == 0
    with pytest.raises(ValueError, match="output_usd_per_mtok"):
        simulate_cascades(table(), [CascadeSim("cheap", 3, "strong", 2, 0.5)])


def test_fit_rows_run_both_stages_and_a_learned_threshold_escalates_the_split_vote():
    from workers.simulation import cascade_fit_rows
    from workers.strategies.cascade import fit_threshold

    rows = cascade_fit_rows(table(), "cheap", 3, "strong", 2, n_draws=12, output_usd_per_mtok=2)
    assert len(rows) == 24 and {r["prompt_id"] for r in rows} == {"p1", "p2"}
    p1 = [r for r in rows if r["prompt_id"] == "p1"]
    p2 = [r for r in rows if r["prompt_id"] == "p2"]
    assert all(r["confidence"] == 1.0 and r["first_correct"] == 1.0 for r in p1)
    assert all(r["confidence"] == pytest.approx(1 / 3) and r["first_correct"] == 0 for r in p2)
    # The second stage is always simulated (and billed in its own cost) for the fit.
    assert all(r["second_correct"] == 1.0 for r in rows)
    assert p2[0]["second_cost"] == pytest.approx(2 * 50e-6 + 200 * 2e-6)
    # Escalating p2 to strong majority@2 (5e-4 USD a run) costs more per right answer than
    # leaving it wrong: (24 x 2.1e-4 + 12 x 5e-4) / 24 = 4.6e-4 > 24 x 2.1e-4 / 12 = 4.2e-4.
    assert fit_threshold(rows).threshold == 0.0
    # One strong sample (2.5e-4) is worth it: (5.04e-3 + 3e-3) / 24 = 3.35e-4.
    rows = cascade_fit_rows(table(), "cheap", 3, "strong", 1, n_draws=12, output_usd_per_mtok=2)
    fit = fit_threshold(rows)
    assert 1 / 3 < fit.threshold <= 1.0 and fit.escalation_rate == pytest.approx(0.5)
    assert fit.accuracy == 1.0 and fit.cost_of_pass_usd == pytest.approx(8.04e-3 / 24)
    only = cascade_fit_rows(table(), "cheap", 3, "strong", 2, prompts=["p1"], output_usd_per_mtok=2)
    assert {r["prompt_id"] for r in only} == {"p1"}
