"""Candidate scorers for best-of-n and vote weights, and the verifier hook.

- ``mean_logprob``: mean log-prob of the sampled tokens (higher = the model liked it).
- ``self_certainty``: mean DeepConf token confidence, ``-mean(top-k log-probs)`` per
  token, averaged over the trace: a cheap proxy of self-certainty (KL from uniform).
- ``verifier``: a :class:`Verifier` returns p(correct) for a candidate. The built-in
  ``self_yes_no`` asks the same engine "Is this answer correct?" and reads p(yes)
  normalised against p(no); its tokens are billed as scorer calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from workers.engines.base import Engine, Prompt
from workers.strategies.base import Candidate

SCORERS = ("mean_logprob", "self_certainty", "verifier")


def score_mean_logprob(c: Candidate) -> float | None:
    return c.mean_logprob


def score_self_certainty(c: Candidate) -> float | None:
    return c.confidence


@dataclass(frozen=True)
class VerifierResult:
    """p(correct) in [0, 1] and the tokens the verification billed."""

    score: float
    prompt_tokens: int
    completion_tokens: int


class Verifier(Protocol):
    """Scores one candidate answer to ``prompt``; may call ``engine`` (billed)."""

    def __call__(self, engine: Engine, prompt: Prompt, candidate: Candidate) -> VerifierResult: ...


VERIFY_TEMPLATE = (
    "Question: {question}\n\nProposed answer: {answer}\n\n"
    "Is this answer correct? Reply with yes or no."
)


def self_yes_no(engine: Engine, prompt: Prompt, candidate: Candidate) -> VerifierResult:
    """Ask the same engine whether the candidate is correct; return p(yes)/(p(yes)+p(no))."""
    question = prompt.user_text()
    answer = candidate.text.strip() or "(no answer)"
    ask = Prompt(
        messages=(
            {"role": "user", "content": VERIFY_TEMPLATE.format(question=question, answer=answer)},
        )
    )
    lps = engine.next_token_logprobs(ask, ["yes", "no"])
    p_tokens, c_tokens = engine.last_scoring_usage()
    yes, no = lps.get("yes", float("-inf")), lps.get("no", float("-inf"))
    if math.isinf(yes) and math.isinf(no):
        score = 0.5
    else:
        m = max(yes, no)
        score = math.exp(yes - m) / (math.exp(yes - m) + math.exp(no - m))
    return VerifierResult(score=score, prompt_tokens=p_tokens, completion_tokens=c_tokens)


VERIFIERS: dict[str, Callable[[Engine, Prompt, Candidate], VerifierResult]] = {
    "self_yes_no": self_yes_no,
}
