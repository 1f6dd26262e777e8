"""Small synthetic routing worlds for the router tests (no ../shared data needed).

Two task families with distinct wording; three configurations:

=========  ============  ============  =========
config     easy p / USD  hard p / USD  model
=========  ============  ============  =========
tiny       0.90 / 1e-5   0.02 / 1e-5   tiny-1b
mid        0.95 / 2e-5   0.80 / 2e-5   mid-8b
big        0.97 / 1e-4   0.90 / 1e-4   big-70b
=========  ============  ============  =========

With equal shares the min-CoP choice is easy -> tiny, hard -> mid (CoP 1.76e-5; all tiny 2.17e-5,
all mid 2.29e-5), and both the cost / p rule and the lambda rule agree on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

P = {
    "easy": {"tiny": 0.90, "mid": 0.95, "big": 0.97},
    "hard": {"tiny": 0.02, "mid": 0.80, "big": 0.90},
    "medium": {"tiny": 0.60, "mid": 0.90, "big": 0.95},
}
COST = {"tiny": 1e-5, "mid": 2e-5, "big": 1e-4}
MODEL = {"tiny": "tiny-1b", "mid": "mid-8b", "big": "big-70b"}

_WORDS = {
    "easy": ["apples", "oranges", "plus", "add", "basket", "count", "total", "friends"],
    "hard": ["\\int", "\\frac", "x^{2}", "dx", "evaluate", "integral", "\\sqrt", "limit"],
    "medium": ["train", "speed", "hours", "distance", "average", "miles", "percent", "ratio"],
}


def single_row(
    uid: str, family: str, config: str, correct: float, cost: float, model: str | None = None
) -> dict[str, object]:
    """One outcome row of a single-sample configuration ``<config>|single``."""
    return {
        "prompt_uid": uid,
        "dataset": family,
        "config_id": f"{config}|single",
        "model": model or f"{config}-model",
        "strategy": "single",
        "correct": float(correct),
        "cost_usd": cost,
    }


def make_world(
    tasks: tuple[str, ...] = ("easy", "hard"),
    n_per_task: int = 150,
    seed: int = 0,
    uid_prefix: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (outcomes, prompts, candidates) for the synthetic world."""
    rng = np.random.default_rng(seed)
    rows = []
    prompts = []
    for task in tasks:
        for i in range(n_per_task):
            uid = f"{uid_prefix}{task}-{i}"
            words = rng.choice(_WORDS[task], size=8)
            text = (
                f"Question {i}: "
                + " ".join(words)
                + f" {rng.integers(1, 99)} and {rng.integers(1, 99)}?"
            )
            prompts.append({"prompt_uid": uid, "dataset": task, "prompt": text})
            for c, p in P[task].items():
                row = single_row(
                    uid,
                    task,
                    c,
                    rng.random() < p,
                    COST[c] * (1 + 0.05 * rng.standard_normal()),
                    MODEL[c],
                )
                rows.append({**row, "input_tokens": 30.0, "output_tokens": 50.0})
    cands = pd.DataFrame(
        [
            {"config_id": f"{c}|single", "model": MODEL[c], "strategy": "single"}
            for c in ("tiny", "mid", "big")
        ]
    )
    return pd.DataFrame(rows), pd.DataFrame(prompts), cands


def write_suite(
    path: Path, tasks: tuple[str, ...] = ("easy", "hard"), n_per_task: int = 150
) -> Path:
    """Write a synthetic suite (train + test) in the ../shared/suites layout; return its path."""
    path.mkdir(parents=True, exist_ok=True)
    out, pr, cands = make_world(tasks, n_per_task, seed=0, uid_prefix="tr-")
    tout, tpr, _ = make_world(tasks, n_per_task // 2, seed=1, uid_prefix="te-")
    cands.to_csv(path / "candidates.csv", index=False)
    out.to_parquet(path / "train_outcomes.parquet", index=False)
    pr.to_parquet(path / "train_prompts.parquet", index=False)
    tout.to_parquet(path / "test_outcomes.parquet", index=False)
    tpr.to_parquet(path / "test_prompts.parquet", index=False)
    return path


@pytest.fixture(scope="session")
def world() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The default two-task world (easy, hard)."""
    return make_world()


@pytest.fixture(scope="session")
def fitted(world):  # noqa: ANN001, ANN201 - pytest fixture
    """A router fitted on the default world."""
    from routerapp.routing import fit_router

    out, pr, cands = world
    return fit_router(out, pr, cands, seed=0)


@pytest.fixture(scope="session")
def synthetic_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic suite directory."""
    return write_suite(tmp_path_factory.mktemp("suite") / "synthetic")


SHARED = Path(__file__).resolve().parents[4] / "shared"
