"""Running a query in a Celery worker: the strategy on the configuration's engine, every sample
written as it finishes, the ledger priced, the budget settled, all in one place."""

from __future__ import annotations

import datetime as dt
import logging
import time
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Max, Q, Sum
from django.utils import timezone

from routerapp.models import Configuration, ModelEndpoint, Query, Sample
from routerapp.services.attempts import Attempt, Attempts, NoTargetLeft, may_fall_back
from routerapp.services.breakers import target_busy
from routerapp.services.budgets import budget_settle
from routerapp.services.pricing import endpoint_prices
from routerapp.services.streaming import EventSink, query_events_publisher, query_finished_notify
from workers.engines.resilience import RETRY_LOG, UpstreamError
from workers.ledger import Prices, cost_of_tokens, cost_usd

log = logging.getLogger(__name__)

# How often a running query re-reads its cancel flag: cheap enough per token, quick to react.
CANCEL_POLL_S = 0.25


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

    def __init__(self, query_id: Any):
        self.query_id = query_id
        self._next_poll = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_S
            self._cancelled = Query.objects.filter(pk=self.query_id, cancel_requested=True).exists()
        return self._cancelled


def sample_fields(candidate: Any, prices: Prices) -> dict[str, Any]:
    """Return the Sample columns of one strategy candidate, priced with workers.ledger."""
    prompt_tokens = int(candidate.prompt_tokens)
    completion_tokens = int(candidate.completion_tokens)
    cached = int(getattr(candidate, "cached_prompt_tokens", 0) or 0)
    reasoning = int(getattr(candidate, "reasoning_tokens", 0) or 0)
    latency = candidate.latency_s
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
        "cost_usd": cost_of_tokens(
            prompt_tokens,
            completion_tokens,
            prices,
            cached_prompt_tokens=cached,
            reasoning_tokens=reasoning,
        ),
    }


def apply_result(
    query: Query, result: Any, prices: Prices, stage_prices: dict[str, Prices] | None = None
) -> None:
    """Copy a strategy result onto the query (not saved): the ledger's totals priced in one
    place, the answer and vote, the final status, and the grade when the query has a gold.
    A run over several endpoints (a cascade) prices each endpoint's ledger at its prices
    (``stage_prices`` by endpoint name; the configuration's own is ``prices``)."""
    from workers.grading import grade

    ledger = result.ledger
    query.prompt_tokens = int(ledger.prompt_tokens)
    query.completion_tokens = int(ledger.completion_tokens)
    query.cached_prompt_tokens = int(ledger.cached_prompt_tokens)
    query.reasoning_tokens = int(ledger.reasoning_tokens)
    query.engine_requests = int(ledger.engine_requests)
    query.scorer_calls = int(ledger.scorer_calls)
    query.scorer_prompt_tokens = int(ledger.scorer_prompt_tokens)
    query.scorer_completion_tokens = int(ledger.scorer_completion_tokens)
    query.trace = dict(getattr(result, "trace", None) or {})
    stages = getattr(result, "stage_ledgers", None) or {}
    if stages:
        query.cost_usd = sum(
            (
                cost_usd(part, (stage_prices or {}).get(name, prices))
                for name, part in stages.items()
            ),
            Decimal(0),
        )
    else:
        query.cost_usd = cost_usd(ledger, prices)
    # The prices are kept with the bill: a later price change never rewrites this query.
    query.billed_prices = prices.to_dict()
    if stages and stage_prices:
        query.billed_prices["stages"] = {name: p.to_dict() for name, p in stage_prices.items()}
    query.samples_done = len(result.candidates)
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

    def __init__(self, query: Query, offset: int, events: EventSink | None = None):
        self.query = query
        self.offset = offset
        self.prices = endpoint_prices(configuration_of(query).endpoint)
        # Token deltas and finished samples go to whoever streams this query (API, playground).
        self.events = events if events is not None else query_events_publisher(query.pk)
        self.should_cancel = CancelPoll(query.pk)
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
        candidate = getattr(event, "candidate", None)
        if candidate is not None:
            self.save_candidate(candidate)
            self.events.sample(self.offset + int(candidate.index))
            return
        text = getattr(event, "text", None)
        if text and isinstance(text, str):  # a token delta of one sample
            self.tokens_sent += 1
            self.events.token(self.offset + int(getattr(event, "index", 0)), text)

    def save_candidate(self, candidate: Any) -> None:
        """Write one finished (or aborted) sample and bump the query's running totals."""
        prices = self.stage_prices.get(getattr(candidate, "endpoint", None) or "", self.prices)
        defaults = sample_fields(candidate, prices)
        index = self.offset + int(candidate.index)
        with transaction.atomic():
            _, created = Sample.objects.update_or_create(
                query=self.query, index=index, defaults=defaults
            )
            if created:
                Query.objects.filter(pk=self.query.pk).update(samples_done=F("samples_done") + 1)


def query_run(*, query_id: str, events: EventSink | None = None) -> str:
    """Run a queued query to the end and return its final status.

    ``events`` receives token deltas and finished samples (default: the query's shared event
    channel, see services.streaming); the end is always announced on the shared channel.

    Idempotent under redelivery: a finished query is left as it is; a query whose worker died
    mid-run keeps the samples it had written (they were generated, so they are billed) and runs
    again with new sample indices.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    started = Query.objects.filter(
        pk=query_id, status__in=[Query.Status.QUEUED, Query.Status.RUNNING]
    ).update(status=Query.Status.RUNNING, started_at=timezone.now())
    query = Query.objects.select_related("configuration__endpoint", "configuration__strategy").get(
        pk=query_id
    )
    if not started:
        return query.status
    if query.cancel_requested:
        query_finish_cancelled(query=query)
        return Query.Status.CANCELLED
    offset = Sample.objects.filter(query=query).count()
    configuration = configuration_of(query)
    here = queue_of(configuration)
    # A fallback on another worker pool is handed over to it (see _hand_off).
    attempts = Attempts(query, runs_here=lambda c: True)
    attempts.billed = Sample.objects.filter(query=query).aggregate(usd=Sum("cost_usd"))[
        "usd"
    ] or Decimal(0)
    run = _Run(query, offset, events)
    while True:
        try:
            attempt = attempts.next()
        except NoTargetLeft as exc:
            attempts.save()
            run.events.flush()
            query_fail(query_id=query_id, error=f"EndpointsUnavailable: {exc}")
            return Query.Status.FAILED
        if queue_of(attempt.configuration) != here:
            # The fallback runs on another worker pool: hand the query over to it.
            attempts.save()
            run.events.flush()
            return _hand_off(query)
        run = _Run(query, offset, events)
        try:
            result = _run_attempt(query, attempt, run)
        except SoftTimeLimitExceeded:
            attempts.save()
            run.events.flush()
            query_fail(query_id=query_id, error="the query ran past its time limit")
            return Query.Status.FAILED
        except Exception as exc:
            written = Sample.objects.filter(query=query)
            last = written.aggregate(n=Max("index"))["n"]
            attempts.failed(attempt, exc, index=max(offset, -1 if last is None else last + 1))
            # The next attempt numbers its samples after every sample written so far.
            totals = written.aggregate(n=Max("index"), usd=Sum("cost_usd"))
            offset = max(offset, -1 if totals["n"] is None else totals["n"] + 1)
            attempts.billed = totals["usd"] or Decimal(0)
            if may_fall_back(exc) and not run.tokens_sent:
                log.warning("query %s: attempt on %s failed: %s", query_id, attempt.target.key, exc)
                continue
            if not isinstance(exc, UpstreamError):
                log.exception("query %s failed", query_id)
            attempts.save()
            run.events.flush()
            query_fail(query_id=query_id, error=f"{type(exc).__name__}: {exc}")
            return Query.Status.FAILED
        attempts.succeeded(attempt)
        attempts.save()
        run.events.flush()
        return query_complete(query=query, result=result, offset=offset, run=run)


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
    from workers.engines import get_engine
    from workers.strategies import get_strategy

    configuration = attempt.configuration
    target = attempt.target
    engine = get_engine(target.engine, target.engine_params)
    strategy = get_strategy(configuration.strategy.strategy)
    params = strategy.validate_params(configuration.strategy.params)
    _check_prompt_length(engine, query)
    engines = run.load_stages(strategy, params)  # a cascade's other endpoints
    token = RETRY_LOG.set(attempt.retries)
    try:
        with target_busy(target, counted=configuration.endpoint.balancing == "least_busy"):
            return strategy.run(
                engine,
                messages=query.messages or [{"role": "user", "content": query.prompt}],
                params=params,
                answer_kind=query.answer_kind or None,
                on_event=run.on_event,
                should_cancel=run.should_cancel,
                engines=engines,
            )
    finally:
        RETRY_LOG.reset(token)


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
    with transaction.atomic():
        locked = Query.objects.select_for_update().get(pk=query.pk)
        if locked.is_finished:
            return locked.status
        apply_result(locked, result, run.prices, run.stage_prices)
        # Samples written by an earlier, interrupted run of this query were generated: billed.
        earlier = Sample.objects.filter(query=locked, index__lt=offset).aggregate(
            n=Count("id"),
            p=Sum("prompt_tokens"),
            c=Sum("completion_tokens"),
            aborted=Sum("completion_tokens", filter=Q(aborted=True)),
            cached=Sum("cached_prompt_tokens"),
            reasoning=Sum("reasoning_tokens"),
            usd=Sum("cost_usd"),
        )
        locked.prompt_tokens += earlier["p"] or 0
        locked.completion_tokens += earlier["c"] or 0
        locked.cached_prompt_tokens += earlier["cached"] or 0
        locked.reasoning_tokens += earlier["reasoning"] or 0
        locked.cost_usd += earlier["usd"] or Decimal(0)
        locked.samples_done += earlier["n"]
        _finish(
            locked,
            aborted_completion_tokens=int(result.ledger.aborted_completion_tokens)
            + (earlier["aborted"] or 0),
        )
        locked.save()
    return locked.status


def _finish(query: Query, *, aborted_completion_tokens: int | None = None) -> None:
    """Stamp the end time and replace the reservation with the real cost (once).

    ``aborted_completion_tokens`` (from the strategy's ledger) spares the metrics a query for
    them when the caller has it."""
    query.finished_at = timezone.now()
    query.latency_ms = int((query.finished_at - query.created_at).total_seconds() * 1000)
    if query.graded_correct is not None and query.graded_at is None:
        query.graded_at = query.finished_at
    budget_settle(usage_ids=query.budget_windows, reserved=query.reserved_usd, spent=query.cost_usd)
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
    totals = Sample.objects.filter(query=query).aggregate(
        p=Sum("prompt_tokens"),
        c=Sum("completion_tokens"),
        cached=Sum("cached_prompt_tokens"),
        reasoning=Sum("reasoning_tokens"),
        usd=Sum("cost_usd"),
    )
    query.prompt_tokens = totals["p"] or 0
    query.completion_tokens = totals["c"] or 0
    query.cached_prompt_tokens = totals["cached"] or 0
    query.reasoning_tokens = totals["reasoning"] or 0
    query.cost_usd = totals["usd"] or Decimal(0)
    query.samples_done = Sample.objects.filter(query=query).count()


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
    """Fail the queries that have been running longer than any worker may run one (their worker
    or web process died without a redelivery): bill the samples they wrote and release the rest
    of their reservation. Return how many were reaped. Run periodically (Celery beat)."""
    now = now or timezone.now()
    limit = dt.timedelta(seconds=settings.QUERY_HARD_TIME_LIMIT_S + settings.REAP_GRACE_S)
    stale = Query.objects.filter(status=Query.Status.RUNNING, started_at__lt=now - limit)
    reaped = 0
    for query_id in stale.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            locked = Query.objects.select_for_update().get(pk=query_id)
            if locked.status != Query.Status.RUNNING:
                continue
            _bill_written_samples(locked)
            locked.status = Query.Status.FAILED
            locked.error = (
                "the process running this query stopped without finishing it; the samples it "
                "had written are billed"
            )
            _finish(locked)
            locked.save()
            reaped += 1
    if reaped:
        log.warning("reaped %d stale running queries", reaped)
    return reaped
