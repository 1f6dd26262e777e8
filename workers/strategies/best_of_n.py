"""``best_of_n``: n samples, the highest-scoring one wins (ties: lowest index).

Scorers (``scorer``): ``mean_logprob``, ``self_certainty`` (top-k log-probs) or
``verifier`` (``verifier`` names one of :data:`workers.strategies.scoring.VERIFIERS`, or
pass ``verifier=callable`` to :meth:`run`). Aborted samples (a cancelled run) and samples
without a score are not chosen while a scored one exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from workers.engines.base import Engine, Prompt
from workers.strategies.base import (
    Candidate,
    RunContext,
    SamplingParams,
    Strategy,
    first_usable,
    register_strategy,
)
from workers.strategies.scoring import (
    VERIFIERS,
    Verifier,
    VerifierResult,
    score_mean_logprob,
    score_self_certainty,
)


class BestOfNParams(SamplingParams):
    n: int = Field(default=4, ge=1, le=64)
    scorer: Literal["mean_logprob", "self_certainty", "verifier"] = "mean_logprob"
    verifier: str = "self_yes_no"
    top_logprobs: int = Field(default=5, ge=1, le=20)


@register_strategy("best_of_n")
class BestOfN(Strategy):
    Params = BestOfNParams

    def planned_samples(self, params: Any) -> int:
        return params.n

    def scorer_calls(self, params: Any) -> int:
        return params.n if params.scorer == "verifier" else 0

    def execute(
        self,
        ctx: RunContext,
        params: Any,
        verifier: Verifier | Callable[[Engine, Prompt, Candidate], VerifierResult] | None = None,
        **extra: Any,
    ):
        if params.scorer == "verifier" and verifier is None:
            if params.verifier not in VERIFIERS:
                raise ValueError(
                    f"unknown verifier {params.verifier!r}; known: {', '.join(sorted(VERIFIERS))}"
                )
            verifier = VERIFIERS[params.verifier]
        # Log-probs are only asked for when the scorer reads them (costly on some servers).
        tops = params.top_logprobs if params.scorer == "self_certainty" else 0
        if params.scorer == "mean_logprob":
            tops = 1
        cands = ctx.sample(params.sampling(params.n, top_logprobs=tops))
        for c in cands:
            if c.aborted or ctx.cancelled:
                continue
            if params.scorer == "mean_logprob":
                c.score = score_mean_logprob(c)
            elif params.scorer == "self_certainty":
                c.score = score_self_certainty(c)
            else:
                assert verifier is not None
                t = time.perf_counter()
                res = verifier(ctx.engine, ctx.prompt, c)
                ctx.add_scorer_usage(
                    res.prompt_tokens,
                    res.completion_tokens,
                    time.perf_counter() - t,
                    candidate_index=c.index,
                )
                c.score = res.score
        scored = [c for c in cands if c.score is not None and not c.aborted]
        if not scored:
            return first_usable(ctx.candidates), None
        best = min(scored, key=lambda c: (-c.score, c.index))  # type: ignore[operator]
        return best.index, None
