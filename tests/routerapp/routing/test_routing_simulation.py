"""Learning-source adapters and suite building (routing.simulation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from routerapp.routing.simulation import (
    build_suite,
    hash_unit,
    outcomes_from_raw,
    outcomes_from_strategy_simulation,
    write_suite,
)
from routerapp.routing.tables import load_suite

PRICES = pd.DataFrame(
    [
        {"model": "small", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0},
        {"model": "big", "input_usd_per_mtok": 10.0, "output_usd_per_mtok": 20.0},
    ]
)


def _raw(n: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    prompts = []
    for i in range(n):
        uid = f"src::q{i}"
        prompts.append({"prompt_uid": uid, "dataset": "gsm8k", "prompt": "x" * 400})
        for m in ("small", "big"):
            rows.append(
                {
                    "source": "src",
                    "prompt_uid": uid,
                    "dataset": "gsm8k",
                    "model": m,
                    "strategy": "single",
                    "correct": float((i + (m == "big")) % 2),
                    "input_tokens": np.nan,
                    "output_tokens": np.nan,
                    "output_tokens_est": 100.0,
                    "cost_usd": np.nan,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(prompts)


def test_outcomes_from_raw_prices_tokens():
    raw, prompts = _raw(2)
    out = outcomes_from_raw(raw, PRICES, prompts)
    small = out[out["model"] == "small"].iloc[0]
    # input = 400 chars / 4 + 10 = 110 tokens; output 100; 110 * 1 + 100 * 2 = 310 per Mtok.
    assert small["input_tokens"] == 110.0
    assert small["cost_usd"] == pytest.approx(310e-6)
    assert small["config_id"] == "small|single"
    big = out[out["model"] == "big"].iloc[0]
    assert big["cost_usd"] == pytest.approx(3100e-6)


def test_textless_prompts_use_family_proxies():
    raw, _ = _raw(1)
    raw["dataset"] = "gpqa_main"
    raw["output_tokens_est"] = np.nan
    out = outcomes_from_raw(raw, PRICES, None)
    assert set(out["input_tokens"]) == {194.0}
    assert set(out["output_tokens"]) == {5.0}


def test_build_suite_splits_by_hash_and_round_trips(tmp_path):
    raw, prompts = _raw(80)
    suite = build_suite(outcomes_from_raw(raw, PRICES, prompts), prompts)
    tr = set(suite.train_outcomes["prompt_uid"])
    te = set(suite.test_outcomes["prompt_uid"])
    assert tr and te and not tr & te
    assert all(hash_unit(u) < 0.7 for u in tr) and all(hash_unit(u) >= 0.7 for u in te)
    assert {c.config_id for c in suite.candidates} == {"small|single", "big|single"}
    again = load_suite(write_suite(suite, tmp_path / "s"), need_test=True)
    assert len(again.train_outcomes) == len(suite.train_outcomes)
    assert hash_unit("abc") == hash_unit("abc") and 0 <= hash_unit("abc") < 1


def test_strategy_simulation_rows_become_configurations():
    sim = pd.DataFrame(
        {
            "model": ["gpt-4"] * 2,
            "strategy": ["cot_sample"] * 2,
            "prompt_id": ["p1", "p1"],
            "config": ["majority_vote@3", "majority_vote@5"],
            "correct": [1.0, 0.0],
            "output_tokens": [300.0, 500.0],
            "cost_usd": [0.01, 0.02],
        }
    )
    out = outcomes_from_strategy_simulation(sim, dataset="game24", uid_prefix="tot::")
    assert list(out["config_id"]) == [
        "gpt-4|majority_vote@3:cot_sample",
        "gpt-4|majority_vote@5:cot_sample",
    ]
    assert list(out["prompt_uid"]) == ["tot::p1", "tot::p1"]
    from routerapp.routing.types import parse_samples

    assert [parse_samples(s) for s in out["strategy"]] == [3, 5]
