"""Creating, cancelling and grading queries."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from routerapp.errors import (
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
    ServiceUnavailable,
)
from routerapp.models import (
    ApiKey,
    BudgetPolicy,
    ModelEndpoint,
    Query,
    QueryTag,
    Sample,
    ScorerCall,
    Team,
)
from routerapp.selectors.access import permitted_configuration_slugs
from routerapp.selectors.catalog_cache import (
    CATALOG_AT,
    CatalogChanged,
    cached,
    catalog_pinned,
    catalog_version,
)
from routerapp.services import statements
from routerapp.services.budgets import (
    ZERO,
    Reservation,
    budget_reserve,
    budget_reserve_parts,
    budget_settle,
    budget_settle_sql,
    hard_budget_left,
    policies_for,
    settled_windows,
)
from routerapp.services.pricing import endpoint_prices, prompt_token_bound, worst_case_cost
from routerapp.services.request_fields import query_run_spec, strategy_params
from routerapp.services.routing import RequestConstraints, RoutingDecision, decide
from workers import tracing
from workers.queues import queue_for_engine
from workers.strategies import get_strategy
from workers.strategies.request_options import RequestOptions

log = logging.getLogger(__name__)

MAX_TASK_CHARS = 64
MAX_END_USER_CHARS = 256
VALID_ROLES = {"system", "user", "assistant", "developer", "tool"}


def _check_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Return the messages to store and send: role and content (a string, or the content
    parts when they hold more than text: images, audio), plus an agent loop's tool fields
    (an assistant's ``tool_calls``, a tool result's ``tool_call_id``, a ``name``)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("messages must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidInput(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in VALID_ROLES:
            raise InvalidInput(
                f"messages[{i}].role must be one of {sorted(VALID_ROLES)}",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: plain text when only text
            parts = [p for p in content if isinstance(p, dict)]
            if len(parts) != len(content):
                raise InvalidInput(
                    f"messages[{i}].content parts must be objects", param=f"messages[{i}].content"
                )
            if all(p.get("type") in ("text", "refusal") for p in parts):
                content = "\n".join(str(p.get("text") or "") for p in parts)
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = None  # an assistant turn that only called tools
        elif not isinstance(content, (str, list)):
            raise InvalidInput(
                f"messages[{i}].content must be a string", param=f"messages[{i}].content"
            )
        if "\x00" in _text_of(content):
            raise InvalidInput(
                f"messages[{i}].content must not contain NUL characters",
                param=f"messages[{i}].content",
            )
        entry: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": content,
        }
        for extra in ("tool_calls", "tool_call_id", "name"):
            if m.get(extra) is not None:
                entry[extra] = m[extra]
        clean.append(entry)
    if not any(
        m["role"] == "user" and (isinstance(m["content"], list) or m["content"].strip())
        for m in clean
    ):
        raise InvalidInput("messages need at least one non-empty user message", param="messages")
    return clean


def _text_of(content: Any) -> str:
    """The text of a message content (a string, or the text parts of a list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def prompt_text(prompt: str, messages: list[dict[str, str]] | None) -> str:
    """Return the text the router reads: the last user message of a chat, else the prompt."""
    if messages:
        users = [_text_of(m["content"]) for m in messages if m["role"] == "user"]
        return users[-1] if users else ""
    return prompt


def query_create(
    *,
    team: Team,
    prompt: str = "",
    messages: list[Any] | None = None,
    task: str = "",
    constraints: RequestConstraints | None = None,
    api_key: ApiKey | None = None,
    user: Any = None,
    source: str = Query.Source.API,
    gold: str = "",
    answer_kind: str = "",
    downgrade_on_budget: bool | None = None,
    benchmark_run: Any = None,
    defer_dispatch: bool = False,
    end_user: str = "",
    tags: list[str] | None = None,
    options: RequestOptions | None = None,
    recorded: dict[str, Any] | None = None,
) -> Query:
    """Validate a request, route it, reserve its worst-case cost under the covering budgets,
    store it and enqueue it once the transaction commits. Raise a ServiceError (nothing written)
    when the input is bad, nothing fits the constraints, or a hard budget cannot cover it;
    raise ServiceUnavailable (and withdraw the query) when the task broker cannot be reached.

    With ``defer_dispatch`` nothing is enqueued: the caller runs the query with
    ``query_run_inline`` or hands it to the workers with ``query_enqueue``.

    ``options`` are the request's OpenAI fields: only configurations that honour them are
    routed to (a 400 naming the field when none does), and the query runs, and is reserved,
    with the sampling they set.
    """
    constraints = constraints or RequestConstraints()
    if options is not None:
        constraints = RequestConstraints(**{**constraints.__dict__, "options": options})
    if messages is not None:
        messages = _check_messages(messages)
        prompt = ""
    elif not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("prompt must be a non-empty string", param="prompt")
    elif "\x00" in prompt:
        raise InvalidInput("prompt must not contain NUL characters", param="prompt")
    size = (
        sum(len(str(m["content"] or "")) + len(str(m.get("tool_calls") or "")) for m in messages)
        if messages
        else len(prompt)
    )
    if size > settings.MAX_PROMPT_CHARS:
        raise PayloadTooLarge(
            f"prompt has {size} characters; the limit is {settings.MAX_PROMPT_CHARS}",
            param="messages" if messages else "prompt",
        )
    task = (task or "").strip()
    if len(task) > MAX_TASK_CHARS:
        raise InvalidInput(f"task must be at most {MAX_TASK_CHARS} characters", param="task")
    end_user = (end_user or "").strip()
    if len(end_user) > MAX_END_USER_CHARS:
        raise InvalidInput(f"user must be at most {MAX_END_USER_CHARS} characters", param="user")
    tags = query_tags_clean(tags)

    text = prompt_text(prompt, messages)
    tokens_bound = prompt_token_bound(prompt, messages)
    # Only what the team's and the key's allowlists permit is routed to (403 otherwise).
    constraints = dataclasses.replace(
        constraints, permitted=permitted_configuration_slugs(team=team, api_key=api_key)
    )

    # The configurations, router versions and policies come from this process's cache, pinned
    # first at the newest catalog version this process has read, without a round trip: the
    # statement that reserves and stores the query checks that version, and when the catalog
    # has moved the request is routed again on the current one (selectors.catalog_cache).
    def route_and_store(optimistic: bool) -> tuple[Query, RoutingDecision, Reservation]:
        with (
            tracing.span("costpass.route") as span,
            catalog_pinned(optimistic=optimistic) as seen,
            _pin_on_errors(seen),
        ):
            decision = decide(
                prompt=text,
                task=task,
                constraints=constraints,
                prompt_tokens=tokens_bound,
                team=team,
            )
            policies = cached(
                ("policies", team.pk, api_key.pk if api_key else None, end_user),
                lambda: policies_for(team, api_key, end_user),
            )
            decision = _within_budget(
                team,
                api_key,
                policies,
                decision,
                constraints,
                text,
                task,
                tokens_bound,
                downgrade_on_budget,
                end_user=end_user,
            )
            if span is not None:
                span.set_attributes(_route_attributes(team, decision))
        configuration = decision.configuration
        reserve = worst_case_cost(configuration, tokens_bound, options)
        strategy, params = strategy_params(configuration, options)

        # A query this process will run itself starts running at once (saves a round trip).
        inline = defer_dispatch and _runs_inline(configuration, strategy.planned_samples(params))
        now = timezone.now()
        query = Query(
            status=Query.Status.RUNNING if inline else Query.Status.QUEUED,
            started_at=now if inline else None,
            # The reaper's clocks: a running query's heartbeat, a queued one's last dispatch.
            heartbeat_at=now if inline else None,
            dispatched_at=now,
            team=team,
            api_key=api_key,
            user=user if getattr(user, "is_authenticated", False) else None,
            source=source,
            prompt=prompt,
            messages=messages,
            task=task,
            end_user=end_user,
            tags=tags,
            request_options={
                **(options.as_json() if options is not None else {}),
                **({"recorded": recorded} if recorded else {}),
            },
            gold=gold,
            answer_kind=answer_kind,
            constraints=constraints.as_json(),
            configuration=configuration,
            router_version=decision.router_version,
            predicted_p_correct=decision.p_correct,
            predicted_cost_usd=decision.cost_usd,
            decision=decision.as_json(),
            samples_planned=strategy.planned_samples(params),
            benchmark_run=benchmark_run,
        )
        tag_rows = [QueryTag(query=query, team=team, tag=t) for t in tags]
        with tracing.span("costpass.budget.reserve") as span:
            reservation = _reserve_and_store(
                query,
                tag_rows,
                team=team,
                api_key=api_key,
                amount=reserve,
                policies=policies,
                catalog=seen if optimistic else None,
            )
            if span is not None:
                span.set_attributes(
                    {
                        tracing.RESERVED_USD: tracing.usd(reservation.amount),
                        "costpass.budget.windows": len(reservation.usage_ids),
                    }
                )
        return query, decision, reservation

    try:
        query, decision, reservation = route_and_store(optimistic=True)
    except CatalogChanged:
        query, decision, reservation = route_and_store(optimistic=False)
    except ServiceError as exc:
        # Refused on what the optimistic pin read (nothing fits, a budget): refuse only if
        # that is still the catalog, else decide again on the current one.
        pin = _optimistic_pin(exc)
        if pin is None or catalog_version(fresh=True) == pin:
            raise
        query, decision, reservation = route_and_store(optimistic=False)
    # The request's span (Django's, when tracing is on) names the query: find a trace by id.
    tracing.annotate({tracing.QUERY_ID: str(query.pk)})
    if not defer_dispatch:
        transaction.on_commit(lambda: query_enqueue(query=query))
    from routerapp import metrics

    version_id = decision.router_version.pk if decision.router_version else None
    reason = _decision_reason(decision)
    transaction.on_commit(
        lambda: metrics.record_decision(router_version=version_id, reason=reason), robust=True
    )
    return query


@contextlib.contextmanager
def _pin_on_errors(version: int | None) -> Iterator[None]:
    """Note on a ServiceError raised inside the catalog version it was decided at."""
    try:
        yield
    except ServiceError as exc:
        exc.catalog_version = version  # type: ignore[attr-defined]
        raise


def _optimistic_pin(exc: ServiceError) -> int | None:
    return getattr(exc, "catalog_version", None)


def _reserve_and_store(
    query: Query,
    tag_rows: list[QueryTag],
    *,
    team: Team,
    api_key: ApiKey | None,
    amount: Decimal,
    policies: list[BudgetPolicy],
    catalog: int | None = None,
) -> Reservation:
    """Reserve ``amount`` under ``policies`` and insert the query (and its tag rows) with the
    reservation, all or nothing; return the reservation (BudgetExceeded: nothing written).
    ``catalog``: the catalog version the request was routed at without reading it; raise
    CatalogChanged (nothing written) when the catalog is no longer at that version.

    On Postgres, once this process knows the budget windows' ids, one guarded statement
    (services.statements): the reservations and the inserts commit together, or the guard
    refuses them all when a hard budget cannot cover the amount, and the general path below
    says which. Elsewhere, or then, one transaction."""
    end_user = query.end_user
    now = query.dispatched_at or timezone.now()
    parts = (
        budget_reserve_parts(amount=amount, policies=policies, end_user=end_user, now=now)
        if statements.available()
        else None
    )
    if parts is not None:
        _set_reservation(query, parts.reservation)
        writes = [*parts.parts, ("q", *statements.insert_sql(Query, [query]))]  # stamps it
        _stamp_tags(query, tag_rows)
        if tag_rows:
            writes.append(("t", *statements.insert_sql(QueryTag, tag_rows)))
        soft = ", ".join(f"(SELECT * FROM {name})" for _, name in parts.soft)
        guard, args = parts.guard, []
        if catalog is not None:
            guard, args = f"({guard}) * {CATALOG_AT}", [catalog]
        try:
            [row] = statements.run_guarded(writes, guard, select=soft, params=args)
        except statements.Refused:
            pass  # the catalog moved (checked below), or the general path says why
        else:
            parts.flag_soft(list(row[1:]))
            if parts.reservation.soft_flags:
                Query.objects.filter(pk=query.pk).update(budget_flags=parts.reservation.soft_flags)
            query.budget_flags = parts.reservation.soft_flags
            _mark_saved([query, *tag_rows])
            return parts.reservation
    if catalog is not None and catalog_version(fresh=True) != catalog:
        raise CatalogChanged()  # routed on a catalog that has moved: route again
    with transaction.atomic():
        reservation = budget_reserve(
            team=team,
            api_key=api_key,
            amount=amount,
            policies=policies,
            end_user=end_user,
            now=now,
        )
        _set_reservation(query, reservation)
        query.save(force_insert=True)
        _stamp_tags(query, tag_rows)
        if tag_rows:
            QueryTag.objects.bulk_create(tag_rows)
    return reservation


def _set_reservation(query: Query, reservation: Reservation) -> None:
    query.reserved_usd = reservation.amount
    query.budget_windows = list(reservation.usage_ids)
    query.budget_flags = list(reservation.soft_flags)


def _stamp_tags(query: Query, tag_rows: list[QueryTag]) -> None:
    """Give the tag rows their query's creation time (stamped when it is inserted)."""
    for row in tag_rows:
        row.created_at = query.created_at


def _mark_saved(objs: list[Any]) -> None:
    """Mark objects inserted by a guarded statement as saved (as ``save()`` would)."""
    for obj in objs:
        obj._state.adding, obj._state.db = False, connection.alias


def _route_attributes(team: Team, decision: RoutingDecision) -> dict[str, Any]:
    """The routing span's attributes: who asked, what was chosen, what the router expected."""
    attributes: dict[str, Any] = {
        tracing.TEAM: team.name,
        tracing.CONFIGURATION: decision.configuration.slug,
        "costpass.route.reason": _decision_reason(decision),
    }
    if decision.cost_usd is not None:
        attributes["costpass.route.predicted_cost_usd"] = tracing.usd(decision.cost_usd)
    if decision.p_correct is not None:
        attributes["costpass.route.predicted_p_correct"] = float(decision.p_correct)
    if decision.router_version is not None:
        attributes["costpass.route.router_version"] = decision.router_version.pk
    return attributes


def _decision_reason(decision: RoutingDecision) -> str:
    """The decision's kind as a metric label (the decision's own reason is free text)."""
    if decision.reason.startswith("downgraded"):
        return "downgraded"
    if decision.explored:
        return "explored"
    if decision.router_version is not None:
        return "router"
    if decision.reason.startswith("only"):
        return "only"
    return "best_single" if "best single" in decision.reason else "cheapest"


MAX_TAGS = 10
MAX_TAG_CHARS = 64
TAGS_HEADER = "x-costpass-tags"


def query_tags_parse(header: str | None) -> list[str]:
    """Return the tags of an ``x-costpass-tags`` header: comma-separated (``search, env=prod``),
    blanks dropped, duplicates once. Raise InvalidInput naming the header when it has too many
    or a bad one."""
    if header is None:
        return []
    return query_tags_clean([t for t in header.split(",") if t.strip()])


def query_tags_clean(tags: list[str] | None) -> list[str]:
    """Return tags validated: at most MAX_TAGS of 1..MAX_TAG_CHARS printable characters."""
    cleaned = list(dict.fromkeys(t.strip() for t in tags or []))
    if len(cleaned) > MAX_TAGS:
        raise InvalidInput(
            f"{TAGS_HEADER} has {len(cleaned)} tags; at most {MAX_TAGS}", param=TAGS_HEADER
        )
    for tag in cleaned:
        if not tag or len(tag) > MAX_TAG_CHARS or not tag.isprintable():
            raise InvalidInput(
                f"{TAGS_HEADER}: each tag must be 1 to {MAX_TAG_CHARS} printable characters "
                f"(got {tag[:80]!r})",
                param=TAGS_HEADER,
            )
    return cleaned


def _within_budget(
    team: Team,
    api_key: ApiKey | None,
    policies: list[BudgetPolicy],
    decision: RoutingDecision,
    constraints: RequestConstraints,
    text: str,
    task: str,
    tokens_bound: int,
    downgrade: bool | None,
    *,
    end_user: str = "",
) -> RoutingDecision:
    """Re-ask the router with what is left when a downgrading hard budget cannot cover it."""
    if not policies:
        return decision
    if downgrade is None:
        downgrade = any(p.mode == BudgetPolicy.Mode.HARD_DOWNGRADE for p in policies)
    if not downgrade:
        return decision
    left = hard_budget_left(team=team, api_key=api_key, policies=policies, end_user=end_user)
    if (
        left is None
        or worst_case_cost(decision.configuration, tokens_bound, constraints.options) <= left
    ):
        return decision
    limited = RequestConstraints(**{**constraints.__dict__, "max_cost_usd": left})
    try:
        downgraded = decide(
            prompt=text, task=task, constraints=limited, prompt_tokens=tokens_bound, team=team
        )
    except Exception:  # nothing fits: let the reservation raise the 402 with the budget's name
        return decision
    downgraded.reason = f"downgraded to fit ${left.normalize():f} left in budget"
    return downgraded


def query_runs_inline(query: Query) -> bool:
    """Return whether the web process should run this query itself rather than queue it.

    One sample (or OpenAI's n parallel ones) on a remote OpenAI-compatible server is an HTTP call the web process can make as
    cheaply as a worker; the queue hop (broker round trips, worker pick-up, waiting for the
    result) would cost more than the call itself. Local engines (llama.cpp, vLLM) need their
    worker's loaded model, and multi-sample strategies can run for long: those always queue.
    """
    if query.configuration is None:
        return False
    return _runs_inline(query.configuration, query.samples_planned)


def _runs_inline(configuration: Any, samples_planned: int) -> bool:
    # `single` with OpenAI's n draws n independent requests at once: as quick as one.
    return bool(
        settings.INLINE_REMOTE_SINGLE
        and configuration.endpoint.engine == ModelEndpoint.Engine.OPENAI_COMPAT
        and not configuration.endpoint.queue
        and (samples_planned == 1 or configuration.strategy.strategy == "single")
        # An endpoint billed by engine time (GPU-hour price) runs under the worker's hard
        # time limit, which is what bounds its reservation (services.pricing).
        and not endpoint_prices(configuration.endpoint).gpu_priced
    )


def query_run_inline(*, query: Query, events: Any = None) -> tuple[str, list[Sample] | None]:
    """Run a query created with ``defer_dispatch`` in this process; return its final status
    and, when it completed here, its samples (``query`` then holds its final values; None:
    re-read the row). Status ``queued``: a fallback needed a worker and the query was handed
    over to one (wait for its end event).

    The same strategy, engine, ledger pricing (workers.ledger), budget settlement and end
    hooks (execution._finish) as the worker, with fewer round trips: the samples and the
    final row are written in one transaction at the end instead of one per sample, and the
    engine is asked for token events only when ``events`` (a services.streaming sink) wants
    them. With ``events``, a cancel request (client gone, or the jobs API) aborts the sample.
    Whatever an attempt generated is billed, when it fails too: the samples and scorer calls
    that had ended (the strategy passes on the running ones, aborted, when it fails) and the
    tokens of the request that broke.
    """
    from routerapp.services import execution
    from routerapp.services.attempts import Attempts, NoTargetLeft, may_fall_back

    if query.status != Query.Status.RUNNING:  # created queued: take it, unless taken
        now = timezone.now()
        started = Query.objects.filter(pk=query.pk, status=Query.Status.QUEUED).update(
            status=Query.Status.RUNNING, started_at=now, heartbeat_at=now
        )
        if not started:
            return _current_status(query), None
        query.status, query.started_at = Query.Status.RUNNING, now
    # A synchronous caller waits on the query's end event, so a fallback that needs a worker
    # (a local model, several samples) is handed over to one; a stream stays in this process.
    attempts = Attempts(query, runs_here=_runs_inline_alone if events else lambda c: True)
    partials: list[Sample] = []  # what failed attempts generated: billed
    scorers: list[ScorerCall] = []
    while True:
        try:
            attempt = attempts.next()
        except NoTargetLeft as exc:
            _inline_fail(query, attempts, partials, scorers, f"EndpointsUnavailable: {exc}")
            return Query.Status.FAILED.value, None
        if not _runs_inline_alone(attempt.configuration):
            with transaction.atomic():
                Sample.objects.bulk_create(partials)
                ScorerCall.objects.bulk_create(scorers)
                Query.objects.filter(pk=query.pk).update(samples_done=len(partials))
                attempts.save()
            return str(execution._hand_off(query)), None
        sink = _InlineEvents(events)
        try:
            # The heartbeat tells the reaper this process is alive; if it dies, the query is
            # failed and settled within QUERY_STALE_S instead of staying "running".
            with execution.Heartbeat(query.pk, query.runs):
                result = _inline_attempt(query, attempt, sink)
        except Exception as exc:  # the endpoint failed: fall back, or fail billing what was made
            prices = endpoint_prices(attempt.configuration.endpoint)
            for c in sink.candidates:
                fields = execution.sample_fields(c, prices)
                partials.append(Sample(query=query, index=len(partials), **fields))
            for call in sink.scorer_calls:
                fields = execution.scorer_fields(call, prices)
                scorers.append(ScorerCall(query=query, index=len(scorers), **fields))
            sample = attempts.failed(attempt, exc, index=len(partials), persist=False)
            if sample is not None:
                partials.append(sample)
            attempts.billed = sum((p.cost_usd for p in partials), Decimal(0)) + sum(
                (c.cost_usd for c in scorers), Decimal(0)
            )
            if may_fall_back(exc) and not sink.tokens_sent:
                log.warning(
                    "inline query %s: attempt on %s failed: %s", query.pk, attempt.target.key, exc
                )
                continue
            log.warning("inline query %s failed: %s", query.pk, exc)
            _inline_fail(query, attempts, partials, scorers, f"{type(exc).__name__}: {exc}")
            return Query.Status.FAILED.value, None
        attempts.succeeded(attempt)
        break
    try:
        return _inline_complete(query, result, partials, scorers)
    except _AlreadyFinished:
        return _current_status(query), None


def _runs_inline_alone(configuration: Any) -> bool:
    """Whether a fallback configuration can run inline too (one sample, remote endpoint)."""
    strategy = get_strategy(configuration.strategy.strategy)
    planned = strategy.planned_samples(strategy.validate_params(configuration.strategy.params))
    return _runs_inline(configuration, planned)


def _inline_attempt(query: Query, attempt: Any, sink: Any) -> Any:
    from routerapp.services import execution
    from routerapp.services.breakers import target_busy
    from workers.engines import get_engine
    from workers.engines.resilience import RETRY_LOG

    configuration = attempt.configuration
    target = attempt.target
    engine = get_engine(target.engine, target.engine_params)
    spec = query_run_spec(query, configuration)  # the request's fields applied, as reserved
    execution._check_prompt_length(engine, query)
    token = RETRY_LOG.set(attempt.retries)
    try:
        with target_busy(target, counted=configuration.endpoint.balancing == "least_busy"):
            return spec.strategy.run(
                engine,
                messages=query.messages or [{"role": "user", "content": query.prompt}],
                params=spec.params,
                answer_kind=query.answer_kind or None,
                on_event=sink.on_event,
                should_cancel=None if sink.sink is None else execution.CancelPoll(query.pk),
                # Token events only for a client that streams: a plain call stays one
                # non-streaming request, while on_event still sees every finished sample.
                token_events=sink.sink is not None,
                **spec.run_kwargs,
            )
    finally:
        RETRY_LOG.reset(token)


def _inline_fail(
    query: Query, attempts: Any, partials: list[Sample], scorers: list[ScorerCall], error: str
) -> None:
    """Fail an inline query: write what its attempts generated, bill it and settle."""
    from routerapp.services import execution

    with transaction.atomic():
        running = Query.objects.select_for_update().filter(pk=query.pk, status=Query.Status.RUNNING)
        if running.exists():
            Sample.objects.bulk_create(partials)
            ScorerCall.objects.bulk_create(scorers)
        attempts.save()
        execution.query_fail(query_id=str(query.pk), error=error)


def _current_status(query: Query) -> str:
    return str(Query.objects.values_list("status", flat=True).get(pk=query.pk))


class _AlreadyFinished(Exception):
    pass


_FINAL_FIELDS = (
    "status",
    "graded_at",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "engine_requests",
    "scorer_calls",
    "scorer_prompt_tokens",
    "scorer_completion_tokens",
    "trace",
    "engine_ms",
    "cost_usd",
    "billed_prices",
    "samples_done",
    "answer",
    "extracted_answer",
    "votes",
    "graded_correct",
    "finished_at",
    "latency_ms",
    "attempts",
)


def _inline_complete(
    query: Query,
    result: Any,
    partials: list[Sample] | None = None,
    scorers_before: list[ScorerCall] | None = None,
) -> tuple[str, list[Sample]]:
    """Write an inline query's samples, scorer calls and ledger and settle its budget, in one
    transaction. ``partials`` / ``scorers_before``: what failed attempts before this one
    generated (billed too). The rows are the bill (execution.bill_rows)."""
    from routerapp.services import execution

    assert query.configuration is not None
    partials = partials or []
    scorers_before = scorers_before or []
    prices = endpoint_prices(query.configuration.endpoint)
    offset = len(partials)
    samples = [
        Sample(query=query, index=offset + int(c.index), **execution.sample_fields(c, prices))
        for c in result.candidates
    ]
    scorers = [
        ScorerCall(
            query=query,
            index=len(scorers_before) + int(c.index),
            **execution.scorer_fields(c, prices),
        )
        for c in result.scorer_calls
    ]
    execution.apply_result(query, result, prices)
    execution.bill_rows(query, [*partials, *samples], [*scorers_before, *scorers])
    rows, scorer_rows = [*partials, *samples], [*scorers_before, *scorers]
    aborted = int(result.ledger.aborted_completion_tokens)
    if statements.available():
        # One guarded statement: the final row (only while running), the samples and scorer
        # calls, and the settlement; refused as a whole when the query finished meanwhile
        # (e.g. failed by an operator), which keeps that.
        execution.finish_stamp(query)
        f_sql, f_params = statements.update_sql(
            Query, _final_values(query), {"id": query.pk, "status": Query.Status.RUNNING}
        )
        writes = [("f", f"{f_sql} RETURNING 1", f_params)]
        for name, model, objs in (("s", Sample, rows), ("c", ScorerCall, scorer_rows)):
            if objs:
                writes.append((name, *statements.insert_sql(model, objs)))
        select, joins = "", ""
        if query.budget_windows:
            b_sql, b_params = budget_settle_sql(
                usage_ids=query.budget_windows, reserved=query.reserved_usd, spent=query.cost_usd
            )
            writes.append(("b", b_sql, b_params))
            select, joins = "b.*", "LEFT JOIN b ON true"
        with execution.settle_span(query):
            try:
                found = statements.run_guarded(
                    writes, "(SELECT count(*) FROM f)", select=select, joins=joins
                )
            except statements.Refused:
                raise _AlreadyFinished() from None
        _mark_saved([*rows, *scorer_rows])
        windows = settled_windows([r[1:] for r in found if r[1] is not None]) if select else []
        execution.finish_settled(query, windows, aborted_completion_tokens=aborted)
        return str(query.status), rows
    with transaction.atomic():
        # Settle the reservation, register the end hooks.
        execution._finish(query, aborted_completion_tokens=aborted)
        updated = Query.objects.filter(pk=query.pk, status=Query.Status.RUNNING).update(
            **_final_values(query)
        )
        if not updated:  # finished meanwhile (e.g. failed by an operator): keep that
            raise _AlreadyFinished  # (and the rows written with it are rolled back)
        Sample.objects.bulk_create(rows)
        ScorerCall.objects.bulk_create(scorer_rows)
    return str(query.status), rows


def _final_values(query: Query) -> dict[str, Any]:
    """A finished inline query's final row (``_FINAL_FIELDS``)."""
    return {name: getattr(query, name) for name in _FINAL_FIELDS}


class _InlineEvents:
    """Strategy events of one inline attempt: finished samples and scorer calls are kept
    (billed if the attempt fails), token deltas and samples go to the streaming sink (None:
    the client does not stream)."""

    def __init__(self, sink: Any):
        self.sink = sink
        self.tokens_sent = 0  # token deltas the client may have seen
        self.candidates: list[Any] = []
        self.scorer_calls: list[Any] = []

    def on_event(self, event: Any) -> None:
        call = getattr(event, "call", None)
        if call is not None:
            self.scorer_calls.append(call)
            return
        candidate = getattr(event, "candidate", None)
        if candidate is not None:
            self.candidates.append(candidate)
            if self.sink is not None:
                self.sink.sample(int(candidate.index))
            return
        text = getattr(event, "text", None)
        logprobs = getattr(event, "logprobs", None)
        calls = getattr(event, "tool_calls", None)
        if self.sink is not None and isinstance(text, str) and (text or logprobs or calls):
            self.tokens_sent += 1
            self.sink.token(int(getattr(event, "index", 0)), text, logprobs, calls)


def query_enqueue(*, query: Query) -> None:
    """Hand a committed query to the workers of its engine's queue.

    Raise ServiceUnavailable when the broker cannot be reached; the query is then withdrawn
    (its row deleted, its reservation released), so a failed request leaves nothing behind.
    """
    from workers.tasks import query_execute

    assert query.configuration is not None
    endpoint = query.configuration.endpoint
    queue = queue_for_engine(endpoint.engine, endpoint.queue)
    try:
        # Nobody reads the task's result (callers wait on the query's events): skipping the
        # result store saves a round trip and keeps a dead result store out of the request.
        query_execute.apply_async(args=[str(query.pk)], queue=queue, ignore_result=True)
    except Exception as exc:  # the broker is down: nothing may be left half-written
        log.error("could not enqueue query %s: %s", query.pk, exc)
        _withdraw(query)
        raise ServiceUnavailable(
            "the task queue is unavailable; nothing was queued or billed, retry later",
            code="broker_unavailable",
        ) from exc


@transaction.atomic
def _withdraw(query: Query) -> None:
    locked = Query.objects.select_for_update().filter(pk=query.pk).first()
    if locked is None or locked.status != Query.Status.QUEUED:
        return
    budget_settle(usage_ids=locked.budget_windows, reserved=locked.reserved_usd, spent=ZERO)
    locked.delete()


@transaction.atomic
def query_cancel(*, query: Query) -> Query:
    """Ask a query to stop. A queued query stops now; a running one aborts its samples at the
    next token and is billed for what it generated. Raise Conflict once it has finished."""
    from routerapp.services.execution import query_finish_cancelled

    locked = Query.objects.select_for_update().get(pk=query.pk)
    if locked.is_finished:
        raise Conflict(f"query {locked.pk} has already finished ({locked.status})")
    locked.cancel_requested = True
    locked.save(update_fields=["cancel_requested"])
    if locked.status == Query.Status.QUEUED:
        query_finish_cancelled(query=locked)
    return locked


@transaction.atomic
def query_feedback(
    *, query: Query, correct: bool | None = None, score: float | None = None
) -> Query:
    """Record the caller's judgement of a finished query; it feeds router training."""
    if correct is None and score is None:
        raise InvalidInput("give 'correct' (true/false) or 'score' (0..1)", param="correct")
    if score is not None and not 0.0 <= score <= 1.0:
        raise InvalidInput("score must be between 0 and 1", param="score")
    locked = Query.objects.select_for_update().get(pk=query.pk)
    if not locked.is_finished:
        raise Conflict(f"query {locked.pk} has not finished yet ({locked.status})")
    if correct is None and score is not None:
        correct = score >= 0.5
    first_grade = locked.graded_correct is None
    locked.feedback_correct = correct
    locked.feedback_score = score
    locked.graded_correct = correct
    locked.graded_at = timezone.now()
    locked.save(update_fields=["feedback_correct", "feedback_score", "graded_correct", "graded_at"])
    # A grade changes the dashboards' cost-of-pass: recompute the query's daily rollup row.
    from routerapp.services.rollups import rollup_schedule

    transaction.on_commit(lambda: rollup_schedule(query=locked), robust=True)
    if first_grade:  # a changed grade is not a second observation of the calibration
        from routerapp import metrics

        transaction.on_commit(lambda: metrics.record_graded(query=locked), robust=True)
    return locked
