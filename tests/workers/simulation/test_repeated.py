from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workers.simulation import SimConfig, simulate, simulate_prompt

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "dev_samples_repeated.parquet"


def table():
    # prompt p1: answers "a" (correct) x3 short, "b" (wrong) x2 long.
    rows = []
    for i, (pred, ok, toks) in enumerate(
        [("a", 1, 10), ("b", 0, 40), ("a", 1, 12), ("b", 0, 50), ("a", 1, 11)]
    ):
        rows.append({"prompt_id": "p1", "sample_idx": i, "pred": pred, "correct": ok,
                     "output_tokens_est": toks, "cost_usd_est": 1e-6 * (100 + 2 * toks)})  # fmt: skip
    return pd.DataFrame(rows)


def test_full_draw_majority_and_costs():
    out = simulate(table(), [SimConfig("majority_vote", 5)], output_usd_per_mtok=2)
    row = out.iloc[0]
    assert row["correct"] == 1.0
    assert row["output_tokens"] == 10 + 40 + 12 + 50 + 11
    # input 100 tokens at 1 USD/Mtok each (cost minus output share) + output at 2 USD/Mtok
    assert row["cost_usd"] == pytest.approx(5 * 100e-6 + 123 * 2e-6)


def test_short_m_and_first_finish_bill_aborted_samples_up_to_the_cutoff():
    cfgs = [SimConfig("short_m_at_k", 5, m=2), SimConfig("first_finish", 5)]
    out = simulate(table(), cfgs, output_usd_per_mtok=2).set_index("config")
    # m=2: the two shortest (10, 11) finish; every other sample stopped at 11 tokens.
    assert out.loc["short_m_at_k@5:m2", "output_tokens"] == 10 + 11 + 11 + 11 + 11
    assert out.loc["first_finish@5", "output_tokens"] == 5 * 10
    assert out.loc["first_finish@5", "correct"] == 1.0


def test_best_of_n_scorers():
    df = table()
    df["score"] = [0.1, 0.9, 0.2, 0.3, 0.4]
    out = simulate(df, [SimConfig("best_of_n", 5), SimConfig("best_of_n", 5, scorer="oracle")],
                   output_usd_per_mtok=2).set_index("config")  # fmt: skip
    assert out.loc["best_of_n@5", "correct"] == 0.0  # the top score is a wrong sample
    assert out.loc["best_of_n@5:oracle", "correct"] == 1.0


def test_seeded_draws_are_reproducible():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    args = ([1, 0, 1, 0, 1], ["a", "b", "a", "b", "a"], [10, 40, 12, 50, 11], None, 0.0)
    a = [simulate_prompt(SimConfig("majority_vote", 3), *args, rng_a) for _ in range(5)]
    b = [simulate_prompt(SimConfig("majority_vote", 3), *args, rng_b) for _ in range(5)]
    assert a == b
    o1 = simulate(
        table(), [SimConfig("majority_vote", 3)], seed=1, n_draws=4, output_usd_per_mtok=2
    )
    o2 = simulate(
        table(), [SimConfig("majority_vote", 3)], seed=1, n_draws=4, output_usd_per_mtok=2
    )
    assert o1.equals(o2)


def test_bad_configs():
    with pytest.raises(ValueError, match="known"):
        SimConfig("beam", 3)
    with pytest.raises(ValueError):
        SimConfig("short_m_at_k", 2, m=3)
    with pytest.raises(ValueError, match="output_usd_per_mtok"):
        simulate(table(), [SimConfig("majority_vote", 3)])


@pytest.mark.skipif(not SHARED.exists(), reason="shared/data not present")
def test_on_the_shared_game24_samples():
    df = pd.read_parquet(SHARED)
    cfgs = [
        SimConfig("majority_vote", 1),
        SimConfig("majority_vote", 5),
        SimConfig("first_finish", 5),
    ]
    out = simulate(df, cfgs, seed=0, n_draws=2, output_usd_per_mtok=60)
    assert len(out) == df.groupby(["strategy", "prompt_id"]).ngroups * 3
    means = out.groupby("config")[["output_tokens", "cost_usd"]].mean()
    # Stopping at the first finisher bills fewer output tokens than running all five.
    assert (
        means.loc["first_finish@5", "output_tokens"] < means.loc["majority_vote@5", "output_tokens"]
    )
    assert means.loc["majority_vote@5", "cost_usd"] > 4 * means.loc["majority_vote@1", "cost_usd"]


def test_adaptive_consistency_stops_on_a_settled_vote_and_bills_only_what_it_took():
    # p2: ten samples, all "x" (correct): the Beta rule stops after 4 (posterior 0.97).
    rows = [{"prompt_id": "p2", "sample_idx": i, "pred": "x", "correct": 1,
             "output_tokens_est": 10 + i, "cost_usd_est": 1e-6 * (100 + 2 * (10 + i))}
            for i in range(10)]  # fmt: skip
    cfgs = [
        SimConfig("majority_vote", 10),
        SimConfig("adaptive_consistency", 10, rule="beta", threshold=0.95, window=2),
        SimConfig("adaptive_consistency", 10, rule="esc", window=3, min_samples=3),
    ]
    out = simulate(pd.DataFrame(rows), cfgs, output_usd_per_mtok=2).set_index("config")
    maj = out.loc["majority_vote@10"]
    beta = out.loc["adaptive_consistency@10:beta0.95w2"]
    esc = out.loc["adaptive_consistency@10:escw3"]
    assert maj["samples"] == 10 and beta["samples"] == 4 and esc["samples"] == 3
    assert beta["correct"] == maj["correct"] == esc["correct"] == 1.0
    # Input billed once per sample taken (100 tokens at 1 USD/Mtok), output as generated.
    assert beta["cost_usd"] == pytest.approx(4 * 100e-6 + beta["output_tokens"] * 2e-6)
    assert beta["output_tokens"] < maj["output_tokens"]


def test_adaptive_consistency_draws_to_the_cap_on_a_split_vote():
    out = simulate(
        table(), [SimConfig("adaptive_consistency", 5, threshold=0.99, window=1)],
        output_usd_per_mtok=2,
    )  # fmt: skip
    assert out.iloc[0]["samples"] == 5  # a 3:2 split is never 99% settled
    assert out.iloc[0]["correct"] == 1.0
    with pytest.raises(ValueError):
        SimConfig("adaptive_consistency", 5, rule="esc", window=1)


def test_adaptive_consistency_is_paired_with_majority_at_the_same_k():
    # Without an early stop (threshold unreachable), adaptive consistency is majority@k exactly.
    import numpy as np

    rng = np.random.default_rng(5)
    rows = [{"prompt_id": f"p{p}", "sample_idx": i, "pred": str(rng.integers(0, 4)),
             "correct": int(rng.random() < 0.3), "output_tokens_est": 10}
            for p in range(20) for i in range(12)]  # fmt: skip
    cfgs = [SimConfig("majority_vote", 8),
            SimConfig("adaptive_consistency", 8, threshold=0.999999, window=2)]  # fmt: skip
    out = simulate(pd.DataFrame(rows), cfgs, n_draws=3).pivot(
        index="prompt_id", columns="config", values="correct"
    )
    assert (out["majority_vote@8"] == out["adaptive_consistency@8:beta0.999999w2"]).all()
