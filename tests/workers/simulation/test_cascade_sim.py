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
