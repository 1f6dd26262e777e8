"""Offline strategy simulation: outcomes and costs of strategies derived from repeated
samples, so routers can learn strategy choices without re-running models."""

from workers.simulation.cascade import CascadeSim, simulate_cascades
from workers.simulation.difficulty import DifficultySim, simulate_difficulty
from workers.simulation.repeated import STRATEGIES, SimConfig, simulate, simulate_prompt

__all__ = [
    "STRATEGIES",
    "CascadeSim",
    "DifficultySim",
    "SimConfig",
    "simulate",
    "simulate_cascades",
    "simulate_difficulty",
    "simulate_prompt",
]
