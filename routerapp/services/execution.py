"""Running a query in a Celery worker: the strategy on the configuration's engine, every sample
written as it finishes, the ledger priced, the budget settled, all in one place."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, F, Max, Q, Sum
from django.utils import timezone

from routerapp.errors import BudgetExceeded
from routerapp.models import (
    BudgetUsage,
    Configuration,
    ModelEndpoint,
    Query,
    Sample,
    ScorerCall,
)
from routerapp.services.attempts import Attempt, Attempts, NoTargetLeft, may_fall_back
from routerapp.services.breakers import target_busy
from routerapp.services.budgets import budget_reserve_more, budget_settle
from routerapp.services.pricing import endpoint_prices, prompt_token_bound, worst_case_cost
from routerapp.services.streaming import (
    EventSink,
    query_events_publisher,
    query_finished_notify,
    query_progress,
)
from workers import tracing
from workers.engines.resilience import RETRY_LOG, UpstreamError
from workers.ledger import Prices, cost_of_usage
from workers.strategies.base import SampleStarted

log = logging.getLogger(__name__)

# How often a running query re-reads its cancel flag: cheap enough per token, quick to react.
CANCEL_POLL_S = 0.25

# Upper bounds a sample is billed at when the process generating it died (Sample.count_method).
STREAM_BOUND = "stream_bound"
RESERVATION_SHARE = "reservation_share"
LOST_FINISH_REASON = "lost"

T = TypeVar("T")

# Errors of a database connection that a restart of the server (or a network blip) breaks:
# the statement did not run, a new connection can run it again.
DB_TRANSIENT = (OperationalError, InterfaceError)


def db_retry(fn: Callable[[], T], *, what: str, deadline_s: float = 30.0) -> T:
    """Run ``fn`` (one whole transaction), again on a fresh connection while the database is
    unreachable, for up to ``deadline_s``; then raise its last error.

    Inside an outer transaction nothing can be retried (the transaction is lost): the error
    is raised at once."""
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_delay,
        wait_exponential,
    )

    if connection.in_atomic_block:
        return fn()

    def reconnect(state: Any) -> None:
        log.warning("database unavailable while %s (%s); retrying", what, state.outcome.exception())
        connection.close()

    for attempt in Retrying(
        retry=retry_if_exception_type(DB_TRANSIENT),
        stop=stop_after_delay(deadline_s),
        wait=wait_exponential(multiplier=0.1, max=3.0),
        before_sleep=reconnect,
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # Retrying either returns or raises


def engines_preload(*, queues: list[str] | None) -> None:
    """Load the engines of the enabled endpoints served by these queues, once per process."""
    from workers.engines import get_engine
    from workers.queues import queue_for_engine

    if not queues:
        return
    for endpoint in ModelEndpoint.objects.filter(enabled=True):
        if queue_for_engine(endpoint.engine, endpoint.queue) not in queues:
            continue
        try:
            get_engine(endpoint.engine, endpoint.engine_params)
            log.info("engine for %s loaded", endpoint.name)
        except Exception:  # a broken endpoint must not stop the worker serving the others
            log.exception("could not preload the engine of endpoint %s", endpoint.name)


def configuration_of(query: Query) -> Configuration:
    """Return the configuration a routed query runs on (every dispatched query has one)."""
    if query.configuration is None:
        raise ValueError(f"query {query.pk} was never routed to a configuration")
    return query.configuration


class CancelPoll:
    """`should_cancel` for a running query: re-reads its cancel flag at most every
    CANCEL_POLL_S, cheap enough to call between tokens, quick enough to stop a sample."""

    def __init__(self, query_id: Any, heartbeat: Heartbeat | None = None):
        self.query_id = query_id
        self.heartbeat = heartbeat
        self._next_poll = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        if self.heartbeat is not None and self.heartbeat.lost:
            # Another run took this query over (this one was thought dead): stop generating.
            return True
        now = time.monotonic()
        if not self._cancelled and now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_S
            try:
                self._cancelled = Query.objects.filter(
                    pk=self.query_id, cancel_requested=True
                ).exists()
            except DB_TRANSIENT:  # the database is restarting: keep generating, ask again later
                if not connection.in_atomic_block:
                    connection.close()
        return self._cancelled


class Heartbeat:
    """While a query runs, refresh its ``heartbeat_at`` every QUERY_HEARTBEAT_S, so the reaper
    can tell a dead run from a long one. ``lost`` turns true when the row says another attempt
    owns the query (this run was taken for dead): the run then stops.

    One beater thread per process serves every running query (``_Beater``): starting a query
    costs a dict entry, not a thread, and a query that ends before its first beat is due (most
    single calls) costs no statement at all.

    Use as a context manager around the run."""

    def __init__(self, query_id: Any, run: int):
        self.query_id = query_id
        self.attempt = run
        self.lost = False
        self.due = 0.0  # monotonic time of the next beat
        self._registered = False

    def __enter__(self) -> Heartbeat:
        # Inside an outer transaction (a test calling the service directly) nobody else can
        # see the row, so there is nothing to tell the reaper.
        if not connection.in_atomic_block:
            self.due = time.monotonic() + settings.QUERY_HEARTBEAT_S
            _BEATER.add(self)
            self._registered = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._registered:
            _BEATER.remove(self)
            self._registered = False

    def beat(self) -> bool:
        """Refresh the row once; return False when this run no longer owns the query."""
        owned = Query.objects.filter(
            pk=self.query_id, status=Query.Status.RUNNING, runs=self.attempt
        ).update(heartbeat_at=timezone.now())
        if not owned:
            row = Query.objects.filter(pk=self.query_id).values_list("status", "runs").first()
            if row is not None and row != (Query.Status.RUNNING, self.attempt):
                self.lost = True  # finished elsewhere, or another run took it over
                return False
        return True


class _Beater:
    """The process's heartbeat thread: beats each registered Heartbeat when it is due. Started
    on first use (and again in a forked child, whose copy of the thread does not run)."""

    def __init__(self) -> None:
        self._beats: dict[int, Heartbeat] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, heartbeat: Heartbeat) -> None:
        import os

        with self._lock:
            self._beats[id(heartbeat)] = heartbeat
            self._wake.notify()
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()

    def remove(self, heartbeat: Heartbeat) -> None:
        with self._lock:
            self._beats.pop(id(heartbeat), None)

    def _run(self) -> None:
        from django.db import connections

        while True:
            with self._lock:
                now = time.monotonic()
                due = [h for h in self._beats.values() if h.due <= now]
                nxt = min((h.due for h in self._beats.values()), default=now + 1.0)
                if not due:
                    self._wake.wait(timeout=max(0.01, min(1.0, nxt - now)))
                    continue
            for heartbeat in due:
                if id(heartbeat) not in self._beats:  # its run ended meanwhile
                    continue
                heartbeat.due = time.monotonic() + settings.QUERY_HEARTBEAT_S
                try:
                    if not heartbeat.beat():
                        self.remove(heartbeat)
                except DB_TRANSIENT:  # restarting: the next beat reconnects
                    connections.close_all()
                except Exception:  # never let one bad beat stop every other query's
                    log.exception("heartbeat of query %s failed", heartbeat.query_id)
            # A round every QUERY_HEARTBEAT_S at most: not worth a connection held between.
            connections.close_all()


_BEATER = _Beater()


def _ms(seconds: Any) -> int:
    return max(0, round(float(seconds or 0.0) * 1000))


def sample_fields(candidate: Any, prices: Prices) -> dict[str, Any]:
    """Return the Sample columns of one strategy candidate, priced with workers.ledger (its
    tokens, or its share of the engine time on an endpoint priced per GPU-hour)."""
    prompt_tokens = int(candidate.prompt_tokens)
    completion_tokens = int(candidate.completion_tokens)
    cached = int(getattr(candidate, "cached_prompt_tokens", 0) or 0)
    reasoning = int(getattr(candidate, "reasoning_tokens", 0) or 0)
    latency = candidate.latency_s
    engine_ms = _ms(getattr(candidate, "engine_s", 0.0))
    return {
        "text": candidate.text or "",
        "extracted_answer": (candidate.extracted_answer or "")[:500],
        "score": candidate.score,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_prompt_tokens": cached,
        "reasoning_tokens": reasoning,
        "finish_reason": candidate.finish_reason or "",
        "aborted": bool(candidate.aborted),
        "chosen": bool(candidate.chosen),
        "seed": candidate.seed,
        "latency_ms": None if latency is None else int(latency * 1000),
        "engine_ms": engine_ms,
        "cost_usd": cost_of_usage(
            prompt_tokens,
            completion_tokens,
            engine_ms,
            prices,
            cached_prompt_tokens=cached,
            reasoning_tokens=reasoning,
        ),
        "count_method": str(getattr(candidate, "count_method", "") or "")[:24],
        "tool_calls": getattr(candidate, "tool_calls", None),
        "logprobs": getattr(candidate, "logprobs_content", None),
    }


def scorer_fields(call: Any, prices: Prices) -> dict[str, Any]:
    """Return the ScorerCall columns of one scorer / verifier call, priced like a sample."""
    engine_ms = _ms(call.wall_s)
    return {
        "sample_index": call.candidate_index,
        "prompt_tokens": int(call.prompt_tokens),
        "completion_tokens": int(call.completion_tokens),
        "engine_ms": engine_ms,
        "cost_usd": cost_of_usage(
            int(call.prompt_tokens), int(call.completion_tokens), engine_ms, prices
        ),
    }


def bill_rows(query: Query, samples: list[Sample], scorers: list[ScorerCall]) -> None:
    """Set a query's billed totals (not saved) from its sample and scorer rows: the rows are
    the bill, so a query's cost is exactly the sum of theirs on every path."""
    rows: list[Any] = [*samples, *scorers]
    query.prompt_tokens = sum(r.prompt_tokens for r in rows)
    query.completion_tokens = sum(r.completion_tokens for r in rows)
    query.cached_prompt_tokens = sum(s.cached_prompt_tokens for s in samples)
    query.reasoning_tokens = sum(s.reasoning_tokens for s in samples)
    query.engine_ms = sum(r.engine_ms for r in rows)
    query.cost_usd = sum((r.cost_usd for r in rows), Decimal(0))
    query.samples_done = len(samples)
    query.scorer_calls = len(scorers)


def apply_result(
    query: Query, result: Any, prices: Prices, stage_prices: dict[str, Prices] | None = None
) -> None:
    """Copy a strategy result onto the query (not saved): the answer and vote, the engine
    requests, the final status, and the grade when the query has a gold. The billed totals
    come from the written rows (``bill_rows`` / ``_bill_written_samples``), each priced at
    its own endpoint's prices (a cascade's stages at theirs: ``stage_prices`` by name)."""
    from workers.grading import grade

    ledger = result.ledger
    query.engine_requests = int(ledger.engine_requests)
    # The scorer's share of the tokens; the billed totals come from the rows.
    query.scorer_prompt_tokens = int(ledger.scorer_prompt_tokens)
    query.scorer_completion_tokens = int(ledger.scorer_completion_tokens)
    query.trace = dict(getattr(result, "trace", None) or {})
    # The prices are kept with the bill: a later price change never rewrites this query.
    query.billed_prices = prices.to_dict()
    if getattr(result, "stage_ledgers", None) and stage_prices:
        query.billed_prices["stages"] = {name: p.to_dict() for name, p in stage_prices.items()}
    query.answer = result.answer or ""
    query.extracted_answer = (result.extracted_answer or "")[:500]
    query.votes = result.votes
    cancelled = bool(result.cancelled)
    query.status = Query.Status.CANCELLED if cancelled else Query.Status.DONE
    if query.gold and not cancelled:
        query.graded_correct = bool(
            grade(query.answer, query.gold, answer_kind=query.answer_kind or None)
        )


class _Run:
    """Callbacks the strategy calls while it runs one query."""

    def __init__(
        self,
        query: Query,
        offset: int,
        events: EventSink | None = None,
        heartbeat: Heartbeat | None = None,
    ):
        self.query = query
        self.offset = offset
        # Scorer calls of an interrupted earlier run keep their rows; this run's follow them.
        last = ScorerCall.objects.filter(query=query).order_by("-index").first()
        self.scorer_offset = 0 if last is None else last.index + 1
        self.prices = endpoint_prices(configuration_of(query).endpoint)
        # Token deltas and finished samples go to whoever streams this query (API, playground).
        # The channel is also the record of what a run had generated if its process dies.
        self.events = events if events is not None else query_events_publisher(query.pk)
        self.should_cancel = CancelPoll(query.pk, heartbeat)
        self.tokens_sent = 0  # token deltas published (a client may have seen them)
        # Prices of the other endpoints a cascade runs on, by name (see load_stages).
        self.stage_prices: dict[str, Prices] = {}

    def load_stages(self, strategy: Any, params: Any) -> dict[str, Any]:
        """Load the engines of the other endpoints the strategy runs on; keep their prices."""
        from routerapp.services.pricing import stage_endpoints
        from workers.engines import get_engine

        endpoints = stage_endpoints(strategy, params)
        self.stage_prices = {name: endpoint_prices(e) for name, e in endpoints.items()}
        return {name: get_engine(e.engine, e.engine_params) for name, e in endpoints.items()}

    def on_event(self, event: Any) -> None:
        call = getattr(event, "call", None)
        if call is not None:  # a scorer / verifier call ended: billed at once
            self.save_scorer(call)
            return
        candidate = getattr(event, "candidate", None)
        if candidate is not None:
            self.save_candidate(candidate)
            self.events.sample(self.offset + int(candidate.index))
            return
        text = getattr(event, "text", None)
        logprobs = getattr(event, "logprobs", None)
        calls = getattr(event, "tool_calls", None)
        if isinstance(text, str) and (text or logprobs or calls):  # a delta of one sample
            self.tokens_sent += 1
            index = self.offset + int(getattr(event, "index", 0))
            self.events.token(index, text, logprobs, calls)
        elif isinstance(event, SampleStarted):  # sent to the engine: it may bill from now on
            self.events.start(self.offset + int(event.index))

    def save_candidate(self, candidate: Any) -> None:
        """Write one finished (or aborted) sample and bump the query's running totals.

        Indices at or past this run's offset are this run's own: written when the sample
        finishes, rewritten with its final fields (chosen, score) when the strategy ends, or
        holding the upper bound a recovery billed while this run was taken for dead (then
        replaced by the real figures). Once the query has finished its ledger is closed and
        nothing is rewritten (a bound stays: it is at least what was generated)."""
        prices = self.stage_prices.get(getattr(candidate, "endpoint", None) or "", self.prices)
        fields = sample_fields(candidate, prices)
        index = self.offset + int(candidate.index)

        def write() -> None:
            with transaction.atomic():
                query = Query.objects.select_for_update().only("status").get(pk=self.query.pk)
                existing = Sample.objects.filter(query_id=self.query.pk, index=index).first()
                if existing is None:
                    Sample.objects.create(query_id=self.query.pk, index=index, **fields)
                    Query.objects.filter(pk=self.query.pk).update(
                        samples_done=F("samples_done") + 1
                    )
                elif not query.is_finished:
                    for name, value in fields.items():
                        setattr(existing, name, value)
                    existing.save()

        db_retry(write, what=f"writing sample {index} of query {self.query.pk}")

    def save_scorer(self, call: Any) -> None:
        """Write one scorer / verifier call (idempotent: a result replays its calls)."""
        ScorerCall.objects.update_or_create(
            query=self.query,
            index=self.scorer_offset + int(call.index),
            defaults=scorer_fields(call, self.prices),
        )


def query_run(*, query_id: str, events: EventSink | None = None) -> str:
    """Run a queued query to the end and return its final status.

    ``events`` receives token deltas and finished samples (default: the query's shared event
    channel, see services.streaming); the end is always announced on the shared channel.

    Idempotent under redelivery: a finished query, or one another live run owns, is left as
    it is. A query whose run died (its heartbeat stale) is taken over (see ``_claim``): the
    samples its dead run had written stay billed, the ones it was still generating are billed
    at an upper bound, and the new run numbers its samples after all of them and runs only
    if its reservation (topped up under the budgets, 402 semantics) covers its worst case.
    Database errors are retried for a while, then raised (the task retries, the reaper
    recovers what it leaves behind).
    """
    tracing.annotate({tracing.QUERY_ID: str(query_id)})
    claim = db_retry(lambda: _claim(query_id), what=f"claiming query {query_id}")
    if isinstance(claim, str):
        return claim
    query, run_number = claim
    with Heartbeat(query.pk, run_number) as heartbeat:
        return _run_claimed(query, query.sample_offset, events, heartbeat)


def _run_claimed(query: Query, offset: int, events: EventSink | None, heartbeat: Heartbeat) -> str:
    """Run a query this process has claimed: attempts on its configuration and fallbacks."""
    from celery.exceptions import SoftTimeLimitExceeded

    query_id = str(query.pk)
    configuration = configuration_of(query)
    here = queue_of(configuration)
    # A fallback on another worker pool is handed over to it (see _hand_off).
    attempts = Attempts(query, runs_here=lambda c: True)
    attempts.billed = _billed_so_far(query)
    run = _Run(query, offset, events, heartbeat)
    while True:
        try:
            attempt = attempts.next()
        except NoTargetLeft as exc:
            attempts.save()
            run.events.flush()
            _fail_retrying(query_id, f"EndpointsUnavailable: {exc}")
            return Query.Status.FAILED
        if queue_of(attempt.configuration) != here:
            # The fallback runs on another worker pool: hand the query over to it.
            attempts.save()
            run.events.flush()
            return _hand_off(query)
        run = _Run(query, offset, events, heartbeat)
        try:
            result = _run_attempt(query, attempt, run)
        except SoftTimeLimitExceeded:
            run.events.flush()
            if heartbeat.lost:  # another run owns the query now: it closes the ledger
                return Query.Status.RUNNING
            attempts.save()
            _fail_retrying(query_id, "the query ran past its time limit")
            return Query.Status.FAILED
        except Exception as exc:
            if heartbeat.lost:
                run.events.flush()
                return Query.Status.RUNNING
            written = Sample.objects.filter(query=query)
            last = written.aggregate(n=Max("index"))["n"]
            attempts.failed(attempt, exc, index=max(offset, -1 if last is None else last + 1))
            # The next attempt numbers its samples after every sample written so far.
            totals = written.aggregate(n=Max("index"), usd=Sum("cost_usd"))
            offset = max(offset, -1 if totals["n"] is None else totals["n"] + 1)
            attempts.billed = _billed_so_far(query)
            if may_fall_back(exc) and not run.tokens_sent:
                log.warning("query %s: attempt on %s failed: %s", query_id, attempt.target.key, exc)
                continue
            if not isinstance(exc, UpstreamError):
                log.exception("query %s failed", query_id)
            attempts.save()
            run.events.flush()
            _fail_retrying(query_id, f"{type(exc).__name__}: {exc}")
            return Query.Status.FAILED
        run.events.flush()
        if heartbeat.lost:  # another run owns the query now: keep what this one generated
            for candidate in result.candidates:
                run.save_candidate(candidate)
            return Query.Status.RUNNING
        attempts.succeeded(attempt)
        attempts.save()
        complete = functools.partial(
            query_complete, query=query, result=result, offset=offset, run=run
        )
        return db_retry(complete, what=f"completing query {query_id}")


def _billed_so_far(query: Query) -> Decimal:
    """What the rows written for a query so far bill (samples and scorer calls)."""
    rows = Decimal(0)
    for model in (Sample, ScorerCall):
        rows += model.objects.filter(query=query).aggregate(usd=Sum("cost_usd"))["usd"] or 0
    return rows


def queue_of(configuration: Configuration) -> str:
    from workers.queues import queue_for_engine

    return queue_for_engine(configuration.endpoint.engine, configuration.endpoint.queue)


def _hand_off(query: Query) -> str:
    """Queue a query again on its (new) configuration's worker pool; fail it if that fails."""
    from workers.tasks import query_execute

    assert query.configuration is not None
    Query.objects.filter(pk=query.pk, status=Query.Status.RUNNING).update(
        status=Query.Status.QUEUED
    )
    try:
        query_execute.apply_async(
            args=[str(query.pk)], queue=queue_of(query.configuration), ignore_result=True
        )
    except Exception as exc:
        query_fail(query_id=str(query.pk), error=f"could not hand the query over: {exc}")
        return Query.Status.FAILED
    return Query.Status.QUEUED


def _run_attempt(query: Query, attempt: Attempt, run: _Run) -> Any:
    """Run the query's strategy on one attempt's configuration and target."""
    from routerapp.services.request_fields import query_run_spec
    from workers.engines import get_engine

    configuration = attempt.configuration
    target = attempt.target
    engine = get_engine(target.engine, target.engine_params)
    spec = query_run_spec(query, configuration)  # the request's fields applied, as reserved
    _check_prompt_length(engine, query)
    engines = run.load_stages(spec.strategy, spec.params)  # a cascade's other endpoints
    token = RETRY_LOG.set(attempt.retries)
    try:
        with target_busy(target, counted=configuration.endpoint.balancing == "least_busy"):
            return spec.strategy.run(
                engine,
                messages=query.messages or [{"role": "user", "content": query.prompt}],
                params=spec.params,
                answer_kind=query.answer_kind or None,
                on_event=run.on_event,
                should_cancel=run.should_cancel,
                engines=engines,
                task=query.task,
                **spec.run_kwargs,
            )
    finally:
        RETRY_LOG.reset(token)


def _fail_retrying(query_id: str, error: str) -> None:
    db_retry(lambda: query_fail(query_id=query_id, error=error), what=f"failing query {query_id}")


def _heartbeat_stale_before(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=settings.QUERY_STALE_S)


def _claim(query_id: str) -> tuple[Query, int] | str:
    """Take a query for this run, in one transaction; return (query, attempt number), or
    the query's status when it is not this run's to take (finished, or running elsewhere
    with a live heartbeat, or failed here because a rerun cannot fit its budget).

    A query left running by a dead run (stale heartbeat) or queued again by the reaper is
    recovered first: its lost samples are billed at an upper bound (``samples_recover``);
    then the rerun's worst case must fit in what is left of the reservation, topped up under
    the same budgets when it does not; a hard budget that cannot cover the top-up fails the
    query (billed what it generated). After QUERY_MAX_ATTEMPTS runs the query fails."""
    now = timezone.now()
    with transaction.atomic():
        query = (
            Query.objects.select_for_update(of=("self",))
            .select_related("configuration__endpoint", "configuration__strategy")
            .filter(pk=query_id)
            .first()
        )
        if query is None:
            return Query.Status.FAILED.value
        if query.status == Query.Status.RUNNING:
            dead = query.runs > 0 and (
                query.heartbeat_at is None or query.heartbeat_at < _heartbeat_stale_before(now)
            )
            if not dead:  # a live run (or an inline one, never taken over) owns it
                return str(query.status)
            # Taken over from a dead run (a redelivered message). A query queued again was
            # recovered by whoever queued it (the reaper; a hand-off to another pool ends
            # its run cleanly).
            samples_recover(query=query)
        elif query.status != Query.Status.QUEUED:
            return str(query.status)
        if query.cancel_requested:
            _close(query, Query.Status.CANCELLED)
            return Query.Status.CANCELLED.value
        if query.runs > 0:
            if query.runs >= settings.QUERY_MAX_ATTEMPTS:
                _close(
                    query,
                    Query.Status.FAILED,
                    f"the query's worker stopped {query.runs} times without finishing it; "
                    "the samples it generated are billed",
                )
                return Query.Status.FAILED.value
            refused = _reserve_rerun(query)
            if refused:
                _close(query, Query.Status.FAILED, refused)
                return Query.Status.FAILED.value
        last = Sample.objects.filter(query=query).aggregate(m=Max("index"))["m"]
        query.sample_offset = 0 if last is None else last + 1
        query.runs += 1
        query.status = Query.Status.RUNNING
        query.started_at = query.started_at or now
        query.heartbeat_at = now
        query.save(
            update_fields=[
                "sample_offset",
                "runs",
                "status",
                "started_at",
                "heartbeat_at",
                "reserved_usd",
            ]
        )
        return query, query.runs


def _reserve_rerun(query: Query) -> str:
    """Make the reservation cover what the query has already been billed plus a whole new
    run's worst case, reserving the difference under its budgets; return "" or, when a hard
    budget cannot cover it, why the rerun is refused (nothing reserved then)."""
    configuration = configuration_of(query)
    billed = _billed_so_far(query)
    worst = worst_case_cost(configuration, prompt_token_bound(query.prompt, query.messages))
    extra = billed + worst - query.reserved_usd
    if extra <= 0:
        return ""
    try:
        with transaction.atomic():
            budget_reserve_more(usage_ids=query.budget_windows, amount=extra)
    except BudgetExceeded as exc:
        return (
            "the worker running this query stopped before it finished; the samples it "
            f"generated (${billed.normalize():f}) are billed, and a new run is refused: "
            f"{exc.message}"
        )
    query.reserved_usd += extra
    return ""


def samples_recover(*, query: Query) -> int:
    """Bill the samples the query's last run was generating when its process died: each
    sample of that run that was sent to the engine and never written becomes an aborted
    Sample row (finish reason ``lost``) billed at an upper bound, named in ``count_method``:

    - ``stream_bound``: its text was on the query's event channel; billed the UTF-8 bytes of
      that text and of its tool-call pieces, or its streamed log-prob entries if more (a
      byte-level tokenizer emits at least one byte per token), at most max_tokens, plus the
      prompt bound;
    - ``reservation_share``: nothing of it was streamed (or the channel is gone, e.g. Redis
      restarted): billed the prompt bound plus max_tokens, its share of the reservation.

    A query the web process ran itself (inline) has no such record: its planned samples without
    a row are billed their reservation share.

    Idempotent (an index with a row is skipped). Call with the query row locked. Return how
    many samples it billed."""
    from workers.strategies import get_strategy

    if query.configuration is None:
        return 0
    configuration = query.configuration
    strategy = get_strategy(configuration.strategy.strategy)
    params = strategy.validate_params(configuration.strategy.params)
    first = query.sample_offset
    indices = range(first, first + strategy.planned_samples(params))
    written = set(
        Sample.objects.filter(query=query, index__in=list(indices)).values_list("index", flat=True)
    )
    # A worker run records what it sends and streams on the query's event channel; a run in
    # the web process (inline, ``runs`` 0) streams in-process only: no durable record.
    progress = query_progress(query.pk) if query.runs else None
    prompt = min(prompt_token_bound(query.prompt, query.messages), configuration.max_prompt_tokens)
    prices = endpoint_prices(configuration.endpoint)
    # Engine time (GPU-hour prices): the dead run held the engine at most since it started;
    # that bound goes with the first lost sample.
    held_ms = _ms((timezone.now() - query.started_at).total_seconds()) if query.started_at else 0
    lost: list[Sample] = []
    for index in indices:
        if index in written:
            continue
        if progress is None:  # no record of the run at all: every planned sample may have run
            text, method = "", RESERVATION_SHARE
        elif index in progress.texts:
            text, method = progress.texts[index], STREAM_BOUND
        elif index in progress.started:
            text, method = "", RESERVATION_SHARE
        else:
            continue  # never sent to the engine
        completion = (
            min(params.max_tokens, progress.generated.get(index, len(text.encode())))
            if method == STREAM_BOUND and progress is not None
            else params.max_tokens
        )
        lost.append(
            Sample(
                query=query,
                index=index,
                text=text,
                prompt_tokens=prompt,
                completion_tokens=completion,
                finish_reason=LOST_FINISH_REASON,
                aborted=True,
                count_method=method,
                engine_ms=0 if lost else held_ms,
                cost_usd=cost_of_usage(prompt, completion, 0 if lost else held_ms, prices),
            )
        )
    Sample.objects.bulk_create(lost)
    if lost:
        log.warning(
            "query %s: billed %d samples of a dead run at an upper bound", query.pk, len(lost)
        )
    return len(lost)


def _close(query: Query, status: str, error: str = "") -> None:
    """Finish a locked query that is not running anywhere: bill its samples, settle."""
    _bill_written_samples(query)
    query.status = status
    if error:
        query.error = error[:4000]
    _finish(query)
    query.save()


class PromptTooLong(ValueError):
    pass


def _check_prompt_length(engine: Any, query: Query) -> None:
    count = getattr(engine, "count_prompt_tokens", None)
    if count is None:
        return
    tokens = count(messages=query.messages or [{"role": "user", "content": query.prompt}])
    configuration = configuration_of(query)
    limit = configuration.max_prompt_tokens
    if tokens > limit:
        raise PromptTooLong(
            f"the prompt has {tokens} tokens; configuration {configuration.slug} "
            f"accepts at most {limit}"
        )


def query_complete(*, query: Query, result: Any, offset: int, run: _Run) -> str:
    """Store a strategy's result, price its ledger, grade it and settle the budget."""
    for candidate in result.candidates:
        run.save_candidate(candidate)
    for call in getattr(result, "scorer_calls", None) or []:
        run.save_scorer(call)
    with transaction.atomic():
        locked = Query.objects.select_for_update().get(pk=query.pk)
        if locked.is_finished:
            return locked.status
        apply_result(locked, result, run.prices, run.stage_prices)
        # The rows are the bill: this run's samples and scorer calls, and those written by
        # an earlier, interrupted run of this query (they were generated: billed).
        _bill_written_samples(locked)
        aborted = Sample.objects.filter(query=locked, aborted=True).aggregate(
            c=Sum("completion_tokens")
        )["c"]
        _finish(locked, aborted_completion_tokens=int(aborted or 0))
        locked.save()
    return locked.status


def _settle_attributes(query: Query) -> dict[str, Any]:
    """The settlement span's attributes: the query's final ledger (what its budgets are charged)."""
    return {
        tracing.QUERY_ID: str(query.pk),
        tracing.CONFIGURATION: query.configuration.slug if query.configuration else "",
        "costpass.query.status": str(query.status),
        tracing.PROMPT_TOKENS: query.prompt_tokens,
        tracing.COMPLETION_TOKENS: query.completion_tokens,
        tracing.SAMPLES: query.samples_done,
        tracing.COST_USD: tracing.usd(query.cost_usd),
        tracing.RESERVED_USD: tracing.usd(query.reserved_usd),
    }


def _finish(query: Query, *, aborted_completion_tokens: int | None = None) -> None:
    """Stamp the end time and replace the reservation with the real cost (once).

    ``aborted_completion_tokens`` (from the strategy's ledger) spares the metrics a query for
    them when the caller has it."""
    finish_stamp(query)
    with settle_span(query):
        windows = budget_settle(
            usage_ids=query.budget_windows, reserved=query.reserved_usd, spent=query.cost_usd
        )
    finish_settled(query, windows, aborted_completion_tokens=aborted_completion_tokens)


def finish_stamp(query: Query) -> None:
    """Stamp a finishing query's end time and latency (and grading time), not saved."""
    query.finished_at = timezone.now()
    query.latency_ms = int((query.finished_at - query.created_at).total_seconds() * 1000)
    if query.graded_correct is not None and query.graded_at is None:
        query.graded_at = query.finished_at


@contextmanager
def settle_span(query: Query) -> Iterator[None]:
    """The ``costpass.budget.settle`` span around a query's settlement."""
    with tracing.span("costpass.budget.settle") as span:
        if span is not None:
            span.set_attributes(_settle_attributes(query))
        yield


def finish_settled(
    query: Query,
    windows: list[BudgetUsage] | None,
    *,
    aborted_completion_tokens: int | None = None,
) -> None:
    """What follows a finished query's settlement: its budget alerts (``windows``: the
    settled windows, as budget_settle returns them) and, once committed, its end hooks."""
    if query.budget_windows and query.cost_usd > 0:
        from routerapp.services.alerts import budget_alerts_raise

        budget_alerts_raise(usage_ids=query.budget_windows, windows=windows)
    # The dashboards' daily rollup: its group is refreshed (debounced, off the request path)
    # once this is committed; robust, because a rollup failure must not fail a finished query.
    from routerapp.services.rollups import rollup_schedule

    transaction.on_commit(lambda: rollup_schedule(query=query), robust=True)
    if query.benchmark_run_id is not None:
        from routerapp.services.benchmarks import benchmark_run_refresh

        run_id = query.benchmark_run_id
        transaction.on_commit(lambda: benchmark_run_refresh(run_id=run_id))
    # Last, once the row is committed and the hooks above have run: tell whoever waits for or
    # streams this query, and charge its tokens to its key's per-minute window.
    from routerapp import metrics

    transaction.on_commit(
        lambda: metrics.record_query_finished(
            query=query, aborted_completion_tokens=aborted_completion_tokens
        ),
        robust=True,
    )
    query_pk, status, key_id = query.pk, str(query.status), query.api_key_id
    tokens = query.prompt_tokens + query.completion_tokens
    transaction.on_commit(
        lambda: query_finished_notify(
            query_id=query_pk, status=status, api_key_id=key_id, tokens=tokens
        ),
        robust=True,
    )


def _bill_written_samples(query: Query) -> None:
    """Set a query's billed totals (not saved) from its written sample and scorer rows."""
    totals: dict[str, Any] = {"p": 0, "c": 0, "ms": 0, "usd": Decimal(0)}
    counts: dict[str, int] = {}
    for name, model in (("samples", Sample), ("scorers", ScorerCall)):
        part = model.objects.filter(query=query).aggregate(
            n=Count("id"),
            p=Sum("prompt_tokens"),
            c=Sum("completion_tokens"),
            ms=Sum("engine_ms"),
            usd=Sum("cost_usd"),
        )
        for key in ("p", "c", "ms", "usd"):
            totals[key] += part[key] or 0
        counts[name] = part["n"]
    parts = Sample.objects.filter(query=query).aggregate(
        cached=Sum("cached_prompt_tokens"), reasoning=Sum("reasoning_tokens")
    )
    query.prompt_tokens = totals["p"]
    query.completion_tokens = totals["c"]
    query.cached_prompt_tokens = parts["cached"] or 0
    query.reasoning_tokens = parts["reasoning"] or 0
    query.engine_ms = totals["ms"]
    query.cost_usd = totals["usd"]
    query.samples_done = counts["samples"]
    query.scorer_calls = counts["scorers"]
    if query.configuration_id is not None and not query.billed_prices:
        query.billed_prices = endpoint_prices(configuration_of(query).endpoint).to_dict()


@transaction.atomic
def query_fail(*, query_id: str, error: str) -> None:
    """Mark a query failed, bill the samples it had generated and settle its budget."""
    query = Query.objects.select_for_update().get(pk=query_id)
    if query.is_finished:
        return
    _bill_written_samples(query)
    query.status = Query.Status.FAILED
    query.error = error[:4000]
    _finish(query)
    query.save()


def query_finish_cancelled(*, query: Query) -> None:
    """Close a query cancelled before or while running; bill what it generated."""
    with transaction.atomic():
        locked = Query.objects.select_for_update().get(pk=query.pk)
        if locked.is_finished:
            return
        _bill_written_samples(locked)
        locked.status = Query.Status.CANCELLED
        _finish(locked)
        locked.save()


def queries_reap_stale(*, now: Any = None) -> int:
    """Recover the queries whose process died or whose message was lost; return how many.
    Run periodically (Celery beat, every REAP_INTERVAL_S).

    - Running, heartbeat silent for QUERY_STALE_S (or, for rows without a heartbeat, started
      longer ago than the hard time limit plus REAP_GRACE_S): the samples it was generating
      are billed at an upper bound (``samples_recover``); a worker run is queued again (it
      reruns within its reservation, see ``_claim``) while attempts are left, else, and for a
      query the web process ran itself (its caller is gone with it), it is failed and settled.
    - Queued and not taken within QUERY_REDISPATCH_S of its last dispatch: handed to the
      broker again (a message lost with a restarted Redis, or acknowledged by a worker that
      could not reach the database); queued for longer than QUERY_QUEUE_TIMEOUT_S: failed, its
      reservation released.
    """
    now = now or timezone.now()
    legacy = now - dt.timedelta(seconds=settings.QUERY_HARD_TIME_LIMIT_S + settings.REAP_GRACE_S)
    stale = Query.objects.filter(status=Query.Status.RUNNING).filter(
        Q(heartbeat_at__lt=_heartbeat_stale_before(now))
        | Q(heartbeat_at__isnull=True, started_at__lt=legacy)
    )
    reaped = 0
    requeue: list[Query] = []
    for query_id in stale.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            locked = (
                Query.objects.select_for_update(of=("self",))
                .select_related("configuration__endpoint", "configuration__strategy")
                .get(pk=query_id)
            )
            if locked.status != Query.Status.RUNNING:
                continue
            if locked.heartbeat_at is not None and locked.heartbeat_at >= _heartbeat_stale_before(
                now
            ):
                continue
            samples_recover(query=locked)
            reaped += 1
            if 0 < locked.runs < settings.QUERY_MAX_ATTEMPTS and not locked.cancel_requested:
                # Its samples are recovered; the rerun's claim checks the reservation.
                locked.status = Query.Status.QUEUED
                locked.dispatched_at = now
                locked.save(update_fields=["status", "dispatched_at"])
                requeue.append(locked)
                continue
            _close(
                locked,
                Query.Status.CANCELLED if locked.cancel_requested else Query.Status.FAILED,
                ""
                if locked.cancel_requested
                else (
                    "the process running this query stopped without finishing it; the samples "
                    "it had written are billed, and the ones it was generating at an upper bound"
                ),
            )
    lost_before = now - dt.timedelta(seconds=settings.QUERY_REDISPATCH_S)
    waiting = Query.objects.filter(status=Query.Status.QUEUED).filter(
        Q(dispatched_at__lt=lost_before) | Q(dispatched_at__isnull=True, created_at__lt=lost_before)
    )
    expired = now - dt.timedelta(seconds=settings.QUERY_QUEUE_TIMEOUT_S)
    for query_id in waiting.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            locked = (
                Query.objects.select_for_update(of=("self",))
                .select_related("configuration__endpoint")
                .get(pk=query_id)
            )
            if locked.status != Query.Status.QUEUED:
                continue
            reaped += 1
            if locked.created_at < expired:
                _close(
                    locked,
                    Query.Status.FAILED,
                    "no worker took this query in time; nothing was generated after its "
                    "last run, its reservation is released",
                )
                continue
            locked.dispatched_at = now
            locked.save(update_fields=["dispatched_at"])
            requeue.append(locked)
    for query in requeue:
        query_dispatch(query=query)
    if reaped:
        log.warning("recovered %d stale queries (%d dispatched again)", reaped, len(requeue))
    return reaped


def query_dispatch(*, query: Query) -> bool:
    """Hand a queued query to its engine's queue (by task name); return False, logged, when
    the broker cannot be reached (the query stays queued and the reaper tries again)."""
    from workers.celery import app
    from workers.queues import queue_for_engine

    endpoint = configuration_of(query).endpoint
    try:
        app.send_task(
            "costpass.query_execute",
            args=[str(query.pk)],
            queue=queue_for_engine(endpoint.engine, endpoint.queue),
            ignore_result=True,
        )
    except Exception as exc:  # broker down: the row is the durable record, retried later
        log.warning("could not dispatch query %s again: %s", query.pk, exc)
        return False
    return True
