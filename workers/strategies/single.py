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


@register_strategy("single")
class Single(Strategy):
    """One sample; it is the answer (None only when it produced no text)."""

    Params = SingleParams

    def planned_samples(self, params: SamplingParams) -> int:
        return 1

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        ctx.sample(params.sampling(1))
        return first_usable(ctx.candidates), None
