"""``majority_vote`` (self-consistency) and ``weighted_vote`` over extracted answers.

Tie rule: the answer whose first candidate has the lowest index wins; the chosen
candidate is that first candidate. Samples without an extractable answer do not vote;
when none has one, the first usable sample is returned with empty votes.
``weighted_vote`` weights each vote by ``exp(mean token log-prob)`` (``mean_prob``) or by
the mean DeepConf token confidence (``self_certainty``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from workers.strategies.base import (
    Candidate,
    RunContext,
    SamplingParams,
    Strategy,
    first_usable,
    register_strategy,
)
from workers.strategies.voting import majority


class MajorityVoteParams(SamplingParams):
    n: int = Field(default=5, ge=1, le=64)


@register_strategy("majority_vote")
class MajorityVote(Strategy):
    Params = MajorityVoteParams

    def planned_samples(self, params: Any) -> int:
        return params.n

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        ctx.sample(params.sampling(params.n))
        voters = [c for c in ctx.candidates if not c.aborted]
        chosen, votes = majority(voters)
        if chosen is None:
            return first_usable(ctx.candidates), votes
        for c in voters:
            c.score = votes.get(c.answer_key, 0.0) if c.answer_key else None
        return chosen, votes


class WeightedVoteParams(SamplingParams):
    n: int = Field(default=5, ge=1, le=64)
    weight: Literal["mean_prob", "self_certainty"] = "mean_prob"
    top_logprobs: int = Field(default=5, ge=1, le=20)


@register_strategy("weighted_vote")
class WeightedVote(Strategy):
    Params = WeightedVoteParams

    def planned_samples(self, params: Any) -> int:
        return params.n

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        tops = params.top_logprobs if params.weight == "self_certainty" else 1
        ctx.sample(params.sampling(params.n, top_logprobs=tops))
        voters = [c for c in ctx.candidates if not c.aborted]

        def weight(c: Candidate) -> float:
            if params.weight == "mean_prob":
                return math.exp(c.mean_logprob) if c.mean_logprob is not None else 0.0
            return c.confidence or 0.0

        for c in voters:
            c.score = weight(c)
        chosen, votes = majority(voters, weight)
        if chosen is None:
            return first_usable(ctx.candidates), votes
        return chosen, votes
