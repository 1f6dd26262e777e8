"""Offline difficulty_adaptive: the probe is billed, never drawn twice, and its class decides."""

import pandas as pd
import pytest

from workers.simulation import DifficultySim, SimConfig, simulate_difficulty
from workers.strategies.difficulty import DifficultyClassifier


def table():  # type: ignore[no-untyped-def]
    rows = []
    # "short": 5 short samples, all right. "long": 5 long samples, "a" (right) x3, "b" x2.
    for pid, samples in (
        ("short", [("x", 1, 5)] * 5),
        ("long", [("a", 1, 100), ("b", 0, 120), ("a", 1, 110), ("b", 0, 130), ("a", 1, 90)]),
    ):
        for i, (pred, ok, toks) in enumerate(samples):
            rows.append({"prompt_id": pid, "sample_idx": i, "pred": pred, "correct": ok,
                         "output_tokens": toks, "cost_usd": 1e-6 * (10 + 2 * toks)})  # fmt: skip
    return pd.DataFrame(rows)


# p(right) = sigmoid(6 - 2 log1p(length)): 0.92 for 5 tokens, 0.04 for 100 tokens.
CLF = DifficultyClassifier(intercept=6.0, w_entropy=0.0, w_length=-2.0, w_task={})


def test_the_class_of_the_probe_decides_and_every_sample_is_billed():
    cfg = DifficultySim(easy=None, normal=SimConfig("majority_vote", 2),
                        hard=SimConfig("majority_vote", 4))  # fmt: skip
    out = simulate_difficulty(table(), [cfg], classifier=CLF, n_draws=3, output_usd_per_mtok=2)
    out = out.set_index("prompt_id")
    short, long = out.loc["short"], out.loc["long"]
    assert (
        short["easy"] == pytest.approx(1.0)
        and short["samples"] == pytest.approx(1.0)
        and short["output_tokens"] == pytest.approx(5)
    )
    assert short["cost_usd"] == pytest.approx(10e-6 + 5 * 2e-6)
    # Hard: the probe plus majority@4 over the 4 *other* samples = all five, each billed once.
    assert long["hard"] == pytest.approx(1.0) and long["samples"] == pytest.approx(5.0)
    assert long["output_tokens"] == pytest.approx(100 + 120 + 110 + 130 + 90)
    assert long["cost_usd"] == pytest.approx(5 * 10e-6 + 550 * 2e-6)
    assert short["correct"] == pytest.approx(1.0) and short["probe_correct"] == pytest.approx(1.0)
    assert out["config"].iloc[0] == ("difficulty_adaptive(probe|majority_vote@2|majority_vote@4)")


def test_fitting_on_some_prompts_marks_them_and_tuned_bars_are_ordered():
    df = pd.concat([table().assign(prompt_id=lambda d, i=i: d["prompt_id"] + f"_{i}")
                    for i in range(12)])  # fmt: skip
    fit = sorted({p for p in df["prompt_id"] if p.endswith(("_0", "_1", "_2", "_3", "_4", "_5"))})
    cfg = DifficultySim(None, SimConfig("majority_vote", 2), SimConfig("majority_vote", 4))
    out = simulate_difficulty(df, [cfg], fit_prompts=fit, tune_thresholds=True, n_draws=2,
                              output_usd_per_mtok=2)  # fmt: skip
    assert set(out.loc[out["in_fit"], "prompt_id"]) == set(fit)
    assert (out["hard_below"] <= out["easy_above"]).all()
    held = out[~out["in_fit"]].set_index("prompt_id")
    # Short probes are always right: the fitted classifier calls them easy (probe only).
    assert held.loc["short_7", "easy"] == 1.0 and held.loc["short_7", "samples"] == 1.0


def test_a_cost_column_needs_the_output_price():
    with pytest.raises(ValueError, match="output_usd_per_mtok"):
        simulate_difficulty(table(), [DifficultySim()], classifier=CLF)
