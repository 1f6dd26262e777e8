"""Offline strategy simulation: outcomes and costs of strategies derived from repeated
samples, so routers can learn strategy choices without re-running models."""

from workers.simulation.repeated import STRATEGIES, SimConfig, simulate, simulate_prompt

__all__ = ["STRATEGIES", "SimConfig", "simulate", "simulate_prompt"]
