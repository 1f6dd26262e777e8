"""Every simulator stands for a real strategy and its rows become router outcome rows."""

import pandas as pd

from routerapp.routing.simulation import outcomes_from_strategy_simulation
from workers.simulation import (
    SIMULATORS,
    CascadeSim,
    DifficultySim,
    SimConfig,
    simulate,
    simulate_cascades,
    simulate_difficulty,
    simulate_step_search,
)
from workers.strategies import get_strategy
from workers.strategies.difficulty import DifficultyClassifier

from .test_step_search_sim import record


def samples():  # type: ignore[no-untyped-def]
    rows = []
    for grp in ("cheap", "strong"):
        for pid in ("p1", "p2"):
            for i, (pred, ok) in enumerate([("a", 1), ("b", 0), ("a", 1), ("a", 1)]):
                rows.append({"strategy": grp, "prompt_id": pid, "sample_idx": i, "pred": pred,
                             "correct": ok, "output_tokens": 10 + i})  # fmt: skip
    return pd.DataFrame(rows)


def test_every_simulated_slug_is_a_registered_strategy():
    for slug in SIMULATORS:
        assert get_strategy(slug).slug == slug
    assert {"cascade", "difficulty_adaptive", "step_search", "adaptive_consistency"} <= set(
        SIMULATORS
    )


def test_each_simulator_feeds_router_outcomes():
    frames = [
        simulate(samples(), [SimConfig("adaptive_consistency", 4, rule="esc", window=2)]),
        simulate_cascades(samples(), [CascadeSim("cheap", 2, "strong", 3, 0.6)]),
        simulate_difficulty(
            samples(),
            [DifficultySim(None, None, SimConfig("majority_vote", 3))],
            classifier=DifficultyClassifier(),
        ),  # fmt: skip
        simulate_step_search(
            [record(i) for i in (900, 901, 902)],
            [1, 2],
            input_usd_per_mtok=30,
            output_usd_per_mtok=60,
        ),
    ]
    ids = set()
    for sim in frames:
        out = outcomes_from_strategy_simulation(sim, dataset="game24")
        assert len(out) == len(sim) and out["cost_usd"].notna().all()
        assert out["correct"].between(0, 1).all()
        ids |= set(out["config_id"])
    assert "gpt-4|step_search@beam1:value:tot_bfs" in ids
    assert any("difficulty_adaptive(" in i for i in ids) and any("cascade(" in i for i in ids)
