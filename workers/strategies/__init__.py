"""Test-time scaling strategies, registered by stable slug.

``single``, ``best_of_n``, ``majority_vote``, ``weighted_vote``, ``short_m_at_k``,
``first_finish``, ``confidence_early_stop``, and the adaptive ones: ``adaptive_consistency``
(stop sampling once the vote is decided), ``cascade`` (a cheap stage first, a stronger one
when it is unsure), ``step_search`` (beam / particle / best-first search over reasoning steps
under a step scorer), ``difficulty_adaptive`` (a greedy probe picks an easy / normal / hard
strategy). Look one up with :func:`get_strategy`.
"""

from workers.strategies import (  # noqa: F401 - registers
    adaptive_consistency,
    best_of_n,
    cascade,
    difficulty,
    early_stop,
    majority_vote,
    single,
    step_search,
)
from workers.strategies.base import (
    STRATEGIES,
    Candidate,
    RunContext,
    SampleFinished,
    SampleStarted,
    ScorerCall,
    ScorerFinished,
    Strategy,
    StrategyResult,
    TokenDelta,
    UnknownStrategyError,
    get_strategy,
    register_strategy,
)
from workers.strategies.scoring import VERIFIERS, Verifier, VerifierResult

__all__ = [
    "STRATEGIES",
    "VERIFIERS",
    "Candidate",
    "RunContext",
    "SampleFinished",
    "SampleStarted",
    "ScorerCall",
    "ScorerFinished",
    "Strategy",
    "StrategyResult",
    "TokenDelta",
    "UnknownStrategyError",
    "Verifier",
    "VerifierResult",
    "get_strategy",
    "register_strategy",
]
