"""Strategies that stop samples early: ``short_m_at_k``, ``first_finish`` and
``confidence_early_stop``.

- ``short_m_at_k`` (Hassid et al. 2025, "Don't Overthink it"): launch k samples in
  parallel; as soon as m have finished (ended with a stop, not cut by ``max_tokens``),
  abort the rest and vote among those m; ties go to the answer with the shortest chain,
  and the chosen sample is the shortest with the winning answer. When fewer than m stop
  (the rest hit ``max_tokens``), the vote is among every sample that ended by itself.
- ``first_finish`` (FFS, Agarwal et al. 2025): launch k, return the first to finish
  (fewest tokens, then lowest index, when several finish on the same step), abort the rest.
- ``confidence_early_stop`` (DeepConf online, Fu et al. 2025): ``warmup`` traces run in
  full and set a bar: the ``100 - keep_top_percent`` percentile of their lowest
  sliding-window mean token confidence. The other traces run in parallel; one whose
  current window mean (``window`` tokens) falls below the bar is aborted. The answer is
  the confidence-weighted vote (weight: the trace's lowest window confidence) of the traces
  that reached the bar, warm-up ones included.

Aborted samples are billed for every token they generated (see the ledger).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from workers.engines.base import GenerationStream, TokenEvent
from workers.strategies.base import (
    Candidate,
    RunContext,
    SamplingParams,
    Strategy,
    first_usable,
    lowest_group_confidence,
    register_strategy,
    token_confidence,
)
from workers.strategies.voting import majority, majority_shortest


class ShortMAtKParams(SamplingParams):
    k: int = Field(default=4, ge=1, le=64)
    m: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _m_le_k(self) -> ShortMAtKParams:
        if self.m > self.k:
            raise ValueError("m must be <= k")
        return self


class _FirstM:
    """Watcher: abort every running sample once ``m`` samples have stopped."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.finished: list[Candidate] = []

    def on_token(self, stream: GenerationStream, event: TokenEvent) -> None:
        return None

    def on_done(self, stream: GenerationStream, candidate: Candidate, local_index: int) -> None:
        if candidate.finish_reason == "stop":
            self.finished.append(candidate)
            if len(self.finished) >= self.m:
                stream.abort_all()


def _first_m(cands: list[Candidate], m: int) -> list[Candidate]:
    """The first m samples to stop: fewest tokens first (samples advance one token per
    step together), then lowest index; naturally-ended samples when fewer than m stopped."""
    stopped = [c for c in cands if c.finish_reason == "stop"]
    pool = stopped if len(stopped) >= m else [c for c in cands if not c.aborted]
    return sorted(pool, key=lambda c: (c.completion_tokens, c.index))[:m]


@register_strategy("short_m_at_k")
class ShortMAtK(Strategy):
    Params = ShortMAtKParams

    def planned_samples(self, params: Any) -> int:
        return params.k

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        cands = ctx.sample(params.sampling(params.k), watcher=_FirstM(params.m))
        chosen_set = _first_m(cands, params.m)
        for c in chosen_set:
            c.score = 1.0  # marks the voters
        chosen, votes = majority_shortest(chosen_set)
        if chosen is None:
            return first_usable(chosen_set or ctx.candidates), votes
        return chosen, votes


class FirstFinishParams(SamplingParams):
    k: int = Field(default=4, ge=1, le=64)


@register_strategy("first_finish")
class FirstFinish(Strategy):
    Params = FirstFinishParams

    def planned_samples(self, params: Any) -> int:
        return params.k

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        cands = ctx.sample(params.sampling(params.k), watcher=_FirstM(1))
        first = _first_m(cands, 1)
        if not first:
            return first_usable(ctx.candidates), None
        return first[0].index, None


class ConfidenceEarlyStopParams(SamplingParams):
    k: int = Field(default=8, ge=2, le=64)
    warmup: int = Field(default=2, ge=1, le=63)
    window: int = Field(default=16, ge=1, le=4096)
    keep_top_percent: float = Field(default=90.0, gt=0, le=100)
    top_logprobs: int = Field(default=5, ge=1, le=20)

    @model_validator(mode="after")
    def _warmup_lt_k(self) -> ConfidenceEarlyStopParams:
        if self.warmup >= self.k:
            raise ValueError("warmup must be < k")
        return self


class _ConfidenceBar:
    """Watcher: abort a trace when its sliding-window mean token confidence < bar."""

    def __init__(self, bar: float, window: int) -> None:
        self.bar = bar
        self.window = window
        self._windows: dict[int, deque[float]] = {}
        self._sums: dict[int, float] = {}

    def on_token(self, stream: GenerationStream, event: TokenEvent) -> None:
        if event.top_logprobs is None:
            return
        w = self._windows.setdefault(event.index, deque())
        conf = token_confidence(event.top_logprobs)
        w.append(conf)
        s = self._sums.get(event.index, 0.0) + conf
        if len(w) > self.window:
            s -= w.popleft()
        self._sums[event.index] = s
        if len(w) == self.window and s / self.window < self.bar:
            stream.abort(event.index)

    def on_done(self, stream: GenerationStream, candidate: Candidate, local_index: int) -> None:
        return None


@register_strategy("confidence_early_stop")
class ConfidenceEarlyStop(Strategy):
    Params = ConfidenceEarlyStopParams

    def planned_samples(self, params: Any) -> int:
        return params.k

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        warm = ctx.sample(
            params.sampling(params.warmup, top_logprobs=params.top_logprobs),
            token_events=True,
            phase="warmup",
        )
        group = {
            c.index: lowest_group_confidence(c.top_logprobs, params.window)
            for c in warm
            if not c.aborted
        }
        values = [v for v in group.values() if v is not None]
        bar = float(np.percentile(values, 100.0 - params.keep_top_percent)) if values else 0.0
        rest = ctx.sample(
            params.sampling(
                params.k - params.warmup,
                seed_offset=params.warmup,
                top_logprobs=params.top_logprobs,
            ),
            watcher=_ConfidenceBar(bar, params.window),
            phase="main",
        )
        for c in rest:
            if not c.aborted:
                group[c.index] = lowest_group_confidence(c.top_logprobs, params.window)
        voters: list[Candidate] = []
        for c in warm + rest:
            g = group.get(c.index)
            if c.aborted or g is None:
                continue
            c.score = g
            if g >= bar:
                voters.append(c)
        chosen, votes = majority(voters, lambda c: c.score or 0.0)
        if chosen is None:
            return first_usable(voters or ctx.candidates), votes
        return chosen, votes
