"""Vote counting with deterministic tie rules (pure functions, no engine)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from workers.strategies.base import Candidate


def tally(
    candidates: Sequence[Candidate], weight: Callable[[Candidate], float] | None = None
) -> dict[str, float]:
    """Return answer key -> total weight (count when ``weight`` is None) over the
    candidates that have an extracted answer, in order of first appearance."""
    votes: dict[str, float] = {}
    for c in candidates:
        if c.answer_key is None:
            continue
        w = 1.0 if weight is None else float(weight(c))
        votes[c.answer_key] = votes.get(c.answer_key, 0.0) + w
    return votes


def majority(
    candidates: Sequence[Candidate], weight: Callable[[Candidate], float] | None = None
) -> tuple[int | None, dict[str, float]]:
    """Return (chosen candidate index, votes).

    The winning answer has the largest total; a tie goes to the answer whose first
    candidate has the lowest index. The chosen candidate is the first (lowest index)
    candidate with the winning answer. (None, {}) when no candidate has an answer.
    """
    votes = tally(candidates, weight)
    if not votes:
        return None, votes
    first_seen = {}
    for c in candidates:
        if c.answer_key is not None and c.answer_key not in first_seen:
            first_seen[c.answer_key] = c.index
    best = min(votes, key=lambda k: (-votes[k], first_seen[k]))
    return first_seen[best], votes


def majority_shortest(candidates: Sequence[Candidate]) -> tuple[int | None, dict[str, float]]:
    """Majority vote where ties go to the shortest chain (short-m@k).

    The winning answer has the most votes; among tied answers, the one with the
    shortest candidate (fewest completion tokens, then lowest index) wins. The chosen
    candidate is the shortest candidate with the winning answer.
    """
    votes = tally(candidates)
    if not votes:
        return None, votes
    shortest: dict[str, Candidate] = {}
    for c in sorted(candidates, key=lambda c: (c.completion_tokens, c.index)):
        if c.answer_key is not None and c.answer_key not in shortest:
            shortest[c.answer_key] = c
    best = min(
        votes,
        key=lambda k: (-votes[k], shortest[k].completion_tokens, shortest[k].index),
    )
    return shortest[best].index, votes
