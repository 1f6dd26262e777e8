"""What every strategy shares: events, candidates, the result, the run context and the
registry.

A strategy draws samples from an engine through :class:`RunContext`, which turns engine
samples into :class:`Candidate` objects, keeps the :class:`~workers.ledger.Ledger` (every
sample billed, aborted and discarded ones included, plus scorer calls), forwards events to
the caller's ``on_event`` and polls ``should_cancel`` between tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from workers import tracing
from workers.engines.base import (
    Engine,
    GenerationStream,
    Prompt,
    SampleDone,
    SampleOutput,
    SamplingConfig,
    TokenEvent,
    logprob_entries,
)
from workers.grading.extract import (
    answer_key,
    canonical_json,
    canonical_tool_calls,
    extract_answer,
    guess_answer_kind,
)
from workers.ledger import Ledger, worst_count_method

log = logging.getLogger(__name__)

# -- events passed to on_event ---------------------------------------------------------


@dataclass(frozen=True)
class SampleStarted:
    """Sample ``index`` was sent to the engine."""

    index: int


@dataclass(frozen=True)
class TokenDelta:
    """New text of sample ``index`` (for streaming a sample to a client), with OpenAI's
    log-prob entries of its tokens when the request asked for log-probs, and its tool-call
    deltas (OpenAI's streamed shape) as they come."""

    index: int
    text: str
    logprobs: tuple[dict[str, Any], ...] | None = None
    tool_calls: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class SampleFinished:
    """A sample ended (finished or aborted); ``candidate`` carries its tokens."""

    candidate: Candidate


@dataclass(frozen=True)
class ScorerFinished:
    """A scorer / verifier call ended; ``call`` carries what it billed (``index`` counts the
    run's scorer calls from 0)."""

    call: ScorerCall


StrategyEvent = SampleStarted | TokenDelta | SampleFinished | ScorerFinished


@dataclass(frozen=True)
class ScorerCall:
    """One scorer / verifier call: the tokens and engine seconds it billed, and the
    candidate it scored (None when it scored no single candidate)."""

    index: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float = 0.0
    candidate_index: int | None = None


# -- candidates and results ------------------------------------------------------------


@dataclass
class Candidate:
    """One sample as a strategy sees it.

    ``prompt_tokens`` is the prompt share billed to this sample (see
    :class:`workers.engines.SampleOutput`); ``score`` is the strategy's score (best-of-n
    scorer, vote weight or trace confidence), None when the strategy does not score.
    ``mean_logprob`` and ``confidence`` (mean DeepConf token confidence, higher = surer)
    are filled when the engine gave log-probs.
    """

    index: int
    text: str
    extracted_answer: str | None
    score: float | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    aborted: bool
    seed: int | None
    latency_s: float
    chosen: bool = False
    answer_key: str | None = None
    mean_logprob: float | None = None
    confidence: float | None = None
    count_method: str = "exact"
    phase: str = "main"
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    #: The endpoint that generated it when a strategy runs several (cascades); None: the
    #: configuration's own endpoint.
    endpoint: str | None = None
    #: This sample's share of its engine request's time (the shares of one request sum to
    #: its wall time): what a per-GPU-hour price bills.
    engine_s: float = 0.0
    token_logprobs: list[float] = field(default_factory=list, repr=False)
    top_logprobs: list[tuple[float, ...]] = field(default_factory=list, repr=False)
    #: OpenAI-shaped tool calls, when the sample called tools instead of answering.
    tool_calls: list[dict[str, Any]] | None = None
    #: OpenAI's ``logprobs.content`` of this sample, when the request asked for log-probs.
    logprobs_content: list[dict[str, Any]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serialisable fields (without per-token log-probs)."""
        return {
            "index": self.index,
            "text": self.text,
            "extracted_answer": self.extracted_answer,
            "score": self.score,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "finish_reason": self.finish_reason,
            "aborted": self.aborted,
            "seed": self.seed,
            "latency_s": self.latency_s,
            "chosen": self.chosen,
            "answer_key": self.answer_key,
            "mean_logprob": self.mean_logprob,
            "confidence": self.confidence,
            "count_method": self.count_method,
            "phase": self.phase,
            "endpoint": self.endpoint,
            "tool_calls": self.tool_calls,
            "engine_s": self.engine_s,
        }


@dataclass
class StrategyResult:
    """Every candidate, the chosen one, the vote and the full ledger of one run.

    ``ledger.prompt_tokens`` / ``completion_tokens`` equal the sums over ``candidates``
    plus ``ledger.scorer_prompt_tokens`` / ``scorer_completion_tokens``.
    """

    strategy: str
    candidates: list[Candidate]
    chosen_index: int | None
    answer: str
    extracted_answer: str | None
    votes: dict[str, float] | None
    ledger: Ledger
    cancelled: bool = False
    answer_kind: str = "math"
    params: dict[str, Any] = field(default_factory=dict)
    #: What the strategy decided along the way, JSON-serialisable, for the playground:
    #: stopping decisions with their posterior, search trees, cascade stages.
    trace: dict[str, Any] = field(default_factory=dict)
    #: Per-endpoint ledgers when the run used several endpoints (cascades), keyed by
    #: endpoint name; their sum is ``ledger``. Empty: everything ran on one endpoint.
    stage_ledgers: dict[str, Ledger] = field(default_factory=dict)
    scorer_calls: list[ScorerCall] = field(default_factory=list)

    @property
    def chosen(self) -> Candidate | None:
        if self.chosen_index is None:
            return None
        return next((c for c in self.candidates if c.index == self.chosen_index), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen_index": self.chosen_index,
            "answer": self.answer,
            "extracted_answer": self.extracted_answer,
            "votes": self.votes,
            "ledger": self.ledger.to_dict(),
            "cancelled": self.cancelled,
            "answer_kind": self.answer_kind,
            "params": self.params,
            "trace": self.trace,
            "stage_ledgers": {k: v.to_dict() for k, v in self.stage_ledgers.items()},
            "scorer_calls": [asdict(c) for c in self.scorer_calls],
        }


def openai_logprobs(sample: SampleOutput) -> list[dict[str, Any]] | None:
    """Return OpenAI's ``logprobs.content`` of a sample whose engine gave token texts."""
    if sample.tokens is None:
        return None
    return logprob_entries(sample.tokens, sample.token_logprobs, sample.top_tokens or [])


# -- per-token statistics --------------------------------------------------------------


def token_confidence(top_logprobs: Sequence[float]) -> float:
    """DeepConf token confidence: minus the mean of the top-k log-probs (higher = surer)."""
    return -sum(top_logprobs) / len(top_logprobs) if top_logprobs else 0.0


def mean_logprob(logprobs: Sequence[float]) -> float | None:
    return sum(logprobs) / len(logprobs) if logprobs else None


def mean_confidence(tops: Sequence[Sequence[float]]) -> float | None:
    return sum(token_confidence(t) for t in tops) / len(tops) if tops else None


def lowest_group_confidence(tops: Sequence[Sequence[float]], window: int) -> float | None:
    """Return the minimum over sliding windows of ``window`` tokens of the mean token
    confidence (the whole trace when it is shorter than a window)."""
    if not tops:
        return None
    conf = [token_confidence(t) for t in tops]
    if len(conf) <= window:
        return sum(conf) / len(conf)
    s = sum(conf[:window])
    best = s
    for i in range(window, len(conf)):
        s += conf[i] - conf[i - window]
        best = min(best, s)
    return best / window


# -- the run context -------------------------------------------------------------------

OnEvent = Callable[[StrategyEvent], None]
ShouldCancel = Callable[[], bool]


class Watcher(Protocol):
    """Early-stopping policy: sees every token and finished candidate of one engine
    request and may abort samples of ``stream`` (indices local to the request)."""

    def on_token(self, stream: GenerationStream, event: TokenEvent) -> None: ...

    def on_done(self, stream: GenerationStream, candidate: Candidate, local_index: int) -> None: ...


class _EngineShare:
    """Splits one engine request's wall time among its samples in the order they end: each
    is billed the time since the previous one ended, so the shares sum to the request's
    time however many samples ran at once."""

    def __init__(self) -> None:
        self.last = 0.0

    def take(self, latency_s: float) -> float:
        share = max(0.0, latency_s - self.last)
        self.last = max(self.last, latency_s)
        return share


class RunContext:
    """Drives engine requests for one strategy run and keeps its ledger."""

    def __init__(
        self,
        engine: Engine,
        prompt: Prompt,
        answer_kind: str,
        on_event: OnEvent | None,
        should_cancel: ShouldCancel | None,
        *,
        index_offset: int = 0,
        endpoint: str | None = None,
        output: dict[str, Any] | None = None,
        vote_on: str | None = None,
        token_events: bool | None = None,
    ) -> None:
        self.output = dict(output or {})
        self.vote_on = vote_on
        self.engine = engine
        self.token_events = token_events
        self.prompt = prompt
        self.answer_kind = answer_kind
        self.on_event = on_event
        self.should_cancel = should_cancel
        self.candidates: list[Candidate] = []
        self.scorer_log: list[ScorerCall] = []
        self.ledger = Ledger()
        self.cancelled = False
        self.t0 = time.perf_counter()
        self._methods: list[str] = []
        #: Strategy-specific record of its decisions (see :attr:`StrategyResult.trace`).
        self.trace: dict[str, Any] = {}
        self.stage_ledgers: dict[str, Ledger] = {}
        #: The answer when it is not one candidate's text (a step search joins its steps).
        self.answer_text: str | None = None
        #: Candidate indices start here (a stage of a cascade continues its parent's).
        self.index_offset = index_offset
        self.endpoint = endpoint

    def emit(self, event: StrategyEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def check_cancel(self) -> bool:
        if not self.cancelled and self.should_cancel is not None and self.should_cancel():
            self.cancelled = True
        return self.cancelled

    def sample(
        self,
        sampling: SamplingConfig,
        *,
        token_events: bool = False,
        watcher: Watcher | None = None,
        phase: str = "main",
        prompt: Prompt | None = None,
    ) -> list[Candidate]:
        """Run one engine request of ``sampling.n`` samples; return its candidates.

        With tracing on, the request is one span (``costpass.engine.request``) with the
        tokens it billed; the engine's own HTTP calls (httpx instrumentation) nest in it.
        """
        if not tracing.enabled():
            return self._sample(sampling, token_events, watcher, phase, prompt)
        attributes = {tracing.ENGINE: self.engine.kind, "costpass.phase": phase}
        with tracing.span("costpass.engine.request", attributes) as span:
            prompt_before = self.ledger.prompt_tokens
            completion_before = self.ledger.completion_tokens
            new = self._sample(sampling, token_events, watcher, phase, prompt)
            span.set_attributes(
                {
                    tracing.PROMPT_TOKENS: self.ledger.prompt_tokens - prompt_before,
                    tracing.COMPLETION_TOKENS: self.ledger.completion_tokens - completion_before,
                    tracing.SAMPLES: len(new),
                }
            )
            return new

    def _sample(
        self,
        sampling: SamplingConfig,
        token_events: bool,
        watcher: Watcher | None,
        phase: str,
        prompt: Prompt | None,
    ) -> list[Candidate]:
        """Run one engine request (see :meth:`sample`).

        ``prompt`` replaces the run's prompt for this request (a step search continues a
        partial solution); its tokens are billed like any other request's.

        Token events are requested when the watcher needs them, when the caller streams
        (``on_event``) or may cancel (``should_cancel`` is polled between tokens).
        """
        offset = self.index_offset + len(self.candidates)
        if self.check_cancel():
            return []
        if self.output:
            # The request's output constraints apply to every sample the strategy draws.
            extra = dict(self.output)
            extra["top_logprobs"] = max(sampling.top_logprobs, int(extra.get("top_logprobs", 0)))
            sampling = dataclasses.replace(sampling, **extra)
        caller_wants = (
            self.token_events
            if self.token_events is not None
            else (self.on_event is not None or self.should_cancel is not None)
        )
        want_tokens = token_events or watcher is not None or caller_wants
        stream = self.engine.stream(prompt or self.prompt, sampling, token_events=want_tokens)
        new: list[Candidate] = []
        share = _EngineShare()
        try:
            for i in range(sampling.n):
                self.emit(SampleStarted(offset + i))
            for event in stream:
                if self.check_cancel():
                    stream.abort_all()
                if isinstance(event, TokenEvent):
                    if self.on_event is not None and (
                        event.text or event.entries or event.tool_calls
                    ):
                        self.emit(
                            TokenDelta(
                                offset + event.index, event.text, event.entries, event.tool_calls
                            )
                        )
                    if watcher is not None and not self.cancelled:
                        watcher.on_token(stream, event)
                elif isinstance(event, SampleDone):
                    cand = self.candidate(event.sample, offset, phase)
                    cand.engine_s = share.take(cand.latency_s)
                    new.append(cand)
                    self.emit(SampleFinished(cand))
                    if watcher is not None and not self.cancelled:
                        watcher.on_done(stream, cand, event.sample.index)
        except BaseException:
            # Whatever failed (the engine, a watcher, the caller's on_event, a time limit),
            # the samples still running stop now and are passed on with the tokens they
            # generated, so that the caller bills them before the failure propagates.
            self._salvage(stream, offset, phase, new, share)
            raise
        result = stream.result()
        self.ledger.prompt_tokens += result.prompt_tokens
        self.ledger.completion_tokens += result.completion_tokens
        self.ledger.engine_requests += result.engine_requests
        self.ledger.engine_wall_s += result.wall_s
        self.ledger.aborted_completion_tokens += sum(
            s.completion_tokens for s in result.samples if s.aborted
        )
        self.ledger.cached_prompt_tokens += sum(s.cached_prompt_tokens for s in result.samples)
        self.ledger.reasoning_tokens += sum(s.reasoning_tokens for s in result.samples)
        self._methods.append(result.count_method)
        # Keep candidates in sample order whatever order they finished in.
        new.sort(key=lambda c: c.index)
        self.candidates.extend(new)
        return new

    def _salvage(
        self,
        stream: GenerationStream,
        offset: int,
        phase: str,
        new: list[Candidate],
        share: _EngineShare,
    ) -> None:
        reported = {c.index - offset for c in new}
        try:
            outputs = stream.salvage(reported)
        except Exception:  # noqa: BLE001 - the original failure propagates; log this one
            log.exception("could not collect the samples of a failed engine request")
            return
        for out in sorted(outputs, key=lambda o: (o.latency_s, o.index)):
            cand = self.candidate(out, offset, phase)
            cand.engine_s = share.take(cand.latency_s)
            new.append(cand)
            try:
                self.emit(SampleFinished(cand))
            except Exception:  # noqa: BLE001 - e.g. the database is gone; keep the others
                log.exception("could not pass on salvaged sample %s", cand.index)

    def candidate(self, sample: SampleOutput, offset: int, phase: str) -> Candidate:
        # Votes compare what the caller asked for: tool calls, canonical JSON, or answers.
        extracted: str | None
        if sample.tool_calls:
            extracted = canonical_tool_calls(sample.tool_calls)
            key: str | None = extracted
        elif self.vote_on == "json":
            extracted = canonical_json(sample.text) if sample.text else None
            key = extracted
        else:
            extracted = extract_answer(sample.text, self.answer_kind) if sample.text else None
            key = answer_key(extracted, self.answer_kind)
        return Candidate(
            index=offset + sample.index,
            text=sample.text,
            extracted_answer=extracted,
            score=None,
            prompt_tokens=sample.prompt_tokens,
            completion_tokens=sample.completion_tokens,
            finish_reason=sample.finish_reason,
            aborted=sample.aborted,
            seed=sample.seed,
            latency_s=sample.latency_s,
            answer_key=key,
            mean_logprob=mean_logprob(sample.token_logprobs),
            confidence=mean_confidence(sample.top_logprobs),
            count_method=sample.count_method,
            phase=phase,
            cached_prompt_tokens=sample.cached_prompt_tokens,
            reasoning_tokens=sample.reasoning_tokens,
            endpoint=self.endpoint,
            token_logprobs=sample.token_logprobs,
            top_logprobs=sample.top_logprobs,
            tool_calls=sample.tool_calls,
            logprobs_content=openai_logprobs(sample),
        )

    def child(self, engine: Engine, endpoint: str | None) -> RunContext:
        """Return a context for a sub-run on ``engine`` (a cascade's stage): same prompt,
        events and cancel poll, candidate indices continuing this one's; merge it back
        with :meth:`absorb`."""
        return RunContext(
            engine,
            self.prompt,
            self.answer_kind,
            self.on_event,
            self.should_cancel,
            index_offset=self.index_offset + len(self.candidates),
            endpoint=endpoint,
            output=self.output,
            vote_on=self.vote_on,
        )

    def absorb(self, child: RunContext, key: str | None = None) -> None:
        """Add a finished sub-run's candidates and ledger to this run. With ``key`` (its
        endpoint) its ledger is also kept apart so that each stage is priced at its own
        endpoint's prices (cascades); None: it ran on this run's endpoint."""
        self.candidates.extend(child.candidates)
        self.cancelled = self.cancelled or child.cancelled
        self._methods.extend(child._methods)
        if child.answer_text is not None:
            self.answer_text = child.answer_text
        if key is None:
            parts = [self.ledger]
        else:
            parts = [self.ledger, self.stage_ledgers.setdefault(key, Ledger())]
        for part in parts:
            for f in fields(Ledger):
                if f.name in ("wall_s", "token_count_method"):
                    continue
                setattr(part, f.name, getattr(part, f.name) + getattr(child.ledger, f.name))
        if key is not None:
            stage = self.stage_ledgers[key]
            stage.token_count_method = worst_count_method(stage.token_count_method, *child._methods)

    def add_scorer_usage(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        wall_s: float = 0.0,
        candidate_index: int | None = None,
    ) -> None:
        """Bill one scorer / verifier call (``wall_s``: its time inside the engine) and pass
        it on as a :class:`ScorerFinished` event, so the caller records it at once."""
        call = ScorerCall(
            index=self.ledger.scorer_calls,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            wall_s=float(wall_s),
            candidate_index=candidate_index,
        )
        self.scorer_log.append(call)
        self.ledger.engine_wall_s += wall_s
        self.ledger.scorer_calls += 1
        self.ledger.engine_requests += 1
        self.ledger.scorer_prompt_tokens += prompt_tokens
        self.ledger.scorer_completion_tokens += completion_tokens
        self.ledger.prompt_tokens += prompt_tokens
        self.ledger.completion_tokens += completion_tokens
        self.emit(ScorerFinished(call))

    def finish(
        self,
        strategy: str,
        chosen_index: int | None,
        votes: dict[str, float] | None,
        params: BaseModel,
    ) -> StrategyResult:
        chosen = None
        for c in self.candidates:
            c.chosen = c.index == chosen_index
            if c.chosen:
                chosen = c
        self.ledger.wall_s = time.perf_counter() - self.t0
        self.ledger.token_count_method = worst_count_method(*self._methods)
        answer = chosen.text if chosen is not None else ""
        extracted = chosen.extracted_answer if chosen is not None else None
        if self.answer_text is not None:
            answer = self.answer_text
            extracted = extract_answer(answer, self.answer_kind) if answer else None
        return StrategyResult(
            strategy=strategy,
            candidates=self.candidates,
            chosen_index=chosen_index if chosen is not None else None,
            answer=answer,
            extracted_answer=extracted,
            votes=votes,
            ledger=self.ledger,
            cancelled=self.cancelled,
            answer_kind=self.answer_kind,
            params=params.model_dump(),
            trace=self.trace,
            stage_ledgers=self.stage_ledgers,
            scorer_calls=list(self.scorer_log),
        )


# -- params and the strategy base class ------------------------------------------------


class SamplingParams(BaseModel):
    """Sampling parameters shared by every strategy."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    seed: int | None = Field(default=0, ge=0, le=2**31 - 1)
    stop: list[str] = Field(default_factory=list, max_length=8)

    def sampling(self, n: int, *, seed_offset: int = 0, top_logprobs: int = 0) -> SamplingConfig:
        return SamplingConfig(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop),
            seed=None if self.seed is None else self.seed + seed_offset,
            top_logprobs=top_logprobs,
        )


P = TypeVar("P", bound=SamplingParams)


class UnknownStrategyError(KeyError, ValueError):
    """Raised for a strategy slug that is not registered; the message lists the known ones."""

    def __init__(self, slug: str, known: list[str]) -> None:
        self.slug = slug
        self.known = known
        super().__init__(f"unknown strategy {slug!r}; known strategies: {', '.join(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class Strategy(ABC):
    """A test-time strategy: how many samples are drawn and how one answer is chosen."""

    slug: ClassVar[str]
    Params: ClassVar[type[SamplingParams]]

    def validate_params(self, params: dict[str, Any] | BaseModel | None = None) -> SamplingParams:
        """Return validated params; raise ``pydantic.ValidationError`` on bad ones."""
        if isinstance(params, self.Params):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        return self.Params.model_validate(params or {})

    @abstractmethod
    def planned_samples(self, params: SamplingParams) -> int:
        """Return the most engine samples one run draws (for worst-case cost)."""

    def scorer_calls(self, params: SamplingParams) -> int:
        """Return the most scorer / verifier calls one run makes."""
        return 0

    def max_completion_tokens(self, params: SamplingParams) -> int:
        """Return the worst-case generated tokens, scorer calls included."""
        return self.planned_samples(params) * params.max_tokens + self.scorer_calls(params)

    def max_extra_prompt_tokens(self, params: SamplingParams) -> int:
        """Return the prompt tokens a run may bill beyond ``max_prompt_billings`` times the
        prompt (and a fixed template allowance per scorer call): by default each scorer call
        reads one candidate back (at most ``max_tokens``)."""
        return self.scorer_calls(params) * params.max_tokens

    def max_prompt_billings(self, params: SamplingParams) -> int:
        """Return the most times one run bills the prompt (one per sample on HTTP engines,
        plus scorer calls); multiply by the prompt length for a worst-case reservation."""
        return self.planned_samples(params) + self.scorer_calls(params)

    def stages(self, params: SamplingParams) -> list[tuple[str | None, Strategy, SamplingParams]]:
        """Return what one run may execute, as (endpoint name, strategy, params) per stage:
        one stage on the configuration's own endpoint (None) unless the strategy runs
        several endpoints (cascades), whose worst-case cost is priced stage by stage."""
        return [(None, self, params)]

    def endpoint_names(self, params: SamplingParams) -> list[str]:
        """Return the other endpoints (by name) a run needs engines for (``engines=``)."""
        return sorted({name for name, _, _ in self.stages(params) if name is not None})

    def run(
        self,
        engine: Engine,
        messages: Sequence[dict[str, str]] | None = None,
        *,
        prompt: str | None = None,
        params: dict[str, Any] | SamplingParams | None = None,
        answer_kind: str | None = None,
        on_event: OnEvent | None = None,
        should_cancel: ShouldCancel | None = None,
        output: dict[str, Any] | None = None,
        vote_on: str | None = None,
        token_events: bool | None = None,
        **extra: Any,
    ) -> StrategyResult:
        """Run the strategy on ``messages`` (chat) or ``prompt`` (raw text).

        ``answer_kind`` (``math`` / ``mcq`` / ``text``) drives answer extraction; None
        guesses it from the prompt. ``on_event`` receives :class:`SampleStarted`,
        :class:`TokenDelta` and :class:`SampleFinished` in the calling thread;
        ``should_cancel`` is polled between tokens and, when true, aborts every running
        sample (the result then has ``cancelled=True`` and every token generated so far).
        ``output`` (``request_options.output_spec``) is applied to every engine request;
        ``vote_on`` (``json`` / ``tool_calls``) makes votes compare canonical JSON / tool calls.
        ``token_events`` (default: whenever ``on_event`` or ``should_cancel`` is given) asks
        the engine for per-token events; False keeps an HTTP engine on non-streaming
        requests while ``on_event`` still receives every finished sample and scorer call.
        """
        p = self.validate_params(params)
        if messages is None and prompt is None:
            raise ValueError("run() needs messages or prompt")
        the_prompt = Prompt.of(messages=messages, prompt=prompt)
        kind = answer_kind or guess_answer_kind(the_prompt.user_text())
        ctx = RunContext(
            engine,
            the_prompt,
            kind,
            on_event,
            should_cancel,
            output=output,
            vote_on=vote_on,
            token_events=token_events,
        )
        chosen, votes = self.execute(ctx, p, **extra)
        return ctx.finish(self.slug, chosen, votes, p)

    @abstractmethod
    def execute(
        self, ctx: RunContext, params: Any, **extra: Any
    ) -> tuple[int | None, dict[str, float] | None]:
        """Draw samples through ``ctx`` and return (chosen candidate index, votes)."""


STRATEGIES: dict[str, Strategy] = {}

S = TypeVar("S", bound=type[Strategy])


def register_strategy(slug: str) -> Callable[[S], S]:
    """Class decorator registering a strategy (one shared instance) under ``slug``."""

    def decorator(cls: S) -> S:
        if slug in STRATEGIES and type(STRATEGIES[slug]) is not cls:
            raise ValueError(f"strategy {slug!r} is already registered")
        cls.slug = slug
        STRATEGIES[slug] = cls()
        return cls

    return decorator


def get_strategy(slug: str) -> Strategy:
    """Return the registered strategy ``slug``; raise :class:`UnknownStrategyError`."""
    try:
        return STRATEGIES[slug]
    except KeyError:
        raise UnknownStrategyError(slug, sorted(STRATEGIES)) from None


def first_usable(candidates: Sequence[Candidate]) -> int | None:
    """Return the index of the first non-aborted candidate with text (or tool calls), else
    of the first candidate with text, else None (the fallback when no answer could be extracted)."""
    for c in candidates:
        if not c.aborted and (c.text or c.tool_calls):
            return c.index
    for c in candidates:
        if c.text or c.tool_calls:
            return c.index
    return None
