"""Fallback along the router's alternatives: which (configuration, target) serves a query's next
attempt, what each attempt cost, and the record of every attempt on the query.

A query first runs on the configuration the router chose, on one of its endpoint's targets
(services.breakers: deployments, balancing, circuit breakers). When that attempt fails at the
upstream (the engine already retried what could be retried before the first token), the next
attempt goes to another target of the same endpoint, then to the next-best allowed configuration
of the decision (by cost-of-pass for a router decision, by worst-case cost otherwise), skipping
configurations whose every target's breaker is open. A fallback must fit the reservation: what
the query has been billed so far plus the alternative's worst case must stay within what was
reserved, or the difference is reserved now under the same hard budgets (or the alternative is
skipped). Nothing falls back once the client has been sent tokens of the failed attempt, or
after MAX_ATTEMPTS attempts.

What a failed attempt generated is billed: its finished samples are written by the runner, and
the tokens of the request that failed (a broken stream, a request that timed out after it was
sent) become an aborted sample of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from routerapp.errors import BudgetExceeded
from routerapp.models import Configuration, Query, Sample
from routerapp.services.breakers import Target, breaker_record, endpoint_available, target_pick
from routerapp.services.budgets import budget_reserve, budget_settle, policies_for
from routerapp.services.pricing import endpoint_prices, prompt_token_bound, worst_case_cost
from routerapp.services.request_fields import query_options
from workers.engines.resilience import UpstreamError
from workers.ledger import cost_of_usage

log = logging.getLogger(__name__)


class NoTargetLeft(Exception):
    """No allowed configuration has a target that may be sent to within the reservation."""


@dataclass
class Attempt:
    configuration: Configuration
    target: Target
    started: float = field(default_factory=time.monotonic)
    retries: list[dict[str, Any]] = field(default_factory=list)


class Attempts:
    """The attempts of one query run: choose the next, record each outcome."""

    def __init__(self, query: Query, *, runs_here: Callable[[Configuration], bool]):
        self.query = query
        self.runs_here = runs_here
        # A query handed over from another worker pool goes on where that one stopped.
        self.records: list[dict[str, Any]] = list(query.attempts or [])
        self.tried_targets: set[str] = {
            r["target_key"] for r in self.records if r.get("outcome") != "ok" and "target_key" in r
        }
        self.failed_configs: set[str] = set()
        self.count = len(self.records)
        self._chain: list[Configuration] | None = None
        self._bound = prompt_token_bound(query.prompt, query.messages)
        #: What the query has been billed so far (the runner keeps it current between attempts).
        self.billed = Decimal(0)

    # -- choosing -----------------------------------------------------------------------------

    def _alternatives(self) -> list[Configuration]:
        """The decision's alternatives, best first, the chosen configuration excluded."""
        if self._chain is not None:
            return self._chain
        decision = self.query.decision or {}
        rows = [a for a in decision.get("alternatives") or [] if a.get("configuration")]

        def key(a: dict[str, Any]) -> tuple[int, float]:
            if "cost_of_pass" in a:
                cop = a.get("cost_of_pass")
                return (1, 0.0) if cop is None else (0, float(cop))
            return (0, float(a.get("worst_case_usd") or 0))

        order = [a["configuration"] for a in sorted(rows, key=key)]
        chosen = self.query.configuration.slug if self.query.configuration else None
        slugs = [s for s in dict.fromkeys(order) if s != chosen]
        by_slug = {
            c.slug: c
            for c in Configuration.objects.filter(
                slug__in=slugs, enabled=True, endpoint__enabled=True
            ).select_related("endpoint", "strategy")
        }
        self._chain = [by_slug[s] for s in slugs if s in by_slug]
        return self._chain

    def next(self) -> Attempt:
        """Return the next attempt; raise NoTargetLeft when there is none."""
        if self.count >= settings.MAX_ATTEMPTS:
            raise NoTargetLeft(f"gave up after {self.count} attempts")
        current = self.query.configuration
        assert current is not None
        for configuration in self._candidates(current):
            if configuration.slug in self.failed_configs or not self.runs_here(configuration):
                continue
            # An alternative whose every target is open is skipped before any reservation.
            if configuration.pk != current.pk and not endpoint_available(configuration.endpoint):
                self.failed_configs.add(configuration.slug)
                continue
            first = self.count == 0 and configuration.pk == self.query.configuration_id
            if not first and not self._fits(configuration):
                self.failed_configs.add(configuration.slug)
                continue
            target = target_pick(configuration.endpoint, exclude=self.tried_targets)
            if target is None:
                self.failed_configs.add(configuration.slug)
                continue
            self.count += 1
            self.tried_targets.add(target.key)
            if configuration.pk != self.query.configuration_id:
                self._switch(configuration)
            return Attempt(configuration=configuration, target=target)
        raise NoTargetLeft(
            "every allowed configuration's endpoint is failing or was tried"
            if self.count
            else "every target of the chosen configuration's endpoint is failing"
        )

    def _candidates(self, current: Configuration) -> Iterator[Configuration]:
        # The current configuration keeps priority while it has untried targets; the
        # alternatives are read only when it has none (the common path reads nothing).
        yield current
        for configuration in self._alternatives():
            if configuration.pk != current.pk:
                yield configuration

    def _fits(self, configuration: Configuration) -> bool:
        """Whether a fallback to ``configuration`` fits the reservation (topping it up under
        the same budget windows when it does not, if the hard budgets allow)."""
        query = self.query
        # Priced as it would run: the request's fields (n, max_tokens...) applied.
        need = self.billed + worst_case_cost(configuration, self._bound, query_options(query))
        missing = need - query.reserved_usd
        if missing <= 0:
            return True
        try:
            with transaction.atomic():
                reservation = budget_reserve(
                    team=query.team,
                    api_key=query.api_key,
                    amount=missing,
                    policies=policies_for(query.team, query.api_key, query.end_user),
                    end_user=query.end_user,
                )
                if sorted(reservation.usage_ids) != sorted(query.budget_windows or []):
                    # A new budget window (period rolled over): the query settles in its own.
                    budget_settle(
                        usage_ids=reservation.usage_ids, reserved=missing, spent=Decimal(0)
                    )
                    return False
                Query.objects.filter(pk=query.pk).update(reserved_usd=F("reserved_usd") + missing)
        except BudgetExceeded:
            return False
        query.reserved_usd += missing
        return True

    def _switch(self, configuration: Configuration) -> None:
        from workers.strategies import get_strategy

        strategy = get_strategy(configuration.strategy.strategy)
        planned = strategy.planned_samples(strategy.validate_params(configuration.strategy.params))
        self.query.configuration = configuration
        self.query.samples_planned = planned
        Query.objects.filter(pk=self.query.pk).update(
            configuration=configuration, samples_planned=planned
        )

    # -- recording ----------------------------------------------------------------------------

    def succeeded(self, attempt: Attempt) -> None:
        breaker_record(target=attempt.target, ok=True)
        self._record(attempt, "ok", None)

    def failed(
        self, attempt: Attempt, exc: BaseException, *, index: int, persist: bool = True
    ) -> Sample | None:
        """Record a failed attempt, feed its target's breaker, and return the aborted sample
        that bills what its failed request generated (written when ``persist``), if any."""
        upstream = exc if isinstance(exc, UpstreamError) else None
        if upstream is None or upstream.transient:
            breaker_record(target=attempt.target, ok=False, error=str(exc))
        sample = None
        if upstream is not None and upstream.partial is not None:
            prompt_tokens, completion_tokens, text = upstream.partial
            # The failed request held the engine for the attempt's time (GPU-hour prices).
            latency_ms = int((time.monotonic() - attempt.started) * 1000)
            if prompt_tokens or completion_tokens:
                prices = endpoint_prices(attempt.configuration.endpoint)
                sample = Sample(
                    query=self.query,
                    index=index,
                    text=text,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    finish_reason="error",
                    aborted=True,
                    latency_ms=latency_ms,
                    engine_ms=latency_ms,
                    cost_usd=cost_of_usage(prompt_tokens, completion_tokens, latency_ms, prices),
                )
                if persist:
                    with transaction.atomic():
                        sample.save()
                        Query.objects.filter(pk=self.query.pk).update(
                            samples_done=F("samples_done") + 1
                        )
        self._record(attempt, "failed", exc, extra_retries=getattr(upstream, "retries", None))
        return sample

    def _record(
        self,
        attempt: Attempt,
        outcome: str,
        exc: BaseException | None,
        extra_retries: list[dict[str, Any]] | None = None,
    ) -> None:
        retries = attempt.retries or list(extra_retries or [])
        record: dict[str, Any] = {
            "configuration": attempt.configuration.slug,
            "model": attempt.configuration.endpoint.name,
            "target": attempt.target.label,
            "target_key": attempt.target.key,
            "outcome": outcome,
            "retries": retries,
            "ms": int((time.monotonic() - attempt.started) * 1000),
        }
        if exc is not None:
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
            record["status"] = getattr(exc, "status", None)
        self.records.append(record)
        self.query.attempts = self.records

    def save(self) -> None:
        Query.objects.filter(pk=self.query.pk).update(attempts=self.records)


def may_fall_back(exc: BaseException) -> bool:
    """Whether a failed attempt may be retried elsewhere: the upstream failed (any other
    exception is a bug or a bad request, which another endpoint would not fix)."""
    return isinstance(exc, UpstreamError)
