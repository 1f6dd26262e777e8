"""``single``: one sample, greedy by default (``temperature=0``) or sampled."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from workers.strategies.base import (
    RunContext,
    SamplingParams,
    Strategy,
    first_usable,
    register_strategy,
)


class SingleParams(SamplingParams):
    temperature: float = Field(default=0.0, ge=0, le=2)
    #: Independent samples returned side by side (OpenAI's ``n``); the first is the answer.
    n: int = Field(default=1, ge=1, le=16)


@register_strategy("single")
class Single(Strategy):
    """One sample (``n`` with OpenAI's ``n``); the first is the answer (None only when it
    produced no text)."""

    Params = SingleParams

    def planned_samples(self, params: SamplingParams) -> int:
        return int(getattr(params, "n", 1))

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        ctx.sample(params.sampling(params.n))
        return first_usable(ctx.candidates), None
