"""POST /v1/embeddings: passed through to an endpoint that serves embeddings, with the same money
path as a completion: the worst case reserved under the caller's budgets before the call, the
real prompt tokens priced (input price) into a one-sample ledger, the budget settled.

Embeddings of one model are only comparable with each other, so there is no routing: ``model``
names the endpoint. Its deployments, circuit breakers and retries apply as for completions
(services.breakers; a failed deployment falls over to another deployment of the same model).
"""

from __future__ import annotations

import logging
import math
import time
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routerapp.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
)
from routerapp.models import ApiKey, ModelEndpoint, Query, Sample, Team
from routerapp.services.breakers import breaker_record, target_pick
from routerapp.services.budgets import budget_reserve, policies_for
from routerapp.services.pricing import endpoint_prices
from workers.engines.resilience import RETRY_LOG, UpstreamError
from workers.ledger import cost_of_tokens

log = logging.getLogger(__name__)

MAX_INPUTS = 2048
#: Options passed through as they are (the upstream honours or refuses them).
PASSED_OPTIONS = ("encoding_format", "dimensions", "user")


def _inputs(value: Any) -> tuple[list[Any], int, int]:
    """Validate ``input``; return (the inputs, characters, an upper bound on their tokens).

    Accepts a string, a list of strings, a list of token ids or a list of token-id lists, as
    OpenAI does. A text's tokens are bounded by its UTF-8 length (byte-level BPE)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidInput("input must be a non-empty string or list", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidInput(f"input has {len(value)} items; at most {MAX_INPUTS}", param="input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value], 0, len(value)
    chars = bound = 0
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise InvalidInput(f"input[{i}] must not be empty", param=f"input[{i}]")
            if "\x00" in item:
                raise InvalidInput(f"input[{i}] contains NUL", param=f"input[{i}]")
            chars += len(item)
            bound += len(item.encode())
        elif (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        ):
            bound += len(item)
        else:
            raise InvalidInput(
                f"input[{i}] must be a string or a list of token ids", param=f"input[{i}]"
            )
    return value, chars, bound


def _check_allowed(team: Team, api_key: ApiKey | None, name: str) -> None:
    for holder in (team, api_key):
        entries = [e for e in (getattr(holder, "allowed_models", None) or []) if e]
        if entries and not any(fnmatchcase(name, e) for e in entries):
            raise PermissionDenied(
                f"this caller may not use model {name!r}: the team's or the API key's "
                "allowlist forbids it",
                param="model",
                code="model_not_allowed",
            )


def embeddings_create(
    *, team: Team, api_key: ApiKey | None, model: str, input: Any, options: dict[str, Any]
) -> tuple[dict[str, Any], Query]:
    """Embed ``input`` with endpoint ``model``; return the OpenAI-shaped answer and its query.

    Raise NotFound for a model that does not serve embeddings, InvalidInput for a bad input,
    BudgetExceeded when a hard budget cannot cover the worst case, ServiceUnavailable when every
    deployment's breaker is open; an upstream failure leaves a failed query (nothing billed
    but what the upstream reported) and raises UpstreamFailed.
    """
    endpoint = ModelEndpoint.objects.filter(
        name=model, enabled=True, serves_embeddings=True
    ).first()
    if endpoint is None:
        raise NotFound(
            f"unknown model {model!r} or it does not serve embeddings",
            param="model",
            code="model_not_found",
        )
    _check_allowed(team, api_key, endpoint.name)
    inputs, chars, bound = _inputs(input)
    if chars > settings.MAX_PROMPT_CHARS:
        raise PayloadTooLarge(
            f"input has {chars} characters; the limit is {settings.MAX_PROMPT_CHARS}",
            param="input",
        )
    end_user = options.get("user") or ""
    if not isinstance(end_user, str) or len(end_user.strip()) > 256:
        raise InvalidInput("user must be a string of at most 256 characters", param="user")
    end_user = end_user.strip()
    prices = endpoint_prices(endpoint)
    worst = cost_of_tokens(bound, 0, prices)
    texts = [i for i in inputs if isinstance(i, str)]
    with transaction.atomic():
        reservation = budget_reserve(
            team=team,
            api_key=api_key,
            amount=worst,
            policies=policies_for(team, api_key, end_user),
            end_user=end_user,
        )
        query = Query.objects.create(
            status=Query.Status.RUNNING,
            started_at=timezone.now(),
            team=team,
            api_key=api_key,
            end_user=end_user,
            source=Query.Source.EMBEDDINGS,
            prompt="\n".join(texts)[: settings.MAX_PROMPT_CHARS],
            decision={"kind": "embeddings", "model": endpoint.name, "inputs": len(inputs)},
            samples_planned=1,
            reserved_usd=reservation.amount,
            budget_windows=reservation.usage_ids,
            budget_flags=reservation.soft_flags,
        )
    body: dict[str, Any] = {"input": input}
    body.update({k: options[k] for k in PASSED_OPTIONS if options.get(k) is not None})
    answer, attempts = _call(endpoint, body)
    query.attempts = attempts
    if answer is None:
        from routerapp.services.execution import query_fail

        Query.objects.filter(pk=query.pk).update(attempts=attempts)
        last = attempts[-1]["error"] if attempts else "no deployment may be sent to"
        query_fail(query_id=str(query.pk), error=f"UpstreamError: {last}")
        query.refresh_from_db()
        if not attempts:
            raise ServiceUnavailable(
                f"every deployment of {endpoint.name} is failing (circuit breaker open)",
                code="endpoints_unavailable",
                retry_after_s=max(1, math.ceil(settings.BREAKER_COOLDOWN_S)),
            )
        raise UpstreamFailed(query, last)
    usage = answer.get("usage") or {}
    reported = usage.get("prompt_tokens", usage.get("total_tokens"))
    tokens = int(reported) if reported is not None else sum(math.ceil(len(t) / 4) for t in texts)
    cost = cost_of_tokens(tokens, 0, prices)
    _complete(query, tokens, cost, prices)
    payload = {
        "object": "list",
        "data": answer["data"],
        "model": endpoint.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "costpass": {
            "query_id": str(query.pk),
            "cost_usd": str(query.cost_usd),
            "reserved_usd": str(query.reserved_usd),
            "attempts": [{k: v for k, v in a.items() if k != "target_key"} for a in attempts],
        },
    }
    return payload, query


class UpstreamFailed(Exception):
    """Every try of an embeddings call failed; ``query`` is the failed, settled query."""

    def __init__(self, query: Query, error: str):
        super().__init__(error)
        self.query = query


def _call(endpoint: ModelEndpoint, body: dict[str, Any]) -> tuple[dict | None, list[dict]]:
    """Send to the endpoint's deployments until one answers; return (answer, attempts)."""
    from workers.engines import get_engine

    attempts: list[dict[str, Any]] = []
    tried: set[str] = set()
    while len(attempts) < settings.MAX_ATTEMPTS:
        target = target_pick(endpoint, exclude=tried)
        if target is None:
            break
        tried.add(target.key)
        retries: list[dict[str, Any]] = []
        started = time.monotonic()
        token = RETRY_LOG.set(retries)
        try:
            engine = get_engine(target.engine, target.engine_params)
            embed = getattr(engine, "embed", None)
            if embed is None:
                raise UpstreamError(f"engine {target.engine} cannot embed", transient=False)
            answer = embed(body)
        except UpstreamError as exc:
            if exc.transient:
                breaker_record(target=target, ok=False, error=str(exc))
            attempts.append(_attempt(target, "failed", started, retries or exc.retries, exc))
            if exc.status is not None and not exc.transient:
                break  # the request itself is wrong: another deployment says the same
            continue
        finally:
            RETRY_LOG.reset(token)
        breaker_record(target=target, ok=True)
        attempts.append(_attempt(target, "ok", started, retries, None))
        return answer, attempts
    return None, attempts


def _attempt(
    target: Any, outcome: str, started: float, retries: list, exc: BaseException | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "model": target.label.split("/")[0],
        "target": target.label,
        "target_key": target.key,
        "outcome": outcome,
        "retries": retries,
        "ms": int((time.monotonic() - started) * 1000),
    }
    if exc is not None:
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        record["status"] = getattr(exc, "status", None)
    return record


def _complete(query: Query, tokens: int, cost: Decimal, prices: Any) -> None:
    """Write the one-sample ledger, settle the budget, finish the query (one transaction)."""
    from routerapp.services.execution import _finish

    with transaction.atomic():
        locked = Query.objects.select_for_update().get(pk=query.pk)
        Sample.objects.create(
            query=locked,
            index=0,
            prompt_tokens=tokens,
            completion_tokens=0,
            finish_reason="stop",
            chosen=True,
            latency_ms=int((timezone.now() - locked.created_at).total_seconds() * 1000),
            cost_usd=cost,
        )
        locked.prompt_tokens = tokens
        locked.completion_tokens = 0
        locked.engine_requests = 1
        locked.samples_done = 1
        locked.cost_usd = cost
        locked.billed_prices = prices.to_dict()
        locked.attempts = query.attempts
        locked.status = Query.Status.DONE
        _finish(locked)
        locked.save()
    query.refresh_from_db()
