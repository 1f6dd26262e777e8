"""Creating, cancelling and grading queries."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from routerapp.errors import Conflict, InvalidInput, PayloadTooLarge
from routerapp.models import ApiKey, Query, Team
from routerapp.services.budgets import budget_reserve, hard_budget_left
from routerapp.services.pricing import prompt_token_bound, worst_case_cost
from routerapp.services.routing import RequestConstraints, RoutingDecision, decide
from workers.queues import queue_for_engine
from workers.strategies import get_strategy

log = logging.getLogger(__name__)

MAX_TASK_CHARS = 64
VALID_ROLES = {"system", "user", "assistant", "developer", "tool"}


def _check_messages(messages: list[Any]) -> list[dict[str, str]]:
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
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            texts = [
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            ]
            content = "\n".join(texts)
        if not isinstance(content, str):
            raise InvalidInput(
                f"messages[{i}].content must be a string", param=f"messages[{i}].content"
            )
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in clean):
        raise InvalidInput("messages need at least one non-empty user message", param="messages")
    return clean


def prompt_text(prompt: str, messages: list[dict[str, str]] | None) -> str:
    """Return the text the router reads: the last user message of a chat, else the prompt."""
    if messages:
        users = [m["content"] for m in messages if m["role"] == "user"]
        return users[-1] if users else ""
    return prompt


@transaction.atomic
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
) -> Query:
    """Validate a request, route it, reserve its worst-case cost under the covering budgets,
    store it and enqueue it once the transaction commits. Raise a ServiceError (nothing written)
    when the input is bad, nothing fits the constraints, or a hard budget cannot cover it."""
    constraints = constraints or RequestConstraints()
    if messages is not None:
        messages = _check_messages(messages)
        prompt = ""
    elif not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("prompt must be a non-empty string", param="prompt")
    size = sum(len(m["content"]) for m in messages) if messages else len(prompt)
    if size > settings.MAX_PROMPT_CHARS:
        raise PayloadTooLarge(
            f"prompt has {size} characters; the limit is {settings.MAX_PROMPT_CHARS}",
            param="messages" if messages else "prompt",
        )
    task = (task or "").strip()
    if len(task) > MAX_TASK_CHARS:
        raise InvalidInput(f"task must be at most {MAX_TASK_CHARS} characters", param="task")

    text = prompt_text(prompt, messages)
    tokens_bound = prompt_token_bound(prompt, messages)
    decision = decide(prompt=text, task=task, constraints=constraints, prompt_tokens=tokens_bound)
    decision = _within_budget(
        team, api_key, decision, constraints, text, task, tokens_bound, downgrade_on_budget
    )
    configuration = decision.configuration
    reserve = worst_case_cost(configuration, tokens_bound)
    reservation = budget_reserve(team=team, api_key=api_key, amount=reserve)
    strategy = get_strategy(configuration.strategy.strategy)
    params = strategy.validate_params(configuration.strategy.params)

    query = Query.objects.create(
        team=team,
        api_key=api_key,
        user=user if getattr(user, "is_authenticated", False) else None,
        source=source,
        prompt=prompt,
        messages=messages,
        task=task,
        gold=gold,
        answer_kind=answer_kind,
        constraints=constraints.as_json(),
        configuration=configuration,
        router_version=decision.router_version,
        predicted_p_correct=decision.p_correct,
        predicted_cost_usd=decision.cost_usd,
        decision=decision.as_json(),
        samples_planned=strategy.planned_samples(params),
        reserved_usd=reservation.amount,
        budget_windows=reservation.usage_ids,
        budget_flags=reservation.soft_flags,
        benchmark_run=benchmark_run,
    )
    queue = queue_for_engine(configuration.endpoint.engine, configuration.endpoint.queue)
    transaction.on_commit(lambda: _enqueue(query, queue))
    return query


def _within_budget(
    team: Team,
    api_key: ApiKey | None,
    decision: RoutingDecision,
    constraints: RequestConstraints,
    text: str,
    task: str,
    tokens_bound: int,
    downgrade: bool | None,
) -> RoutingDecision:
    """Re-ask the router with what is left when a downgrading hard budget cannot cover it."""
    from routerapp.models import BudgetPolicy
    from routerapp.services.budgets import policies_for

    policies = policies_for(team, api_key)
    if downgrade is None:
        downgrade = any(p.mode == BudgetPolicy.Mode.HARD_DOWNGRADE for p in policies)
    if not downgrade:
        return decision
    left = hard_budget_left(team=team, api_key=api_key)
    if left is None or worst_case_cost(decision.configuration, tokens_bound) <= left:
        return decision
    limited = RequestConstraints(**{**constraints.__dict__, "max_cost_usd": left})
    try:
        downgraded = decide(prompt=text, task=task, constraints=limited, prompt_tokens=tokens_bound)
    except Exception:  # nothing fits: let the reservation raise the 402 with the budget's name
        return decision
    downgraded.reason = f"downgraded to fit ${left.normalize():f} left in budget"
    return downgraded


def _enqueue(query: Query, queue: str) -> None:
    from workers.tasks import query_execute

    try:
        query_execute.apply_async(args=[str(query.pk)], queue=queue)
    except Exception as exc:  # broker down after commit: fail the query and free its budget
        log.exception("could not enqueue query %s", query.pk)
        from routerapp.services.execution import query_fail

        query_fail(query_id=str(query.pk), error=f"could not reach the task broker: {exc}")


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
    locked.feedback_correct = correct
    locked.feedback_score = score
    locked.graded_correct = correct
    locked.save(update_fields=["feedback_correct", "feedback_score", "graded_correct"])
    # A grade changes the dashboards' cost-of-pass: recompute the query's daily rollup row.
    from routerapp.services.rollups import rollup_refresh_for_query

    transaction.on_commit(lambda: rollup_refresh_for_query(query_id=locked.pk), robust=True)
    return locked
