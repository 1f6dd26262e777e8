"""Offline strategy simulation: outcomes and costs of strategies derived from repeated
samples (or, for step search, a recorded search tree), so routers can learn strategy choices
without re-running models.

Every simulator returns a DataFrame with at least ``prompt_id``, ``config``, ``correct``,
``samples``, ``output_tokens`` and ``cost_usd`` per (prompt, configuration), the input of
``routerapp.routing.simulation.outcomes_from_strategy_simulation``: that is how configurations
never run live reach router training and suites. :data:`SIMULATORS` says which simulator stands
for each live strategy slug.
"""

from collections.abc import Callable
from typing import Any

from workers.simulation.cascade import CascadeSim, cascade_fit_rows, simulate_cascades
from workers.simulation.difficulty import DifficultySim, simulate_difficulty
from workers.simulation.repeated import STRATEGIES, SimConfig, simulate, simulate_prompt
from workers.simulation.step_search import simulate_step_search

#: Live strategy slug -> the simulator of its configurations.
SIMULATORS: dict[str, Callable[..., Any]] = {
    **dict.fromkeys(STRATEGIES, simulate),
    "cascade": simulate_cascades,
    "difficulty_adaptive": simulate_difficulty,
    "step_search": simulate_step_search,
}

__all__ = [
    "SIMULATORS",
    "STRATEGIES",
    "CascadeSim",
    "DifficultySim",
    "SimConfig",
    "cascade_fit_rows",
    "simulate",
    "simulate_cascades",
    "simulate_difficulty",
    "simulate_prompt",
    "simulate_step_search",
]
